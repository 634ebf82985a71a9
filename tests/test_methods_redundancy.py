"""Barlow Twins, VICReg and CorInfoMax as methods: view routing, the CorInfoMax state in the
train state (update, checkpoint, sharding), per-term metrics, and the configs' recipes.

Compilation dominates the time of these tests, so the step-level tests put a two-layer
conv-BN backbone in place of the ResNet (the projector, the objective, the optimizer and
the trainer are the real ones), and runs are shared through a module-scoped fixture; the
1-device run's initial state seeds the 8-device run. That the methods build the configured
ResNet is checked on shapes alone (``jax.eval_shape``).
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

from ssljax import data, losses, methods, models, sharding, train
from ssljax.methods import base

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402
from helpers import load_config, read_metrics, synthetic_batch, tiny_config  # noqa: E402

METHODS = ("barlow_twins", "vicreg", "corinfomax")
PARTS = {"barlow_twins": ("on_diag", "off_diag"),
         "vicreg": ("invariance", "variance", "covariance"),
         "corinfomax": ("sim", "cov")}
# Forgetting factors of 0.5 (official: 0.01) make the previous state weigh as much as the
# batch, so a state that is dropped, reset or updated in the wrong order changes the loss.
CIM_TEST = {"loss.la_R": 0.5, "loss.la_mu": 0.5}


class TinyBackbone(nn.Module):
    """Two strided conv-BN-ReLU layers and a mean pool: BatchNorm over the global batch like a
    ResNet, at a fraction of its compile time (which dominates these tests)."""
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
    """A tiny config's method, with the tiny backbone in place of the ResNet."""
    cfg = tiny_config(name, **{**(CIM_TEST if name == "corinfomax" else {}), **overrides})
    method = methods.get_method(name)(cfg, num_classes=10)
    method.model = method.model.clone(backbone=TinyBackbone())
    return cfg, method


def make_batch(seed, batch_size=16, image_size=16):
    return synthetic_batch(seed, batch_size=batch_size, image_size=image_size)


def independent_projections(cfg, params, state, views):
    """The raw projector outputs of each view, from a backbone and an MLP built here from the
    config, each view in its own train-mode pass (BatchNorm on that view's statistics)."""
    backbone = TinyBackbone()
    p = cfg.projector
    head = models.MLP(tuple(p.hidden_dims), p.out_dim, use_bn=p.use_bn, last_bn=p.last_bn,
                      use_bias_hidden=p.use_bias_hidden, use_bias_last=p.use_bias_last)
    zs = []
    for v in range(views.shape[1]):
        feats, _ = backbone.apply(
            {"params": params["backbone"], "batch_stats": state["batch_stats"]["backbone"]},
            views[:, v], train=True, mutable=["batch_stats"])
        head_vars = {"params": params["head"]}
        if "head" in state["batch_stats"]:
            head_vars["batch_stats"] = state["batch_stats"]["head"]
        z, _ = head.apply(head_vars, feats, train=True, mutable=["batch_stats"])
        zs.append(z)
    return zs


def library_loss(name, cfg, z1, z2, cim_state=None):
    lc = cfg.loss
    if name == "barlow_twins":
        return losses.barlow_twins(z1, z2, lambd=lc.lambd, ddof=lc.ddof, eps=lc.eps,
                                   return_parts=True)
    if name == "vicreg":
        return losses.vicreg(z1, z2, sim_coeff=lc.sim_coeff, std_coeff=lc.std_coeff,
                             cov_coeff=lc.cov_coeff, return_parts=True)
    loss, state, parts = losses.corinfomax(z1, z2, cim_state, sim_weight=lc.sim_weight,
                                           la_R=lc.la_R, la_mu=lc.la_mu, eps=lc.eps,
                                           return_parts=True)
    return loss, dict(parts, state=state)


