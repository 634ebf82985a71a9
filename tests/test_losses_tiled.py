"""The tiled contrastive path: same value and gradient as the dense path, and the
N x N (2N x 2N) similarity matrix never exists, neither in the program nor in memory."""
from __future__ import annotations

import functools
import math

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


def _dense_lse(rows, cols, self_index):
    logits = rows @ cols.T
    logits = jnp.where(jnp.arange(cols.shape[0])[None, :] == self_index[:, None], -jnp.inf, logits)
    return jax.nn.logsumexp(logits, axis=1)


# (rows, cols, block_size, leave self out): block of 1, a block that does not divide
# the columns, a block larger than all columns, rows != cols.
LSE_CASES = [(9, 9, 1, True), (10, 10, 3, True), (7, 7, 50, True), (5, 12, 4, False),
             (12, 5, 5, True)]


def test_tiled_logsumexp_matches_dense_value_and_vjp():
    r = _rng(0)

    def all_cases(params):
        out = []
        for (m, c, block, leave_self), (rows, cols, g) in zip(LSE_CASES, params):
            self_index = jnp.arange(m) if leave_self else jnp.full((m,), -1)
            self_index = jnp.where(self_index < c, self_index, -1)
            tiled = functools.partial(L.tiled_logsumexp, self_index=self_index, block_size=block)
            for fn in (tiled, lambda a, b: _dense_lse(a, b, self_index)):
                value, vjp = jax.vjp(fn, rows, cols)
                out.append((value, vjp(g)))
        return out

    with jax.enable_x64(True):
        params = [(jnp.asarray(r.normal(size=(m, 4)) * 3), jnp.asarray(r.normal(size=(c, 4))),
                   jnp.asarray(r.normal(size=m))) for m, c, _, _ in LSE_CASES]
        results = fast_jit(all_cases)(params)
    for tiled, dense in zip(results[::2], results[1::2]):
        for a, b in zip(jax.tree.leaves(tiled), jax.tree.leaves(dense)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
def test_contrastive_tiled_equals_dense(dtype):
    """nt_xent, infonce (queue and in-batch) and supcon: value and gradient to 1e-5,
    with a traced (learnt) temperature whose gradient must agree too."""
    r = _rng(1)
    n, d = 50, 12
    z1, z2 = r.normal(size=(n, d)), r.normal(size=(n, d))
    queue = r.normal(size=(70, d))
    labels = r.integers(0, 7, size=n)

    losses = [
        lambda a, b, t, bs: L.nt_xent(a, b, temperature=t, block_size=bs),
        lambda a, b, t, bs: L.infonce(a, b, temperature=t, queue=queue, block_size=bs),
        lambda a, b, t, bs: L.infonce(a, b, temperature=t, block_size=bs, stop_gradient_key=False),
        lambda a, b, t, bs: L.supcon(jnp.stack([a, b], 1), labels, temperature=t, block_size=bs),
        lambda a, b, t, bs: L.supcon(jnp.stack([a, b, a[::-1]], 1), temperature=t, anchors=(0, 2),
                                     block_size=bs),
    ]

    def all_paths(a, b, t):  # one program, one compile
        return [[jax.value_and_grad(fn, argnums=(0, 1, 2))(a, b, t, bs) for bs in (None, 16)]
                for fn in losses]

    with jax.enable_x64(dtype == np.float64):
        results = fast_jit(all_paths)(jnp.asarray(z1, dtype), jnp.asarray(z2, dtype),
                                      jnp.asarray(0.2, dtype))
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    for dense, tiled in results:
        for a, b in zip(jax.tree.leaves(tiled), jax.tree.leaves(dense)):
            scale = np.max(np.abs(b))
            assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= rtol * scale


def _largest_intermediate(jaxpr) -> int:
    """Elements of the largest array any equation of a jaxpr produces, sub-jaxprs included."""
    biggest = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            shape = getattr(v.aval, "shape", ())
            biggest = max(biggest, math.prod(shape))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):  # scan / cond / custom_vjp / pjit bodies
                    biggest = max(biggest, _largest_intermediate(sub))
    return biggest


@pytest.mark.parametrize("name", ["nt_xent", "infonce", "infonce_queue", "supcon"])
def test_tiled_program_never_builds_the_similarity_matrix(name):
    """Trace value-and-grad (no compile): no array in the forward or the backward,
    inside the loops or out, is larger than rows x block_size."""
    n, d, block = 512, 16, 64
    z = jax.ShapeDtypeStruct((n, d), jnp.float32)
    fns = {
        "nt_xent": (lambda a, b, bs: L.nt_xent(a, b, temperature=0.1, block_size=bs), 2 * n),
        "infonce": (lambda a, b, bs: L.infonce(a, b, temperature=0.1, block_size=bs,
                                               stop_gradient_key=False), n),
        "infonce_queue": (lambda a, b, bs: L.infonce(a, b, temperature=0.1, block_size=bs,
                                                     queue=jnp.concatenate([a, b, a])), n),
        "supcon": (lambda a, b, bs: L.supcon(jnp.stack([a, b], 1), jnp.arange(n) % 10,
                                             temperature=0.1, block_size=bs), 2 * n),
    }
    fn, rows = fns[name]
    tiled = jax.make_jaxpr(jax.value_and_grad(lambda a, b: fn(a, b, block), argnums=(0, 1)))(z, z)
    dense = jax.make_jaxpr(jax.value_and_grad(lambda a, b: fn(a, b, None), argnums=(0, 1)))(z, z)
    assert _largest_intermediate(tiled.jaxpr) <= rows * block
    assert _largest_intermediate(dense.jaxpr) >= rows * n  # the check can fail


def test_tiled_nt_xent_compiled_temporary_memory():
    """The compiled value-and-grad of the tiled path needs a fraction of the dense memory."""
    n, d, block = 2048, 32, 64
    z = jax.ShapeDtypeStruct((n, d), jnp.float32)

    def temp_bytes(block_size):
        fn = jax.value_and_grad(
            lambda a, b: L.nt_xent(a, b, temperature=0.1, block_size=block_size), argnums=(0, 1))
        return jax.jit(fn).lower(z, z).compile().memory_analysis().temp_size_in_bytes

    dense, tiled = temp_bytes(None), temp_bytes(block)
    assert dense >= (2 * n) ** 2 * 4  # at least one 2N x 2N float32 matrix
    assert tiled <= dense / 10, (dense, tiled)  # about 2N x block plus a few copies of z


def test_errors_say_what_to_do():
    z = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="same shape"):
        L.nt_xent(z, jnp.zeros((5, 3)), temperature=0.1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        L.nt_xent(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="block_size must be a positive"):
        L.nt_xent(z, z, temperature=0.1, block_size=0)
    with pytest.raises(ValueError, match=r"queue \[K, 3\]"):
        L.infonce(z, z, temperature=0.1, queue=jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match="distinct view indices"):
        L.supcon(jnp.zeros((4, 2, 3)), temperature=0.1, anchors=(0, 2))
    with pytest.raises(ValueError, match="corinfomax_init"):
        L.corinfomax(z, z, L.corinfomax_init(5), sim_weight=1.0, la_R=0.1, la_mu=0.1)
    with pytest.raises(ValueError, match="patch_size"):
        L.masked_reconstruction(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4, 1)), jnp.ones((2, 4)))
