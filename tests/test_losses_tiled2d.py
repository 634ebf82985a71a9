"""The contrastive losses tiled in both dimensions, in low precision and as a ring over
devices: same values and gradients as the dense losses, temporaries independent of N^2
and of block x N, and (ring) no device holding the whole N x D embeddings."""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import ssljax.losses as L
from test_losses_tiled import _largest_intermediate, fast_jit


def _rng(seed):
    return np.random.default_rng(seed)


def _losses(queue, labels, **kw):
    """The contrastive losses as (a, b, temperature) -> scalar, tiled as `kw` says."""
    return [
        lambda a, b, t: L.nt_xent(a, b, temperature=t, **kw),
        lambda a, b, t: L.infonce(a, b, temperature=t, queue=queue, **kw),
        lambda a, b, t: L.infonce(a, b, temperature=t, stop_gradient_key=False, **kw),
        lambda a, b, t: L.infonce(a, b, temperature=t, **kw),
        lambda a, b, t: L.supcon(jnp.stack([a, b], 1), labels, temperature=t, **kw),
        lambda a, b, t: L.supcon(jnp.stack([a, b, a[::-1]], 1), temperature=t, anchors=(0, 2),
                                 **kw),
    ]


def _assert_close(got, want, rtol):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.max(np.abs(b)), 1e-30)
        assert np.max(np.abs(a - b)) <= rtol * scale, (np.max(np.abs(a - b)), scale)


@pytest.mark.parametrize("n", [7, 33])
def test_2d_tiles_equal_dense_in_float64(n):
    """Value and gradient (inputs and a traced temperature of 0.01) of every loss, tiled
    2-D with blocks that do not divide N (square tiles, row tiles != column tiles, and a
    row block covering all rows), equal the dense loss in float64."""
    r = _rng(n)
    d = 6
    with jax.enable_x64(True):
        z1, z2 = (jnp.asarray(r.normal(size=(n, d))) for _ in range(2))
        queue = jnp.asarray(r.normal(size=(n + 4, d)))
        labels = jnp.asarray(r.integers(0, 3, size=n))
        tilings = [dict(block_size=None), dict(block_size=4), dict(block_size=3, row_block_size=5),
                   dict(block_size=5, row_block_size=4 * n)]

        def all_paths(a, b, t):
            return [[jax.value_and_grad(fn, argnums=(0, 1, 2))(a, b, t)
                     for fn in _losses(queue, labels, **kw)] for kw in tilings]

        results = fast_jit(all_paths)(z1, z2, jnp.asarray(0.01))
    dense = results[0]
    for tiled in results[1:]:
        _assert_close(tiled, dense, 1e-10)


def test_tiled_logsumexp_gram_scale_and_row_blocks_match_dense():
    r = _rng(2)
    with jax.enable_x64(True):
        x = jnp.asarray(r.normal(size=(11, 5)))
        c = jnp.asarray(r.normal(size=(9, 5)))
        g = jnp.asarray(r.normal(size=11))
        self_index = jnp.asarray([0, 3, -1, 5, 4, 10, 6, 7, 8, 9, 1])

        def both(x, c, t):
            out = []
            for cols, si in ((None, self_index), (c, jnp.where(self_index < 9, self_index, -1))):
                for kw in (dict(block_size=4), dict(block_size=2, row_block_size=3),
                           dict(block_size=20)):
                    f = lambda a, cc, s: L.tiled_logsumexp(  # noqa: E731
                        a, cc, self_index=si, scale=s, **kw)
                    h = lambda a, cc, s: jax.nn.logsumexp(  # noqa: E731
                        jnp.where(jnp.arange((a if cc is None else cc).shape[0])[None, :]
                                  == si[:, None], -jnp.inf,
                                  s * a @ (a if cc is None else cc).T), axis=1)
                    for fn in (f, h):
                        value, vjp = jax.vjp(fn, x, cols, t)
                        out.append((value, vjp(g)))
            return out

        results = fast_jit(both)(x, c, jnp.asarray(3.0))
    for tiled, dense in zip(results[::2], results[1::2]):
        _assert_close(tiled, dense, 1e-12)