# ---- The objective -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_loss_is_the_library_loss_of_per_view_projections(step_runs, name):
    # The loss and terms the trainer's step logs, at steps 1-3 (for CorInfoMax: from the
    # identity state, then from the states the steps left), against the library loss of
    # projections computed here.
    run = step_runs(name, 1)
    cfg = run["cfg"]

    @jax.jit
    def expected(params, state, views):
        z1, z2 = independent_projections(cfg, params, state, views)
        loss, parts = library_loss(name, cfg, z1, z2, state.get("corinfomax"))
        # A joint forward pass over both views (SimCLR's routing) would give another loss.
        both = jnp.swapaxes(views, 0, 1).reshape((-1, 1) + views.shape[2:])
        joint = independent_projections(cfg, params, state, both)[0]
        n = views.shape[0]
        joint_loss = library_loss(name, cfg, joint[:n], joint[n:], state.get("corinfomax"))[0]
        return loss, parts, joint_loss

    for k in range(3):
        loss, parts, joint_loss = expected(run["params"][k], run["states"][k],
                                           run["batches"][k]["views"])
        logged = run["metrics"][k]
        assert set(logged) == {"loss", "lr", "probe_loss", "probe_top1", *PARTS[name]}
        np.testing.assert_allclose(logged["loss"], loss, rtol=2e-5)
        for key in PARTS[name]:
            np.testing.assert_allclose(logged[key], parts[key], rtol=2e-5, atol=1e-7, err_msg=key)
        assert not np.isclose(joint_loss, loss, rtol=1e-2)
        if name == "corinfomax":
            for got, want in zip(run["states"][k + 1]["corinfomax"], parts["state"]):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_projector_heads_follow_the_official_code():
    def head_params(name, variant="fashion_mnist"):
        cfg = load_config(name, variant)
        method = methods.get_method(name)(cfg, num_classes=10)
        example = {"views": jnp.zeros((2, 2, 28, 28, 1))}
        params, state = jax.eval_shape(method.init_model, train.init_key(0), example)
        # The backbone is the configured ResNet (zero-init residuals for CorInfoMax).
        resnet = models.resnet(cfg.model.name, width=cfg.model.width, stem=cfg.model.stem,
                               stem_stride=cfg.model.stem_stride,
                               zero_init_residual=cfg.model.zero_init_residual)
        want = jax.eval_shape(lambda: resnet.init(train.init_key(0), example["views"][:, 0],
                                                  train=False))
        assert (jax.tree.structure(params["backbone"]) ==
                jax.tree.structure(want["params"]))
        assert method.model.backbone.zero_init_residual == (name == "corinfomax")
        return params["head"], state["batch_stats"].get("head", {})

    bt, bt_bn = head_params("barlow_twins")
    assert sorted(bt) == ["bn0", "bn1", "dense0", "dense1", "dense2"]
    assert all(set(bt[f"dense{i}"]) == {"kernel"} for i in range(3))  # no biases anywhere
    assert bt["dense2"]["kernel"].shape == (512, 512) and "bn2" not in bt_bn  # last: no BN
    vic, _ = head_params("vicreg")
    assert set(vic["dense0"]) == {"kernel", "bias"} and set(vic["dense2"]) == {"kernel"}
    assert "bn2" not in vic and "bn1" in vic
    cim, cim_bn = head_params("corinfomax")
    assert sorted(cim) == ["dense0", "dense1", "dense2"] and not cim_bn  # no BatchNorm
    assert set(cim["dense1"]) == {"kernel", "bias"} and set(cim["dense2"]) == {"kernel"}
    assert cim["dense2"]["kernel"].shape == (512, 64)


def test_corinfomax_state_is_float64_under_x64():
    cfg, method = make_method("corinfomax")
    batch = {"views": jnp.zeros((4, 2, 16, 16, 1)), "label": jnp.zeros((4,), jnp.int32)}
    with jax.enable_x64(True):
        params, state = jax.eval_shape(method.init_model, train.init_key(0), batch)
        assert {x.dtype for x in state["corinfomax"]} == {jnp.dtype("float64")}
        loss, out = jax.eval_shape(method.loss, params, state, batch, jax.random.key(0),
                                   jnp.int32(0))
        assert {x.dtype for x in out.state["corinfomax"]} == {jnp.dtype("float64")}
    # Without x64 too (corinfomax.state_dtype, default float64); float32 on request.
    _, state = jax.eval_shape(method.init_model, train.init_key(0), batch)
    assert {x.dtype for x in state["corinfomax"]} == {jnp.dtype("float64")}
    _, m32 = make_method("corinfomax", **{"corinfomax.state_dtype": "float32"})
    _, state = jax.eval_shape(m32.init_model, train.init_key(0), batch)
    assert {x.dtype for x in state["corinfomax"]} == {jnp.dtype("float32")}


# ---- Train steps: state update, sharding ------------------------------------------------------

NUM_STEPS = 4


def run_steps(name, num_devices, initial=None):
    """NUM_STEPS train steps of the trainer's compiled step on fixed synthetic batches, from
    ``initial`` (a host copy of a train state) or a fresh init (tests/helpers.py)."""
    cfg, method = make_method(name)
    return helpers.run_steps(cfg, method, num_devices,
                             [make_batch(100 + i) for i in range(NUM_STEPS)], initial=initial)


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


