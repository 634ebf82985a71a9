"""Learning floors (issue 21, item 2): a short run of each method must learn.

DRAFT: calibration in progress.
"""

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import data, evaluate, methods, sharding, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import load_config, set_fields  # noqa: E402

TRAIN_SPLIT = "train[:2048]"  # pre-training images; the first KNN_MEMORY are the kNN memory
TEST_SPLIT = "test[:512]"  # held out: kNN queries; the first RETRIEVAL_M are retrieval pairs
KNN_MEMORY = 2048
RETRIEVAL_M = 256
IMAGE_SIZE = 16
BATCH = 64
STEPS = 150
EVAL_SEED = 1234  # the held-out augmentations
KNN_K = 20
EVAL_BATCH = 512

# The method's fashion_mnist recipe, shrunk: width 8, 16x16 images, stride-1 stem, a small
# projector, plain Adam at a constant lr with no warm-up (it learns in few steps).
COMMON = {
    "data.image_size": IMAGE_SIZE, "model.width": 8, "model.stem_stride": 1,
    "batch_size": BATCH, "total_steps": STEPS,
    "optimizer.name": "adam", "optimizer.lr": 1e-2, "optimizer.lr_scaling": "none",
    "optimizer.weight_decay": 0.0, "optimizer.warmup_epochs": 0.0,
    "optimizer.warmup_init": 0.0, "optimizer.final_lr_ratio": 1.0,
    "optimizer.step_per_epoch": False, "eval.online_probe": False,
}
PER_METHOD = {
    "simclr": {"projector.hidden_dims": (128,), "projector.out_dim": 64},
    "byol": {"projector.hidden_dims": (128,), "projector.out_dim": 64,
             "predictor.hidden_dims": (128,), "predictor.out_dim": 64, "optimizer.lr": 3e-3},
    "barlow_twins": {"projector.hidden_dims": (256,), "projector.out_dim": 256,
                     "optimizer.lr": 3e-3},
    "vicreg": {"projector.hidden_dims": (256,), "projector.out_dim": 256},
    "corinfomax": {"projector.hidden_dims": (128,), "projector.out_dim": 32},
    "moco": {"projector.hidden_dims": (128,), "projector.out_dim": 64,
             "moco.queue_size": 512, "optimizer.lr": 3e-3},
    "supcon": {"projector.hidden_dims": (128,), "projector.out_dim": 64},
}
METHODS = tuple(PER_METHOD)


def method_config(name, **overrides):
    c = load_config(name)
    set_fields(c, COMMON)
    set_fields(c, PER_METHOD[name])
    return set_fields(c, overrides)


@functools.cache
def fashion():
    """(train images, train labels, test images, test labels), uint8 / int."""
    tr_x, tr_y = data.load_arrays("fashion_mnist", TRAIN_SPLIT)
    te_x, te_y = data.load_arrays("fashion_mnist", TEST_SPLIT)
    return np.asarray(tr_x), np.asarray(tr_y), np.asarray(te_x), np.asarray(te_y)


@functools.cache
def retrieval_views():
    """Two fixed augmentations of each of the first RETRIEVAL_M test images, [M, 2, S, S, 1]:
    SimCLR's Fashion-MNIST augmentation (the same for every method), seed EVAL_SEED."""
    _, _, te_x, te_y = fashion()
    info = data.dataset_info("fashion_mnist")
    cfg = load_config("simclr")
    cfg.data.image_size = IMAGE_SIZE
    ds = data.make_pretrain_dataset(
        te_x[:RETRIEVAL_M], te_y[:RETRIEVAL_M], global_batch_size=RETRIEVAL_M, num_views=2,
        augment=train.augment_configs(cfg.data), seed=EVAL_SEED, image_size=IMAGE_SIZE,
        mean=info.mean, std=info.std)
    return next(iter(ds.take(1).as_numpy_iterator()))["views"]


def train_batches(cfg, seed):
    info = data.dataset_info("fashion_mnist")
    tr_x, tr_y, _, _ = fashion()
    ds = data.make_pretrain_dataset(
        tr_x, tr_y, global_batch_size=cfg.batch_size, num_views=cfg.data.num_views,
        augment=train.augment_configs(cfg.data), seed=seed, image_size=IMAGE_SIZE,
        mean=info.mean, std=info.std)
    return ds.take(cfg.total_steps).as_numpy_iterator()


@functools.cache
def eval_images():
    """The kNN memory, the kNN queries and the retrieval pairs as one normalised float32 array
    ``[KNN_MEMORY + N_test + 2 M, S, S, 1]`` (the evaluation pipeline's resize to S), plus
    the memory and query labels."""
    info = data.dataset_info("fashion_mnist")
    tr_x, tr_y, te_x, te_y = fashion()
    plain = []
    for x, y in ((tr_x[:KNN_MEMORY], tr_y[:KNN_MEMORY]), (te_x, te_y)):
        plain += [b["image"][b["mask"] > 0] for b in data.make_eval_batches(
            x, y, batch_size=EVAL_BATCH, mean=info.mean, std=info.std, image_size=IMAGE_SIZE)]
    views = retrieval_views()
    images = np.concatenate(plain + [views[:, 0], views[:, 1]])
    pad = -len(images) % EVAL_BATCH
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    return images, tr_y[:KNN_MEMORY], te_y