def test_gram_logsumexp_of_interleaved_views_matches_dense():
    """Three views with row multipliers, read tile by tile, equal the dense log-sum-exp of
    the interleaved, scaled rows with the diagonal left out: value and every gradient."""
    r = _rng(5)
    with jax.enable_x64(True):
        views = tuple(jnp.asarray(r.normal(size=(7, 4))) for _ in range(3))
        inv = tuple(jnp.asarray(r.uniform(0.5, 2.0, size=7)) for _ in range(3))
        g = jnp.asarray(r.normal(size=21))

        def dense(views, inv, t):
            x = jnp.stack([v * w[:, None] for v, w in zip(views, inv)], 1).reshape(21, 4)
            logits = jnp.where(jnp.eye(21, dtype=bool), -jnp.inf, t * x @ x.T)
            return jax.nn.logsumexp(logits, axis=1)

        def run(views, inv, t):
            out = []
            for fn in (lambda a, b, t: L.gram_logsumexp(a, b, scale=t, block_size=3),
                       lambda a, b, t: L.gram_logsumexp(a, b, scale=t, block_size=2,
                                                        row_block_size=5),
                       dense):
                value, vjp = jax.vjp(fn, views, inv, t)
                out.append((value, vjp(g)))
            return out

        tiled, tiled_rows, want = fast_jit(run)(views, inv, jnp.asarray(2.0))
    _assert_close(tiled, want, 1e-12)
    _assert_close(tiled_rows, want, 1e-12)


def test_nt_xent_million_pairs_fits_2_gib():
    """The goal figure: value and gradient of NT-Xent (and InfoNCE) at N = 1,048,576 pairs,
    D = 128, compile with at most 2 GiB of temporaries on one device (compiled only), with
    the CPU compiler settings `import ssljax` applies (ssljax/xla_flags.py; this test suite
    runs without them, so they are passed here). XLA's stock CPU pipeline (YNN fusions)
    materialises two more N x D gradients: 2.04 GiB for NT-Xent, 1.06 GiB for InfoNCE."""
    from ssljax.xla_flags import CPU_FLAGS
    options = dict(flag.lstrip("-").split("=", 1) for flag in CPU_FLAGS)
    z = jax.ShapeDtypeStruct((1 << 20, 128), jnp.float32)
    for fn in (lambda a, b: L.nt_xent(a, b, temperature=0.1, block_size=1024),
               lambda a, b: L.infonce(a, b, temperature=0.1, block_size=1024,
                                      stop_gradient_key=False)):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)),
                           compiler_options=options).lower(z, z).compile()
        assert compiled.memory_analysis().temp_size_in_bytes <= 2 * 2**30


@pytest.mark.parametrize("name", ["nt_xent", "infonce", "infonce_queue", "supcon"])
def test_2d_program_temporaries_are_independent_of_n(name):
    """Trace value-and-grad (no compile): no array anywhere is larger than the N x D
    embeddings or one tile, whatever N; the row-tiled form is (block x N)."""
    d, block = 16, 64

    def largest(n, row_block_size=None):
        z = jax.ShapeDtypeStruct((n, d), jnp.float32)
        kw = dict(block_size=block, row_block_size=row_block_size)
        fn = {
            "nt_xent": lambda a, b: L.nt_xent(a, b, temperature=0.1, **kw),
            "infonce": lambda a, b: L.infonce(a, b, temperature=0.1, stop_gradient_key=False,
                                              **kw),
            "infonce_queue": lambda a, b: L.infonce(a, b, temperature=0.1,
                                                    queue=jnp.concatenate([a, b, a]), **kw),
            "supcon": lambda a, b: L.supcon(jnp.stack([a, b], 1), jnp.arange(n) % 10,
                                            temperature=0.1, **kw),
        }[name]
        jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, argnums=(0, 1)))(z, z)
        return _largest_intermediate(jaxpr.jaxpr)

    for n in (512, 4096):
        embeddings = 3 * n * d  # the largest input here: infonce's queue, 3N x D
        assert largest(n) <= max(embeddings, block * block), (n, largest(n))
    assert largest(4096, row_block_size=4096) >= 4096 * block  # the check can fail


def test_2d_compiled_temporaries_beat_row_tiles():
    """Compiled value-and-grad of NT-Xent: the 2-D tiles need less than the row tiles and
    about the embeddings' size."""
    n, d, block = 8192, 32, 256
    z = jax.ShapeDtypeStruct((n, d), jnp.float32)

    def temp_bytes(**kw):
        fn = jax.value_and_grad(lambda a, b: L.nt_xent(a, b, temperature=0.1, **kw),
                                argnums=(0, 1))
        return jax.jit(fn).lower(z, z).compile().memory_analysis().temp_size_in_bytes

    rows_tiled = temp_bytes(block_size=block, row_block_size=2 * n)
    two_d = temp_bytes(block_size=block)
    assert rows_tiled >= 2 * n * block * 4
    assert two_d <= rows_tiled / 2, (two_d, rows_tiled)
    assert two_d <= 12 * (2 * n * d * 4), two_d  # a few copies of the 2N x D embeddings


