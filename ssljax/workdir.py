"""A workdir belongs to one run: it is locked while a process trains in it, and it remembers
the config of its first start.

- ``WORKDIR/.lock``: pid, host and start time of the process that trains there, created with
  ``O_EXCL`` by process 0 and removed on any exit. A lock whose process is dead (same host)
  is stale and taken over; on ``gs://`` the lock is best effort (check, then write), since
  object stores have no exclusive create.
- ``WORKDIR/run.json``: the first start's full config, the run's identity. A later start
  whose config differs in an identity key stops before anything is restored; differences
  in the free keys (:data:`FREE_KEYS`) are allowed and appended to
  ``WORKDIR/config_history.jsonl``. ``WORKDIR/config.json`` is written once, at the first
  start, for people who look for it there.

Identity is everything except :data:`FREE_KEYS`, so a key added later is part of a run's
identity until someone decides otherwise. Free: the run's length and logging, checkpoint
cadence, evaluation, sharding, where the data lives, how the model's function is computed
(``model.attention``, ``model.remat``), and the optimizer's schedule hyper-parameters. The schedule changes the state's trajectory, but the message for a
non-finite loss tells the user to lower ``optimizer.lr`` (or lengthen the warm-up) and
run the same command again, so those must stay allowed. ``optimizer.name`` and
``optimizer.exclude_bias_and_norm`` change the optimizer state's structure: identity.
"""

from __future__ import annotations

import datetime
import errno
import fnmatch
import json
import logging
import os
import socket
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from ssljax.config import ConfigError

logger = logging.getLogger("ssljax")

LOCK_NAME = ".lock"
RUN_RECORD = "run.json"
HISTORY = "config_history.jsonl"

#: Config keys (fnmatch patterns) a resumed run may change; every other key is identity.
FREE_KEYS = (
    "num_epochs", "total_steps", "stop_after_step", "log_every", "checkpoint_every",
    "keep_checkpoints", "eval.*", "sharding.*", "data.data_dir", "data.tf_threads",
    "data.test_split", "optimizer.lr", "optimizer.lr_scaling", "optimizer.warmup_epochs",
    "optimizer.warmup_init", "optimizer.final_lr_ratio", "optimizer.weight_decay",
    "optimizer.momentum", "optimizer.nesterov", "optimizer.b1", "optimizer.b2",
    "optimizer.trust_coefficient", "optimizer.step_per_epoch",
    # How the same function is computed (attention kernel, recomputation in the backward
    # pass): no parameter or state changes, so a run may resume under another choice.
    "model.attention", "model.remat",
)


class WorkdirError(ConfigError):
    """The workdir cannot be used as asked (locked, another run's, not a folder)."""


def check_path(workdir: str) -> None:
    """Refuses an empty ``--workdir`` and one that is a regular file."""
    if not workdir or not workdir.strip():
        raise WorkdirError("--workdir is empty; pass a folder for the checkpoints and metrics, "
                           "e.g. --workdir=runs/simclr.")
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; pass a folder (a new "
                           "one starts a run, an existing run's folder resumes it).")


def _atomic_write(path: epath.Path, text: str) -> None:
    """Write ``text`` so that a reader sees the old file or the new one, never a part."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def _agree(value: int) -> int:
    """Process 0's ``value`` on every process (one process: ``value``)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


# ----------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Lock:
    """``WORKDIR/.lock`` held by process 0 for the life of a run; a context manager.

    Every process learns whether process 0 got it, so a refused run stops on all of them.
    """

    def __init__(self, workdir: str):
        self.path = epath.Path(workdir) / LOCK_NAME
        self._held = False

    def _holder(self) -> dict | None:
        """The lock's record, or None when the lock is free or stale (then removed)."""
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # a process died mid-write: stale
            logger.warning("Removing the unreadable lock %s.", self.path)
            self.path.unlink(missing_ok=True)
            return None
        if host == socket.gethostname() and not _pid_alive(pid):
            logger.warning("Removing the stale lock %s of process %d, which is no longer "
                           "running.", self.path, pid)
            self.path.unlink(missing_ok=True)
            return None
        return holder

    def _try_create(self) -> bool:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.datetime.now().isoformat(timespec="seconds")})
        if "://" in str(self.path):  # object store: best effort, no exclusive create
            if self.path.exists():
                return False
            self.path.write_text(record)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(record)
        return True

    def acquire(self) -> None:
        holder = None
        if jax.process_index() == 0:
            got = self._try_create()
            if not got and self._holder() is None:  # stale: taken over
                got = self._try_create()
            if not got:
                holder = self._holder() or {"pid": "?", "host": "?"}
            self._held = got
        if not _agree(int(jax.process_index() != 0 or self._held)):
            who = (f"process {holder['pid']} on {holder['host']}" if holder
                   else "another process (see process 0's message)")
            raise WorkdirError(
                f"{self.path.parent} is in use by {who}; wait for it to finish, stop it, or "
                f"use another --workdir (if that process is gone, delete {self.path}).")

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                self.path.unlink(missing_ok=True)
            except OSError as e:  # never hide the run's own outcome behind this
                logger.warning("Could not remove the lock %s: %s", self.path, e)

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- identity


