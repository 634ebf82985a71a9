"""MoCo v2 and BYOL: the queue, the EMA encoders, shuffled BatchNorm, sharding, checkpoints.

Each check recomputes what the trainer's compiled step did from the recorded states, with
independent code: the encoders applied group by group in a Python loop (not the method's
``vmap``), the InfoNCE and BYOL losses and the ring buffer in NumPy. As in
tests/test_methods_redundancy.py, a two-layer conv-BN backbone replaces the ResNet
(compilation dominates these tests) and the runs are shared by a module-scoped fixture.
"""

import functools
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import data, methods, sharding, train
from ssljax.methods import base
from ssljax.methods.byol import target_momentum
from ssljax.methods.moco import enqueue, key_permutation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402
from helpers import load_config, read_metrics, synthetic_batch, tiny_config  # noqa: E402

B, GROUPS, QUEUE, NUM_STEPS, TOTAL_STEPS = 16, 4, 40, 4, 6
# A queue of 40 keys and batches of 16: the third step's keys wrap around the ring.
MOCO = {"moco.queue_size": QUEUE, "moco.bn_groups": GROUPS, "moco.momentum": 0.9}
BYOL = {"predictor.hidden_dims": (32,), "predictor.out_dim": 16, "byol.base_momentum": 0.9}
OVERRIDES = {"moco": MOCO, "byol": BYOL}
STEP_RNG = 7


class TinyBackbone(nn.Module):
    """Two strided conv-BN-ReLU layers and a mean pool (BatchNorm like a ResNet, cheap)."""
    width: int = 8

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(2):
            x = nn.Conv(self.width, (3, 3), strides=2, use_bias=False, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name=f"bn{i}")(x)
            x = nn.relu(x)
        return jnp.mean(x, axis=(1, 2))


def tiny_backbone(cfg):
    del cfg
    return TinyBackbone()


def make_method(name, **overrides):
    cfg = tiny_config(name, **{**OVERRIDES[name], **overrides})
    method = methods.get_method(name)(cfg, num_classes=10)
    method.model = method.model.clone(backbone=TinyBackbone())
    if name == "byol":
        method.target = method.target.clone(backbone=TinyBackbone())
    return cfg, method


def make_batch(seed):
    return synthetic_batch(seed, batch_size=B)


def run_steps(name, num_devices, initial=None):
    cfg, method = make_method(name)
    return helpers.run_steps(cfg, method, num_devices, [make_batch(100 + i) for i in range(NUM_STEPS)],
                             initial=initial, rng_seed=STEP_RNG, total_steps=TOTAL_STEPS)


@pytest.fixture(scope="module")
def step_runs():
    cache = {}

    def get(name, num_devices):
        if (name, 1) not in cache:
            cache[name, 1] = run_steps(name, 1)
        if (name, num_devices) not in cache:
            cache[name, num_devices] = run_steps(name, num_devices,
                                                 initial=cache[name, 1]["initial"])
        return cache[name, num_devices]

    return get


# ---- Independent references ------------------------------------------------------------------

def apply_train(module, params, batch_stats, x):
    out, _ = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                          mutable=["batch_stats"])
    return out


def grouped(module, params, batch_stats, x, rows_of_group):
    """Projections of ``x`` with BatchNorm over each listed group of rows, one group at a
    time (a Python loop, not the method's vmap), each written back to its own rows."""
    out = np.zeros((x.shape[0], 16), np.float64)
    for rows in rows_of_group:
        _, z = apply_train(module, params, batch_stats, x[rows])
        out[rows] = np.asarray(z, np.float64)
    return out


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_infonce(q, k, queue, t):
    q, k, queue = unit(q), unit(k), unit(queue)
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], axis=1) / t
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    return np.mean(lse - logits[:, 0])


def moco_reference(run, step):
    """Queries, keys and loss of training step ``step``, recomputed independently."""
    method, cfg = run["method"], run["cfg"]
    params, state = run["params"][step], run["states"][step]
    views = run["batches"][step]["views"]
    n = B // GROUPS
    in_order = [np.arange(g * n, (g + 1) * n) for g in range(GROUPS)]
    q = grouped(method.model, params, state["batch_stats"], views[:, 0], in_order)
    # The trainer folds the step into its key; MoCo permutes the keys with that key.
    perm = np.asarray(key_permutation(jax.random.fold_in(jax.random.key(STEP_RNG), step), B))
    shuffled = [perm[g * n:(g + 1) * n] for g in range(GROUPS)]
    k = grouped(method.model, state["key"]["params"], state["key"]["batch_stats"], views[:, 1],
                shuffled)
    loss = numpy_infonce(q, k, np.asarray(state["queue"], np.float64), cfg.moco.temperature)
    return q, k, loss


# ---- MoCo ---------------------------------------------------------------------------------