def test_precision_options():
    """bfloat16 and TF32 products: close to float32 (bfloat16 within its rounding), the
    gradient too; float32 is the default."""
    r = _rng(3)
    z1, z2 = (jnp.asarray(r.normal(size=(64, 32)), jnp.float32) for _ in range(2))

    def run(a, b):
        return [jax.value_and_grad(lambda a, b: L.nt_xent(a, b, temperature=0.1, **kw),
                                   argnums=(0, 1))(a, b)
                for kw in (dict(), dict(block_size=16), dict(block_size=16, precision="float32"),
                           dict(block_size=16, precision="tensorfloat32"),
                           dict(block_size=16, precision="bfloat16"),
                           dict(precision="bfloat16"))]

    dense, f32, f32_explicit, tf32, bf16, bf16_dense = fast_jit(run)(z1, z2)
    _assert_close(f32, dense, 1e-5)
    _assert_close(f32_explicit, f32, 0)
    _assert_close(tf32, dense, 1e-3)  # exact float32 on CPU; TF32 rounding on GPUs
    assert abs(float(bf16[0]) - float(dense[0])) <= 2e-2 * abs(float(dense[0]))
    assert abs(float(bf16_dense[0]) - float(dense[0])) <= 2e-2 * abs(float(dense[0]))
    _assert_close(bf16[1], dense[1], 5e-2)
    assert float(bf16[0]) != float(dense[0])  # the products really were rounded


def test_bad_tiling_arguments_say_what_to_do():
    z = jnp.zeros((8, 3))
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:1])
    cases = [
        (dict(block_size=0), "block_size must be a positive integer"),
        (dict(block_size=-3), "block_size must be a positive integer"),
        (dict(block_size=4, row_block_size=0), "row_block_size must be a positive integer"),
        (dict(row_block_size=4), "set block_size too"),
        (dict(block_size=4, precision="float16"), "precision must be one of"),
        (dict(ring_axis="data"), "set block_size too"),
        (dict(block_size=4, ring_axis="data"), "needs the batch sharded over a mesh axis"),
        (dict(block_size=4, ring_axis="model", mesh=mesh), "pass mesh="),
    ]
    for kw, message in cases:
        for fn in (lambda: L.nt_xent(z, z, temperature=0.1, **kw),
                   lambda: L.infonce(z, z, temperature=0.1, **kw),
                   lambda: L.supcon(z.reshape(4, 2, 3), temperature=0.1, **kw)):
            with pytest.raises(ValueError, match=message):
                jax.eval_shape(fn)
    with pytest.raises(ValueError, match="rows \\[M, D\\] and cols \\[C, D\\]"):
        L.tiled_logsumexp(z, jnp.zeros((8, 4)), block_size=2)
    with pytest.raises(ValueError, match="self_index must be"):
        L.tiled_logsumexp(z, self_index=jnp.zeros((8,)), block_size=2)
    if jax.device_count() >= 8:
        mesh8 = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
        with pytest.raises(ValueError, match="must divide by 8"):
            jax.eval_shape(lambda: L.nt_xent(jnp.zeros((6, 3)), jnp.zeros((6, 3)),
                                             temperature=0.1, block_size=2, ring_axis="data",
                                             mesh=mesh8))


# --------------------------------------------------------------------------------------
# The ring, on 8 fake CPU devices.