def scores(embed, params, state):
    """{'retrieval', 'knn', 'rank'} of the backbone features (eval mode); ``embed`` is the
    jitted ``method.embed``."""
    images, mem_y, query_y = eval_images()
    f = np.concatenate([np.asarray(embed(params, state, images[i:i + EVAL_BATCH]), np.float64)
                        for i in range(0, len(images), EVAL_BATCH)])
    if not np.all(np.isfinite(f)):
        return {"retrieval": 0.0, "knn": 0.0, "rank": 0.0}
    mem, n = len(mem_y), len(query_y)
    mem_f, query_f = f[:mem], f[mem:mem + n]
    pairs = f[mem + n:mem + n + 2 * RETRIEVAL_M]
    knn = evaluate.knn_top1(mem_f, mem_y, query_f, query_y, k=KNN_K, temperature=0.1,
                            num_classes=10)
    pairs = pairs / np.maximum(np.linalg.norm(pairs, axis=1, keepdims=True), 1e-12)
    sim = pairs[:RETRIEVAL_M] @ pairs[RETRIEVAL_M:].T
    hits = np.arange(RETRIEVAL_M)
    retrieval = 0.5 * (np.mean(sim.argmax(1) == hits) + np.mean(sim.argmax(0) == hits))
    return {"retrieval": float(retrieval), "knn": float(knn),
            "rank": float(evaluate.effective_rank(query_f))}


def run(name, seed=0, *, steps=STEPS, control=None, report_every=0, **overrides):
    """Pre-trains ``name`` from ``seed`` for ``steps`` steps on one device.

    Returns ``(random encoder scores, trained scores)``: the same initialisation scored
    before the first step and after the last. ``control``: 'mispaired' rolls the second
    view by one along the batch before every step (each positive pair is two different
    images); 'negated_lr' trains with ``-lr`` (gradient ascent on the objective).
    """
    cfg = method_config(name, total_steps=steps, **overrides)
    if control == "negated_lr":
        cfg.optimizer.lr = -cfg.optimizer.lr
    method = methods.get_method(name)(cfg, num_classes=10)
    mesh = sharding.make_mesh(1)
    compiled = train.build_step(cfg, method, mesh, total_steps=steps,
                                steps_per_epoch=len(fashion()[0]) // cfg.batch_size)
    bs = sharding.batch_sharding(mesh)
    batches = list(train_batches(cfg, seed))
    if control == "mispaired":
        for b in batches:
            v = b["views"]
            b["views"] = np.concatenate([v[:, :1], np.roll(v[:, 1:], 1, axis=0)], axis=1)
    ts = compiled.init(train.init_key(seed), data.to_global(batches[0], bs))
    embed = jax.jit(method.embed)
    before = scores(embed, ts.params, ts.state)
    rng = jax.random.fold_in(jax.random.key(seed), 1)
    for i, batch in enumerate(batches):
        ts, _ = compiled.train_step(ts, data.to_global(batch, bs), rng)
        if report_every and (i + 1) % report_every == 0 and i + 1 < steps:
            print(f"  step {i + 1}", rounded(scores(embed, ts.params, ts.state)), flush=True)
    return before, scores(embed, ts.params, ts.state)


def rounded(d):
    return {k: round(v, 3) for k, v in d.items()}


# ---- Floors (calibrated; see the module docstring) -------------------------------------------

# Per method: the margin by which the trained run must beat the random encoder (same
# initialisation, zero steps) on each metric that separates (half the median gain over 5
# seeds; None: the metric does not separate in this budget and is not checked), and the
# effective-rank floor of the trained test features (half the median trained rank).
FLOORS = {name: {"retrieval": None, "knn": None, "rank": 0.0} for name in METHODS}
SEED = 0
CONTROLS = (("simclr", "mispaired"), ("simclr", "negated_lr"),
            ("vicreg", "mispaired"), ("vicreg", "negated_lr"))


def failures(name, before, after):
    """The floor checks that ``(before, after)`` misses, as readable strings."""
    floor = FLOORS[name]
    out = []
    for metric in ("retrieval", "knn"):
        margin = floor[metric]
        if margin is not None and not after[metric] - before[metric] >= margin:
            out.append(f"{metric}: {after[metric]:.3f} - random {before[metric]:.3f} "
                       f"< margin {margin:.3f}")
    if not after["rank"] >= floor["rank"]:
        out.append(f"effective rank {after['rank']:.2f} < floor {floor['rank']:.2f}")
    return out


@functools.cache
def scored(name, control=None):
    return run(name, SEED, control=control)


@pytest.mark.parametrize("name", METHODS)
def test_short_run_beats_the_random_encoder(name):
    before, after = scored(name)
    assert not failures(name, before, after), (name, rounded(before), rounded(after))


@pytest.mark.parametrize("name,control", CONTROLS)
def test_control_run_misses_the_floor(name, control):
    before, after = scored(name, control)
    assert failures(name, before, after), (name, control, rounded(before), rounded(after))


if __name__ == "__main__":
    os.environ.setdefault("SSLJAX_XLA_CPU_DEFAULTS", "0")
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_compilation_cache_dir", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else METHODS
    seeds = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else range(5)
    control = sys.argv[3] if len(sys.argv) > 3 else None
    for name in names:
        for seed in seeds:
            t0 = time.time()
            before, after = run(name, seed, control=control,
                                report_every=int(os.environ.get("REPORT_EVERY", "0")),
                                **({"optimizer.lr": float(os.environ["LR"])}
                                   if "LR" in os.environ else {}))
            print(name, seed, control, rounded(before), rounded(after),
                  f"{time.time() - t0:.1f}s", flush=True)