def test_moco_loss_uses_the_queue_before_the_enqueue(step_runs):
    run = step_runs("moco", 1)
    t = run["cfg"].moco.temperature
    for step in range(NUM_STEPS):
        q, k, loss = moco_reference(run, step)
        logged = run["metrics"][step]
        assert set(logged) == {"loss", "lr", "probe_loss", "probe_top1", "instance_acc"}
        np.testing.assert_allclose(logged["loss"], loss, rtol=2e-5)
        # With the queue after the enqueue (this step's keys among the negatives) it differs.
        after = np.asarray(run["states"][step + 1]["queue"], np.float64)
        assert not np.isclose(numpy_infonce(q, k, after, t), loss, rtol=1e-3)


def test_moco_queue_holds_the_last_keys_in_order(step_runs):
    run = step_runs("moco", 1)
    queue = np.asarray(run["states"][0]["queue"], np.float64).copy()
    np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-5)
    ptr = 0
    for step in range(NUM_STEPS):
        _, k, _ = moco_reference(run, step)
        for row in unit(k):  # a hand-built ring buffer, one key at a time
            queue[ptr] = row
            ptr = (ptr + 1) % QUEUE
        got = run["states"][step + 1]
        np.testing.assert_allclose(got["queue"], queue, rtol=2e-5, atol=2e-6, err_msg=str(step))
        assert int(got["queue_ptr"]) == ptr
    # 64 keys went through a ring of 40: it holds keys 24..63, oldest overwritten first.
    assert ptr == (NUM_STEPS * B) % QUEUE == 24


def test_enqueue_is_a_ring_buffer():
    queue = jnp.zeros((5, 1))
    queue, ptr = enqueue(queue, jnp.int32(0), jnp.array([[1.0], [2.0], [3.0]]))
    queue, ptr = enqueue(queue, ptr, jnp.array([[4.0], [5.0], [6.0]]))
    assert queue[:, 0].tolist() == [6.0, 2.0, 3.0, 4.0, 5.0] and int(ptr) == 1
    with pytest.raises(ValueError, match="queue_size"):
        enqueue(queue, ptr, jnp.zeros((6, 1)))


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_ema_matches_numpy(step_runs, name):
    run = step_runs(name, 1)
    for step in range(NUM_STEPS):
        if name == "moco":
            m = run["cfg"].moco.momentum
            before, after = run["states"][step]["key"], run["states"][step + 1]["key"]
            online = run["params"][step + 1]
        else:
            base_m = run["cfg"].byol.base_momentum
            m = 1 - (1 - base_m) * (math.cos(math.pi * step / TOTAL_STEPS) + 1) / 2
            np.testing.assert_allclose(run["metrics"][step]["tau"], m, rtol=1e-6)
            before, after = run["states"][step]["target"], run["states"][step + 1]["target"]
            online = {k: run["params"][step + 1][k] for k in ("backbone", "head")}
        want = jax.tree.map(lambda t, p: m * np.float64(t) + (1 - m) * np.float64(p),
                            before["params"], online)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7),
                     after["params"], want)
    # The target moved, and is not the online network: the checks above are not vacuous.
    diff = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), after["params"],
                                        online))
    assert max(diff) > 1e-4


