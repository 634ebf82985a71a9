"""Optimizers and schedules against hand-written NumPy (PyTorch semantics)."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssljax import optim
from ssljax.config import ConfigError, base_config


def opt_cfg(**kw):
    c = base_config().optimizer
    c.update(kw)
    return c


def test_sgd_is_pytorch_sgd_with_coupled_weight_decay():
    lr, mu, wd = 0.1, 0.9, 5e-4
    cfg = opt_cfg(name="sgd", momentum=mu, weight_decay=wd, exclude_bias_and_norm=False)
    tx = optim.make_optimizer(cfg, lambda step: lr)
    p = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.3, -0.1])}
    state = tx.init(p)
    ref = {k: np.asarray(v, np.float64) for k, v in p.items()}
    buf = {k: None for k in p}
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = {k: rng.normal(size=v.shape) for k, v in ref.items()}
        # torch.optim.SGD: d_p = g + wd * p; buf = d_p (first) or mu * buf + d_p; p -= lr * buf
        for k in ref:
            d = g[k] + wd * ref[k]
            buf[k] = d if buf[k] is None else mu * buf[k] + d
            ref[k] = ref[k] - lr * buf[k]
        updates, state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
    for k in ref:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-5)


def test_weight_decay_mask_spares_biases_and_norms():
    mask = optim.decay_mask({"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
                             "bn": {"scale": jnp.ones(4)}})
    assert mask == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False}}


def test_warmup_cosine_schedule_values():
    cfg = opt_cfg(lr=0.4, lr_scaling="linear", warmup_epochs=2, warmup_init=0.0,
                  final_lr_ratio=0.0)
    sched = optim.make_schedule(cfg, global_batch_size=512, total_steps=100, steps_per_epoch=10)
    peak = 0.4 * 512 / 256
    assert float(sched(0)) == pytest.approx(0.0)
    assert float(sched(10)) == pytest.approx(peak / 2)
    assert float(sched(20)) == pytest.approx(peak)
    t = 60
    assert float(sched(t)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * (t - 20) / 80)),
                                            rel=1e-5)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_schedule_stepped_per_epoch_is_constant_within_an_epoch():
    cfg = opt_cfg(lr=0.1, lr_scaling="none", warmup_epochs=0, step_per_epoch=True)
    sched = optim.make_schedule(cfg, global_batch_size=256, total_steps=50, steps_per_epoch=10)
    values = [float(sched(s)) for s in range(50)]
    for e in range(5):
        assert len(set(values[e * 10:(e + 1) * 10])) == 1
    assert values[10] < values[0]


def test_per_epoch_warmup_from_zero_is_refused_and_from_a_fraction_follows_the_epochs():
    # Held at each epoch's first value, a warm-up from 0 would train epoch 0 at lr 0.
    with pytest.raises(ConfigError, match="warmup_init"):
        optim.make_schedule(opt_cfg(lr=0.1, lr_scaling="none", warmup_epochs=2,
                                    step_per_epoch=True), global_batch_size=256,
                            total_steps=50, steps_per_epoch=10)
    cfg = opt_cfg(lr=0.1, lr_scaling="none", warmup_epochs=2, warmup_init=0.03,
                  step_per_epoch=True)
    sched = optim.make_schedule(cfg, global_batch_size=256, total_steps=50, steps_per_epoch=10)
    # CorInfoMax's recipe: epoch 0 at the warm-up start, epoch 1 halfway, epoch 2 at the peak.
    assert float(sched(0)) == pytest.approx(0.003) and float(sched(9)) == pytest.approx(0.003)
    assert float(sched(15)) == pytest.approx(0.003 + 0.5 * (0.1 - 0.003))
    assert float(sched(20)) == pytest.approx(0.1)


def test_sqrt_scaling_and_bad_names():
    assert optim.base_learning_rate(opt_cfg(lr=0.075, lr_scaling="sqrt"), 4096) == \
        pytest.approx(0.075 * 64)
    with pytest.raises(ValueError, match="lr_scaling"):
        optim.base_learning_rate(opt_cfg(lr_scaling="cubic"), 256)
    with pytest.raises(ValueError, match="'sgd', 'lars'"):
        optim.make_optimizer(opt_cfg(name="rmsprop"), lambda s: 0.1)


def test_lars_runs_and_excludes_1d_params_from_adaptation():
    cfg = opt_cfg(name="lars", lr=1.0, weight_decay=0.0, momentum=0.0)
    tx = optim.make_optimizer(cfg, lambda s: 1.0)
    p = {"w": jnp.full((4, 4), 10.0), "b": jnp.full((4,), 10.0)}
    g = {"w": jnp.ones((4, 4)), "b": jnp.ones((4,))}
    updates, _ = tx.update(g, tx.init(p), p)
    # Bias: plain SGD step. Kernel: scaled by trust * ||p|| / ||g|| = 0.001 * 40 / 4.
    np.testing.assert_allclose(updates["b"], -1.0)
    np.testing.assert_allclose(updates["w"], -0.001 * 40.0 / 4.0, rtol=1e-5)
