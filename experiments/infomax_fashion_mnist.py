"""Barlow Twins, VICReg, CorInfoMax and MetaMask on Fashion-MNIST under one budget.

Each method pre-trains from its own ``fashion_mnist`` config (same backbone: ResNet-18 width
16, stride-2 3x3 stem) for the same number of steps at the same batch size and seeds, then is
scored by the same evaluation (linear probe, kNN, effective rank of the test embeddings).
Runs already finished in ``--workdir`` are reused, so an interrupted table resumes.

  python experiments/infomax_fashion_mnist.py --steps 150 --batch 128 --seeds 0 1 2 \
      --out experiments/infomax_fashion_mnist.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("barlow_twins", "vicreg", "corinfomax", "metamask")


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("fashion_mnist")


def run_one(method: str, seed: int, args) -> dict:
    from ssljax import train

    workdir = os.path.join(args.workdir, f"{method}_s{seed}")
    done = os.path.join(workdir, "results.json")
    if os.path.exists(done):
        with open(done) as f:
            return dict(json.load(f), images_per_sec=_images_per_sec(workdir))
    c = load_config(method)
    c.seed = seed
    c.batch_size = args.batch
    c.total_steps = args.steps
    c.log_every = max(args.steps // 5, 1)
    c.checkpoint_every = args.steps
    c.optimizer.warmup_epochs = 0.1 * args.steps * args.batch / 60000
    # The budget is a fraction of an epoch: a schedule stepped once per epoch (MetaMask's
    # official recipe) would hold the warm-up's first value for the whole run.
    c.optimizer.step_per_epoch = False
    # The random encoder of the same config (and raw pixels), scored once per method, so the
    # table shows what pre-training bought under this budget.
    c.eval.baselines = seed == args.seeds[0]
    c.eval.train_examples = args.eval_train_examples
    os.makedirs(workdir, exist_ok=True)
    return dict(train.train_and_evaluate(c, workdir), images_per_sec=_images_per_sec(workdir))


def _images_per_sec(workdir: str) -> float:
    """The trainer's last logged throughput (examples/s after the compiling first step)."""
    rate = float("nan")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rate = json.loads(line).get("images_per_sec", rate)
    return rate


def _random_encoder(r: dict) -> str:
    if "random_encoder_linear_probe_top1" not in r:
        return "n/a"
    return (f"{r['random_encoder_linear_probe_top1']:.2f} / {r['random_encoder_knn_top1']:.2f} / "
            f"{r['random_encoder_effective_rank']:.1f}")


def mean_spread(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-train-examples", type=int, default=10000)
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "infomax_fashion_mnist"))
    p.add_argument("--out", default=os.path.join(REPO, "experiments", "infomax_fashion_mnist.md"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ssljax").setLevel(logging.INFO)

    results = {m: [] for m in args.methods}
    for seed in args.seeds:
        for m in args.methods:
            t0 = time.time()
            r = run_one(m, seed, args)
            results[m].append(r)
            logging.info("%s seed %d: %s (%.0fs)", m, seed,
                         {k: r.get(k) for k in ("linear_probe_top1", "knn_top1", "effective_rank")},
                         time.time() - t0)

    import jax
    lines = [
        "# Redundancy reduction and information maximisation on Fashion-MNIST",
        "",
        "Produced by:",
        "",
        "    python experiments/infomax_fashion_mnist.py " + " ".join(sys.argv[1:]),
        "",
        f"jax {jax.__version__}, CPU, 2 cores shared with other work (times are inflated and only "
        "comparable within this table). Same budget for every method: "
        f"{args.steps} steps at batch {args.batch} ({args.steps * args.batch:,} examples, two "
        "views each), same seeds "
        f"({', '.join(map(str, args.seeds))}), each method's `fashion_mnist` config otherwise "
        "(ResNet-18 width 16, stride-2 3x3 stem; 128-d backbone features). Evaluation on the "
        f"frozen backbone: linear probe and kNN trained on the first {args.eval_train_examples:,} "
        "training images, scored on the 10,000 test images; effective rank (Roy & Vetterli) of "
        "the test embeddings, out of 128. Mean ± standard deviation over seeds.",
        "",
        "| method | linear top-1 (%) | kNN top-1 (%) | kNN protocol | effective rank "
        "| examples/s (step) | random encoder: linear / kNN / rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in args.methods:
        rs = results[m]
        ev = load_config(m).eval
        lines.append(f"| {m} | {mean_spread([r['linear_probe_top1'] for r in rs])} | "
                     f"{mean_spread([r['knn_top1'] for r in rs])} | "
                     f"k {ev.knn_k}, T {ev.knn_temperature:g} | "
                     f"{mean_spread([r['effective_rank'] for r in rs])} | "
                     f"{np.mean([r['images_per_sec'] for r in rs]):.0f} | "
                     f"{_random_encoder(rs[0])} |")
    # Raw pixels under each kNN protocol in the table (the linear probe is the same for all).
    raw = {}
    for m in args.methods:
        r, ev = results[m][0], load_config(m).eval
        if "raw_pixels_linear_probe_top1" in r:
            raw.setdefault("linear", r["raw_pixels_linear_probe_top1"])
            raw[f"kNN (k {ev.knn_k}, T {ev.knn_temperature:g})"] = r["raw_pixels_knn_top1"]
    if raw:
        lines += ["", "Raw pixels, same probes: " + ", ".join(f"{k} {v:.2f}" for k, v in raw.items())
                  + f". The random-encoder column is the method's own config at initialisation "
                  f"(seed {args.seeds[0]} + 1), scored by the same probes. The linear probe is "
                  "the same for every method; the kNN follows each config (MetaMask's is its "
                  "paper's: k 5, T 1 on the masked features), so compare kNN figures within a "
                  "protocol."]
    lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