def test_shuffled_bn_keeps_a_key_out_of_its_querys_statistics():
    # Per-group BatchNorm: the query of example i depends on the images of its group (rows
    # in batch order); with shuffle BN, the key of example i on the images of a random group.
    _, method = make_method("moco")
    batch = make_batch(0)
    params, state = jax.jit(method.init_model)(train.init_key(0), batch)
    rng = jax.random.key(3)
    x = batch["views"][:, 0]
    perm = np.asarray(key_permutation(rng, B))
    n = B // GROUPS
    i = 0
    query_group = set(range(n))  # example 0's query group: rows 0..3
    key_group = set(perm[(list(perm).index(i) // n) * n:][:n])
    # An example that shares example 0's query statistics but not its key statistics.
    j = next(r for r in sorted(query_group - key_group) if r != i)

    @functools.partial(jax.jit, static_argnums=2)
    def encode(x, rng, shuffle):
        (_, q), _ = method.encode_queries(params, state["batch_stats"], x)
        k, _ = method.encode_keys(state["key"], x, rng, shuffle=shuffle)
        return q, k

    x_changed = x.copy()
    x_changed[j] = 3.0 * x[j] + 1.0
    q, k = encode(x, rng, True)
    q2, k2 = encode(x_changed, rng, True)
    assert not np.allclose(q[i], q2[i], atol=1e-4)  # the query sees the change (its group)
    np.testing.assert_array_equal(k[i], k2[i])  # the key does not: another group
    # Without the shuffle the key shares its query's group, and sees it too.
    kn, kn2 = encode(x, rng, False)[1], encode(x_changed, rng, False)[1]
    assert not np.allclose(kn[i], kn2[i], atol=1e-4)

    # The shuffled keys are in the order of x: each is its image's projection under the
    # statistics of its shuffled group (reference: group by group, written back by row).
    groups = [perm[g * n:(g + 1) * n] for g in range(GROUPS)]
    want = grouped(method.model, state["key"]["params"], state["key"]["batch_stats"], x, groups)
    np.testing.assert_allclose(k, want, rtol=1e-5, atol=1e-6)


# ---- BYOL ---------------------------------------------------------------------------------

def test_byol_loss_is_the_symmetrised_regression_on_target_projections(step_runs):
    run = step_runs("byol", 1)
    method = run["method"]
    for step in range(NUM_STEPS):
        params, state = run["params"][step], run["states"][step]
        views = run["batches"][step]["views"]
        p = [np.asarray(apply_train(method.model, params, state["batch_stats"], views[:, v])[2],
                        np.float64) for v in range(2)]
        t = state["target"]
        z = [np.asarray(apply_train(method.target, t["params"], t["batch_stats"],
                                    views[:, v])[1], np.float64) for v in range(2)]
        reg = lambda a, b: np.mean(2 - 2 * np.sum(unit(a) * unit(b), 1))  # noqa: E731
        logged = run["metrics"][step]
        np.testing.assert_allclose(logged["loss_12"], reg(p[0], z[1]), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(logged["loss_21"], reg(p[1], z[0]), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(logged["loss"], reg(p[0], z[1]) + reg(p[1], z[0]), rtol=2e-5)


def test_target_momentum_schedule():
    np.testing.assert_allclose(target_momentum(0, 100, 0.996), 0.996, rtol=1e-7)
    np.testing.assert_allclose(target_momentum(50, 100, 0.996), 0.998, rtol=1e-7)
    np.testing.assert_allclose(target_momentum(100, 100, 0.996), 1.0, rtol=1e-7)


# ---- Sharding and checkpoints ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["moco", "byol"])
def test_eight_devices_equal_one_device(step_runs, name):
    one, eight = step_runs(name, 1), step_runs(name, 8)
    keys = ("loss", "instance_acc") if name == "moco" else ("loss", "loss_12", "loss_21")
    for key in keys:
        np.testing.assert_allclose([m[key] for m in eight["metrics"]],
                                   [m[key] for m in one["metrics"]], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    if name == "moco":
        np.testing.assert_allclose(eight["states"][-1]["queue"], one["states"][-1]["queue"],
                                   rtol=1e-4, atol=1e-5)
        assert int(eight["states"][-1]["queue_ptr"]) == int(one["states"][-1]["queue_ptr"])


def test_moco_queue_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "build_backbone", tiny_backbone)
    cfg = lambda **kw: tiny_config("moco", **MOCO, **kw)  # noqa: E731
    mesh = sharding.make_mesh(1)
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(cfg(), straight_dir, mesh=mesh)
    assert train.train_and_evaluate(cfg(stop_after_step=3), resumed_dir, mesh=mesh) == {}
    train.train_and_evaluate(cfg(), resumed_dir, mesh=mesh)
    straight, resumed = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert sorted(resumed) == sorted(straight) == [1, 2, 3, 4, 5, 6]
    # Steps 4-6 see the queue (and key encoder) the checkpoint restored: a fresh queue
    # would give other losses.
    np.testing.assert_allclose([resumed[s]["loss"] for s in (4, 5, 6)],
                               [straight[s]["loss"] for s in (4, 5, 6)], rtol=1e-6)


# ---- Configs ------------------------------------------------------------------------------

def test_configs_carry_the_official_recipes():
    for name in ("moco", "byol"):
        for variant in ("fashion_mnist", "cifar10", "cifar100", "imagenet"):
            c = load_config(name, variant)
            assert c.method == name
            data.augment_configs(c.data)
        with pytest.raises(ValueError, match="Unknown variant"):
            load_config(name, "mnist")
    m = load_config("moco", "imagenet")
    assert (m.moco.queue_size, m.moco.momentum, m.moco.temperature) == (65536, 0.999, 0.2)
    assert tuple(m.projector.hidden_dims) + (m.projector.out_dim,) == (2048, 128)
    assert not m.projector.use_bn and m.moco.shuffle_bn and m.moco.bn_groups == 8
    o = m.optimizer
    assert (o.name, o.lr, o.weight_decay, o.momentum, o.exclude_bias_and_norm) == (
        "sgd", 0.03, 1e-4, 0.9, False)
    assert m.batch_size == 256 and m.num_epochs == 200 and m.data.augment.blur_p == 0.5
    b = load_config("byol", "imagenet")
    assert tuple(b.projector.hidden_dims) + (b.projector.out_dim,) == (4096, 256)
    assert tuple(b.predictor.hidden_dims) + (b.predictor.out_dim,) == (4096, 256)
    assert b.byol.base_momentum == 0.996 and b.optimizer.name == "lars"
    # deepmind-research byol: own target init, no bias on the MLPs' last Linear, zero-init
    # residual BN (ResNet-50 bottlenecks); tests/test_byol_fidelity.py checks the models.
    assert b.byol.target_init == "independent" and b.model.zero_init_residual
    assert not b.projector.use_bias_last and not b.predictor.use_bias_last
    assert (b.optimizer.lr, b.optimizer.weight_decay, b.batch_size) == (0.2, 1.5e-6, 4096)
    v1, v2 = data.augment_configs(b.data)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
