"""Sharding exactness: on an 8-device mesh with the batch sharded over `data`, every
loss and gradient equals the single-device value on the same global batch, and the
contrastive losses communicate only embeddings (never an N x N matrix)."""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import ssljax.losses as L

# Numerical checks do not need optimised machine code: compiling without LLVM's
# expensive passes is ~3x faster on CPU and the tests are compile-bound.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)

# Global batch. N > 16 D, so that even 1/8 of an N x N matrix (what one device sends
# in an all-to-all transposition) is larger than the 2N x D embeddings.
N, D = 256, 8
COLLECTIVE = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(-start)?\(")
SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 fake CPU devices)")
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def _collective_sizes(hlo_text: str) -> list[tuple[str, int]]:
    """(op, elements of one array one device sends or receives) for every collective.

    Shapes in compiled HLO are per device. An all-to-all's tuple holds the pieces of
    one array, so they are summed; other tuple-shaped collectives combine unrelated
    arrays (e.g. several all-reduces), counted one by one. A reduce-scatter's operand
    is its result times the group size.
    """
    sizes = []
    for line in hlo_text.splitlines():
        m = COLLECTIVE.search(re.sub(r"/\*.*?\*/", "", line))  # drop /*index=5*/ comments
        if not m:
            continue
        op = m.group(2)
        counts = [math.prod(int(d) for d in dims.split(",") if d)
                  for dims in SHAPE.findall(m.group(1))]
        if op == "all-to-all":
            counts = [sum(counts)]
        sizes.extend((op, n * (8 if op == "reduce-scatter" else 1)) for n in counts)
    return sizes


def _rng(seed):
    return np.random.default_rng(seed)


def _sharded_matches_single(mesh, fn, args, specs, argnums, rtol=2e-5):
    """Runs value_and_grad(fn) on one device and sharded; returns the sharded compiled HLO."""
    vg = jax.value_and_grad(fn, argnums=argnums)
    single = fast_jit(vg)(*args)
    sharded_args = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    compiled = jax.jit(vg).lower(*sharded_args).compile()
    got = compiled(*sharded_args)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(got)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.max(np.abs(a)), 1e-12)
        assert np.max(np.abs(a - b)) / scale <= rtol
    return compiled.as_text()


def _pair(seed, n=N, d=D):
    r = _rng(seed)
    return (jnp.asarray(r.normal(size=(n, d)), jnp.float32),
            jnp.asarray(r.normal(size=(n, d)), jnp.float32))


def _assert_only_embeddings_communicated(hlo, rows, block_size=None):
    """No collective carries more than the gathered embeddings (rows x D elements;
    with a block size, rows padded to whole blocks)."""
    if block_size:
        rows = -(-rows // block_size) * block_size
    sizes = _collective_sizes(hlo)
    assert sizes, "expected the compiler to gather the embeddings across devices"
    biggest = max(n for _, n in sizes)
    assert biggest <= rows * D, f"a collective moves {biggest} elements: {sizes}"
    assert all(n < N * N // 8 for _, n in sizes)


@pytest.mark.parametrize("block_size", [None, 96])
def test_nt_xent_sharded(mesh, block_size):
    hlo = _sharded_matches_single(
        mesh, lambda a, b: L.nt_xent(a, b, temperature=0.1, block_size=block_size),
        _pair(0), [P("data"), P("data")], argnums=(0, 1))
    _assert_only_embeddings_communicated(hlo, rows=2 * N, block_size=block_size)


@pytest.mark.parametrize("block_size", [None, pytest.param(16, marks=pytest.mark.slow)])
def test_infonce_in_batch_sharded(mesh, block_size):
    hlo = _sharded_matches_single(
        mesh, lambda q, k: L.infonce(q, k, temperature=0.2, block_size=block_size,
                                     stop_gradient_key=False),
        _pair(1), [P("data"), P("data")], argnums=(0, 1))
    _assert_only_embeddings_communicated(hlo, rows=N, block_size=block_size)


@pytest.mark.parametrize("block_size", [pytest.param(None, marks=pytest.mark.slow), 16])
def test_infonce_queue_sharded(mesh, block_size):
    q, k = _pair(2)
    queue = jnp.asarray(_rng(3).normal(size=(40, D)), jnp.float32)
    _sharded_matches_single(
        mesh, lambda q, k, c: L.infonce(q, k, temperature=0.2, queue=c, block_size=block_size),
        [q, k, queue], [P("data"), P("data"), P()], argnums=(0,))


@pytest.mark.parametrize("block_size", [None, 96])
def test_supcon_sharded(mesh, block_size):
    feats = jnp.asarray(_rng(4).normal(size=(N, 2, D)), jnp.float32)
    labels = jnp.asarray(_rng(5).integers(0, 10, size=N), jnp.int32)
    hlo = _sharded_matches_single(
        mesh, lambda f, y: L.supcon(f, y, temperature=0.1, block_size=block_size),
        [feats, labels], [P("data"), P("data")], argnums=(0,))
    _assert_only_embeddings_communicated(hlo, rows=2 * N, block_size=block_size)


def test_barlow_twins_and_vicreg_sharded(mesh):
    z1, z2 = _pair(6)
    _sharded_matches_single(
        mesh, lambda a, b: L.barlow_twins(a, b) + L.barlow_twins(a, b, lambd=5e-3, ddof=1, eps=0.0)
        + L.vicreg(a, b), [z1, z2], [P("data"), P("data")], argnums=(0, 1))


def test_byol_and_corinfomax_sharded(mesh):
    z1, z2 = _pair(7)
    state = L.corinfomax_init(D)
    state = state._replace(mu1=state.mu1 + 0.1)

    def fn(a, b, st):
        loss, new_state = L.corinfomax(a, b, st, sim_weight=250.0, la_R=0.01, la_mu=0.01)
        # The new state enters the value so that its sharded statistics are compared too.
        return loss + L.byol(a, b) + L.byol(b, a) + jnp.sum(new_state.R1) + jnp.sum(new_state.mu2)

    _sharded_matches_single(mesh, fn, [z1, z2, state], [P("data"), P("data"), P()], argnums=(0, 1))


def test_masked_reconstruction_sharded(mesh):
    r = _rng(8)
    imgs = jnp.asarray(r.normal(size=(16, 8, 8, 3)), jnp.float32)
    pred = jnp.asarray(r.normal(size=(16, 16, 12)), jnp.float32)
    mask = jnp.asarray(r.random((16, 4, 4)) < 0.5)
    _sharded_matches_single(
        mesh, lambda p, t, m: L.masked_reconstruction(p, t, m, patch_size=2),
        [pred, imgs, mask], [P("data"), P("data"), P("data")], argnums=(0,))


def test_collective_check_catches_a_communicated_matrix(mesh):
    """The HLO check can fail: transposing row-sharded N x N logits across devices
    (an all-to-all), as a careless gradient of `logits.T` would, is caught."""
    sharded = NamedSharding(mesh, P("data"))

    def bad(a, b):
        weights = jax.lax.with_sharding_constraint(jnp.exp(a @ b.T), sharded)
        transposed = jax.lax.with_sharding_constraint(weights.T, sharded)
        return jnp.sum(jnp.log(jnp.sum(transposed, axis=1)))

    args = [jax.device_put(z, sharded) for z in _pair(9)]
    hlo = jax.jit(bad).lower(*args).compile().as_text()
    assert max(n for _, n in _collective_sizes(hlo)) >= N * N // 8
    with pytest.raises(AssertionError):
        _assert_only_embeddings_communicated(hlo, rows=2 * N)
