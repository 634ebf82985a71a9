"""InfoMin: ``(1 - beta) L_instance + beta L_jigsaw``, the jigsaw head, sharding.

The step's logged losses are recomputed independently (group-by-group forward passes, the
jigsaw head's shuffle replayed from the step key, InfoNCE in NumPy); see
tests/test_momentum.py for the shared pieces.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import data, methods
from ssljax.methods.infomin import InfoMinNet, JigsawHead
from ssljax.methods.moco import key_permutation
from ssljax.models import MLP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402
from helpers import load_config, synthetic_batch, tiny_config  # noqa: E402
from test_momentum import (B, GROUPS, QUEUE, STEP_RNG, TinyBackbone, grouped,  # noqa: E402
                           numpy_infonce)

NUM_STEPS = 3
OVERRIDES = {"moco.queue_size": QUEUE, "moco.bn_groups": GROUPS, "moco.momentum": 0.9,
             "data.jigsaw.size": 15, "data.jigsaw.patch": 4}


def make_batch(seed):
    batch = synthetic_batch(seed, batch_size=B)
    rng = np.random.default_rng(seed + 1)
    return {**batch, "jigsaw": rng.normal(size=(B, 9, 4, 4, 1)).astype(np.float32)}


def run_steps(num_devices, initial=None):
    cfg = tiny_config("infomin", **OVERRIDES)
    method = methods.get_method("infomin")(cfg, num_classes=10)
    method.model = method.model.clone(backbone=TinyBackbone())
    return helpers.run_steps(cfg, method, num_devices,
                             [make_batch(200 + i) for i in range(NUM_STEPS)], initial=initial,
                             rng_seed=STEP_RNG)


@pytest.fixture(scope="module")
def runs():
    one = run_steps(1)
    return {1: one, 8: run_steps(8, initial=one["initial"])}


def test_loss_is_half_instance_half_jigsaw(runs):
    run = runs[1]
    method, cfg = run["method"], run["cfg"]
    t = cfg.moco.temperature
    n = B // GROUPS
    for step in range(NUM_STEPS):
        params, state = run["params"][step], run["states"][step]
        batch = run["batches"][step]
        shuffle_rng, jig_rng = jax.random.split(jax.random.fold_in(jax.random.key(STEP_RNG), step))
        in_order = [np.arange(g * n, (g + 1) * n) for g in range(GROUPS)]
        perm = np.asarray(key_permutation(shuffle_rng, B))
        q = grouped(method.model, params, state["batch_stats"], batch["views"][:, 0], in_order)
        k = grouped(method.model, state["key"]["params"], state["key"]["batch_stats"],
                    batch["views"][:, 1], [perm[g * n:(g + 1) * n] for g in range(GROUPS)])
        queue = np.asarray(state["queue"], np.float64)
        l_inst = numpy_infonce(q, k, queue, t)
        # The jigsaw query: each group's 4 images x 9 patches through the backbone (BN over
        # those 36 patches), the 9 embeddings of an image reordered by its permutation.
        order = np.stack([np.asarray(jax.random.permutation(r, 9))
                          for r in jax.random.split(jig_rng, B)])
        q_jig = np.zeros((B, 16))
        for rows in in_order:
            patches = batch["jigsaw"][rows].reshape((-1, 4, 4, 1))
            out, _ = method.model.apply({"params": params, "batch_stats": state["batch_stats"]},
                                        patches, order[rows], train=True, mutable=["batch_stats"],
                                        method=InfoMinNet.jigsaw)
            q_jig[rows] = np.asarray(out)
        l_jig = numpy_infonce(q_jig, k, queue, t)
        logged = run["metrics"][step]
        np.testing.assert_allclose(logged["instance_loss"], l_inst, rtol=2e-5)
        np.testing.assert_allclose(logged["jigsaw_loss"], l_jig, rtol=2e-5)
        np.testing.assert_allclose(logged["loss"], 0.5 * l_inst + 0.5 * l_jig, rtol=2e-5)
        assert abs(l_inst - l_jig) > 1e-3  # two different terms


def test_jigsaw_head_shuffles_patches_before_the_last_linear():
    head = JigsawHead(fc1=MLP((), 2, use_bn=False), out_dim=3, k=3)
    feats = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
    ident = jnp.tile(jnp.arange(3), (2, 1))
    variables = head.init(jax.random.key(0), feats, ident, train=False)
    p = variables["params"]
    z = np.asarray(feats) @ np.asarray(p["fc1"]["dense0"]["kernel"]) + np.asarray(
        p["fc1"]["dense0"]["bias"])
    order = np.array([[2, 0, 1], [1, 2, 0]])
    got = head.apply(variables, feats, jnp.asarray(order), train=False)
    for b in range(2):
        cat = np.concatenate([z[3 * b + j] for j in order[b]])
        want = cat @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"])
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, head.apply(variables, feats, ident, train=False))


def test_eight_devices_equal_one_device(runs):
    for key in ("loss", "instance_loss", "jigsaw_loss"):
        np.testing.assert_allclose([m[key] for m in runs[8]["metrics"]],
                                   [m[key] for m in runs[1]["metrics"]], rtol=1e-5, err_msg=key)


def test_config_carries_the_official_recipe():
    for variant in ("fashion_mnist", "cifar10", "cifar100", "imagenet"):
        c = load_config("infomin", variant)
        views = data.augment_configs(c.data)
        assert all(v.randaugment_n == 2 for v in views)
        data.jigsaw_config_from(c.data.get("jigsaw"))
    c = load_config("infomin", "imagenet")
    assert (c.moco.temperature, c.moco.queue_size, c.moco.momentum) == (0.15, 65536, 0.999)
    assert c.infomin.beta == 0.5 and c.batch_size == 256 and c.optimizer.lr == 0.03
    v = data.augment_configs(c.data)[0]
    assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_p) == (0.8, 0.8, 0.8, 0.2,
                                                                           0.8)
    assert (v.blur_p, v.grayscale_p, v.crop_scale) == (0.5, 0.2, (0.2, 1.0))
    assert (v.randaugment_m, v.randaugment_mstd, v.randaugment_p) == (10.0, 0.5, 0.5)
    j = data.jigsaw_config_from(c.data.get("jigsaw"))
    assert (j.size, j.patch, j.crop_scale, j.grid) == (255, 64, (0.6, 1.0), 3)
