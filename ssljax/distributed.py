"""Multi-host runs through JAX's multi-controller runtime (``jax.distributed.initialize``).

Every host runs the same command. Each process then sees the devices of all hosts
(``jax.devices()``) and drives its own (``jax.local_devices()``); the trainer's mesh spans all
of them, each process reads its own share of every global batch, orbax writes checkpoints
from all processes together, and only process 0 writes logs, metrics and results.

Where the processes learn about each other, in order:

1. explicit values: ``--coordinator_address``, ``--num_processes``, ``--process_id``
   (``ssljax.main`` flags), or the environment variables ``JAX_COORDINATOR_ADDRESS``,
   ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
2. otherwise JAX's cluster detection: Cloud TPU VMs (every worker of a pod slice), SLURM
   (``srun``: one process per task), Open MPI, Kubernetes JobSets;
3. otherwise one process, and nothing is initialised.

References:
  https://docs.jax.dev/en/latest/multi_process.html
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger("ssljax")

MODES = ("auto", "on", "off")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an integer; set it to "
                         "one or unset it.") from None


def initialize(mode: str = "auto", *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Starts JAX's multi-controller runtime when this process is one of several.

    Call it before anything touches a device (the first ``jax.devices()`` fixes the backend).

    Args:
      mode: ``"auto"``: initialise when given explicit values or when JAX detects a cluster
        (Cloud TPU, SLURM, ...), else run as one process; ``"on"``: initialise or fail;
        ``"off"``: never (one process).
      coordinator_address: ``host:port`` of process 0 (default ``$JAX_COORDINATOR_ADDRESS``).
      num_processes: how many processes take part (default ``$JAX_NUM_PROCESSES``).
      process_id: this process, in ``[0, num_processes)`` (default ``$JAX_PROCESS_ID``).

    Returns:
      True when the runtime was initialised (``jax.process_count()`` may still be 1).
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode {mode!r} is not one of {MODES}; pick one of them.")
    if mode == "off":
        return False
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ValueError(
            "Multi-host needs all three of --coordinator_address, --num_processes and "
            f"--process_id (got {coordinator_address!r}, {num_processes!r}, {process_id!r}); "
            "pass the missing ones, or none of them on a Cloud TPU or SLURM cluster.")
    # CPU processes talk through gloo (JAX's default from 0.5; older versions had none).
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:
        # Raised before anything starts when neither explicit values nor a cluster exist.
        if mode == "on" or explicit[0] is not None:
            raise ValueError(f"Could not start the multi-host runtime ({e}); pass "
                             "--coordinator_address, --num_processes and --process_id.") from e
        logger.debug("No cluster detected (%s); running as one process.", e)
        return False
    logger.info("Process %d of %d, %d local of %d devices.", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def compile_together(jitted, *args, name: str, timeout_s: int = 3600):
    """``jitted`` compiled for ``args``; with several processes, returns once all have compiled.

    The first execution of a program with collectives waits for every process. CPU (gloo)
    collectives give up after 30 s, and a process that compiles slower, or misses the
    compilation cache that another hit, can be later than that. A barrier of the
    coordination service (no collective, ``timeout_s``) between compiling and running
    removes the race. ``name`` must be unique within the run.

    Returns:
      The compiled executable; call it with arguments of the same shapes and shardings.
    """
    compiled = jitted.lower(*args).compile()
    if jax.process_count() > 1:
        from ssljax import _extras
        ocp = _extras.require("orbax.checkpoint", part="Multi-host training")
        ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)
    return compiled