def test_corinfomax_logdet_stays_finite_on_degenerate_inputs(step_runs):
    # Constant images make every projection identical: each batch covariance is 0, and R
    # decays geometrically to the eps floor, where Cholesky fails in float32. 300 train
    # steps (loss, gradient, SGD update) must stay finite: the log-determinant falls back
    # to clamped eigenvalues.
    run = step_runs("corinfomax", 1)
    ts = jax.device_put(run["initial"], run["steps"].abstract_state(
        run["put"](run["batches"][0]))[1])
    batch = run["put"]({"views": np.ones_like(run["batches"][0]["views"]),
                        "label": run["batches"][0]["label"]})
    losses_, covs = [], []
    for _ in range(300):
        ts, metrics = run["steps"].train_step(ts, batch, jax.random.key(0))
        losses_.append(metrics["loss"])
        covs.append(metrics["cov"])
    losses_, covs = np.asarray(jax.device_get(losses_)), np.asarray(jax.device_get(covs))
    assert np.all(np.isfinite(losses_)) and np.all(np.isfinite(covs))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(ts)))
    # The covariances did collapse: the logdet term sits near its eps floor, at most
    # -2 log(1e-8) = 36.8 (the identity state gives 0).
    assert 30.0 < covs[-1] <= -2 * np.log(1e-8) + 1e-3, covs[-1]


def test_corinfomax_state_after_three_steps_matches_numpy(step_runs):
    run = step_runs("corinfomax", 1)
    cfg = run["cfg"]
    la_r, la_mu, n = cfg.loss.la_R, cfg.loss.la_mu, cfg.batch_size
    dim = cfg.projector.out_dim
    project = jax.jit(functools.partial(independent_projections, cfg))
    r = [np.eye(dim), np.eye(dim)]
    mu = [np.zeros(dim), np.zeros(dim)]
    for step in range(3):
        zs = project(run["params"][step], run["states"][step],
                     run["batches"][step]["views"])
        for b, z in enumerate(zs):
            z = np.asarray(z, np.float64)
            z = z / np.linalg.norm(z, axis=1, keepdims=True)
            mu[b] = la_mu * mu[b] + (1 - la_mu) * z.mean(0)
            zc = z - mu[b]  # centred with the new mean
            r[b] = la_r * r[b] + (1 - la_r) * zc.T @ zc / n
    got = run["states"][3]["corinfomax"]
    for name, want in zip(("R1", "R2", "mu1", "mu2"), (*r, *mu)):
        np.testing.assert_allclose(getattr(got, name), want, rtol=1e-4, atol=2e-6, err_msg=name)
    # The state moved away from its initial value (the check above is not vacuous).
    assert np.abs(got.R1 - np.eye(dim)).max() > 0.1


@pytest.mark.parametrize("name", METHODS)
def test_eight_devices_equal_one_device(step_runs, name):
    one, eight = step_runs(name, 1), step_runs(name, 8)
    for key in ("loss",) + PARTS[name]:
        np.testing.assert_allclose([m[key] for m in eight["metrics"]],
                                   [m[key] for m in one["metrics"]], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    assert all(math.isfinite(m["loss"]) for m in one["metrics"])
    if name == "corinfomax":
        for got, want in zip(eight["states"][-1]["corinfomax"], one["states"][-1]["corinfomax"]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ---- Checkpoints ------------------------------------------------------------------------------

def test_corinfomax_state_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "build_backbone", tiny_backbone)
    # The paper's SGD linear probe, end to end.
    paper_probe = {"eval.linear_optimizer": "sgd", "eval.linear_lr": 0.2,
                   "eval.linear_final_lr_ratio": 0.01}
    cfg = lambda **kw: tiny_config("corinfomax", **CIM_TEST, **paper_probe, **kw)  # noqa: E731
    mesh = sharding.make_mesh(1)
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    straight_results = train.train_and_evaluate(cfg(), straight_dir, mesh=mesh)
    assert train.train_and_evaluate(cfg(stop_after_step=3), resumed_dir, mesh=mesh) == {}
    resumed_results = train.train_and_evaluate(cfg(), resumed_dir, mesh=mesh)

    straight, resumed = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert sorted(resumed) == sorted(straight) == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "sim", "cov"):
        np.testing.assert_allclose([resumed[s][key] for s in (4, 5, 6)],
                                   [straight[s][key] for s in (4, 5, 6)], rtol=1e-6, err_msg=key)
    assert resumed_results["linear_probe_top1"] == straight_results["linear_probe_top1"]
    assert resumed_results["knn_top1"] == straight_results["knn_top1"]


