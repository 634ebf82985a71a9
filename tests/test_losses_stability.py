"""Stability: finite values and gradients at large logits, duplicated or zero
embeddings, rank-deficient covariances, and in float32 / bfloat16."""
from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssljax.losses as L

# Numerical checks do not need optimised machine code: compiling without LLVM's
# expensive passes is ~3x faster on CPU and the tests are compile-bound.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def _rng(seed):
    return np.random.default_rng(seed)


def _finite_value_and_grads(fn, *args, argnums=(0, 1)):
    value, grads = fast_jit(jax.value_and_grad(fn, argnums=argnums))(*args)
    assert np.isfinite(np.asarray(value, np.float32)), value
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g, np.float32))), g
    return value, grads


CONTRASTIVE = {
    "nt_xent": lambda a, b, t, bs: L.nt_xent(a, b, temperature=t, block_size=bs),
    "infonce": lambda a, b, t, bs: L.infonce(a, b, temperature=t, block_size=bs,
                                             stop_gradient_key=False),
    "infonce_queue": lambda a, b, t, bs: L.infonce(a, b, temperature=t, block_size=bs,
                                                   queue=jnp.concatenate([b, -a])),
    "supcon": lambda a, b, t, bs: L.supcon(jnp.stack([a, b], 1), jnp.arange(a.shape[0]) % 3,
                                           temperature=t, block_size=bs),
}


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
def test_contrastive_large_logits_duplicates_and_zeros(name):
    """T = 0.01 gives logits of 100; rows 0-3 identical (in both views), row 4 all zero."""
    fn = CONTRASTIVE[name]
    r = _rng(0)
    z1 = r.normal(size=(10, 6))
    z1[1:4] = z1[0]
    z1[4] = 0.0
    z2 = z1 + 0.01 * r.normal(size=z1.shape)
    z2[4] = 0.0

    def both(a, b):
        # Dense and tiled in one program (one compile); they must agree.
        values = jnp.stack([fn(a, b, 0.01, None), fn(a, b, 0.01, 3)])
        return jnp.sum(values), values

    (_, values), grads = fast_jit(jax.value_and_grad(both, argnums=(0, 1), has_aux=True))(
        jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
    assert np.all(np.isfinite(values)) and all(np.all(np.isfinite(g)) for g in grads)
    # Logits of 1/0.01: float32 rounding of about 100 * 1.2e-7 in each summation order.
    np.testing.assert_allclose(values[0], values[1], rtol=3e-5)
    with jax.enable_x64(True):  # The float64 value agrees: no overflow or cancellation.
        ref = fast_jit(lambda a, b: fn(a, b, 0.01, None))(jnp.asarray(z1), jnp.asarray(z2))
    np.testing.assert_allclose(values[0], ref, rtol=1e-4)  # float32 rounding of logits ~100


# Every loss once (the tiled paths share the dense paths' upcast; see test_contrastive_*).
ALL_LOSSES = {
    "nt_xent": lambda a, b: L.nt_xent(a, b, temperature=0.1),
    "infonce_queue": lambda a, b: L.infonce(a, b, temperature=0.1, queue=b[::-1]),
    "supcon": lambda a, b: L.supcon(jnp.stack([a, b], 1), temperature=0.1),
    "barlow_twins": lambda a, b: L.barlow_twins(a, b),
    "vicreg": lambda a, b: L.vicreg(a, b),
    "byol": lambda a, b: L.byol(a, b),
    "corinfomax": lambda a, b: L.corinfomax(a, b, L.corinfomax_init(a.shape[1]), sim_weight=250.0,
                                            la_R=0.01, la_mu=0.01)[0],
    "masked_reconstruction": lambda a, b: L.masked_reconstruction(
        a.reshape(a.shape[0], 2, -1), b.reshape(b.shape[0], 2, -1), jnp.ones((a.shape[0], 2))),
}


def test_bfloat16_inputs_compute_in_float32():
    """bfloat16 inputs: the loss equals the float32 loss of the same (rounded) values."""
    r = _rng(1)
    z1 = jnp.asarray(r.normal(size=(12, 8)), jnp.bfloat16)
    z2 = jnp.asarray(r.normal(size=(12, 8)), jnp.bfloat16)

    def all_losses(a, b):
        low = jnp.stack([fn(a, b) for fn in ALL_LOSSES.values()])
        a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
        f32 = jnp.stack([fn(a32, b32) for fn in ALL_LOSSES.values()])
        return jnp.sum(low), (low, f32)

    (_, (low, f32)), grads = fast_jit(
        jax.value_and_grad(all_losses, argnums=(0, 1), has_aux=True))(z1, z2)
    for g in grads:
        assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
    assert low.dtype == jnp.float32 and np.all(np.isfinite(low))
    np.testing.assert_allclose(low, f32, rtol=1e-6)


def test_rank_deficient_covariances():
    """N < D and a duplicated / constant dimension: covariance matrices are singular."""
    r = _rng(2)
    z1 = r.normal(size=(3, 8))
    z1[:, 5] = z1[:, 4]  # duplicated dimension
    z1[:, 6] = 1.0  # constant (dead) dimension
    z2 = z1.copy()
    z1, z2 = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)

    def losses(a, b):
        # la_R = 0: the covariance is the rank-2 batch covariance alone, + eps 1e-8 I,
        # which float32 Cholesky cannot factor; the eigenvalue fallback takes over.
        cim, _ = L.corinfomax(a, b, L.corinfomax_init(8), sim_weight=1.0, la_R=0.0, la_mu=0.0)
        return jnp.stack([cim, L.vicreg(a, b), L.barlow_twins(a, b),
                          L.barlow_twins(a, b, lambd=5e-3, ddof=1, eps=0.0)])

    _finite_value_and_grads(lambda a, b: jnp.sum(losses(a, b)), z1, z2)


