"""Is the benchmark's linear probe converged on real features? Compare it with scikit-learn.

  python experiments/benchmark/probe_check.py --methods simclr corinfomax barlow_twins

For each finished benchmark run (runs/benchmark/<suite>/<method>_s<seed>), restores the last
checkpoint, extracts the frozen features the benchmark's probes saw, and scores them with
(a) the benchmark's probe (ssljax.evaluate.linear_probe: AdamW lr 1e-2, 30 epochs, on
standardised features) and (b) scikit-learn's multinomial LogisticRegression (L-BFGS to
convergence, on the same standardised features, a small L2 penalty), raw pixels too. One
line per feature set: if (b) were well above (a), the probe would under-read those features.
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

from ssljax import benchmark, checkpoint, data, evaluate, methods, sharding, train  # noqa: E402


def restore(suite, method_name, seed, workroot):
    """``(method, train_state, info, mesh)`` of a finished benchmark run's last checkpoint."""
    config = benchmark.load_config(suite, method_name, seed)
    info = data.dataset_info(config.data.name)
    mesh = sharding.make_mesh(1)
    method = methods.get_method(config.method)(config, num_classes=info.num_classes)
    images, labels = data.load_arrays(config.data.name, info.train_split)
    ds = data.make_pretrain_dataset(
        images, labels, global_batch_size=config.batch_size, num_views=config.data.num_views,
        augment=data.augment_configs(config.data), seed=0, image_size=config.data.image_size,
        mean=info.mean, std=info.std, jigsaw=data.jigsaw_config_from(config.data.get("jigsaw")),
        mask=data.mask_config_from(config.data.get("mask")))
    example = data.to_global(next(iter(ds.take(1).as_numpy_iterator())),
                             sharding.batch_sharding(mesh))
    steps = train.build_step(config, method, mesh, total_steps=1, steps_per_epoch=1)
    abstract, shardings = steps.abstract_state(example)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    ckpt = checkpoint.Checkpointer(os.path.join(workroot, suite.name,
                                                f"{method_name}_s{seed}", "checkpoints"))
    ts, _ = ckpt.restore(ckpt.latest_step(), abstract)
    ckpt.close()
    return method, ts, info, mesh


def features(suite, method_name, seed, workroot):
    method, ts, info, mesh = restore(suite, method_name, seed, workroot)
    images, labels = data.load_arrays(method.config.data.name, info.train_split)
    test_images, test_labels = data.load_arrays(method.config.data.name, info.test_split)
    embed = lambda x: method.embed(ts.params, ts.state, x)  # noqa: E731
    kw = dict(mesh=mesh, batch_size=1000, mean=info.mean, std=info.std)
    (tr, ytr) = evaluate.extract_features(embed, images, labels, **kw)
    (te, yte) = evaluate.extract_features(embed, test_images, test_labels, **kw)
    return tr, ytr, te, yte


def compare(name, tr, ytr, te, yte):
    from sklearn.linear_model import LogisticRegression
    t0 = time.time()
    ours = 100 * evaluate.linear_probe(tr, ytr, te, yte, num_classes=10, epochs=30, lr=1e-2,
                                       weight_decay=1e-4, batch_size=1024, seed=0)["top1"]
    t1 = time.time()
    mean, std = tr.mean(0), tr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000, tol=1e-6)
    clf.fit((tr - mean) / std, ytr)
    ref = 100 * clf.score((te - mean) / std, yte)
    print(f"{name:16s} benchmark probe {ours:6.2f}  ({t1 - t0:4.0f}s)   scikit-learn L-BFGS "
          f"{ref:6.2f}  ({time.time() - t1:4.0f}s, {clf.n_iter_[0]} iterations)", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion_mnist")
    p.add_argument("--methods", nargs="+", default=["simclr", "corinfomax"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workroot", default=os.path.join(REPO, "runs", "benchmark"))
    p.add_argument("--raw", action="store_true", help="also raw pixels")
    args = p.parse_args()
    suite = benchmark.SUITES[args.suite]
    if args.raw:
        x, y = data.load_arrays("fashion_mnist", "train")
        xt, yt = data.load_arrays("fashion_mnist", "test")
        f = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
        compare("raw pixels", f(x), np.asarray(y), f(xt), np.asarray(yt))
    for m in args.methods:
        tr, ytr, te, yte = features(suite, m, args.seed, args.workroot)
        compare(m, np.asarray(tr), np.asarray(ytr), np.asarray(te), np.asarray(yte))


if __name__ == "__main__":
    main()
