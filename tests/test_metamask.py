"""MetaMask: the mask's meta-gradient (exact, first-order, finite difference) and the step.

The meta-gradient checks run in float64 (inside ``jax.enable_x64``, never globally: other
tests share the process) on a tiny smooth network, so that a central finite difference of
the outer objective is accurate to ~1e-9 and can judge the exact second-order gradient.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssljax import methods, models, optim, sharding, train
from ssljax.config import ConfigError
from ssljax.methods.metamask import MetaMask, momentum_buffer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import metamask as metamask_config  # noqa: E402

F64 = jnp.float64


class TinyBackbone(nn.Module):
    """Flatten, Dense-BN-tanh, Dense: smooth (tanh, not ReLU) so finite differences are exact
    to high order; float64 parameters and compute."""
    dim: int = 6

    @nn.compact
    def __call__(self, x, *, train):
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(10, dtype=F64, param_dtype=F64)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=F64,
                         param_dtype=F64)(x)
        return nn.Dense(self.dim, dtype=F64, param_dtype=F64)(jnp.tanh(x))


class TinyHead(nn.Module):
    """Dense-BN-tanh, Dense-BN (the MetaMask head shape, smooth, float64)."""
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x, *, train):
        def bn(y):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=F64,
                                param_dtype=F64)(y)
        x = jnp.tanh(bn(nn.Dense(self.hidden, dtype=F64, param_dtype=F64)(x)))
        return bn(nn.Dense(self.out, dtype=F64, param_dtype=F64)(x))


def tiny_config(**metamask):
    c = metamask_config.get_config("fashion_mnist")
    c.batch_size = 16
    c.bt_projector.hidden_dims = (16, 16)
    c.bt_projector.out_dim = 16
    c.cl_projector.hidden_dims = (16,)
    c.cl_projector.out_dim = 8
    c.metamask.update(metamask)
    return c


ETA, MU, WD = 0.5, 0.9, 0.01  # a large step, so the second-order term is large


FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FD_SCALES = (1e-1, 1e-2, 1e-3)


def compile_fast(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def meta_x64():
    """Meta-gradients of every kind and independent references, computed in float64."""
    with jax.enable_x64(True):
        c = tiny_config()
        c.optimizer.momentum = MU
        c.optimizer.weight_decay = WD
        method = MetaMask(c, num_classes=3, backbone=TinyBackbone(),
                          bt_head=TinyHead(8, 8), cl_head=TinyHead(8, 5))
        rng = np.random.default_rng(0)
        views = jnp.asarray(rng.normal(size=(8, 2, 3, 3, 1)), F64)
        params, state = method.init_model(jax.random.key(0), {"views": views})
        bs = state["batch_stats"]
        buf = jax.tree.map(lambda p: jnp.asarray(0.1 * rng.normal(size=p.shape), F64), params)
        m = jnp.asarray(rng.normal(size=6), F64)

        def everything(params, bs, buf, m, views):
            # The outer objective written out independently of the method's virtual step.
            def theta_prime(m):
                g = jax.grad(method.cl_loss)(params, bs, views, m)
                return jax.tree.map(lambda p, b, g: p - ETA * (MU * b + g + WD * p),
                                    params, buf, g)

            def outer(m):
                return method.cl_loss(theta_prime(m), bs, views, m)

            h = 1e-5
            steps = h * jnp.eye(6, dtype=F64)
            central = (jax.vmap(outer)(m + steps) - jax.vmap(outer)(m - steps)) / (2 * h)
            first_order_ref = jax.grad(method.cl_loss, argnums=3)(theta_prime(m), bs, views, m)

            def meta(kind, r=None):
                return method.meta_gradient(params, bs, buf, m, views, ETA, kind=kind, r=r)

            exact_value, exact = meta("exact")
            fo_value, first_order = meta("first_order")
            fd = [meta("finite_difference", r)[1] for r in FD_SCALES]
            return dict(outer=outer(m), exact_value=exact_value, fo_value=fo_value,
                        exact=exact, central=central, first_order=first_order,
                        first_order_ref=first_order_ref, fd=fd)

        out = compile_fast(everything, params, bs, buf, m, views)(params, bs, buf, m, views)
        return jax.tree.map(np.asarray, jax.device_get(out))


def test_exact_meta_gradient_equals_finite_difference_of_outer_objective(meta_x64):
    r = meta_x64
    assert r["exact"].dtype == np.float64
    # The method's virtual step is the one written out in the test.
    np.testing.assert_allclose(r["exact_value"], r["outer"], rtol=1e-13)
    np.testing.assert_allclose(r["fo_value"], r["outer"], rtol=1e-13)
    assert np.linalg.norm(r["exact"]) > 1e-3
    np.testing.assert_allclose(r["exact"], r["central"], rtol=1e-6, atol=1e-9)


def test_first_order_drops_the_second_order_term(meta_x64):
    r = meta_x64
    # theta' held constant: the gradient of L_CL(theta', M(m)) in m alone.
    np.testing.assert_allclose(r["first_order"], r["first_order_ref"], rtol=1e-12, atol=1e-15)
    # ... which is not the total derivative: the second-order term is a large part of it here.
    diff = np.linalg.norm(r["first_order"] - r["exact"])
    assert diff > 0.1 * np.linalg.norm(r["exact"])
    assert not np.allclose(r["first_order"], r["central"], rtol=1e-3)


def test_finite_difference_converges_to_exact(meta_x64):
    r = meta_x64
    errors = [np.linalg.norm(fd - r["exact"]) for fd in r["fd"]]
    # A central difference: the error falls ~100x per 10x smaller r (measured: 1.7, 1.7e-2,
    # 1.7e-4), and float64 rounding is still far below it at r = 1e-3.
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.02 * errors[0] and errors[2] < 0.02 * errors[1]
    assert errors[2] < 1e-4 * np.linalg.norm(r["exact"])


def test_momentum_buffer_is_read_from_the_sgd_state():
    params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([[0.1, 0.2]]), "b": jnp.array([-0.3])}
    c = tiny_config()
    tx = optim.make_optimizer(c.optimizer, lambda step: 0.1)
    _, opt_state = tx.update(grads, tx.init(params), params)
    buf = momentum_buffer(opt_state, params)
    # PyTorch's first step: buf = g + wd * p (coupled weight decay, every parameter).
    wd = c.optimizer.weight_decay
    for k in params:
        np.testing.assert_allclose(buf[k], grads[k] + wd * params[k], rtol=1e-6)
    adam = optax.adam(1e-3)
    with pytest.raises(ValueError, match="momentum-SGD"):
        momentum_buffer(adam.init(params), params)


def test_config_errors_and_recipe():
    assert methods.get_method("metamask") is MetaMask
    with pytest.raises(ConfigError, match="meta_grad"):
        MetaMask(tiny_config(meta_grad="second"), num_classes=10)
    c = tiny_config()
    c.optimizer.name = "lars"
    with pytest.raises(ConfigError, match="optimizer.name=sgd"):
        MetaMask(c, num_classes=10)
    c.metamask.meta_grad = "none"  # no virtual step: any optimizer
    MetaMask(c, num_classes=10)

    c = metamask_config.get_config("cifar10")
    assert (c.batch_size, c.num_epochs, c.data.augment.blur_p) == (512, 800, 0.0)
    o = c.optimizer
    assert (o.name, o.lr, o.lr_scaling, o.momentum, o.weight_decay) == ("sgd", 1e-3, "none",
                                                                        0.9, 5e-4)
    assert o.step_per_epoch and not o.exclude_bias_and_norm and o.warmup_epochs == 0
    mm = c.metamask
    assert (mm.weight_cl, mm.temperature, mm.mask_lr, mm.mask_momentum,
            mm.mask_weight_decay) == (10.0, 0.07, 1e-3, 0.9, 5e-4)
    assert tuple(c.bt_projector.hidden_dims) == (2048, 2048) and c.bt_projector.out_dim == 2048
    assert tuple(c.cl_projector.hidden_dims) == (2048,) and c.cl_projector.out_dim == 256
    assert c.bt_projector.last_bn and c.cl_projector.last_bn and not c.model.stem_relu
    assert (c.eval.knn_k, c.eval.knn_temperature) == (5, 1.0)

    # The CPU default: shapes only (no compilation); the mask starts at 0 (M = 1/2).
    c = metamask_config.get_config("fashion_mnist")
    method = MetaMask(c, num_classes=10)
    batch = {"views": jnp.zeros((4, 2, 28, 28, 1))}
    params, state = jax.eval_shape(method.init_model, train.init_key(0), batch)
    assert state["mask"].shape == (models.feature_dim("resnet18", 16),)
    assert params["bt_head"]["dense2"]["kernel"].shape == (512, 512)
    assert params["cl_head"]["dense1"]["kernel"].shape == (512, 128)


def test_embed_returns_masked_features():
    c = tiny_config()
    method = MetaMask(c, num_classes=3, backbone=models.MLP((8,), 6))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    params, state = method.init_model(jax.random.key(0), {"views": x[:, None]})
    np.testing.assert_array_equal(state["mask"], np.zeros(6))
    state["mask"] = jnp.linspace(-2.0, 2.0, 6)
    f = method.model.backbone.apply({"params": params["backbone"],
                                     "batch_stats": state["batch_stats"]["backbone"]},
                                    x, train=False)
    np.testing.assert_allclose(method.embed(params, state, x),
                               f * jax.nn.sigmoid(jnp.linspace(-2.0, 2.0, 6)), rtol=1e-6)


def run_steps(mesh, ts, batch, num_steps=2):
    # The official lr 1e-3; and a mask step large enough to change step 2. (With lr 0.05,
    # L_BT + 10 L_CL's large gradients throw this width-4 net ~40 units in one virtual step,
    # where float32 summation-order noise decides the meta-gradient.)
    c = tiny_config(mask_lr=1.0)
    method = step_method(c)
    steps = train.build_step(c, method, mesh, total_steps=10, steps_per_epoch=5)
    steps.abstract_state(batch)
    ts = jax.device_put(ts, steps._state_sharding)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    rng = jax.random.key(1)
    step = steps.train_step.lower(ts, batch, rng).compile(compiler_options=FAST_COMPILE)
    history = []
    for _ in range(num_steps):
        ts, metrics = step(ts, batch, rng)
        history.append((jax.device_get(metrics), np.asarray(ts.state["mask"])))
    return history


def step_method(c):
    # A one-stage ResNet (stride-1 stem without ReLU, as MetaMask's): the full step, quick
    # to compile. SGD, as test_train.py explains, keeps 8 vs 1 device comparisons tight.
    backbone = models.ResNet(stage_sizes=(1,), block="basic", width=4, stem_relu=False)
    return MetaMask(c, num_classes=10, backbone=backbone)


@pytest.fixture(scope="module")
def step_inputs():
    rng = np.random.default_rng(0)
    batch = {"views": rng.normal(size=(16, 2, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    c = tiny_config()
    method = step_method(c)
    tx = optim.make_optimizer(c.optimizer, lambda step: 1e-3)
    ts = jax.jit(lambda b: method.init(train.init_key(0), b, tx, optax.adam(1e-3)))(batch)
    return jax.device_get(ts), batch


def test_eight_devices_equal_one_device(step_inputs):
    # A sharding bug (per-device BatchNorm statistics or negatives in any of the model,
    # virtual or meta passes) moves these by whole percents. The model step's values agree
    # to 1e-5. The meta step's values are functions of float32 *gradients*, and in this
    # width-4 net the plain gradients already differ between the two summation orders by
    # ~5e-5 (grad of L_CL in theta) and ~1.4e-4 (in m), measured with no meta step at all:
    # that is the floor for meta_loss, the meta-gradient and the mask.
    ts, batch = step_inputs
    h8 = run_steps(sharding.make_mesh(8), ts, batch)
    h1 = run_steps(sharding.make_mesh(1), ts, batch)
    model_step = ("loss", "bt_loss", "cl_loss", "probe_loss", "probe_top1", "lr")
    for i, ((m8, mask8), (m1, mask1)) in enumerate(zip(h8, h1)):
        assert set(m8) == set(m1) >= {"meta_loss", "meta_grad_norm", "mask_mean", "mask_min",
                                      "mask_max", "mask_lr", *model_step}
        for k in m1:
            if k in ("mask_mean", "mask_min", "mask_max"):
                # Statistics of the mask: the same absolute tolerance as the mask below (the
                # second-order meta-gradient sums in another order on 8 devices).
                np.testing.assert_allclose(m8[k], m1[k], rtol=0, atol=2e-3,
                                           err_msg=f"step {i + 1}: {k}")
                continue
            # Step 1 is tight; from step 2 on, float32 rounding of the second-order step on
            # 8 devices (seen: 1.1e-3 relative on meta_grad_norm at step 2) compounds.
            rtol = (1e-5 if k in model_step else 3e-4) if i == 0 else 2e-3
            np.testing.assert_allclose(m8[k], m1[k], rtol=rtol, err_msg=f"step {i + 1}: {k}")
        # jax 0.10.x on this CPU: the mask logits drift by up to 1.04e-3 over 4 float32 steps
        # (the same on the pre-merge code); the exactness itself is the float64 FD test's job.
        np.testing.assert_allclose(mask8, mask1, rtol=0, atol=2e-3)
    (first, mask_1), (second, _) = h1
    # The meta step moved the mask away from 0 (M = 1/2), and the statistics report it.
    assert np.abs(mask_1).min() > 0.05
    sigmoid = 1 / (1 + np.exp(-mask_1))
    np.testing.assert_allclose([first["mask_mean"], first["mask_min"], first["mask_max"]],
                               [sigmoid.mean(), sigmoid.min(), sigmoid.max()], rtol=1e-6)
    np.testing.assert_allclose(first["loss"], first["bt_loss"] + 10 * first["cl_loss"],
                               rtol=1e-6)
    # The meta step's virtual SGD step lowers L_CL from theta_1 (about cl_loss) here.
    assert second["meta_loss"] < second["cl_loss"]