def test_psd_logdet_matches_slogdet_and_falls_back_safely():
    r = _rng(3)
    a = r.normal(size=(6, 6))
    pd = a @ a.T + 0.5 * np.eye(6)
    singular = np.outer(a[0], a[0])  # rank 1
    logdet_and_grad = fast_jit(jax.value_and_grad(L.psd_logdet))
    with jax.enable_x64(True):
        value, grad = logdet_and_grad(jnp.asarray(pd))
        np.testing.assert_allclose(value, np.linalg.slogdet(pd)[1], rtol=1e-12)
        np.testing.assert_allclose(grad, np.linalg.inv(pd), rtol=1e-9, atol=1e-12)
    value, grad = logdet_and_grad(jnp.asarray(singular, jnp.float32))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # The fallback keeps the one real eigenvalue and clamps the rest at the rank tolerance.
    w = np.linalg.eigvalsh(singular)
    floor = 6 * np.finfo(np.float32).eps * w.max()
    np.testing.assert_allclose(value, np.log(w.max()) + 5 * np.log(floor), rtol=1e-3)
    # The gradient of the kept eigenvalue: its pseudo-inverse, v v^T / w.
    v = a[0] / np.linalg.norm(a[0])
    np.testing.assert_allclose(grad, np.outer(v, v) / w.max(), rtol=1e-3, atol=1e-6)


def test_no_hard_coded_large_negative_masks():
    """Masks use -inf / where: a -1e9 (or 1e9) constant overflows in low precision."""
    source = "".join(p.read_text() for p in pathlib.Path(L.__file__).parent.glob("*.py"))
    assert not re.search(r"1e\+?9|1e\+?10|1\.0e9|-1e4\b", source)


def test_psd_logdet_under_vmap_is_nan_free():
    """vmap turns lax.cond into select: both branches run, neither may produce NaN."""
    a = _rng(4).normal(size=(5, 5))
    batch = jnp.asarray(np.stack([a @ a.T + np.eye(5), np.outer(a[0], a[0])]), jnp.float32)
    values, grads = fast_jit(jax.vmap(jax.value_and_grad(L.psd_logdet)))(batch)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(values[0], np.linalg.slogdet(np.asarray(batch[0], np.float64))[1],
                               rtol=1e-5)
