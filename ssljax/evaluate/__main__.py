"""Command line: evaluate a finished (or any) checkpoint of a run again.

  python -m ssljax.evaluate --workdir runs/simclr [--step 1200] [--name k20] \
      [--config.eval.knn_k=20 --config.eval.baselines=True --config.eval.segmentation=True \
       --config.eval.paper_protocol=selfcon ...]

Runs the evaluators the run's config selects (``ssljax.evaluate.evaluators``: kNN and linear
probe, the baselines, the dense probe, a paper's linear protocol), with the ``eval.*``
overrides given, on the newest complete checkpoint (or ``--step``), and writes
``WORKDIR/results_<name>.json`` (default name ``step<step>``). Nothing else in the workdir
changes: the checkpoint is only read (the parameters and statistics the evaluators use),
the run's lock, records and ``results.json`` are left alone.

Exit statuses: 0 done, 2 bad input (one sentence on stderr).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import re
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

logger = logging.getLogger("ssljax")

# Keys a re-evaluation may change: how to evaluate, and where the data lives.
_ALLOWED = ("eval.", "data.data_dir", "data.tf_threads", "seed")


def _apply_overrides(config, overrides: list[str]) -> None:
    """``--config.<key>=<value>`` onto ``config``, parsed as ``ssljax.main`` parses them."""
    from ssljax.config import ConfigError, check_overrides
    check_overrides(overrides, config)
    for arg in overrides:
        key = arg[len("--config."):].split("=", 1)[0]
        if not key.startswith(_ALLOWED[0]) and key not in _ALLOWED[1:]:
            raise ConfigError(f"{arg.split('=')[0]} would change the trained model or its data, "
                              "not its evaluation; a re-evaluation takes only --config.eval.* "
                              "(and data.data_dir, data.tf_threads, seed).")
    for arg in overrides:
        key, sep, text = arg[len("--config."):].partition("=")
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if not sep:
            raise ConfigError(f"{arg} has no value; write --config.{key}=<value>.")
        with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
            node[last] = _parse(text, node[last], key)


def _parse(text: str, current, key: str):
    """``text`` as a value of ``current``'s type (as ml_collections' flags parse it)."""
    from ssljax.config import ConfigError
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text) if text.strip()[:1] in "([" else tuple(
                v.strip() for v in text.split(",") if v.strip())
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if current is None or isinstance(current, str):
            return text
    except (ValueError, SyntaxError):
        pass
    raise ConfigError(f"--config.{key}={text} is not a {type(current).__name__} like its "
                      f"current value {current!r}; pass one.")


def _with_current_eval_keys(config):
    """Adds the ``eval`` keys this version has and an older run's config lacks (defaults)."""
    from ssljax.config import base_config
    defaults = base_config().eval
    with config.unlocked():
        for key, value in defaults.items():
            if key not in config.eval:
                config.eval[key] = value
    return config


def evaluate_checkpoint(workdir: str, *, step: int | None = None, name: str | None = None,
                        overrides: list[str] = ()) -> tuple[str, dict]:
    """Evaluates a run's checkpoint again; returns ``(path written, results)``.

    Raises:
      ConfigError: one sentence for a bad workdir, step, name or override (before any work).
    """
    import jax

    from ssljax import encoder as enc
    from ssljax import sharding
    from ssljax.config import ConfigError, validate
    from ssljax.data.specs import dataset_info
    from ssljax.evaluate import evaluators

    source = enc.resolve(workdir, step)
    if source.kind != "checkpoint":
        raise ConfigError(f"{workdir} is an exported file; re-evaluation reads a run's "
                          "workdir (ssljax.load_encoder reads the file in Python).")
    name = f"step{source.step}" if name is None else name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise ConfigError(f"--name={name!r} must be letters, digits, '_', '.' or '-' (it "
                          "names results_<name>.json).")
    config = _with_current_eval_keys(enc.run_config(source.workdir))
    _apply_overrides(config, list(overrides))
    validate(config)
    info = dataset_info(config.data.name)
    names = evaluators.selected(config, info)
    method = enc.build_method(config)
    logger.info("Evaluating %s step %d (%s): %s.", source.workdir, source.step, config.method,
                ", ".join(names))

    t0 = time.time()
    params, state = enc.needed_variables(method, config,
                                         feature_maps=config.eval.get("segmentation", False))
    params, state = enc.restore_variables(source.workdir, source.step, params, state)
    mesh = sharding.make_mesh()
    params, state = jax.device_put((params, state), sharding.replicated(mesh))
    ts = types.SimpleNamespace(params=params, state=state)
    from ssljax import data
    data.configure_tf(config.data.tf_threads)
    results = evaluators.run_evaluators(config, method, ts, mesh, info)
    changed = [a[len("--config."):] for a in overrides]
    results.update(method=config.method, step=source.step, evaluators=names, overrides=changed,
                   eval_time_s=round(time.time() - t0, 1))
    out = os.path.join(source.workdir, f"results_{name}.json")
    if jax.process_index() == 0:
        from etils import epath
        target = epath.Path(out)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(target)
    return out, results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if a.startswith("--config.")]
    parser = argparse.ArgumentParser(prog="python -m ssljax.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the run's workdir (local or gs://)")
    parser.add_argument("--step", type=int, default=None,
                        help="the checkpoint's step (default: the newest complete one)")
    parser.add_argument("--name", default=None,
                        help="writes WORKDIR/results_<name>.json (default: step<step>)")
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    from ssljax import data
    from ssljax.config import ConfigError
    try:
        out, results = evaluate_checkpoint(args.workdir, step=args.step, name=args.name,
                                           overrides=overrides)
    except (ConfigError, data.DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in results.items():
        if key.endswith("top1") or key.endswith("miou"):
            print(f"{key:40s} {value}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
