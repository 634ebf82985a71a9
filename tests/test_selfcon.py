"""SelfCon and the supervised family: the multi-exit network, the objectives' routing against
a NumPy transcription of the official training code, the step on 8 devices vs 1, mixed
precision, the linear-probe protocol, configs, and the four methods from the command line.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import data, losses, methods, models, train
from ssljax.evaluate import linear
from ssljax.methods.selfcon import selfcon_loss
from ssljax.models.resnet import RESNET_CONFIGS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402
from helpers import REPO, load_config, set_fields, synthetic_batch  # noqa: E402
from losses_refs import conloss_ref  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ---- The multi-exit network ------------------------------------------------------------------

def _param_shapes(net, x):
    variables = jax.eval_shape(lambda: net.init(train.init_key(0), x, train=False))
    out = jax.eval_shape(lambda v: net.apply(v, x, train=False), variables)
    return variables["params"], out


# ResNet-18 in the default run; the deeper layouts (tracing only, but slow) with the
# end-to-end checks.
@pytest.mark.parametrize("name,stem", [
    ("resnet18", "cifar"),
    pytest.param("resnet34", "imagenet", marks=pytest.mark.integration),
    pytest.param("resnet50", "cifar", marks=pytest.mark.integration)])
@pytest.mark.parametrize("kind", ["fc", "same", "small"])
def test_exits_have_the_right_shapes_for_every_kind_and_position(name, stem, kind):
    width = 4
    x = jnp.zeros((3, 64, 64, 3))
    backbone = models.resnet(name, width=width, stem=stem)
    dim = backbone.feature_dim
    stage_sizes, block = RESNET_CONFIGS[name]
    expansion = 4 if block == "bottleneck" else 1
    for k in (1, 2, 3):
        net = models.MultiExitResNet(backbone, exits=(k,), kind=kind)
        params, out = _param_shapes(net, x)
        assert out.backbone.shape == (3, dim) and out.backbone.dtype == jnp.float32
        assert len(out.exits) == 1
        assert out.exits[0].shape == (3, dim) and out.exits[0].dtype == jnp.float32
        own = sorted(p for p in params if p != "backbone")
        if kind == "fc":
            # Pool the stage-k map (width * 2**(k-1) * expansion channels), Linear to d.
            assert own == [f"exit{k}_fc"]
            assert params[f"exit{k}_fc"]["kernel"].shape == (width * 2 ** (k - 1) * expansion,
                                                             dim)
        else:
            # An unshared copy of stages k+1..4; 'small' has half the blocks of each.
            assert own == [f"exit{k}_stage{i}" for i in range(k + 1, 5)]
            for i in range(k + 1, 5):
                blocks = sorted(params[f"exit{k}_stage{i}"])
                want = stage_sizes[i - 1] if kind == "same" else max(stage_sizes[i - 1] // 2, 1)
                assert blocks == [f"block{j}" for j in range(want)]
                assert (jax.tree.structure(params[f"exit{k}_stage{i}"]["block0"]) ==
                        jax.tree.structure(params["backbone"][f"stage{i}"]["block0"]))
    # Several exits at once, and the heads: one per exit, Linear(d, d)-ReLU-Linear(d, 128).
    net = models.MultiExitContrastive(models.MultiExitResNet(backbone, exits=(1, 3), kind=kind))
    params, (feats, z) = _param_shapes(net, x)
    assert [f.shape for f in feats.exits] == [(3, dim)] * 2
    assert z.backbone.shape == (3, 128) and [p.shape for p in z.exits] == [(3, 128)] * 2
    for head in ("head", "exit1_head", "exit3_head"):
        assert params[head]["dense0"]["kernel"].shape == (dim, dim)
        assert params[head]["dense1"]["kernel"].shape == (dim, 128)


def test_bad_exits_are_rejected_in_one_sentence():
    backbone = models.resnet("resnet18", width=4)
    x = jnp.zeros((2, 16, 16, 3))
    with pytest.raises(ValueError, match=r"distinct stages in 1\.\.3"):
        _param_shapes(models.MultiExitResNet(backbone, exits=(4,)), x)
    with pytest.raises(ValueError, match="Unknown sub-network kind 'tiny'"):
        _param_shapes(models.MultiExitResNet(backbone, exits=(2,), kind="tiny"), x)


def test_gradients_reach_the_shared_stages_from_both_exits():
    net = models.MultiExitContrastive(models.MultiExitResNet(
        models.ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=4), exits=(2,), kind="fc"),
        hidden_dim=8, out_dim=8)
    x = jax.random.normal(jax.random.key(0), (6, 16, 16, 1))
    variables = net.init(train.init_key(0), x, train=False)

    def grads_of(which):
        def f(params):
            (_, z), _ = net.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
            out = z.backbone if which == "backbone" else z.exits[0]
            return jnp.sum(out * jnp.arange(out.shape[-1]))
        g = jax.jit(jax.grad(f), compiler_options=FAST_COMPILE)(variables["params"])
        return {k: float(sum(jnp.abs(leaf).sum() for leaf in jax.tree.leaves(v)))
                for k, v in {**g["network"]["backbone"], "exit_fc": g["network"]["exit2_fc"],
                             "head": g["head"], "exit_head": g["exit2_head"]}.items()}

    sub, main = grads_of("subnet"), grads_of("backbone")
    for shared in ("stem", "stage1", "stage2"):  # before the exit: both paths reach them
        assert sub[shared] > 1e-6 and main[shared] > 1e-6, shared
    for own in ("stage3", "stage4", "head"):  # the backbone's own stages and head
        assert sub[own] == 0.0 and main[own] > 1e-6, own
    for own in ("exit_fc", "exit_head"):  # the sub-network's own layers
        assert main[own] == 0.0 and sub[own] > 1e-6, own
    # L2-normalised projections.
    (_, z), _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(jnp.linalg.norm(z.exits[0], axis=-1), 1.0, rtol=1e-5)


# ---- The objectives, against the official code's routing ---------------------------------------

def official_selfcon_ref(f1, f2, labels, *, bsz, multiview, label, alpha, temperature):
    """raymin0223/self-contrastive-learning ``main_represent.py`` ``_train`` for SelfCon, in
    NumPy: ``f1`` a list of sub-network projections and ``f2`` the backbone's, each
    ``[V*B, D]`` (views concatenated along the batch as the official code does)."""
    crit = functools.partial(conloss_ref, temperature=temperature)
    lab = labels if label else None
    stacked = np.stack(list(f1) + [f2], axis=1)
    if not multiview:
        if not alpha:
            return crit(stacked, lab)
        loss = crit(f2[:, None], labels, supcon_s=True) if label else 0.0
        return loss + alpha * crit(stacked, lab, selfcon_s_FG=True)
    if not alpha:
        return crit(stacked, np.concatenate([labels, labels]) if label else None)
    backbone = np.stack([f2[:bsz], f2[bsz:]], axis=1)
    return crit(backbone, lab) + alpha * crit(stacked, lab, selfcon_m_FG=True)


@pytest.mark.parametrize("multiview", [False, True])
@pytest.mark.parametrize("label", [True, False])
@pytest.mark.parametrize("starred", [False, True])
def test_selfcon_loss_follows_the_official_code(multiview, label, starred):
    rng = np.random.default_rng(int(multiview) * 4 + int(label) * 2 + int(starred))
    b, v, d = 12, 2 if multiview else 1, 6
    f2 = rng.normal(size=(v * b, d))
    f1 = [rng.normal(size=(v * b, d))]
    labels = rng.integers(0, 4, size=b)
    alpha = 0.7 if starred else 0.0
    want = official_selfcon_ref([conloss_norm(f) for f in f1], conloss_norm(f2), labels, bsz=b,
                                multiview=multiview, label=label, alpha=alpha, temperature=0.1)
    with jax.enable_x64(True):
        got, terms = selfcon_loss(jnp.asarray(f2), [jnp.asarray(f) for f in f1],
                                  jnp.asarray(labels) if label else None, num_views=v,
                                  temperature=0.1, anchors="subnet" if starred else "all",
                                  alpha=alpha)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert bool(terms) == starred


def conloss_norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_selfcon_loss_with_two_exits_per_view():
    # Two sub-networks (exits after stages 1 and 2), SelfCon-S and -S*, as the official code
    # stacks any number of them.
    rng = np.random.default_rng(5)
    b, d = 10, 5
    f1 = [conloss_norm(rng.normal(size=(b, d))) for _ in range(2)]
    f2 = conloss_norm(rng.normal(size=(b, d)))
    labels = rng.integers(0, 3, size=b)
    for alpha in (0.0, 1.0):
        want = official_selfcon_ref(f1, f2, labels, bsz=b, multiview=False, label=True,
                                    alpha=alpha, temperature=0.2)
        with jax.enable_x64(True):
            got, _ = selfcon_loss(jnp.asarray(f2), [jnp.asarray(f) for f in f1],
                                  jnp.asarray(labels), num_views=1, temperature=0.2,
                                  anchors="subnet" if alpha else "all", alpha=alpha)
        np.testing.assert_allclose(got, want, rtol=1e-10)


# ---- The methods' steps --------------------------------------------------------------------

def tiny(name, **overrides):
    """``configs/<name>.py:fashion_mnist`` shrunk to seconds (stride-1 stem, SGD, no warm-up)."""
    c = load_config(name)
    return set_fields(c, {"data.train_split": "train[:256]", "data.test_split": "test[:128]",
                          "data.image_size": 16, "model.width": 4, "model.stem_stride": 1,
                          "batch_size": 16, "total_steps": 2, "log_every": 1,
                          "optimizer.warmup_epochs": 0.0, "optimizer.lr": 0.05,
                          "eval.baselines": False, "eval.linear_epochs": 2, "eval.knn_k": 5,
                          **overrides})


def small_method(name, **overrides):
    """The method of a tiny config, with a one-block-per-stage ResNet (faster to compile)."""
    cfg = tiny(name, **overrides)
    method = methods.get_method(name)(cfg, num_classes=10)
    small = models.ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=4)
    method.model = method.model.clone(network=method.model.network.clone(backbone=small))
    return cfg, method


def make_batch(seed, views, batch_size=16, image_size=16):
    return synthetic_batch(seed, batch_size=batch_size, views=views, image_size=image_size,
                           num_classes=4, brighter_second_view=False)


def test_selfcon_s_with_two_exits_equals_supcon_on_stacked_features():
    cfg, method = small_method("selfcon")
    batch = make_batch(0, 1)
    params, state = jax.jit(method.init_model)(train.init_key(0), batch)
    loss, out = jax.jit(method.loss)(params, state, batch, jax.random.key(0), jnp.int32(0))
    # The projections of the one view, computed here, stacked [sub-network, backbone].
    (_, z), _ = jax.jit(lambda p, s, x: method.model.apply(
        {"params": p, **s}, x, train=True, mutable=["batch_stats"]))(params, state,
                                                                     batch["views"][:, 0])
    stacked = jnp.stack([z.exits[0], z.backbone], axis=1)
    want = losses.supcon(stacked, batch["label"], temperature=0.1)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # And not SupCon-S on the backbone alone (the sub-network's entries matter).
    assert not np.isclose(loss, losses.supcon(z.backbone[:, None], batch["label"],
                                              temperature=0.1), rtol=1e-3)
    assert out.features.shape == (16, method.model.network.backbone.feature_dim)


NUM_STEPS = 3


def run_steps(name, num_devices, initial=None, **overrides):
    cfg, method = small_method(name, **overrides)
    run = helpers.run_steps(cfg, method, num_devices,
                            [make_batch(10 + i, cfg.data.num_views) for i in range(NUM_STEPS)],
                            initial=initial, rng_seed=3)
    return run["initial"], run["metrics"], run["params"][-1]


@pytest.mark.parametrize("variant", ["S", pytest.param("M*", marks=pytest.mark.integration)])
def test_eight_devices_equal_one_device(variant):
    overrides = {} if variant == "S" else {"selfcon.multiview": True, "data.num_views": 2,
                                           "selfcon.anchors": "subnet"}
    initial, one, params_one = run_steps("selfcon", 1, **overrides)
    _, eight, params_eight = run_steps("selfcon", 8, initial=initial, **overrides)
    keys = ("loss", "backbone_term", "subnet_term") if variant == "M*" else ("loss",)
    for key in keys:
        np.testing.assert_allclose([m[key] for m in eight], [m[key] for m in one], rtol=1e-5,
                                   err_msg=key)
    assert all(np.isfinite(m["loss"]) for m in one)
    # The steps did update the network (the check fails with lr 0 or zero gradients; that
    # the update is the right one is tests/test_update_is_gradient.py's).
    moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(params_one),
                                                   jax.tree.leaves(initial.params))]
    assert max(moved) > 1e-3, max(moved)
    for a, b in zip(jax.tree.leaves(params_eight), jax.tree.leaves(params_one)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mixed_precision_keeps_float32_parameters_and_loss():
    for name in ("selfcon", "supcon", "subnet_ce"):
        cfg = tiny(name, **{"model.dtype": "bfloat16"})
        method = methods.get_method(name)(cfg, num_classes=10)
        batch = make_batch(0, cfg.data.num_views)
        params, state = jax.eval_shape(method.init_model, train.init_key(0), batch)
        assert {x.dtype for x in jax.tree.leaves((params, state))} == {jnp.dtype("float32")}
        loss, out = jax.eval_shape(method.loss, params, state, batch, jax.random.key(0),
                                   jnp.int32(0))
        assert loss.dtype == jnp.float32 and out.features.dtype == jnp.float32
        grads = jax.eval_shape(jax.grad(lambda p, s: method.loss(p, s, batch, jax.random.key(0),
                                                                 jnp.int32(0))[0]), params, state)
        assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
    # ... while the convolutions compute in bfloat16.
    net = methods.get_method("selfcon")(tiny("selfcon", **{"model.dtype": "bfloat16"}),
                                        num_classes=10).model.network.backbone
    x = jnp.zeros((2, 16, 16, 1))
    variables = jax.eval_shape(lambda: net.init(train.init_key(0), x, train=False))
    _, stages = jax.eval_shape(lambda v: net.apply(v, x, train=False, return_stages=True),
                               variables)
    assert stages["stage2"].dtype == jnp.bfloat16


def test_methods_check_their_settings():
    with pytest.raises(ValueError, match="data.num_views=2"):
        methods.get_method("selfcon")(tiny("selfcon", **{"selfcon.multiview": True}),
                                      num_classes=10)
    with pytest.raises(ValueError, match="anchors"):
        methods.get_method("selfcon")(tiny("selfcon", **{"selfcon.anchors": "backbone"}),
                                      num_classes=10)
    with pytest.raises(ValueError, match="needs a sub-network"):
        methods.get_method("selfcon")(tiny("selfcon", **{"model.exits": ()}), num_classes=10)
    with pytest.raises(ValueError, match="data.num_views=1"):
        methods.get_method("ce")(tiny("ce", **{"data.num_views": 2}), num_classes=10)


def test_subnet_ce_adds_the_sub_network_cross_entropy():
    cfg, method = small_method("subnet_ce", **{"loss.alpha": 0.5})
    batch = make_batch(1, 1)
    params, state = jax.jit(method.init_model)(train.init_key(0), batch)
    loss, out = jax.jit(method.loss)(params, state, batch, jax.random.key(0), jnp.int32(0))
    (_, logits), _ = method.model.apply({"params": params, **state}, batch["views"][:, 0],
                                        train=True, mutable=["batch_stats"])

    def ce(lg):
        lg = np.asarray(lg, np.float64)
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        return np.mean(lse - lg[np.arange(len(lg)), batch["label"]])

    np.testing.assert_allclose(loss, ce(logits.backbone) + 0.5 * ce(logits.exits[0]), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["subnet2_loss"], ce(logits.exits[0]), rtol=1e-5)


# ---- The linear-probe protocol (lr 3, x0.1 at 60 and 80) -------------------------------------

def test_piecewise_linear_probe_matches_numpy_step_decay():
    rng = np.random.default_rng(0)
    n, d, k = 16, 4, 3
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, size=n).astype(np.int32)
    lr, epochs, decay = 0.5, 5, (2, 4)
    got = linear._fit(jnp.asarray(x), jnp.asarray(y), jax.random.key(0), num_classes=k,
                      epochs=epochs, batch_size=n, lr=lr, weight_decay=0.0, optimizer="sgd",
                      schedule="piecewise", decay_epochs=decay, decay_rate=0.1)
    w, b = np.zeros((d, k)), np.zeros(k)
    buf_w, buf_b = np.zeros((d, k)), np.zeros(k)
    onehot = np.eye(k)[y]
    for epoch in range(epochs):  # one full batch per epoch
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        buf_w = 0.9 * buf_w + x.T @ (p - onehot) / n
        buf_b = 0.9 * buf_b + (p - onehot).mean(0)
        lr_t = lr * 0.1 ** sum(epoch >= e for e in decay)
        w, b = w - lr_t * buf_w, b - lr_t * buf_b
    np.testing.assert_allclose(got["w"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], b, rtol=1e-5, atol=1e-6)
    out = linear.linear_probe(x, y, x, y, num_classes=k, epochs=3, return_logits=True)
    assert out["test_logits"].shape == (n, k)
    assert out["top1"] == np.mean(np.argmax(out["test_logits"], -1) == y)
    with pytest.raises(ValueError, match="linear-probe schedule"):
        linear.linear_probe(x, y, x, y, num_classes=k, schedule="step")


# ---- Configs -----------------------------------------------------------------------------------

def test_configs_carry_the_official_cifar100_recipe():
    for name in ("selfcon", "supcon", "ce", "subnet_ce"):
        for variant in ("fashion_mnist", "cifar10", "cifar100"):
            c = load_config(name, variant)
            assert c.method == name
            data.augment_configs(c.data)
        with pytest.raises(ValueError, match="Unknown variant"):
            load_config(name, "mnist")
        c = load_config(name, "cifar100")
        assert c.batch_size == 1024 and c.model.name == "resnet18" and c.model.stem == "cifar"
        assert c.model.stem_stride == 1 and c.model.dtype == "bfloat16"
        o = c.optimizer
        assert (o.name, o.momentum, o.weight_decay, o.lr_scaling, o.exclude_bias_and_norm) == (
            "sgd", 0.9, 1e-4, "none", False)
        assert o.final_lr_ratio == 1e-3
        e = c.eval
        assert (e.linear_optimizer, e.linear_lr, e.linear_weight_decay, e.linear_epochs,
                e.linear_batch_size, e.linear_schedule, tuple(e.linear_decay_epochs),
                e.linear_decay_rate) == ("sgd", 3.0, 0.0, 100, 512, "piecewise", (60, 80), 0.1)
    for name in ("selfcon", "supcon"):
        c = load_config(name, "cifar100")
        assert (c.optimizer.lr, c.loss.temperature, c.num_epochs) == (0.5, 0.1, 1000)
        assert c.optimizer.warmup_epochs == 10 and np.isclose(c.optimizer.lr *
                                                               c.optimizer.warmup_init, 0.01)
        a = c.data.augment
        assert (a.crop_scale, a.jitter_p, a.brightness, a.contrast, a.saturation, a.hue,
                a.grayscale_p, a.blur_p) == ((0.2, 1.0), 0.8, 0.4, 0.4, 0.4, 0.1, 0.2, 0.0)
    sc, sup = load_config("selfcon", "cifar100"), load_config("supcon", "cifar100")
    assert sc.data.num_views == 1 and tuple(sc.model.exits) == (2,) and sc.model.exit_kind == "fc"
    assert sup.data.num_views == 2 and tuple(sup.model.exits) == ()
    assert sc.projector.hidden_dim == 0 and sc.projector.out_dim == 128
    ce = load_config("ce", "cifar100")  # scripts/1stage_train.sh
    assert (ce.optimizer.lr, ce.num_epochs, ce.data.augment.jitter_p) == (0.8, 500, 0.0)


# ---- The command line --------------------------------------------------------------------------

CLI_TINY = ["--config.data.train_split=train[:128]", "--config.data.test_split=test[:64]",
            "--config.data.image_size=16", "--config.model.width=4",
            "--config.model.stem_stride=2", "--config.batch_size=16",
            "--config.total_steps=2", "--config.eval.baselines=False",
            "--config.eval.linear_epochs=1", "--config.eval.knn_k=5",
            "--config.optimizer.warmup_epochs=0"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["selfcon", "supcon", "ce", "subnet_ce"])
def test_cli_trains_and_evaluates(name, tmp_path):
    # Compilation dominates a tiny run: compile without the expensive optimisation passes
    # (as the loss tests do), and share compiled programs (probes, kNN) between the methods.
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, SSLJAX_XLA_CACHE=os.path.join(REPO, ".pytest_cache", "xla_cli"),
               PYTHONPATH=REPO, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {fast}".strip())
    proc = subprocess.run(
        [sys.executable, "-m", "ssljax.main", f"--config=configs/{name}.py:fashion_mnist",
         f"--workdir={tmp_path}", *CLI_TINY],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(tmp_path / "results.json"))
    assert results["method"] == name and results["steps"] == 2
    keys = {"linear_probe_top1", "knn_top1"}
    if name in ("selfcon", "subnet_ce"):  # backbone, sub-network and their ensemble
        keys |= {"subnet_linear_probe_top1", "subnet_knn_top1", "ensemble_linear_probe_top1"}
        assert "ensemble (mean of logits)" in proc.stdout
    assert keys <= set(results)
    for k in keys:  # scored on the 64 test images: a whole number of them
        correct = results[k] * 64 / 100
        assert abs(correct - round(correct)) < 0.01, (k, results[k])
