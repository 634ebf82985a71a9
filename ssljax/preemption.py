"""Preemption: turn SIGTERM (and SIGINT) into "finish this step, save a checkpoint, exit".

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
import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger("ssljax")

#: Exit status of ``python -m ssljax.main`` after a preemption checkpoint: 75 is
#: ``EX_TEMPFAIL`` of sysexits.h, "temporary failure, the user is invited to retry".
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Training stopped on a signal after saving the checkpoint of step :attr:`step`."""

    def __init__(self, step: int, directory: str, signame: str = "SIGTERM"):
        self.step = step
        self.directory = directory
        what = "Preempted" if signame == "SIGTERM" else "Interrupted"
        super().__init__(f"{what} ({signame}): saved the checkpoint of step {step} in "
                         f"{directory}; run the same command again to resume from it.")


class Interrupted(BaseException):
    """A signal outside the training steps (set-up, evaluation): there was nothing to save.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the
    way (a checkpoint's verification, a data loader) mistakes it for a failure of its own.
    """


def _name(signum: int) -> str:
    return signal.Signals(signum).name


class PreemptionWatcher:
    """Turns SIGTERM and SIGINT into an orderly stop, whatever the run is doing; a context
    manager around the whole run.

    ``phase`` says what the run is doing: ``"setup"`` and ``"eval"``: the handler raises
    :class:`Interrupted` at once (with the message ``message_for(phase)``); ``"train"``: it
    sets a flag, the trainer finishes the current step, saves it and raises
    :class:`Preempted`. A second SIGINT ends the process at once (status 75; the last
    complete checkpoint is intact). Handlers are installed on entry (main thread only) and
    the previous ones restored on exit.

    Several processes: JAX's preemption sync manager owns SIGTERM and decides, so that every
    process stops at the same step; it must then be asked at every step from the same first
    step on. No handler is installed then (a signal in set-up or evaluation is JAX's).
    """

    def __init__(self, messages: dict[str, str] | None = None) -> None:
        self._requested = threading.Event()
        self._previous: dict[int, object] = {}
        self._multihost = jax.process_count() > 1
        self._sync_broken = False
        self.phase = "setup"
        self.signame = "SIGTERM"
        self.messages = dict(messages or {})
        self.on_exit_now = lambda: None  # cleanup before a second SIGINT ends the process

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is threading.main_thread():
            # Several processes: SIGTERM is JAX's; SIGINT stops this process alone, at once.
            ours = (signal.SIGINT,) if self._multihost else (signal.SIGTERM, signal.SIGINT)
            for signum in ours:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        del frame
        name = _name(signum)
        if self._requested.is_set():
            if signum == signal.SIGINT:
                print(f"Second interrupt ({name}): stopped at once without saving; "
                      f"{self.messages.get('now', 'the last complete checkpoint is intact')}.",
                      file=sys.stderr, flush=True)
                self.on_exit_now()
                os._exit(EXIT_PREEMPTED)
            return
        self.signame = name
        self._requested.set()
        if self._multihost:
            raise Interrupted(f"Interrupted ({name}) on process {jax.process_index()}, without "
                              f"saving (a multi-host run saves on SIGTERM only): "
                              f"{self.messages.get('now', 'nothing was lost')}.")
        if self.phase != "train":
            raise Interrupted(self.message())
        logger.warning("%s: finishing the current step, then saving a checkpoint.", name)

    def message(self) -> str:
        """The sentence for a stop outside training, in the current phase."""
        what = self.messages.get(self.phase, "nothing was lost")
        return f"Interrupted ({self.signame}) during {self.phase_name()}: {what}."

    def phase_name(self) -> str:
        return {"setup": "set-up", "eval": "evaluation"}.get(self.phase, self.phase)

    def request(self) -> None:
        """Asks for a stop as SIGTERM would (single process; for tests and callbacks)."""
        self._requested.set()

    @property
    def requested(self) -> bool:
        """Whether a signal arrived (single process)."""
        return self._requested.is_set()

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
