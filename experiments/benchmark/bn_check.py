"""Do a run's stored BatchNorm statistics describe the images the probes see?

  python experiments/benchmark/bn_check.py --methods infomin infomin_no_jigsaw moco_infomin

Evaluation runs the frozen backbone in inference mode, with the running BatchNorm statistics
the training step stored. A method whose training also sends other inputs through the
backbone in train mode (InfoMin's jigsaw patches: 8x8 pixels, against the 28x28 images the
probe embeds) stores statistics of those inputs too. For each finished benchmark run this
restores the last checkpoint and scores its features twice with the benchmark's probes
(linear: AdamW lr 1e-2, 30 epochs; kNN k 200, T 0.1): (a) with the stored statistics, as the
benchmark did, and (b) with statistics recomputed on the un-augmented training images (the
backbone in train mode over every training image in batches of 256, the running averages
chained at the backbone's own momentum, so the last ~50 batches decide them). Weights are the
same in (a) and (b): a large gap says the stored statistics, not the weights, decide the row.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe_check import restore  # noqa: E402

from ssljax import benchmark, data, evaluate, sharding  # noqa: E402


def recomputed_stats(method, ts, images, labels, info, mesh, batch_size=256):
    """The backbone's BatchNorm running statistics after a train-mode pass over ``images``."""
    backbone = method.model.backbone
    params = ts.params["backbone"]

    @jax.jit
    def update(stats, x):
        _, new = backbone.apply({"params": params, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"])
        return new["batch_stats"]

    stats = ts.state["batch_stats"]["backbone"]
    batches = data.make_eval_batches(images, labels, batch_size=batch_size, mean=info.mean,
                                     std=info.std)
    for batch in batches:
        if batch["mask"].min() == 0:  # a padded last batch would bias the statistics
            continue
        stats = update(stats, data.to_global(batch, sharding.batch_sharding(mesh))["image"])
    return dict(ts.state["batch_stats"], backbone=stats)


def score(method, params, state, images, labels, test_images, test_labels, info, mesh):
    embed = lambda x: method.embed(params, state, x)  # noqa: E731
    kw = dict(mesh=mesh, batch_size=1000, mean=info.mean, std=info.std)
    tr, ytr = evaluate.extract_features(embed, images, labels, **kw)
    te, yte = evaluate.extract_features(embed, test_images, test_labels, **kw)
    tr, te = np.asarray(tr), np.asarray(te)
    linear = 100 * evaluate.linear_probe(tr, ytr, te, yte, num_classes=info.num_classes,
                                         epochs=30, lr=1e-2, weight_decay=1e-4,
                                         batch_size=1024, seed=0)["top1"]
    knn = 100 * evaluate.knn_top1(tr, ytr, te, yte, k=200, temperature=0.1,
                                  num_classes=info.num_classes)
    return linear, knn


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion_mnist")
    p.add_argument("--methods", nargs="+", default=["infomin", "moco_infomin"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workroot", default=os.path.join(REPO, "runs", "benchmark"))
    args = p.parse_args()
    suite = benchmark.SUITES[args.suite]
    for m in args.methods:
        t0 = time.time()
        method, ts, info, mesh = restore(suite, m, args.seed, args.workroot)
        name = method.config.data.name
        images, labels = data.load_arrays(name, info.train_split)
        test_images, test_labels = data.load_arrays(name, info.test_split)
        arrays = (images, labels, test_images, test_labels, info, mesh)
        stored = score(method, ts.params, ts.state, *arrays)
        fresh_state = dict(ts.state, batch_stats=recomputed_stats(method, ts, images, labels,
                                                                  info, mesh))
        fresh = score(method, ts.params, fresh_state, *arrays)
        print(f"{m:20s} stored BN statistics: linear {stored[0]:6.2f} kNN {stored[1]:6.2f}   "
              f"recomputed on training images: linear {fresh[0]:6.2f} kNN {fresh[1]:6.2f}   "
              f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