# ---- The SGD linear probe (CorInfoMax's protocol) ----------------------------------------------

def test_sgd_linear_probe_matches_numpy_momentum_sgd():
    from ssljax.evaluate import linear
    rng = np.random.default_rng(0)
    n, d, k = 24, 5, 3
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, size=n).astype(np.int32)
    lr, wd, ratio, steps = 0.2, 0.1, 0.01, 3
    # One full batch per epoch: the permutation does not change the mean gradient.
    got = linear._fit(jnp.asarray(x), jnp.asarray(y), jax.random.key(0), num_classes=k,
                      epochs=steps, batch_size=n, lr=lr, weight_decay=wd, optimizer="sgd",
                      final_lr_ratio=ratio)

    w, b = np.zeros((d, k)), np.zeros(k)
    buf_w, buf_b = np.zeros((d, k)), np.zeros(k)
    onehot = np.eye(k)[y]
    for t in range(steps):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g_w = x.T @ (p - onehot) / n + wd * w  # coupled weight decay, biases included
        g_b = (p - onehot).mean(0) + wd * b
        buf_w, buf_b = 0.9 * buf_w + g_w, 0.9 * buf_b + g_b
        lr_t = lr * (ratio + (1 - ratio) * 0.5 * (1 + np.cos(np.pi * t / steps)))
        w, b = w - lr_t * buf_w, b - lr_t * buf_b
    np.testing.assert_allclose(got["w"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="linear-probe optimizer"):
        linear.linear_probe(x, y, x, y, num_classes=k, optimizer="lbfgs")


# ---- Configs ----------------------------------------------------------------------------------

def test_configs_carry_the_official_recipes():
    for name in METHODS:
        variants = ["fashion_mnist", "cifar10", "cifar100", "imagenet"]
        if name == "corinfomax":
            variants += ["tiny_imagenet", "imagenet100"]
        for variant in variants:
            c = load_config(name, variant)
            assert c.method == name
            data.augment_configs(c.data)  # every augmentation field is a real one
        with pytest.raises(ValueError, match="Unknown variant"):
            load_config(name, "mnist")

    bt = load_config("barlow_twins", "imagenet")
    assert tuple(bt.projector.hidden_dims) + (bt.projector.out_dim,) == (8192,) * 3
    assert bt.loss.lambd == 0.0051 and bt.optimizer.name == "lars"
    assert load_config("barlow_twins", "cifar10").projector.out_dim == 2048
    vic = load_config("vicreg", "imagenet")
    assert tuple(vic.projector.hidden_dims) + (vic.projector.out_dim,) == (8192,) * 3
    assert (vic.loss.sim_coeff, vic.loss.std_coeff, vic.loss.cov_coeff) == (25.0, 25.0, 1.0)
    assert vic.optimizer.name == "lars"

    c10, c100 = load_config("corinfomax", "cifar10"), load_config("corinfomax", "cifar100")
    assert (c10.loss.sim_weight, c100.loss.sim_weight) == (250.0, 1000.0)
    assert tuple(c10.projector.hidden_dims) + (c10.projector.out_dim,) == (2048, 2048, 64)
    assert tuple(c100.projector.hidden_dims) + (c100.projector.out_dim,) == (4096, 4096, 128)
    for c in (c10, c100):
        assert c.loss.la_R == c.loss.la_mu == 0.01 and c.loss.eps == 1e-8
        assert not c.projector.use_bn and not c.projector.use_bias_last
        assert c.model.zero_init_residual and c.model.stem == "cifar" and c.model.stem_stride == 1
        o = c.optimizer
        assert (o.name, o.momentum, o.weight_decay, o.exclude_bias_and_norm) == ("sgd", 0.9, 1e-4,
                                                                                 False)
        assert o.warmup_epochs == 10 and o.step_per_epoch and o.lr_scaling == "none"
        assert math.isclose(o.lr * o.warmup_init, 3e-3)
        v1, v2 = data.augment_configs(c.data)
        assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
        assert v1.crop_scale == (0.08, 1.0) and v1.jitter_p == 0.8 and v1.grayscale_p == 0.2
        assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.2, 0.1)
        e = c.eval
        assert (e.linear_optimizer, e.linear_lr, e.linear_epochs, e.linear_batch_size,
                e.linear_weight_decay) == ("sgd", 0.2, 100, 256, 0.0)
        assert math.isclose(e.linear_lr * e.linear_final_lr_ratio, 2e-3)
    assert c10.batch_size == 512 and c10.optimizer.lr == 0.5
