"""CE vs SupCon vs SelfCon-S vs SelfCon-M on Fashion-MNIST: same backbone, same budget, seeds.

  python experiments/selfcon_fashion_mnist.py            # the committed table (~1.5 h on 2 cores)
  python experiments/selfcon_fashion_mnist.py --tiny     # a one-minute check of the script

Every method pre-trains the same network (configs/<method>.py:fashion_mnist: ResNet-18 width
16, stride-2 stem, SGD momentum 0.9, cosine) for the same number of steps at the same batch
size, for each seed; then the trainer's offline evaluation (linear probe and kNN on frozen
backbone features; for SelfCon also on the sub-network features and the ensemble of the two
linear probes) is read from each run's results.json. The step cost is measured separately:
the compiled train step alone on one fixed batch already on the device (after warm-up, median
of repeats), in images per second (an image with all its views counts once).

Runs are kept in --workdir; a run whose results.json exists is not repeated, so the same
command continues an interrupted table. The table is written to --out (Markdown).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssljax import data, methods, sharding, train  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_notes import kept_notes  # noqa: E402

log = logging.getLogger("selfcon_fmnist")

# name -> (config file, overrides)
METHODS = {
    "CE": ("ce", {}),
    "SupCon": ("supcon", {}),
    "SelfCon-S": ("selfcon", {}),
    "SelfCon-M": ("selfcon", {"selfcon.multiview": True, "data.num_views": 2}),
}


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}",
                                                  os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("fashion_mnist")


def set_fields(c, overrides: dict):
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def make_config(method: str, args, seed: int):
    file, overrides = METHODS[method]
    c = set_fields(load_config(file), overrides)
    c.seed = seed
    c.batch_size = args.batch
    c.total_steps = args.steps
    c.checkpoint_every = args.steps
    c.log_every = max(args.steps // 10, 1)
    c.eval.baselines = False
    # Warm-up as a share of the budget (the config's 0.1 epoch would be most of a short run).
    num_train = args.train_examples if args.tiny else 60000
    c.optimizer.warmup_epochs = args.warmup * args.steps / (num_train // args.batch)
    c.eval.train_examples = args.eval_train_examples
    if args.tiny:
        set_fields(c, {"data.train_split": f"train[:{args.train_examples}]",
                       "data.test_split": "test[:512]",
                       "model.width": 4, "eval.linear_epochs": 2, "eval.knn_k": 5})
    return c


def measure_step_speed(configs: dict, repeats: int, steps: int) -> dict[str, float]:
    """Images/s of each method's compiled train step alone, on one fixed batch on the device.

    All steps are compiled and warmed up first; then the timed repeats alternate between the
    methods, so a change of load on a shared machine hits every method alike. Median of
    ``repeats`` repeats of ``steps`` steps each.
    """
    mesh = sharding.make_mesh()
    runners = {}
    for name, config in configs.items():
        info = data.dataset_info(config.data.name)
        images, labels = data.load_arrays(config.data.name, "train[:4096]",
                                          data_dir=config.data.data_dir)
        ds = data.make_pretrain_dataset(
            images, labels, global_batch_size=config.batch_size,
            num_views=config.data.num_views, augment=train.augment_configs(config.data), seed=0,
            image_size=config.data.image_size, mean=info.mean, std=info.std)
        batch = data.to_global(next(iter(ds.as_numpy_iterator())), sharding.batch_sharding(mesh))
        method = methods.get_method(config.method)(config, num_classes=info.num_classes)
        compiled = train.build_step(config, method, mesh, total_steps=10_000,
                                    steps_per_epoch=100)
        ts = compiled.init(train.init_key(0), batch)
        for _ in range(2):  # compile and warm up
            ts, metrics = compiled.train_step(ts, batch, jax.random.key(1))
        jax.block_until_ready(metrics)
        runners[name] = [compiled.train_step, ts, batch, []]
    for _ in range(repeats):
        for name, runner in runners.items():
            step, ts, batch, times = runner
            t0 = time.perf_counter()
            for _ in range(steps):
                ts, metrics = step(ts, batch, jax.random.key(1))
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - t0) / steps)
            runner[1] = ts
    return {name: configs[name].batch_size / statistics.median(runner[3])
            for name, runner in runners.items()}


def mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def write_table(args, runs: dict, speed: dict, command: str) -> str:
    c = make_config("SelfCon-S", args, args.seeds[0])
    o = c.optimizer
    data_note = (f"the first {args.train_examples} training images" if args.tiny
                 else "the 60,000 training images")
    probe_data = (f"the first {args.eval_train_examples:,} training images"
                  if args.eval_train_examples > 0 else "the 60,000 training images")
    probe_data += (" and 512 test images" if args.tiny else " and the 10,000 test images")
    lines = [
        "# CE vs SupCon vs SelfCon-S vs SelfCon-M on Fashion-MNIST",
        "",
        f"Regenerate with: `{command}`",
        "",
        f"Budget, the same for every method: {args.steps} steps at batch {args.batch} "
        f"({args.steps * args.batch / 60000:.2f} epochs of {data_note}), "
        f"{c.model.name} width {c.model.width} with a stride-{c.model.stem_stride} 3x3 stem on "
        f"{c.data.image_size}x{c.data.image_size} images, SGD (momentum {o.momentum}, "
        f"lr {o.lr}, wd {o.weight_decay}, linear warm-up over the first "
        f"{round(args.warmup * args.steps)} steps, then cosine to {o.final_lr_ratio} x lr), "
        f"T = {c.loss.temperature}, sub-network exit after stage "
        f"{', '.join(map(str, c.model.exits))} (kind `{c.model.exit_kind}`), heads "
        f"Linear-ReLU-Linear to {c.projector.out_dim}. "
        f"Seeds {', '.join(map(str, args.seeds))} (initialisation, data order, augmentations, "
        "probe). CE trains a linear classifier with the backbone on crop + flip augmentation "
        "(its official recipe); the contrastive methods add brightness / contrast jitter. "
        f"Evaluation: the trainer's linear probe (AdamW, {c.eval.linear_epochs} epochs, "
        f"standardised features) and kNN (k = {c.eval.knn_k}) on frozen features "
        f"({probe_data}); top-1 in %, "
        "mean ± sample standard deviation over the seeds, per-seed values in brackets.",
        "",
        "| method | views | seeds | linear probe (backbone) | kNN (backbone) "
        "| sub-network probe | ensemble probe | step images/s | step time vs SupCon "
        "| trainer images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.methods:
        rs = [runs[name][s] for s in args.seeds if s in runs[name]]
        views = METHODS[name][1].get("data.num_views", 2 if name == "SupCon" else 1)

        def col(key):
            vals = [r[key] for r in rs if key in r]
            if not vals:
                return "-"
            return f"{mean_spread(vals)} [{', '.join(f'{v:.2f}' for v in vals)}]"

        rate = speed.get(name)
        rel = (f"{speed['SupCon'] / rate:.2f}x" if rate and speed.get("SupCon") else "-")
        trainer = [r["trainer_images_per_sec"] for r in rs if "trainer_images_per_sec" in r]
        lines.append(
            f"| {name} | {views} | {len(rs)} | {col('linear_probe_top1')} | {col('knn_top1')} | "
            f"{col('subnet_linear_probe_top1')} | {col('ensemble_linear_probe_top1')} | "
            f"{f'{rate:.0f}' if rate else '-'} | {rel} | "
            f"{f'{np.median(trainer):.0f}' if trainer else '-'} |")
    lines += [
        "",
        "*Step images/s*: the compiled train step alone (forward, backward, optimizer and online "
        "probe), on one fixed batch already on the device, after two warm-up steps, median of "
        f"{args.repeats} repeats of {args.bench_steps} steps; an image counts once whatever its "
        "number of views. *Step time vs SupCon*: SupCon's images/s over the method's, i.e. "
        "the method's step time in units of SupCon's. *Trainer images/s*: what the trainer "
        "logged at the end of each run (input pipeline included; median over seeds).",
        "",
        f"Measured on {platform.node() or 'this machine'} ({os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, {jax.devices()[0].platform}). Timings depend on what else"
        " the machine runs; accuracies do not.",
    ]
    return "\n".join(lines) + "\n"


def save(path: str, table: str) -> None:
    """Write the table, keeping a hand-written ``## Notes`` section of an earlier file."""
    notes = kept_notes(path)
    with open(path, "w") as f:
        f.write(table + ("\n" + "\n".join(notes) + "\n" if notes else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "selfcon_fmnist"))
    parser.add_argument("--out", default=os.path.join(REPO, "experiments",
                                                      "selfcon_fashion_mnist.md"))
    parser.add_argument("--warmup", type=float, default=0.1,
                        help="linear warm-up over this fraction of the steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bench-steps", type=int, default=5)
    parser.add_argument("--tiny", action="store_true",
                        help="a quick check of the script: --train-examples images, width 4")
    parser.add_argument("--train-examples", type=int, default=1024, help="with --tiny")
    parser.add_argument("--eval-train-examples", type=int, default=-1,
                        help="train the probes on the first N training images (-1: all)")
    args = parser.parse_args()
    command = (f"python experiments/selfcon_fashion_mnist.py --steps {args.steps} "
               f"--batch {args.batch} --seeds {' '.join(map(str, args.seeds))}"
               + (f" --methods {' '.join(args.methods)}" if args.methods != list(METHODS) else "")
               + (f" --warmup {args.warmup}" if args.warmup != 0.1 else "")
               + (f" --eval-train-examples {args.eval_train_examples}"
                  if args.eval_train_examples > 0 else "")
               + (" --tiny" if args.tiny else ""))

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    for name in ("ssljax", "selfcon_fmnist"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    os.makedirs(args.workdir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
    data.configure_tf(1)

    runs = {name: {} for name in args.methods}
    speed_file = os.path.join(args.workdir, "step_speed.json")
    speed = json.load(open(speed_file)) if os.path.exists(speed_file) else {}
    if set(args.methods) - set(speed):
        log.info("Timing the train steps (interleaved, %d x %d steps each)", args.repeats,
                 args.bench_steps)
        speed = measure_step_speed({name: make_config(name, args, args.seeds[0])
                                    for name in args.methods}, args.repeats, args.bench_steps)
        log.info("Train step alone: %s", ", ".join(f"{k} {v:.0f} images/s"
                                                    for k, v in speed.items()))
        with open(speed_file, "w") as f:
            json.dump(speed, f, indent=2)
    # Seed-major: an interrupted table has every method at the seeds done so far.
    for seed in args.seeds:
        for name in args.methods:
            workdir = os.path.join(args.workdir, f"{name}_seed{seed}")
            results_file = os.path.join(workdir, "results.json")
            if not os.path.exists(results_file):
                log.info("=== %s, seed %d -> %s", name, seed, workdir)
                train.train_and_evaluate(make_config(name, args, seed), workdir)
            result = json.load(open(results_file))
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f]
            rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
            if rates:
                result["trainer_images_per_sec"] = rates[-1]
            runs[name][seed] = result
            table = write_table(args, runs, speed, command)
            save(args.out, table)  # rewritten after each run: partial tables survive
    print(table)


if __name__ == "__main__":
    main()
