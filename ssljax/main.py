"""Command line: pre-train a method, then evaluate it.

  python -m ssljax.main --config=configs/simclr.py:fashion_mnist --workdir=runs/simclr \
      [--config.optimizer.lr=0.5 ...]

With no ``--config`` the main job runs: CorInfoMax on offline Fashion-MNIST, CPU-sized. Running
the same command again resumes from the last checkpoint in ``--workdir``.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "corinfomax.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG if os.path.exists(_DEFAULT_CONFIG) else None,
    "Config file, optionally with a variant: configs/<method>.py:<variant>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/corinfomax_fashion_mnist",
                               "Directory for checkpoints, metrics and results; reused to resume.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Multi-host runtime (jax.distributed.initialize): auto starts it when the flags below "
    "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) are set or a Cloud TPU / "
    "SLURM cluster is detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes of a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process, in [0, num_processes).")

# Exit statuses: 0 done; 2 bad input (config, dataset, workdir, a full disk: fix it, then run
# the same command again); 3 non-finite loss (the last good checkpoint is kept); 75
# interrupted (SIGTERM, SIGINT): the checkpoint of the current step was saved, or there was
# nothing to save; run the same command again (``ssljax.preemption.EXIT_PREEMPTED``).
# A full disk is 2, not 75: wrappers requeue 75 (experiments/slurm_train.sbatch), and a
# full disk would fail again.
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75


def print_table(results: dict) -> None:
    """The summary a user reads first: what pre-training bought over pixels and a random net."""
    rows = [("raw pixels", "raw_pixels_"), ("random encoder", "random_encoder_"),
            (f"pre-trained ({results.get('method', '')})", "")]
    print(f"\n{'':28s}{'linear probe':>14s}{'kNN':>10s}")
    for name, prefix in rows:
        if f"{prefix}linear_probe_top1" in results:
            print(f"{name:28s}{results[prefix + 'linear_probe_top1']:13.2f}%"
                  f"{results[prefix + 'knn_top1']:9.2f}%")
    # Multi-exit networks (SelfCon, sub-network CE): the sub-networks and the ensemble.
    suffix = "_linear_probe_top1"
    for key in sorted(k for k in results if k.startswith("subnet") and k.endswith(suffix)):
        name = key[: -len(suffix)]
        print(f"{'  ' + name:28s}{results[key]:13.2f}%{results[name + '_knn_top1']:9.2f}%")
    if "ensemble_linear_probe_top1" in results:
        print(f"{'  ensemble (mean of logits)':28s}{results['ensemble_linear_probe_top1']:13.2f}%")
    print(f"(pre-training {results['train_time_s']:.0f}s, evaluation {results['eval_time_s']:.0f}s)")


def _check_args(argv: list[str]) -> None:
    """Turn an unknown ``--config.<key>`` into one sentence naming the closest valid key."""
    from ssljax.config import ConfigError, check_overrides
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv:
        config_arg = argv[argv.index("--config") + 1]
    path, _, variant = (config_arg or _DEFAULT_CONFIG).partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"Config file {path} does not exist; pass --config=configs/<method>.py.")
    import importlib.util
    spec = importlib.util.spec_from_file_location("_ssljax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(variant) if variant else module.get_config()
    check_overrides(argv, cfg)


def _run_pipeline() -> dict:
    """Set-up, validation, training and evaluation; errors propagate to :func:`main`."""
    import jax

    from ssljax import distributed, train, workdir
    from ssljax.config import ConfigError, validate
    config = _CONFIG.value
    # Every value, and the workdir, before any work starts (pre-training and evaluation).
    validate(config)
    workdir.check_path(_WORKDIR.value)
    # Compiled steps are cached on disk, so re-running a command (to resume, or after a
    # change of workdir) skips most of the XLA compilation.
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "SSLJAX_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ssljax", "xla")))
    try:
        distributed.initialize(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if jax.process_index() != 0:  # one log for the whole run: process 0's
        pylogging.getLogger("ssljax").setLevel(pylogging.WARNING)
    return train.train_and_evaluate(config, _WORKDIR.value)


def exit_status(error: BaseException) -> tuple[int, str] | None:
    """The exit status and the one sentence for ``error``; None for a bug (a traceback)."""
    if isinstance(error, ImportError) and "pip install 'ssljax[" in str(error):
        return EXIT_BAD_INPUT, f"error: {error}"  # an extra is missing (ssljax._extras)
    from ssljax import data, preemption, train
    from ssljax.config import ConfigError
    from ssljax.workdir import is_disk_full
    if isinstance(error, train.NonFiniteLossError):
        return EXIT_NONFINITE, f"error: {error}"
    if isinstance(error, (train.Preempted, preemption.Interrupted)):
        return EXIT_PREEMPTED, str(error)
    if isinstance(error, (data.DatasetNotFoundError, ConfigError)):
        return EXIT_BAD_INPUT, f"error: {error}"
    if is_disk_full(error):  # ssljax.workdir.DiskFullError names the path and the bytes
        name = getattr(error, "filename", None) or "the workdir"
        text = (str(error) if hasattr(error, "needed") else
                f"No space left on the device of {name}; free space there and run the same "
                "command again.")
        return EXIT_BAD_INPUT, f"error: {text}"
    if isinstance(error, KeyboardInterrupt):  # SIGINT before the handlers were installed
        return EXIT_PREEMPTED, "Interrupted (SIGINT) during set-up: nothing needed saving yet."
    return None


def main(argv):
    del argv
    # Our progress lines on stderr; libraries (orbax, absl) only warn.
    logging.set_verbosity(logging.WARNING)
    handler = pylogging.StreamHandler()
    handler.setFormatter(pylogging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ssljax_logger = pylogging.getLogger("ssljax")
    ssljax_logger.addHandler(handler)
    ssljax_logger.setLevel(pylogging.INFO)
    ssljax_logger.propagate = False
    try:
        results = _run_pipeline()
    except BaseException as e:  # noqa: BLE001 - known failures become one sentence
        if isinstance(e, SystemExit):
            raise
        known = exit_status(e)
        if known is None:
            raise
        print(known[1], file=sys.stderr)
        sys.exit(known[0])
    import jax
    if results and jax.process_index() == 0:
        print_table(results)
        print(f"results: {os.path.join(_WORKDIR.value, 'results.json')}")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad value as one sentence and status 2 (not usage text)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _interrupt_in_setup(signum, frame) -> None:
    """Until the trainer installs its own handlers: a signal stops set-up with status 75.

    It exits here rather than raise: nothing is held yet, and an exception raised in a
    signal handler can land in a callback that swallows it (the garbage collector's)."""
    del frame
    import signal
    print(f"Interrupted ({signal.Signals(signum).name}) during set-up: nothing needed saving "
          "yet; run the same command again to start.", file=sys.stderr, flush=True)
    os._exit(EXIT_PREEMPTED)


def run() -> None:
    import signal
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt_in_setup)
    try:
        _check_args(sys.argv[1:])
    except Exception as e:  # noqa: BLE001 - any config problem becomes one sentence
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
