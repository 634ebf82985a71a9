"""Learned views vs fixed colour spaces on Coloured Fashion-MNIST (InfoMin, Sec. 4).

  python experiments/infomin_views.py --steps=150 --batch=128 [--workdir=runs/infomin_views]

1. View learning (``configs/infomin_views.py``), unsupervised and semi-supervised, for
   ``--steps`` steps each.
2. Contrastive training (``configs/view_contrast.py``) on each frozen view split for
   ``--steps`` steps: raw RGB (R | GB), YDbDr, YCbCr, Lab, the unsupervised and the
   semi-supervised learned views.
3. For every split: the InfoNCE estimate between the two views at the end of training,
   ``I_NCE = log(B) - L_NCE`` (mean of the last 5 logged training batches), and the linear
   probe and kNN top-1 of the concatenated encoder features (the trainer's evaluation,
   fitted on the first ``--train_examples`` training images, scored on the 10,000 test
   images).
4. ``experiments/infomin_views.png``: what the learned views look like.

Coloured Fashion-MNIST (``ssljax.data.coloured``) tints each grayscale image with a random
colour, independent of the label: colour is a nuisance that the two views can share
without sharing anything about the garment. The view learning follows our reading of the
paper (there is no official code): see ``ssljax/methods/view_learning.py``.
"""

import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "configs"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from report_notes import kept_notes  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 150, "Training steps of every stage.")
_BATCH = flags.DEFINE_integer("batch", 128, "Global batch size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 10000, "Images the probes fit on.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/infomin_views", "Runs.")
_REPORT = flags.DEFINE_string("report", "experiments/infomin_views.md", "Markdown report.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "Report the finished runs only; train nothing.")
_PICTURE = flags.DEFINE_string("picture", "experiments/infomin_views.png", "Learned views PNG.")

SPLITS = [("raw RGB (R / GB)", "rgb", None), ("YDbDr (Y / DbDr)", "ydbdr", None),
          ("YCbCr (Y / CbCr)", "ycbcr", None), ("Lab (L / ab)", "lab", None),
          ("learned, unsupervised", "learned", "unsup"),
          ("learned, semi-supervised", "learned", "semi")]


def common(c):
    c.seed = _SEED.value
    c.batch_size = _BATCH.value
    c.total_steps = _STEPS.value
    c.checkpoint_every = 10 * _STEPS.value
    c.log_every = 10
    c.eval.baselines = False
    c.eval.train_examples = _TRAIN_EXAMPLES.value
    return c


def last_nce(workdir, key="i_nce", last=5):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values[-last:]))


def run(name, config, workdir, results):
    from ssljax import train
    if os.path.exists(os.path.join(workdir, "results.json")):
        with open(os.path.join(workdir, "results.json")) as f:
            out = json.load(f)
    elif _REPORT_ONLY.value:
        return
    else:
        out = train.train_and_evaluate(config, workdir)
    out["i_nce"] = last_nce(workdir)
    results[name] = out
    print(name, {k: out[k] for k in ("i_nce", "linear_probe_top1", "knn_top1")}, flush=True)


