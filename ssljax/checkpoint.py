"""A thin wrapper over orbax's CheckpointManager: atomic, resumable saves of the train state.

A checkpoint holds the train state (step included) and a small JSON record (the config
it was trained with). The data position needs nothing more: the input pipeline is indexed
by the global step, so a restored step ``k`` resumes the data stream at batch ``k``.
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
save interrupted by ``kill -9`` is never listed, and restoring falls back to the previous one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save and restore ``(state, meta)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        # Remote paths (gs://...) stay as given; orbax writes them through its own backend
        # and commits with a commit-success file instead of a rename.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

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

    def close(self) -> None:
        self._manager.close()
