"""The optimizer path users run, against independent references (issue 21, item 3).

* LARS with weight decay and momentum, and AdamW, against NumPy transcriptions of the
  papers' optimizers (SimCLR's TensorFlow LARS: weight decay, then the trust ratio, both
  skipping biases and norm parameters, then ``v = momentum * v + lr * g``, ``p -= v``), over
  several steps of a warm-up + cosine schedule, so that the momentum buffer is populated and
  the learning rate changes under it.
* The warm-up + cosine schedule from the closed form, with the epoch-to-step conversion the
  trainer makes, and the ``lr`` the trainer writes to metrics.jsonl equal to it.
* FSDP's split optimizer state against data parallelism over several steps, in float64, where
  a different summation order moves nothing above 1e-10 (float32 runs of this tiny network
  amplify rounding to percents within 4 steps, see tests/test_fsdp.py).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import read_metrics, tiny_config
from ssljax import optim, sharding, train
from ssljax.config import base_config
from ssljax.methods import get_method


def opt_cfg(**kw):
    c = base_config().optimizer
    c.update(kw)
    return c


def closed_form_lr(step, *, peak, warmup_steps, total_steps, init_ratio=0.0, final_ratio=0.0):
    """Linear warm-up from ``init_ratio * peak`` to ``peak``, then half a cosine to
    ``final_ratio * peak`` at ``total_steps``."""
    if step < warmup_steps:
        start = init_ratio * peak
        return start + (peak - start) * step / warmup_steps
    t = min(step - warmup_steps, total_steps - warmup_steps) / (total_steps - warmup_steps)
    end = final_ratio * peak
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


# ---- Small parameter trees: a kernel, its bias and a norm scale ------------------------------
def params_and_grads(num_steps, seed=0):
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
              "bn": {"scale": 1 + 0.1 * rng.normal(size=4)}, "dense": rng.normal(size=(4, 5))}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape) * 0.1, params)
             for _ in range(num_steps)]
    return params, grads


def is_weight(path):
    """The exclusion rule of SimCLR/BYOL/Barlow Twins: no decay or adaptation for biases and
    norm parameters, written by name here (the library decides by rank)."""
    return path[-1] in ("kernel", "dense")


def assert_follows(got, want, params):
    """Each leaf within 1e-4 of the distance the reference travelled, so that a wrong step
    cannot hide in ||p||."""
    for k in want:
        moved = np.linalg.norm(want[k] - flat(params)[k])
        assert np.linalg.norm(got[k] - want[k]) < 1e-4 * moved, k


def run_optax(tx, params, grads):
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g),
                                   state, p)
        p = optax.apply_updates(p, updates)
    return p


def flat(tree):
    return {tuple(k.key for k in path): np.asarray(v, np.float64)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def lars_numpy(params, grads, lrs, *, wd, momentum, eta, adapts=is_weight):
    """``adapts(path)``: whether that parameter is decayed and trust-scaled."""
    p, g_steps = flat(params), [flat(g) for g in grads]
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for g, lr in zip(g_steps, lrs):
        for k in p:
            d = g[k]
            if adapts(k):
                d = d + wd * p[k]
                w_norm, d_norm = np.linalg.norm(p[k]), np.linalg.norm(d)
                trust = eta * w_norm / d_norm if w_norm > 0 and d_norm > 0 else 1.0
                d = trust * d
            v[k] = momentum * v[k] + lr * d
            p[k] = p[k] - v[k]
    return p


def adamw_numpy(params, grads, lrs, *, wd, b1, b2, eps=1e-8):
    p, g_steps = flat(params), [flat(g) for g in grads]
    m = {k: np.zeros_like(x) for k, x in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (g, lr) in enumerate(zip(g_steps, lrs), start=1):
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
            if is_weight(k):  # decoupled decay, scaled by the learning rate (Loshchilov-Hutter)
                step = step + wd * p[k]
            p[k] = p[k] - lr * step
    return p


SCHEDULE = dict(lr=0.3, lr_scaling="linear", warmup_epochs=0.5, warmup_init=0.0,
                final_lr_ratio=0.0, step_per_epoch=False)


def schedule_and_lrs(num_steps, batch=512, steps_per_epoch=6):
    cfg = opt_cfg(**SCHEDULE)
    sched = optim.make_schedule(cfg, global_batch_size=batch, total_steps=num_steps,
                                steps_per_epoch=steps_per_epoch)
    lrs = [closed_form_lr(s, peak=0.3 * batch / 256, warmup_steps=3, total_steps=num_steps)
           for s in range(num_steps)]
    return sched, lrs


@pytest.mark.parametrize("wd, momentum", [(1e-6, 0.9), (1.5e-3, 0.9), (0.1, 0.5)])
def test_lars_matches_simclr_lars_over_a_warmup(wd, momentum):
    num_steps = 8
    sched, lrs = schedule_and_lrs(num_steps)
    tx = optim.make_optimizer(opt_cfg(name="lars", weight_decay=wd, momentum=momentum,
                                      trust_coefficient=0.001, exclude_bias_and_norm=True,
                                      **SCHEDULE), sched)
    params, grads = params_and_grads(num_steps)
    got = flat(run_optax(tx, params, grads))
    want = lars_numpy(params, grads, lrs, wd=wd, momentum=momentum, eta=0.001)
    assert_follows(got, want, params)


def test_lars_without_exclusions_adapts_every_parameter():
    # exclude_bias_and_norm=False: biases and scales are decayed and trust-scaled too (the
    # LARS paper's rule); the NumPy reference with every parameter a "weight" must agree.
    num_steps = 4
    sched, lrs = schedule_and_lrs(num_steps)
    tx = optim.make_optimizer(opt_cfg(name="lars", weight_decay=1e-3, momentum=0.9,
                                      trust_coefficient=0.001, exclude_bias_and_norm=False,
                                      **SCHEDULE), sched)
    params, grads = params_and_grads(num_steps, seed=1)
    got = flat(run_optax(tx, params, grads))
    want = lars_numpy(params, grads, lrs, wd=1e-3, momentum=0.9, eta=0.001,
                      adapts=lambda path: True)
    assert_follows(got, want, params)


def test_adamw_matches_decoupled_weight_decay_over_a_warmup():
    num_steps = 8
    sched, lrs = schedule_and_lrs(num_steps)
    tx = optim.make_optimizer(opt_cfg(name="adamw", weight_decay=0.05, b1=0.9, b2=0.95,
                                      exclude_bias_and_norm=True, **SCHEDULE), sched)
    params, grads = params_and_grads(num_steps, seed=2)
    got = flat(run_optax(tx, params, grads))
    want = adamw_numpy(params, grads, lrs, wd=0.05, b1=0.9, b2=0.95)
    assert_follows(got, want, params)


@pytest.mark.parametrize("warmup_epochs, init_ratio, final_ratio",
                         [(2.0, 0.0, 0.0), (0.5, 0.1, 0.01), (0.0, 0.0, 0.2)])
def test_schedule_is_the_closed_form_with_epochs_converted_to_steps(warmup_epochs, init_ratio,
                                                                    final_ratio):
    steps_per_epoch, total = 37, 37 * 5  # 37 steps an epoch: 9472 examples at batch 256
    cfg = opt_cfg(lr=0.2, lr_scaling="linear", warmup_epochs=warmup_epochs,
                  warmup_init=init_ratio, final_lr_ratio=final_ratio, step_per_epoch=False)
    sched = optim.make_schedule(cfg, global_batch_size=1024, total_steps=total,
                                steps_per_epoch=steps_per_epoch)
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    for step in (0, 1, 17, warmup_steps, warmup_steps + 1, 100, total - 1, total):
        want = closed_form_lr(step, peak=0.8, warmup_steps=warmup_steps, total_steps=total,
                              init_ratio=init_ratio, final_ratio=final_ratio)
        assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-7), step


@pytest.mark.slow  # about 42 s: a trainer run (the schedule itself is checked above)
def test_logged_lr_is_the_schedule_of_each_step(tmp_path):
    # 192 examples at batch 16: 12 steps an epoch; 2 epochs = 24 steps, warm-up 0.5 epoch
    # = 6 steps, LARS (the default optimizer) with the linear scaling rule.
    cfg = tiny_config("simclr", **{"total_steps": -1, "num_epochs": 2,
                                   "data.train_split": "train[:192]",
                                   "optimizer.name": "lars", "optimizer.lr": 0.4,
                                   "optimizer.warmup_epochs": 0.5, "optimizer.momentum": 0.9,
                                   "optimizer.final_lr_ratio": 0.1, "stop_after_step": 23})
    cfg.unlock()
    train.train_and_evaluate(cfg, str(tmp_path))
    logged = {s: r["lr"] for s, r in read_metrics(str(tmp_path)).items()}
    assert sorted(logged) == list(range(1, 24))  # stopped before the evaluation
    for step, lr in logged.items():  # step s applies the learning rate of update s - 1
        want = closed_form_lr(step - 1, peak=0.4 * 16 / 256, warmup_steps=6, total_steps=24,
                              final_ratio=0.1)
        assert lr == pytest.approx(want, rel=1e-5, abs=1e-9), step


# ---- FSDP: the split optimizer state follows data parallelism ---------------------------------
def _run_float64(mesh, num_steps=5):
    cfg = tiny_config("simclr", **{"optimizer.name": "lars", "optimizer.momentum": 0.9,
                                   "optimizer.weight_decay": 1e-4, "optimizer.lr": 0.3,
                                   "sharding.fsdp_min_size": 0, "model.dtype": "float64"})
    rng = np.random.default_rng(0)
    batches = [{"views": rng.normal(size=(16, 2, 16, 16, 1)),
                "label": rng.integers(0, 10, size=16).astype(np.int32)}
               for _ in range(max(num_steps, 1))]
    with jax.enable_x64(True):
        method = get_method("simclr")(cfg, num_classes=10)
        steps = train.build_step(cfg, method, mesh, total_steps=10, steps_per_epoch=16)
        put = lambda b: jax.device_put(b, sharding.batch_sharding(mesh))  # noqa: E731
        example = put(batches[0])
        ts = steps.init(train.init_key(0), example)
        to64 = lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x  # noqa: E731
        ts = jax.tree.map(to64, ts)
        for b in batches[:num_steps]:
            ts, _ = steps.train_step(ts, put(b), jax.random.key(1))
        return jax.device_get(ts.params), jax.device_get(ts.opt_state), steps


@pytest.mark.slow  # about 50 s idle: two float64 runs on eight virtual devices
def test_fsdp_optimizer_state_equals_data_parallel_in_float64():
    dp_params, dp_opt, _ = _run_float64(sharding.make_mesh(8))
    fs_params, fs_opt, fs_steps = _run_float64(sharding.make_mesh(8, fsdp=4))
    # The state really was split: most of the momentum buffer lives on a quarter of devices.
    specs = [s.spec for s in jax.tree.leaves(fs_steps._state_sharding.opt_state)]
    assert sum(sharding.FSDP_AXIS in str(s) for s in specs) >= len(specs) // 2
    traces = [x for x in jax.tree.leaves(dp_opt) if getattr(x, "ndim", 0) > 1]
    assert traces and all(np.abs(t).max() > 0 for t in traces)  # momentum populated
    for name, a, b in (("params", dp_params, fs_params), ("opt_state", dp_opt, fs_opt)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype.kind != "f":
                np.testing.assert_array_equal(x, y)
                continue
            assert x.dtype == np.float64, name
            # Measured: 4e-14 relative after 1 step, 3e-14 after 3 (AMD EPYC, 8 fake devices).
            np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-12 * max(np.abs(x).max(), 1),
                                       err_msg=name)
