"""MRCL's two claims on Fashion-MNIST: does masking help, does reconstruction help on top?

  python experiments/mrcl_fashion_mnist.py --out=experiments/mrcl_fashion_mnist \
      [--steps=150 --batch=128 --seeds=0,1,2 --variants=simclr,masking_only,...]

Four variants of ``configs/mrcl.py:fashion_mnist`` (ResNet-18, width 16), identical except
for the two ablation switches, each pre-trained for the same number of steps at the same
batch size with seeds 0, 1, 2, then scored by the trainer's evaluators (linear probe, kNN)
and the segmentation probe (mIoU):

  simclr               mask ratio 0, lambda 0 (plain SimCLR)
  masking_only         mask ratio 0.5, lambda 0
  reconstruction_only  mask ratio 0, lambda 1 (reconstruct every patch)
  mrcl                 mask ratio 0.5, lambda 1 (reconstruct the masked patches)

Writes ``<out>/results.jsonl`` (one row per run, appended, runs already there are skipped),
``<out>.md``-ready table on stdout, and ``<out>/reconstructions.png`` (masked inputs and
reconstructions of the MRCL seed-0 encoder on test images).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import mrcl as mrcl_config  # noqa: E402
from ssljax import checkpoint, data, methods, sharding, train  # noqa: E402

_OUT = flags.DEFINE_string("out", "experiments/mrcl_fashion_mnist", "Output directory.")
_RUNS = flags.DEFINE_string("runs", "runs/mrcl_experiment", "Work directories of the runs.")
_STEPS = flags.DEFINE_integer("steps", 150, "Pre-training steps of every run.")
_BATCH = flags.DEFINE_integer("batch", 128, "Global batch size of every run.")
_SEEDS = flags.DEFINE_list("seeds", "0,1,2", "Seeds.")
_VARIANTS = flags.DEFINE_list("variants", "simclr,masking_only,reconstruction_only,mrcl",
                              "Variants, in this order.")
_PROBE_EXAMPLES = flags.DEFINE_integer("probe_examples", 10000,
                                       "Training examples of the linear / kNN probes.")
_SEG_EXAMPLES = flags.DEFINE_integer("seg_examples", 5000,
                                     "Training examples of the segmentation probe.")

MODIFIER = {"simclr": ",simclr", "masking_only": ",masking_only",
            "reconstruction_only": ",reconstruction_only", "mrcl": ""}


def run_config(variant: str, seed: int):
    c = mrcl_config.get_config("fashion_mnist" + MODIFIER[variant])
    c.seed = seed
    c.batch_size = _BATCH.value
    c.total_steps = _STEPS.value
    c.optimizer.warmup_epochs = 0.05
    c.log_every = 25
    c.checkpoint_every = _STEPS.value
    c.eval.baselines = False
    c.eval.train_examples = _PROBE_EXAMPLES.value
    c.eval.segmentation = True
    c.eval.segmentation_train_examples = _SEG_EXAMPLES.value
    return c


def save_reconstructions(config, workdir: str, path: str, num: int = 8) -> None:
    """Test images, their masked inputs and the decoder's reconstructions, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    info = data.dataset_info(config.data.name)
    images, labels = data.load_arrays(config.data.name, info.test_split)
    mesh = sharding.make_mesh(1)
    method = methods.get_method(config.method)(config, num_classes=info.num_classes)
    steps = train.build_step(config, method, mesh, total_steps=config.total_steps,
                             steps_per_epoch=100)
    x = next(data.make_eval_batches(images[:num], labels[:num], batch_size=num, mean=info.mean,
                                    std=info.std))["image"]
    mask_cfg = data.mask_config_from(config.data.mask)
    masks = data.masking.sample_masks(tf.constant([1234, 0], tf.int64), num, 2,
                                      config.data.image_size, mask_cfg).numpy()
    batch = {"views": np.stack([x, x], axis=1), "masks": masks,
             "label": np.zeros(num, np.int32)}
    abstract, state_sharding = steps.abstract_state(jax.device_put(batch))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sharding)
    ts, _ = ckpt.restore(ckpt.latest_step(), abstract)
    ckpt.close()
    (_, _, recon), _ = method.forward(ts.params, ts.state, batch, train=False)
    p = config.data.mask.patch_size
    pixel_masks = masks[:, 0].repeat(p, 1).repeat(p, 2)
    std, mean = np.asarray(info.std), np.asarray(info.mean)
    # Targets are per-patch normalised: show the prediction with each patch's own statistics
    # restored from the original image, as MAE's visualisation does.
    from ssljax.losses import patchify, unpatchify
    orig = patchify(x, p)
    mu, sd = orig.mean(-1, keepdims=True), orig.std(-1, ddof=1, keepdims=True)
    pred = np.asarray(unpatchify(patchify(recon[0], p) * np.sqrt(sd ** 2 + 1e-6) + mu, p))
    # The encoder's input: masked pixels are 0 after normalisation, i.e. the mean colour.
    rows = [("original", x[..., 0]), ("masked input", np.where(pixel_masks, 0.0, x[..., 0])),
            ("reconstruction", pred[..., 0]),
            ("visible + reconstructed", np.where(pixel_masks, pred[..., 0], x[..., 0]))]
    fig, axes = plt.subplots(len(rows), num, figsize=(1.3 * num, 1.4 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for i in range(num):
            ax = axes[r, i]
            ax.imshow(imgs[i] * std[0] + mean[0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"MRCL (ResNet-18 w16, {config.total_steps} steps): mask ratio "
                 f"{config.data.mask.ratio}, {p}x{p} patches; Fashion-MNIST test images", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import logging as pylogging
    # The trainer's progress lines on stderr (absl owns the root logger), as ssljax.main does.
    handler = pylogging.StreamHandler()
    handler.setFormatter(pylogging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ssljax_logger = pylogging.getLogger("ssljax")
    ssljax_logger.addHandler(handler)
    ssljax_logger.setLevel(pylogging.INFO)
    ssljax_logger.propagate = False
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "SSLJAX_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ssljax", "xla")))
    os.makedirs(_OUT.value, exist_ok=True)
    results_path = os.path.join(_OUT.value, "results.jsonl")
    done = set()
    if os.path.exists(results_path):
        with open(results_path) as f:
            done = {(r["variant"], r["seed"]) for r in map(json.loads, f)}
    for seed in map(int, _SEEDS.value):
        for variant in _VARIANTS.value:
            workdir = os.path.join(_RUNS.value, f"{variant}_seed{seed}")
            if (variant, seed) not in done:
                config = run_config(variant, seed)
                results = train.train_and_evaluate(config, workdir)
                row = dict(results, variant=variant, seed=seed, batch=_BATCH.value)
                if results["train_time_s"] > 0:  # 0 when resumed after the last step
                    row["images_per_sec"] = round(
                        _STEPS.value * _BATCH.value / results["train_time_s"], 1)
                with open(results_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
    # The picture comes from the first MRCL run whose checkpoint is on disk (a run listed in
    # results.jsonl by another machine has none here).
    for seed in map(int, _SEEDS.value):
        workdir = os.path.join(_RUNS.value, f"mrcl_seed{seed}")
        if os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
                name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints"))):
            save_reconstructions(run_config("mrcl", seed), workdir,
                                 os.path.join(_OUT.value, "reconstructions.png"))
            break
    else:
        logging.warning("No MRCL checkpoint under %s: reconstructions.png was not redrawn.",
                        _RUNS.value)
    print_table(results_path)


def print_table(path: str) -> None:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    keys = [("linear_probe_top1", "linear top-1"), ("knn_top1", "kNN top-1"),
            ("segmentation_miou", "seg. mIoU")]
    print("| variant | mask ratio | lambda | " + " | ".join(k[1] for k in keys) + " | seeds |")
    print("|---|---|---|" + "---|" * len(keys) + "---|")
    settings = {"simclr": (0, 0), "masking_only": (0.5, 0), "reconstruction_only": (0, 1),
                "mrcl": (0.5, 1)}
    for variant in ("simclr", "masking_only", "reconstruction_only", "mrcl"):
        sel = [r for r in rows if r["variant"] == variant]
        if not sel:
            continue
        cells = []
        for key, _ in keys:
            v = np.array([r[key] for r in sel])
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}")
        ratio, lam = settings[variant]
        print(f"| {variant} | {ratio} | {lam} | " + " | ".join(cells) +
              f" | {','.join(str(r['seed']) for r in sel)} |")


if __name__ == "__main__":
    app.run(main)