COLLECTIVE = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(-start)?\(")
SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def _collectives(hlo: str) -> list[tuple[str, int]]:
    out = []
    for line in hlo.splitlines():
        m = COLLECTIVE.search(re.sub(r"/\*.*?\*/", "", line))
        if m:
            out.extend((m.group(2), math.prod(int(x) for x in dims.split(",") if x))
                       for dims in SHAPE.findall(m.group(1)))
    return out


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 fake CPU devices)")
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def test_ring_equals_single_device(mesh):
    """Every loss as a ring over 8 devices equals the single-device loss and gradient to
    float32 rounding, and the compiled ring moves only column tiles (collective-permute)
    and scalars: no collective carries more than one device's slice of the embeddings."""
    n, d, block = 64, 8, 3
    r = _rng(4)
    z1, z2 = (jnp.asarray(r.normal(size=(n, d)), jnp.float32) for _ in range(2))
    queue = jnp.asarray(r.normal(size=(48, d)), jnp.float32)
    labels = jnp.asarray(r.integers(0, 5, size=n), jnp.int32)
    ring = _losses(queue, labels, block_size=block, ring_axis="data", mesh=mesh)
    single = _losses(queue, labels, block_size=block)
    # Also unlabelled SupCon, and labelled SupCon with some views anchoring.
    for kw, out in ((dict(block_size=block, ring_axis="data", mesh=mesh), ring), ({}, single)):
        out.append(lambda a, b, t, kw=kw: L.supcon(jnp.stack([a, b], 1), temperature=t, **kw))
        out.append(lambda a, b, t, kw=kw: L.supcon(jnp.stack([a, b, a[::-1]], 1), labels,
                                                   temperature=t, anchors=(0, 2), **kw))

    def program(fns):
        return lambda a, b, t: [jax.value_and_grad(fn, argnums=(0, 1, 2))(a, b, t) for fn in fns]

    want = fast_jit(program(single))(z1, z2, jnp.asarray(0.1))
    sharded = NamedSharding(mesh, P("data"))
    args = (jax.device_put(z1, sharded), jax.device_put(z2, sharded), jnp.asarray(0.1))
    compiled = jax.jit(program(ring)).lower(*args).compile()
    _assert_close(compiled(*args), want, 2e-5)
    sizes = _collectives(compiled.as_text())
    assert any(op == "collective-permute" for op, _ in sizes)
    assert not any(op == "all-gather" for op, _ in sizes), sizes
    # One device's slice, in whole tiles: at most the 3-view SupCon's 3N / 8 rows (with the
    # labelled SupCon's count column, D + 1 wide).
    assert max(s for _, s in sizes) <= math.ceil(3 * n / 8 / block) * block * (d + 1), sizes


def test_ring_same_label_sums_equal_the_dense_sums_and_their_vjp(mesh):
    r = _rng(8)
    x = r.normal(size=(40, 5))
    ids = r.integers(0, 6, size=40)
    same = (ids[:, None] == ids[None, :]).astype(np.float64)  # the dense reference
    g = r.normal(size=(40, 5))
    sharded = NamedSharding(mesh, P("data"))
    xs, ids_s = (jax.device_put(jnp.asarray(a, dt), sharded)
                 for a, dt in ((x, jnp.float32), (ids, jnp.int32)))
    out, vjp = jax.vjp(lambda a: L.tiled.ring_same_label_sums(a, ids_s, ring_axis="data",
                                                              mesh=mesh), xs)
    np.testing.assert_allclose(out, same @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], same.T @ g, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("name", ["nt_xent", "infonce"])
def test_ring_per_device_memory(mesh, name):
    """Compiled per device: the ring's temporaries are a few copies of the device's own
    slice of the embeddings plus tiles, O(N x D / 8 + block^2), and do not grow with N
    faster than that; the dense sharded loss holds N / 8 x N logits."""
    d, block = 64, 128

    def temp(n, **kw):
        spec = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=NamedSharding(mesh, P("data")))
        loss = {"nt_xent": lambda a, b: L.nt_xent(a, b, temperature=0.1, **kw),
                "infonce": lambda a, b: L.infonce(a, b, temperature=0.1, stop_gradient_key=False,
                                                  **kw)}[name]
        fn = jax.value_and_grad(loss, argnums=(0, 1))
        return jax.jit(fn).lower(spec, spec).compile().memory_analysis().temp_size_in_bytes

    for n in (2048, 8192):
        rows = 2 * n if name == "nt_xent" else n
        local_slice = (rows // 8) * d * 4
        ring = temp(n, block_size=block, ring_axis="data", mesh=mesh)
        assert ring <= 12 * local_slice + 8 * block * block * 4, (n, ring, local_slice)
    assert temp(2048) >= (2 * 2048 // 8 if name == "nt_xent" else 2048 // 8) * 2048 * 4


def test_ring_takes_the_mesh_from_set_mesh(mesh):
    r = _rng(6)
    z1, z2 = (jnp.asarray(r.normal(size=(64, 8)), jnp.float32) for _ in range(2))
    want = fast_jit(lambda a, b: L.nt_xent(a, b, temperature=0.1))(z1, z2)
    sharded = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        got = fast_jit(lambda a, b: L.nt_xent(a, b, temperature=0.1, block_size=4,
                                              ring_axis="data"))(
            jax.device_put(z1, sharded), jax.device_put(z2, sharded))
    np.testing.assert_allclose(float(got), float(want), rtol=2e-6)
