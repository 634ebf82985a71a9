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

# Exit statuses: 0 done; 2 bad input (config, dataset); 3 non-finite loss (the last good
# checkpoint is kept); 75 preempted (SIGTERM): the checkpoint of the current step was saved,
# run the same command again to resume (``ssljax.preemption.EXIT_PREEMPTED``).
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


def main(argv):
    del argv
    import jax

    from ssljax import data, distributed, train
    from ssljax.config import ConfigError
    # Our progress lines on stderr; libraries (orbax, absl) only warn.
    logging.set_verbosity(logging.WARNING)
    handler = pylogging.StreamHandler()
    handler.setFormatter(pylogging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ssljax_logger = pylogging.getLogger("ssljax")
    ssljax_logger.addHandler(handler)
    ssljax_logger.setLevel(pylogging.INFO)
    ssljax_logger.propagate = False
    # Compiled steps are cached on disk, so re-running a command (to resume, or after a
    # change of workdir) skips most of the XLA compilation.
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "SSLJAX_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ssljax", "xla")))
    config = _CONFIG.value
    try:
        distributed.initialize(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if jax.process_index() != 0:  # one log for the whole run: process 0's
        ssljax_logger.setLevel(pylogging.WARNING)
    try:
        results = train.train_and_evaluate(config, _WORKDIR.value)
    except train.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_NONFINITE)
    except train.Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except (data.DatasetNotFoundError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if results and jax.process_index() == 0:
        print_table(results)
        print(f"results: {os.path.join(_WORKDIR.value, 'results.json')}")


def run() -> None:
    try:
        _check_args(sys.argv[1:])
    except Exception as e:  # noqa: BLE001 - any config problem becomes one sentence
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    app.run(main)


if __name__ == "__main__":
    run()
