"""Preemption: turn SIGTERM into "finish this step, save a checkpoint, exit".

Cloud TPU VMs, spot/preemptible GPU instances and SLURM (``--signal=TERM@...``, or on
``scancel``/time limit) send SIGTERM some seconds before they kill a job. The trainer asks
:meth:`PreemptionWatcher.reached` after every step; once it answers True, the trainer saves
the state of that step and raises :class:`Preempted`; ``ssljax.main`` then exits with
:data:`EXIT_PREEMPTED`, so a wrapper script can tell "preempted, run me again" from success
(0), bad input (2) and a non-finite loss (3). Running the same command again resumes from
that checkpoint, and the resumed losses equal an uninterrupted run's.

With several processes, the processes must save the *same* step, or the collective save
would wait forever. Then the watcher uses JAX's preemption sync manager (started by
``jax.distributed.initialize``; it catches SIGTERM itself): when any process receives the
signal, all processes agree on the next step to stop at
(``jax.experimental.multihost_utils.reached_preemption_sync_point``).
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger("ssljax")

#: Exit status of ``python -m ssljax.main`` after a preemption checkpoint: 75 is
#: ``EX_TEMPFAIL`` of sysexits.h, "temporary failure, the user is invited to retry".
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Training stopped on SIGTERM after saving the checkpoint of step :attr:`step`."""

    def __init__(self, step: int, directory: str):
        self.step = step
        self.directory = directory
        super().__init__(f"Preempted (SIGTERM): saved the checkpoint of step {step} in "
                         f"{directory}; run the same command again to resume from it.")


class PreemptionWatcher:
    """Answers, at each step, whether to stop for a preemption; a context manager.

    One process: a SIGTERM handler (installed on entry, the previous one restored on exit)
    sets a flag; the signal then never kills the process mid-step. Several processes: JAX's
    preemption sync manager decides, so that every process stops at the same step; it must
    then be asked at every step from the same first step on.
    """

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._previous = None
        self._multihost = jax.process_count() > 1
        self._sync_broken = False

    def __enter__(self) -> "PreemptionWatcher":
        if not self._multihost and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        if not self._requested.is_set():
            logger.warning("SIGTERM: finishing the current step, then saving a checkpoint.")
        self._requested.set()

    def request(self) -> None:
        """Asks for a stop as SIGTERM would (single process; for tests and callbacks)."""
        self._requested.set()

    def reached(self, step: int) -> bool:
        """True when training should save the state of ``step`` and stop."""
        if not self._multihost:
            return self._requested.is_set()
        if self._sync_broken:
            return False
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:  # the preemption service is disabled in this JAX runtime
            logger.warning("Preemption checkpoints are off: %s", e)
            self._sync_broken = True
            return False
