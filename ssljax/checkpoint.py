"""A thin wrapper over orbax's CheckpointManager: atomic, verified, resumable saves.

A checkpoint holds the train state (step included) and a small JSON record (the config
it was trained with). The data position needs nothing more: the input pipeline is indexed
by the global step, so a restored step ``k`` resumes the data stream at batch ``k``.
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
save interrupted by ``kill -9`` is never listed, and restoring falls back to the previous one.

Checkpoints are never lost:

- :meth:`Checkpointer.restore_latest` verifies each candidate, newest first, before using
  it: orbax's completeness markers (``commit_success.txt`` of the step and of each item, the
  commit time in ``_CHECKPOINT_METADATA``), the JSON record, the array metadata, and a
  restore that succeeds. A damaged one is renamed ``<step>.damaged-<time>`` (outside
  orbax's step-name pattern, so orbax never lists or deletes it) and the next older one is
  tried. Array metadata whose shapes differ from the config's state is not damage but a
  config mismatch: :class:`CheckpointMismatchError`, and nothing is moved.
- Retention keeps ``max_to_keep >= 1`` checkpoints; orbax deletes only older ones after a
  save succeeded, so the newest good checkpoint is always kept.
- A full disk during a save removes the partial temporary directory and raises
  :class:`ssljax.workdir.DiskFullError`; the previous checkpoint stays.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

import jax
import numpy as np

from ssljax import _extras

_extras.check("orbax.checkpoint", part="ssljax.checkpoint")

import orbax.checkpoint as ocp  # noqa: E402
from etils import epath  # noqa: E402
from orbax.checkpoint._src.metadata import checkpoint as checkpoint_metadata  # noqa: E402
from orbax.checkpoint._src.path import atomicity  # noqa: E402

from ssljax.config import ConfigError  # noqa: E402
from ssljax.workdir import DiskFullError, is_disk_full

logger = logging.getLogger("ssljax")

DAMAGED = ".damaged-"  # infix of a checkpoint moved aside: ``<step>.damaged-<time>``


class CheckpointMismatchError(ConfigError):
    """A checkpoint holds another train state than the config builds (not damage)."""


class CheckpointsDamagedError(ConfigError):
    """Every checkpoint of the run is damaged; the run will not silently start over."""


def _leaf_shapes(tree: Any) -> list[tuple[int, ...]]:
    return sorted(tuple(x.shape) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))


def _size_bytes(path: str) -> int:
    """Bytes under a local ``path``; 0 for remote paths (listing them costs requests)."""
    if "://" in path:
        return 0
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


class Checkpointer:
    """Save and restore ``(state, meta)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        if max_to_keep < 1:  # orbax reads 0 as "keep none" and deletes every checkpoint
            raise ConfigError(f"keep_checkpoints={max_to_keep} would delete every checkpoint; "
                              "set --config.keep_checkpoints to 1 or more.")
        # Remote paths (gs://...) stay as given; orbax writes them through its own backend
        # and commits with a commit-success file instead of a rename.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        # Handlers named up front (not only through save/restore args), so that the array
        # metadata of a checkpoint is readable before anything is restored.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def damaged(self) -> list[str]:
        """Names of the checkpoints moved aside as damaged, oldest step first."""
        root = epath.Path(self.directory)
        names = [p.name for p in root.iterdir() if DAMAGED in p.name] if root.exists() else []
        return sorted(names, key=lambda n: (int(n.split(".")[0]) if n.split(".")[0].isdigit()
                                            else -1, n))

    # -- saving ---------------------------------------------------------------------------
    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``(state, meta)`` as step ``step``; on a full disk, clean up and say so."""
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
            self._manager.wait_until_finished()
        except Exception as e:
            if not is_disk_full(e):
                raise
            self._remove_partial(step)
            previous = self.latest_step()
            needed = (_size_bytes(os.path.join(self.directory, str(previous)))
                      if previous is not None else 0)
            needed = needed or sum(int(np.prod(x.shape)) * x.dtype.itemsize
                                   for x in jax.tree.leaves(state))
            kept = (f" (the checkpoint of step {previous} is intact)" if previous is not None
                    else "")
            raise DiskFullError(f"{self.directory}/{step}", needed,
                                detail=f" for the checkpoint of step {step}{kept}") from None

    def _remove_partial(self, step: int) -> None:
        """Remove the temporary directories a failed save of ``step`` left behind."""
        if jax.process_index() != 0:
            return
        root = epath.Path(self.directory)
        for path in root.glob(f"{step}.orbax-checkpoint-tmp*"):
            try:
                path.rmtree()
            except OSError as e:
                logger.warning("Could not remove the partial checkpoint %s: %s", path, e)
        try:
            self._manager.reload()
        except Exception:  # noqa: BLE001 - the listing is rebuilt on the next start anyway
            pass

    # -- restoring ------------------------------------------------------------------------
    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore into the shapes, dtypes and shardings of ``abstract_state``."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        # Under a local x64 scope: orbax's host-to-device copy would otherwise turn the
        # float64 leaves some methods keep (CorInfoMax's state) into float32. Every leaf is
        # restored to its target's dtype either way.
        with jax.enable_x64(True):
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def problem(self, step: int, abstract_state: Any) -> str | None:
        """What is wrong with checkpoint ``step`` on disk (cheap checks), or None.

        Raises:
          CheckpointMismatchError: its arrays have other shapes than ``abstract_state``.
        """
        path = epath.Path(self.directory) / str(step)
        for item in ("", "state", "meta"):
            if not (path / item / atomicity.COMMIT_SUCCESS_FILE).exists():
                return f"{item or 'the step'} has no {atomicity.COMMIT_SUCCESS_FILE}"
        try:
            step_meta = json.loads(checkpoint_metadata.step_metadata_file_path(path).read_text())
            if not step_meta.get("commit_timestamp_nsecs"):
                return "its _CHECKPOINT_METADATA has no commit time"
            json.loads((path / "meta" / "metadata").read_text())
        except (OSError, ValueError, AttributeError) as e:
            return f"its metadata is unreadable ({type(e).__name__})"
        stored = self._manager.item_metadata(step)["state"]
        if stored is None:
            return "its array metadata is unreadable"
        on_disk, now = _leaf_shapes(stored.tree), _leaf_shapes(abstract_state)
        if on_disk != now:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {self.directory} holds another train state "
                f"than this config builds ({len(on_disk)} arrays on disk, {len(now)} now, or "
                "other shapes); resume with the config it was written with, or use a fresh "
                "--workdir.")
        return None

    def move_aside(self, step: int, why: str) -> str:
        """Rename checkpoint ``step`` to ``<step>.damaged-<time>`` (process 0); the new name."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{step}{DAMAGED}{stamp}"
        if jax.process_index() == 0:
            (epath.Path(self.directory) / str(step)).rename(epath.Path(self.directory) / name)
        return name

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest good checkpoint; None when there is none.

        Damaged checkpoints are moved aside on the way (one log line each). With several
        processes, every process verifies and they agree: one failure is a failure for all.

        Raises:
          CheckpointsDamagedError: checkpoints exist but none is good.
          CheckpointMismatchError: a checkpoint holds another state than the config builds.
        """
        moved = []
        for step in sorted(self.all_steps(), reverse=True):
            why = self.problem(step, abstract_state)
            restored = None
            if why is None:
                try:
                    restored = self.restore(step, abstract_state)
                except Exception as e:  # noqa: BLE001 - any failure to read is damage here
                    why = f"restoring it failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            if _all_agree(why is None):
                if moved:
                    logger.warning("Resuming from step %d, the newest good checkpoint.", step)
                return (step, *restored)
            name = self.move_aside(step, why or "another process could not restore it")
            moved.append(name)
            logger.warning("Checkpoint %s/%d is damaged (%s): moved aside as %s.",
                           self.directory, step, why, name)
            _barrier(f"ssljax_move_aside_{step}")
            self._manager.reload()
        damaged = self.damaged()
        if damaged:
            raise CheckpointsDamagedError(
                f"Every checkpoint in {self.directory} is damaged (moved aside: "
                f"{', '.join(damaged)}), so this run will not silently start over; to train "
                f"from step 0, move them out of {self.directory} or use a fresh --workdir.")
        return None

    def close(self) -> None:
        self._manager.close()


def restore_latest_state_on_host(directory: str) -> tuple[int, Any] | None:
    """``(step, state)`` of the newest checkpoint under ``directory``, as saved, on the host.

    For reading another run's parameters (e.g. the frozen view generator of an
    ``infomin_views`` run) without building its train state: no target structure, so the
    leaves come back as host arrays of their stored shapes and dtypes. None when
    ``directory`` has no checkpoint.
    """
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
        directory) else []
    if not steps:
        return None
    state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(steps[-1]), "state"))
    return steps[-1], state


def _all_agree(ok: bool) -> bool:
    """True when ``ok`` holds on every process."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=300_000)