def config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``config`` as plain JSON values (tuples become lists), as the record stores it."""
    return json.loads(config.to_json_best_effort())


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def is_free(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in FREE_KEYS)


#: Identity keys added after runs were recorded: the value that does what those runs did.
LEGACY_VALUES = {"data.augment_on": "host"}


def _as_run_here(flat: dict[str, Any]) -> dict[str, Any]:
    """A record's keys as this machine would run them: legacy values for keys it lacks, and
    ``data.augment_on='auto'`` as the path it picks on this backend (CPU: host), so a record
    from before the key existed resumes under the new default where nothing changes."""
    flat = {**LEGACY_VALUES, **flat}
    if flat.get("data.augment_on") == "auto":
        flat["data.augment_on"] = "host" if jax.default_backend() == "cpu" else "device"
    return flat


def differences(first: dict, now: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (first value, value now)}`` for every leaf that differs (absent: ``None``)."""
    a, b = _as_run_here(_flatten(first)), _as_run_here(_flatten(now))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _flag(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def check_identity(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Stops a resume whose config differs from the first start's in an identity key.

    Every process reads the same ``run.json`` and takes the same decision; only process 0
    writes. A workdir written before ``run.json`` existed (``config.json`` or checkpoints,
    no record) is adopted: its record is written from this config.

    Raises:
      WorkdirError: one sentence naming the differing keys, their first values, and the
        two ways out.
    """
    root = epath.Path(workdir)
    record_path = root / RUN_RECORD
    now = config_record(config)
    is_main = jax.process_index() == 0
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    if not record_path.exists():
        legacy = (root / "config.json").exists() or (root / "checkpoints").exists()
        if legacy:
            logger.warning("%s has no %s (an older ssljax wrote it): recording this start's "
                           "config as the run's identity.", workdir, RUN_RECORD)
        if is_main:
            _atomic_write(record_path, json.dumps({"started": stamp, "adopted": legacy,
                                                   "config": now}, indent=2))
            if not (root / "config.json").exists():
                _atomic_write(root / "config.json", config.to_json_best_effort(indent=2))
        return
    try:
        first = json.loads(record_path.read_text())["config"]
    except (ValueError, KeyError, TypeError):
        raise WorkdirError(f"{record_path} is unreadable, so this run's first config is "
                           "unknown; restore it from a copy, or use a fresh --workdir.") from None
    changed = differences(first, now)
    identity = {k: v for k, v in changed.items() if not is_free(k)}
    if identity:
        was = ", ".join(f"{k}={v[0]!r}" for k, v in identity.items())
        flags = " ".join(f"--config.{k}={_flag(v[0])}" for k, v in identity.items()
                         if v[0] is not None)
        raise WorkdirError(
            f"{workdir} holds a run started with {was}, and this config changes "
            f"{', '.join(identity)}, which would mix two runs in one; rerun with the original "
            f"values ({flags or 'the config in ' + str(record_path)}) or use a fresh --workdir.")
    if changed:
        logger.info("Resuming with changes since the first start (in %s): %s", HISTORY,
                    ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changed.items()))
    if is_main:
        line = json.dumps({"time": stamp, "pid": os.getpid(),
                           "changes": {k: {"first": v[0], "now": v[1]}
                                       for k, v in changed.items()}})
        history = root / HISTORY
        try:
            with history.open("a") as f:
                f.write(line + "\n")
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFullError(str(history), len(line)) from None
            raise


class DiskFullError(OSError):
    """No space left for a file of the run; the message names the path and the bytes needed."""

    def __init__(self, path: str, needed: int, *, detail: str = ""):
        self.path, self.needed = path, needed
        size = (f"{needed / 2 ** 20:.1f} MiB" if needed >= 2 ** 20 else f"{needed} bytes")
        super().__init__(errno.ENOSPC, f"No space left on the device of {path}: it needs about "
                         f"{size} more{detail}; free space there and run the same command "
                         "again.")

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it wraps is a full disk (ENOSPC)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):  # tensorstore's errors carry the text only
            return True
        exc = exc.__cause__ or exc.__context__
    return False