def draw_views(generators, path):
    """Original, view 1 (one channel) and view 2 (two channels, as red and green) of a few
    test images under each learned generator; each view min-max scaled over the images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssljax import data
    from ssljax.methods.view_learning import load_generator
    from ssljax.models.view_generator import PixelFlow, split_views
    info = data.dataset_info("coloured_fashion_mnist")
    images, _ = data.load_arrays("coloured_fashion_mnist", "test[:6]")
    x = (images / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)
    cols = [("original", images / 255.0)]
    for label, (cfg, workdir) in generators.items():
        g = PixelFlow(channels=3, num_layers=cfg.views.flow_layers, hidden=cfg.views.flow_hidden,
                      volume_preserving=cfg.views.volume_preserving)
        v1, v2 = split_views(g.apply({"params": load_generator(workdir)}, x)[0])
        v1, v2 = np.asarray(v1), np.asarray(v2)
        scale = lambda v: (v - v.min(axis=(0, 1, 2))) / np.ptp(v, axis=(0, 1, 2))  # noqa: E731
        cols.append((f"{label}: view 1", np.repeat(scale(v1), 3, axis=-1)))
        cols.append((f"{label}: view 2", np.concatenate([scale(v2), np.zeros_like(v1)], -1)))
    fig, axes = plt.subplots(len(images), len(cols), figsize=(1.7 * len(cols), 1.7 * len(images)))
    for r in range(len(images)):
        for c, (title, imgs) in enumerate(cols):
            axes[r, c].imshow(np.clip(imgs[r], 0, 1))
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    import logging
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ssljax").setLevel(logging.INFO)
    import infomin_views as views_cfg
    import view_contrast as contrast_cfg

    root = _WORKDIR.value
    results, learned = {}, {}
    for kind, variant in (("unsup", "fashion_mnist"), ("semi", "fashion_mnist_semi")):
        cfg = common(views_cfg.get_config(variant))
        workdir = os.path.join(root, f"learn_{kind}")
        run(f"view learning ({kind})", cfg, workdir, results)
        learned[kind] = (cfg, workdir)
    # The picture first: it needs only the two view-learning runs.
    if all(f"view learning ({k})" in results for k in learned):
        draw_views({"unsupervised": learned["unsup"], "semi-supervised": learned["semi"]},
                   _PICTURE.value)
    for name, space, kind in SPLITS:
        cfg = common(contrast_cfg.get_config(space))
        if kind is not None:
            if f"view learning ({kind})" not in results:
                continue
            cfg.views.generator_dir = learned[kind][1]
        run(name, cfg, os.path.join(root, f"contrast_{space}_{kind or 'fixed'}"), results)

    b = _BATCH.value
    lines = [
        "# Learned views vs colour spaces on Coloured Fashion-MNIST",
        "",
        "InfoMin's view learning (Tian et al., 2020, Sec. 4) in **our reading** (no official"
        " code exists; see `ssljax/methods/view_learning.py`). Coloured Fashion-MNIST tints"
        " every image with a random colour independent of the label (`ssljax.data.coloured`),"
        " so colour is a nuisance the two views of an image can share.",
        "",
        f"Budget: every stage {_STEPS.value} steps of batch {b} (AdamW lr 1e-3), two ResNet-18"
        " encoders of width 8 (one per view), crops and flips only, seed"
        f" {_SEED.value}. `I_NCE = log({b}) - L_NCE` is the InfoNCE estimate between the two"
        " views at the end of training (mean over the last 5 logged training batches; at most"
        f" log({b}) = {math.log(b):.2f} nats). Linear probe (AdamW, 30 epochs) and kNN (k 200)"
        f" top-1 (%) on concatenated features of both encoders, fitted on the first"
        f" {_TRAIN_EXAMPLES.value} training images, scored on the 10,000 test images. Measured"
        " on a shared 2-core CPU.",
        "",
        "Command:",
        "",
        "```",
        f"python experiments/infomin_views.py --steps={_STEPS.value} --batch={b}"
        f" --seed={_SEED.value} --train_examples={_TRAIN_EXAMPLES.value}",
        "```",
        "",
        "| views | I_NCE (nats) | linear top-1 | kNN top-1 |",
        "|---|---|---|---|",
    ]
    for name, _, _ in SPLITS:
        if name not in results:
            lines.append(f"| {name} | not finished yet | | |")
            continue
        r = results[name]
        lines.append(f"| {name} | {r['i_nce']:.2f} | {r['linear_probe_top1']:.2f} | "
                     f"{r['knn_top1']:.2f} |")
    lines += ["", "The view-learning runs themselves (the generator against the two encoders;"
              " features of both encoders on the learned views):", "",
              "| view learning | I_NCE at the end (nats) | linear top-1 | kNN top-1 |",
              "|---|---|---|---|"]
    for kind in ("unsup", "semi"):
        if f"view learning ({kind})" not in results:
            lines.append(f"| {kind} | not finished yet | | |")
            continue
        r = results[f"view learning ({kind})"]
        lines.append(f"| {kind} | {r['i_nce']:.2f} | {r['linear_probe_top1']:.2f} | "
                     f"{r['knn_top1']:.2f} |")
    lines += ["", f"What the learned views look like: `{_PICTURE.value}` (view 1 in gray, view 2's"
              " two channels as red and green, each min-max scaled)."]
    notes = kept_notes(_REPORT.value)
    if notes:
        lines += [""] + notes
    with open(_REPORT.value, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/ssljax/xla"))
    app.run(main)
