"""MoCo v2, BYOL, InfoMin (without learned views) and SimCLR on Fashion-MNIST, same budget.

  python experiments/views_fashion_mnist.py --steps=60 --seeds=0,1,2 \
      [--methods=moco,byol,infomin,simclr] [--workdir=runs/views_fmnist]

Each method runs its ``configs/<method>.py:fashion_mnist`` recipe for ``--steps`` training
steps of batch 256 (234 steps = one epoch; the cosine schedule spans the budget), then the
trainer's own evaluation: linear probe (AdamW, 30 epochs) and kNN (k 200, T 0.1) top-1 on
the full test set, from features of the full training set. Runs append to
``<workdir>/results.jsonl`` (a finished run is skipped when the command is repeated), and
the table of mean and spread over seeds is written to ``experiments/views_fashion_mnist.md``.
"""

import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from report_notes import kept_notes  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 60, "Training steps per run (batch 256).")
_SEEDS = flags.DEFINE_list("seeds", "0,1,2", "Seeds.")
_METHODS = flags.DEFINE_list("methods", "moco,byol,infomin,simclr", "Methods, in this order.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 10000,
                                       "Training images the probes fit on (-1: all 60,000).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/views_fmnist", "Runs and results.jsonl.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "Write the table from the finished runs; train nothing.")
_REPORT = flags.DEFINE_string("report", "experiments/views_fashion_mnist.md", "Markdown table.")


def load_config(name):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("fashion_mnist")
    # The table's protocol. SimCLR's main-job variant changed on 2026-12-01 (probe lr 1e-2,
    # T 0.1); the table was measured with the probe at 1e-3 and SimCLR at T 0.2.
    c.eval.linear_lr = 1e-3
    if name == "simclr":
        c.loss.temperature = 0.2
    return c


def done_runs(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["method"], r["seed"], r["steps"]): r for r in rows}


def status_line(rows):
    expected = {(m, int(s)) for m in _METHODS.value for s in _SEEDS.value}
    missing = expected - {(r["method"], r["seed"]) for r in rows}
    if not missing:
        return (f"All {len(expected)} runs finished. Finished runs are reused from"
                " `runs/views_fmnist/results.jsonl`; a fresh checkout runs them all again.")
    return (f"Runs finished so far ({len(missing)} missing); rerun the command to add them"
            " (finished runs are reused from `runs/views_fmnist/results.jsonl`).")


def write_report(rows, steps, path):
    lines = [
        "# MoCo v2, BYOL, InfoMin and SimCLR on Fashion-MNIST, same budget",
        "",
        f"Each method: its `configs/<method>.py:fashion_mnist` recipe (narrow ResNet-18, width 16,"
        f" batch 256) for {steps} training steps ({steps * 256 / 60000:.2f} epochs), then linear"
        " probe (AdamW, 30 epochs) and kNN (k 200, T 0.1) top-1 (%) on the 10,000 test images,"
        f" fitted on the first {_TRAIN_EXAMPLES.value} training images."
        " InfoMin is MoCo v2 + InfoMin Aug (RandAugment) + the jigsaw branch, without learned"
        " views. Mean +- standard deviation over seeds (n = number of seeds). Measured on a"
        " shared 2-core CPU: wall times are indicative only.",
        "",
        "Command:",
        "",
        "```",
        f"python experiments/views_fashion_mnist.py --steps={steps} --seeds=0,1,2"
        f" --train_examples={_TRAIN_EXAMPLES.value}",
        "```",
        "",
        status_line(rows),
        "",
        "| method | n | linear top-1 | kNN top-1 | pre-training s / run |",
        "|---|---|---|---|---|",
    ]
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in by_method.items():
        def stat(key):
            vals = [r[key] for r in rs]
            if len(vals) == 1:
                return f"{vals[0]:.2f}"
            return f"{statistics.mean(vals):.2f} +- {statistics.stdev(vals):.2f}"
        t = statistics.mean(r["train_time_s"] for r in rs)
        lines.append(f"| {method} | {len(rs)} | {stat('linear_probe_top1')} | "
                     f"{stat('knn_top1')} | {t:.0f} |")
    lines.append("")
    lines.append("Per run: " + ", ".join(
        f"{r['method']} seed {r['seed']}: {r['linear_probe_top1']:.2f} / {r['knn_top1']:.2f}"
        for r in rows) + ".")
    notes = kept_notes(path)
    if notes:
        lines += [""] + notes
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    del argv
    import logging
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ssljax").setLevel(logging.INFO)
    from ssljax import train
    os.makedirs(_WORKDIR.value, exist_ok=True)
    jsonl = os.path.join(_WORKDIR.value, "results.jsonl")
    steps = _STEPS.value
    for seed in (int(s) for s in _SEEDS.value):  # seed-major: partial runs cover every method
        for method in _METHODS.value:
            if (method, seed, steps) in done_runs(jsonl) or _REPORT_ONLY.value:
                continue
            cfg = load_config(method)
            cfg.seed = seed
            cfg.total_steps = steps
            cfg.eval.baselines = False
            cfg.eval.train_examples = _TRAIN_EXAMPLES.value
            cfg.checkpoint_every = 10 * steps  # only the final checkpoint
            workdir = os.path.join(_WORKDIR.value, f"{method}_s{seed}_{steps}")
            results = train.train_and_evaluate(cfg, workdir)
            row = dict(method=method, seed=seed, steps=steps,
                       linear_probe_top1=results["linear_probe_top1"],
                       knn_top1=results["knn_top1"], train_time_s=results["train_time_s"])
            with open(jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)
    rows = [r for (m, s, n), r in sorted(done_runs(jsonl).items(),
                                          key=lambda kv: (_METHODS.value.index(kv[0][0])
                                                          if kv[0][0] in _METHODS.value else 99,
                                                          kv[0][1]))
            if n == steps]
    write_report(rows, steps, _REPORT.value)
    print(open(_REPORT.value).read())


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/ssljax/xla"))
    app.run(main)
