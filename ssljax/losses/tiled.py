"""Blockwise log-sum-exp of a similarity matrix that is never materialised.

Every contrastive objective in this package reduces to

    loss = mean_i( logsumexp_j(scale * rows_i . cols_j) - positive_i ),

where the positive term costs O(N D) and only the log-sum-exp touches all M x C
pairs. `tiled_logsumexp` computes that log-sum-exp tile by tile, in both dimensions:
a loop over row blocks of `row_block_size` rows, and inside it a loop over column
blocks of `block_size` columns keeping a running (max, sum) per row. Its custom VJP
saves only the inputs and the per-row result and recomputes each tile's softmax in
the backward pass, accumulating the column gradient across row blocks. Temporary
memory is O((M + C) x D + row_block_size x block_size): independent of M x C and of
block x N.

Ways to run it:

* one device, or `jax.jit` with the batch sharded over a mesh axis. Rows and columns
  are cut into *strided* blocks (block b holds rows b, b + n_blocks, b + 2 n_blocks, ...),
  so every block has rows on every device and the sharding survives: each device
  computes its rows' share of each tile, and the compiler all-gathers one column tile
  at a time (and all-reduces its gradient). Per-device temporaries stay small
  (O(N x D / devices + tiles)) but every column tile crosses the network once per row
  block: traffic O(N^2 D / block_size) per device.
* `ring_axis=`: an explicit ring over the devices of a mesh axis (Inf-CL style, a
  `jax.shard_map` with `jax.lax.ppermute`): each device keeps its own rows and column
  slice, and the column slices travel around the ring (with their gradient, in the
  backward pass), so no device ever holds the whole N x D matrix: per-device
  temporaries O(N x D / devices + row_block_size x block_size), traffic O(N x D) per
  device (each slice moves devices - 1 times forward, devices times backward).
* `precision=`: float32 products (default), TF32 or bfloat16 products, always with
  float32 accumulation and a float32 log-sum-exp (errors in `tiled_logsumexp`).

`gram_logsumexp` reads the tiles of a Gram matrix from several views (NT-Xent's z1 and
z2) and multiplies each row by a factor as it is read (1 / ||z||), so the normalised,
interleaved 2N x D matrix is never built: the gradient accumulator is the only N x D
temporary. The tiles are read in place from the reshaped inputs (`[block, n_blocks, D]`,
no transposed copy).
"""
from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from ssljax.losses._common import compute_dtype

__all__ = ["PRECISIONS", "gram_logsumexp", "ring_same_label_sums", "tiled_logsumexp"]

Precision = Literal["float32", "tensorfloat32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "tensorfloat32", "bfloat16")


def check_tiling(block_size, row_block_size, precision, ring_axis, mesh) -> None:
    """Trace-time checks shared by `tiled_logsumexp` and the contrastive losses."""
    if block_size is None:
        if row_block_size is not None:
            raise ValueError("row_block_size tiles the rows of the tiled path: set block_size "
                             "too (e.g. block_size=1024), or drop row_block_size.")
        if ring_axis is not None:
            raise ValueError(f"ring_axis={ring_axis!r} runs the tiled path over a ring of "
                             "devices: set block_size too (e.g. block_size=1024).")
    else:
        if isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size must be a positive integer (e.g. 1024); "
                             f"got {block_size!r}.")
        if row_block_size is not None and (isinstance(row_block_size, bool)
                                           or int(row_block_size) != row_block_size
                                           or row_block_size < 1):
            raise ValueError(f"row_block_size must be a positive integer (or None for "
                             f"block_size); got {row_block_size!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    if ring_axis is not None:
        mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty or ring_axis not in mesh.axis_names:
            raise ValueError(
                f"ring_axis={ring_axis!r} needs the batch sharded over a mesh axis of that "
                "name: pass mesh=jax.make_mesh(...) with that axis (or call under "
                "jax.set_mesh), or drop ring_axis.")


def tiled_logsumexp(
    rows: jax.Array,
    cols: jax.Array | None = None,
    *,
    self_index: jax.Array | Literal["diagonal"] | None = None,
    block_size: int,
    row_block_size: int | None = None,
    scale: float | jax.Array = 1.0,
    precision: Precision = "float32",
    ring_axis: str | None = None,
    mesh: Mesh | None = None,
    cols_grad: bool = True,
    row_multipliers: jax.Array | None = None,
    col_multipliers: jax.Array | None = None,
) -> jax.Array:
    """Row-wise `logsumexp(scale * rows @ cols.T)` without building the `[M, C]` matrix.

    Args:
        rows: `[M, D]` query vectors.
        cols: `[C, D]` key vectors, or None for the Gram matrix of `rows` (`cols = rows`,
            as in NT-Xent and SupCon): then no second copy is made and one gradient is
            accumulated.
        self_index: optional `[M]` integers; column `self_index[i]` is left out of row
            `i` (the "self" similarity of SimCLR/SupCon). Use a negative value to leave
            nothing out of a row. "diagonal" for `self_index[i] = i` without an array.
        block_size: columns per tile (and rows per tile unless `row_block_size` is set).
            Temporary memory of value-and-grad is about `row_block_size * block_size`
            floats per tile plus a few `[M + C, D]` arrays (512 to 2048 is a good range;
            see experiments/losses_benchmark.md).
        row_block_size: rows per tile; None (default) for `block_size`. A value >= M
            processes all rows at once (the row-tiled form of ssljax <= 0.x, memory
            `M * block_size`).
        scale: multiplies every logit, e.g. `1 / temperature`; may be traced (a learnt
            temperature gets its gradient).
        precision: the matrix products' inputs: "float32" (default, exact float32),
            "tensorfloat32" (TF32 on GPUs that have it; float32 elsewhere) or "bfloat16"
            (inputs rounded to bfloat16). Products always accumulate in float32 (float64
            for float64 inputs) and the log-sum-exp is float32. Measured against float64
            (in-batch InfoNCE, N = 65,536, D = 128, temperature 0.1, block 1024; largest
            error of a row's log-sum-exp / of the loss, in nats; gradient: largest error
            over largest entry, at N = 8,192): float32 1.4e-6 / 3.6e-7 / 1.2e-6; TF32
            (emulated on the CPU) 4.4e-5 / 1.2e-7 / 7.4e-4; bfloat16 1.8e-3 / 3.2e-6 /
            2.8e-3 (experiments/bench_losses_precision.py).
        ring_axis: name of a mesh axis over which rows and cols are sharded; the loss then
            runs as a ring (see the module docstring): M and C must divide by the axis size.
        mesh: the mesh holding `ring_axis`; None for the mesh set with `jax.set_mesh`.
        cols_grad: False when `cols` carries no gradient (a MoCo queue, a stop-gradient
            key): the backward pass then skips the column products and returns zeros.
        row_multipliers, col_multipliers: optional `[M]` / `[C]` factors applied to each
            row / column as its tile is read (differentiable), e.g. inverse norms: cosine
            similarities without building the normalised N x D matrices.

    Returns:
        `[M]` array, `log(sum_{j != self_index[i]} exp(scale * rows[i] . cols[j]))`, in
        float32 (float64 for float64 inputs). Rows with every column left out give `-inf`.

    References:
        Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018;
        Dao et al., "FlashAttention", NeurIPS 2022 (recompute in the backward pass);
        Cheng et al., "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for
        Contrastive Loss" (Inf-CL), arXiv 2410.17243 (the ring).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import tiled_logsumexp
        >>> x = jnp.eye(3)
        >>> dense = jax.nn.logsumexp(x @ x.T, axis=1)
        >>> bool(jnp.allclose(tiled_logsumexp(x, x, block_size=2), dense))
        True
        >>> bool(jnp.allclose(tiled_logsumexp(x, block_size=2), dense))
        True
    """
    check_tiling(block_size, row_block_size, precision, ring_axis, mesh)
    gram = cols is None
    if rows.ndim != 2 or (not gram and (cols.ndim != 2 or rows.shape[1] != cols.shape[1])):
        raise ValueError(
            "tiled_logsumexp needs rows [M, D] and cols [C, D] (or cols=None); "
            f"got {rows.shape} and {None if gram else cols.shape}.")
    dtype = compute_dtype(rows, *(() if gram else (cols,)))
    rows = rows.astype(dtype)
    cols = None if gram else cols.astype(dtype)
    num_cols = rows.shape[0] if gram else cols.shape[0]
    diagonal = isinstance(self_index, str)
    if diagonal:
        if self_index != "diagonal":
            raise ValueError(f"self_index must be an [M] array, 'diagonal' or None; got "
                             f"{self_index!r}.")
        self_index = None
    elif self_index is not None:
        self_index = jnp.asarray(self_index)
        if self_index.shape != rows.shape[:1] or not jnp.issubdtype(self_index.dtype,
                                                                    jnp.integer):
            raise ValueError(f"self_index must be [M] = [{rows.shape[0]}] integers; got "
                             f"{self_index.shape} {self_index.dtype}.")
        self_index = self_index.astype(jnp.int32)
    mult = []
    for name, m, n in (("row_multipliers", row_multipliers, rows.shape[0]),
                       ("col_multipliers", col_multipliers, None if gram else num_cols)):
        if m is not None and (n is None or jnp.shape(m) != (n,)):
            raise ValueError(f"{name} must be [{n}] (one factor per "
                             f"{'row' if name[0] == 'r' else 'column'}; none for cols=None); "
                             f"got {jnp.shape(m)}.")
        mult.append(None if m is None else (jnp.asarray(m, dtype),))
    return _dispatch(((rows,), mult[0]), None if gram else ((cols,), mult[1]), scale,
                     self_index, diagonal,
                     block_size=block_size, row_block_size=row_block_size, precision=precision,
                     ring_axis=ring_axis, mesh=mesh, cols_grad=bool(cols_grad) or gram)


def gram_logsumexp(
    views: tuple[jax.Array, ...],
    inv_norms: tuple[jax.Array, ...] | None = None,
    *,
    scale: float | jax.Array,
    block_size: int,
    row_block_size: int | None = None,
    precision: Precision = "float32",
    ring_axis: str | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
    """`tiled_logsumexp` of the Gram matrix of interleaved views, self left out.

    The rows are `x = stack(views, 1).reshape(V * N, D)` (row `V * i + v` is `views[v][i]`),
    each multiplied by `inv_norms[v][i]` if given (e.g. `1 / ||views[v][i]||`), and row i
    leaves out column i. Neither the interleaved nor the normalised matrix is ever built:
    tiles are read from the views themselves, so the only N x D temporary is the gradient
    (what lets NT-Xent at N = 1,048,576 pairs, D = 128, fit 2 GiB).

    Args:
        views: V arrays `[N, D]` (NT-Xent: `(z1, z2)`; SupCon: `(features.reshape(B*V, D),)`).
        inv_norms: None, or V arrays `[N]` multiplying the rows (differentiable).
        scale, block_size, row_block_size, precision, ring_axis, mesh: as `tiled_logsumexp`.

    Returns:
        `[V * N]` log-sum-exps, in the interleaved order.
    """
    check_tiling(block_size, row_block_size, precision, ring_axis, mesh)
    views = tuple(views)
    if not views or any(v.ndim != 2 or v.shape != views[0].shape for v in views):
        raise ValueError("gram_logsumexp needs views of one shape [N, D]; got "
                         f"{[v.shape for v in views]}.")
    if inv_norms is not None:
        inv_norms = tuple(inv_norms)
        if len(inv_norms) != len(views) or any(w.shape != views[0].shape[:1]
                                               for w in inv_norms):
            raise ValueError(f"inv_norms must be {len(views)} arrays [{views[0].shape[0]}]; "
                             f"got {[w.shape for w in inv_norms]}.")
    dtype = compute_dtype(*views)
    views = tuple(v.astype(dtype) for v in views)
    if inv_norms is not None:
        inv_norms = tuple(w.astype(dtype) for w in inv_norms)
    return _dispatch((views, inv_norms), None, scale, None, True, block_size=block_size,
                     row_block_size=row_block_size, precision=precision, ring_axis=ring_axis,
                     mesh=mesh, cols_grad=True)


def _dispatch(rows, cols, scale, self_index, diagonal, *, block_size, row_block_size, precision,
              ring_axis, mesh, cols_grad):
    views, _ = rows
    dtype = views[0].dtype
    per_view = views[0].shape[0]
    num_rows = len(views) * per_view
    num_cols = num_rows if cols is None else cols[0][0].shape[0]
    scale = jnp.asarray(scale, dtype)
    if scale.ndim != 0:
        raise ValueError(f"scale must be a scalar; got shape {scale.shape}.")
    row_block = int(row_block_size or block_size)
    d = 1
    if ring_axis is not None:
        mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
        d = mesh.shape[ring_axis]
        if per_view % d or num_cols % d:
            raise ValueError(
                f"ring_axis={ring_axis!r} shards rows and cols over {d} devices: the batch "
                f"({per_view} rows, {num_cols} cols) must divide by {d}; pad it or change "
                "the batch size.")
    cfg = _Cfg(row_block=min(row_block, per_view // d),
               col_block=min(int(block_size), num_cols // d),
               precision=precision, cols_grad=cols_grad, num_rows=num_rows // d,
               num_cols=num_cols // d, gram=cols is None, diagonal=diagonal)
    if ring_axis is None:
        return _lse(rows, cols, scale, self_index, cfg)
    return _ring_lse(rows, cols, scale, self_index, cfg, _MeshAxis(mesh, ring_axis))


class _Cfg(NamedTuple):
    row_block: int
    col_block: int
    precision: str
    cols_grad: bool  # False: the columns get no gradient (a stop-gradient queue or key)
    num_rows: int = 0  # rows and columns of the (per-device) problem, filled in by _lse
    num_cols: int = 0
    gram: bool = False  # cols is None: the columns are the rows
    diagonal: bool = False  # column i is left out of row i



class _MeshAxis(NamedTuple):
    mesh: Mesh
    axis: str


# ----------------------------------------------------------------------------------------
# Tiles. A matrix [n, ...] is viewed as [block, n_blocks, ...] (a reshape, no copy), element
# (k, b) = row k * n_blocks + b: block b is the strided slice [:, b], read and written in
# place by the loops (a transposed copy of the N x D embeddings would cost N x D).

def _to_blocks(x: jax.Array, block: int, n_blocks: int | None = None) -> jax.Array:
    """`[n, ...]` -> `[block, n_blocks, ...]`, zero-padded (-1 for integers); `n_blocks`
    larger than needed for the interleaved layout of `_Blocks` with several views."""
    n = x.shape[0]
    n_blocks = n_blocks or math.ceil(n / block)
    if n_blocks * block != n:
        x = jnp.pad(x, ((0, n_blocks * block - n),) + ((0, 0),) * (x.ndim - 1),
                    constant_values=-1 if jnp.issubdtype(x.dtype, jnp.integer) else 0)
    return x.reshape(block, n_blocks, *x.shape[1:])


def _from_blocks(xb: jax.Array, n: int) -> jax.Array:
    return xb.reshape(-1, *xb.shape[2:])[:n]


def _get(xb: jax.Array | None, b) -> jax.Array | None:
    return None if xb is None else jax.lax.dynamic_index_in_dim(xb, b, axis=1, keepdims=False)


def _add(xb: jax.Array, b, update: jax.Array) -> jax.Array:
    """`xb[:, b] += update`, in place inside a loop."""
    return jax.lax.dynamic_update_index_in_dim(xb, _get(xb, b) + update, b, axis=1)


def _mm(a: jax.Array, b: jax.Array, contract: tuple[int, int], precision: str,
        out_dtype) -> jax.Array:
    """`a . b` contracting dimension `contract[0]` of a with `contract[1]` of b (2-D)."""
    if precision == "bfloat16":
        a, b, prec = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), None
    else:
        prec = (jax.lax.Precision.HIGHEST if precision == "float32"
                else jax.lax.Precision.HIGH)
    return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                               precision=prec, preferred_element_type=out_dtype)


class _Blocks(NamedTuple):
    """Row tiles read from V interleaved views (row V * i + v is `views[v][i]`), each row
    times `inv[v][i]` if given. Block b is block b // V of view b % V, so the element
    (k, b) is row k * n_blocks + b, as for a single array."""
    views: tuple  # V arrays [block, n_blocks / V, D]
    inv: tuple | None  # V arrays [block, n_blocks / V], or None


def _blocks_of(rows, block: int) -> _Blocks:
    views, inv = rows
    return _Blocks(tuple(_to_blocks(v, block) for v in views),
                   None if inv is None else tuple(_to_blocks(w, block) for w in inv))


def _bsize(xb: _Blocks) -> int:
    return xb.views[0].shape[0]


def _nblocks(xb: _Blocks) -> int:
    return len(xb.views) * xb.views[0].shape[1]


def _read(xb: _Blocks, b) -> jax.Array:
    """Tile b, [block, D]: the rows of its view, times their multipliers."""
    n_views = len(xb.views)
    view, bb = (0, b) if n_views == 1 else (b % n_views, b // n_views)

    def pick(arrays):
        x = _get(arrays[0], bb)
        for i in range(1, n_views):
            x = jnp.where(view == i, _get(arrays[i], bb), x)
        return x

    x = pick(xb.views)
    return x if xb.inv is None else x * pick(xb.inv)[:, None]


def _rows_cotangent(rows, d_x):
    """Cotangent of (views, inv) from that of the interleaved rows x, [V * N, D]."""
    views, inv = rows
    n, dim = views[0].shape
    d_x = d_x.reshape(n, len(views), dim)
    d_views = tuple(d_x[:, v] if inv is None else d_x[:, v] * inv[v][:, None]
                    for v in range(len(views)))
    d_inv = None if inv is None else tuple(jnp.sum(views[v] * d_x[:, v], axis=1)
                                           for v in range(len(views)))
    return d_views, d_inv


def _unblock_rows(rb: _Blocks, per_view: int):
    return (tuple(_from_blocks(v, per_view) for v in rb.views),
            None if rb.inv is None else tuple(_from_blocks(w, per_view) for w in rb.inv))


class _Diagonal(NamedTuple):
    """`self_index[i] = offset + i`, without an [M] array."""
    offset: jax.Array


def _self_ids(self_b, b, rb):
    """The left-out column of each row of row block b (None: none)."""
    if isinstance(self_b, _Diagonal):
        return self_b.offset + jnp.arange(_bsize(rb), dtype=jnp.int32) * _nblocks(rb) + b
    return _get(self_b, b)


def _tile_logits(r, c, j, n_cblocks, sidx, col_offset, num_cols, precision):
    """Masked logits of one tile: scaled rows r [Br, D] against column block j, c [Bc, D]."""
    logits = _mm(r, c, (1, 1), precision, r.dtype)
    bc = c.shape[0]
    invalid = None
    if n_cblocks * bc != num_cols:  # padded columns exist
        local = jnp.arange(bc, dtype=jnp.int32) * n_cblocks + j
        invalid = (local >= num_cols)[None, :]
    if sidx is not None:
        col = col_offset + jnp.arange(bc, dtype=jnp.int32) * n_cblocks + j
        is_self = col[None, :] == sidx[:, None]
        invalid = is_self if invalid is None else invalid | is_self
    if invalid is not None:
        logits = jnp.where(invalid, -jnp.inf, logits)
    return logits


def _block_stats(rb, cb, scale, self_b, col_offset, num_cols, precision, m0, s0):
    """Running (max, sum of exp) per row of the row tiles `rb` over the column tiles `cb`
    (both `_Blocks`), continuing from (m0, s0) [Br, Rb]."""
    n_cblocks = _nblocks(cb)

    def row_step(_, b):
        r = _read(rb, b) * scale
        sidx = _self_ids(self_b, b, rb)

        def col_step(carry, j):
            m, s = carry
            logits = _tile_logits(r, _read(cb, j), j, n_cblocks, sidx, col_offset, num_cols,
                                  precision)
            new_max = jnp.maximum(m, jnp.max(logits, axis=1))
            # A row whose columns so far are all left out has max -inf; shift by 0 instead
            # so that exp(-inf - (-inf)) never produces NaN.
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(logits - shift[:, None]), axis=1)
            return (new_max, s), None

        (m, s), _ = jax.lax.scan(col_step, (_get(m0, b), _get(s0, b)),
                                 jnp.arange(n_cblocks, dtype=jnp.int32))
        return None, (m, s)

    _, (m, s) = jax.lax.scan(row_step, None, jnp.arange(_nblocks(rb), dtype=jnp.int32))
    return m.T, s.T


def _finish(m, s):
    return jnp.where(s > 0, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(s), -jnp.inf)


def _block_grads(rb, cb, scale, self_b, col_offset, num_cols, precision, lse_b, g_b, accb,
                 dcb, d_scale):
    """Backward over all tiles of rows `rb` x cols `cb`, w_ij = g_i softmax_ij.

    Adds sum_j w_ij c_j to `accb` [Br, Rb, D] (None: into `dcb` times `scale`, for a Gram
    matrix whose rows and columns are the same tiles), sum_i w_ij (scale r_i) to `dcb`
    [Bc, Cb, D] (None: the columns need no gradient), and sum_ij w_ij s_ij / scale to
    `d_scale`; returns the three.
    """
    n_cblocks = _nblocks(cb)
    safe_lse = jnp.where(jnp.isfinite(lse_b), lse_b, 0.0)

    def row_step(carry, b):
        accb, dcb, d_scale = carry
        r = _read(rb, b)
        rs = r * scale
        sidx, lse, g = _self_ids(self_b, b, rb), _get(safe_lse, b), _get(g_b, b)

        def col_step(carry, j):
            acc, dcb = carry
            c = _read(cb, j)
            logits = _tile_logits(rs, c, j, n_cblocks, sidx, col_offset, num_cols, precision)
            # The softmax of this tile, recomputed; d lse_i / d s_ij = p_ij.
            w = jnp.exp(logits - lse[:, None]) * g[:, None]
            acc = acc + _mm(w, c, (1, 0), precision, acc.dtype)
            if dcb is not None:
                dcb = _add(dcb, j, _mm(w, rs, (0, 0), precision, dcb.dtype))
            return (acc, dcb), None

        (acc, dcb), _ = jax.lax.scan(col_step, (jnp.zeros_like(r), dcb),
                                     jnp.arange(n_cblocks, dtype=jnp.int32))
        d_scale = d_scale + jnp.sum(acc * r)
        if accb is None:
            dcb = _add(dcb, b, acc * scale)
        else:
            accb = _add(accb, b, acc)
        return (accb, dcb, d_scale), None

    (accb, dcb, d_scale), _ = jax.lax.scan(row_step, (accb, dcb, d_scale),
                                           jnp.arange(_nblocks(rb), dtype=jnp.int32))
    return accb, dcb, d_scale


def _zeros(xb: _Blocks) -> jax.Array:
    """A gradient accumulator for the tiles of `xb`: [block, n_blocks, D]."""
    return jnp.zeros((_bsize(xb), _nblocks(xb), xb.views[0].shape[-1]), xb.views[0].dtype)


def _layout(rows, cols, self_index, cfg, row_offset=0):
    """Row tiles, column tiles (the same for a Gram matrix with one block size) and the
    left-out columns (`row_offset`: the first row's global index)."""
    rb = _blocks_of(rows, cfg.row_block)
    shared = cols is None and cfg.row_block == cfg.col_block
    if shared:
        cb = rb
    else:
        cb = _blocks_of(rows if cols is None else cols, cfg.col_block)
    if cfg.diagonal:
        self_b = _Diagonal(jnp.asarray(row_offset, jnp.int32))
    else:
        self_b = None if self_index is None else _to_blocks(self_index, cfg.row_block)
    return rb, cb, self_b, shared


def _grads_out(cfg, rows, cols, accb, dcb, scale):
    """(d rows, d cols), each as (views, multipliers), from the accumulators."""
    if cfg.gram:
        d_x = _from_blocks(dcb, cfg.num_cols)
        if accb is not None:
            d_x = d_x + _from_blocks(accb, cfg.num_rows) * scale
        return _rows_cotangent(rows, d_x), None
    d_rows = _rows_cotangent(rows, _from_blocks(accb, cfg.num_rows) * scale)
    if dcb is None:  # no gradient for the columns: zeros (the caller stops it anyway)
        return d_rows, jax.tree.map(jnp.zeros_like, cols)
    return d_rows, _rows_cotangent(cols, _from_blocks(dcb, cfg.num_cols))


# ----------------------------------------------------------------------------------------
# One device (or the compiler's sharding).

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _lse(rows, cols, scale, self_index, cfg):
    return _lse_fwd(rows, cols, scale, self_index, cfg)[0]


def _lse_fwd(rows, cols, scale, self_index, cfg):
    rb, cb, self_b, shared = _layout(rows, cols, self_index, cfg)
    init = (jnp.full((_bsize(rb), _nblocks(rb)), -jnp.inf, scale.dtype),
            jnp.zeros((_bsize(rb), _nblocks(rb)), scale.dtype))
    m, s = _block_stats(rb, cb, scale, self_b, 0, cfg.num_cols, cfg.precision, *init)
    lse_b = _finish(m, s)
    # Residuals: the tiles' arrays themselves (reshapes of the inputs, unless padded).
    return _from_blocks(lse_b, cfg.num_rows), (rb, None if shared else cb, scale, self_b, lse_b)


def _lse_bwd(cfg, residuals, g):
    rb, cb, scale, self_b, lse_b = residuals
    shared = cb is None
    cb = rb if shared else cb
    dcb = _zeros(cb) if cfg.cols_grad else None
    accb = None if shared else _zeros(rb)
    accb, dcb, d_scale = _block_grads(
        rb, cb, scale, self_b, 0, cfg.num_cols, cfg.precision, lse_b,
        _to_blocks(g, cfg.row_block, _nblocks(rb)), accb, dcb, jnp.zeros((), scale.dtype))
    rows = _unblock_rows(rb, cfg.num_rows // len(rb.views))
    cols = None if cfg.gram else _unblock_rows(cb, cfg.num_cols)
    d_rows, d_cols = _grads_out(cfg, rows, cols, accb, dcb, scale)
    return d_rows, d_cols, d_scale, None


_lse.defvjp(_lse_fwd, _lse_bwd)


# ----------------------------------------------------------------------------------------
# The ring: rows and cols sharded over `axis`; column tiles travel device i -> i + 1.

def _ring_specs(rows, cols, self_index, axis):
    def spec(x):
        return None if x is None else jax.tree.map(lambda _: P(axis), x)
    return spec(rows), spec(cols), P(), None if self_index is None else P(axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_lse(rows, cols, scale, self_index, cfg, where):
    return _ring_fwd(rows, cols, scale, self_index, cfg, where)[0]


def _ring_fwd(rows, cols, scale, self_index, cfg, where):
    mesh, axis = where
    d = mesh.shape[axis]
    perm = [(i, (i + 1) % d) for i in range(d)]

    def body(rows, cols, scale, self_index):
        me = jax.lax.axis_index(axis)
        rb, cb, self_b, _ = _layout(rows, cols, self_index, cfg, me * cfg.num_rows)

        def step(carry, k):
            m, s, cb = carry
            src = (me - k) % d  # the device this column slice belongs to
            m, s = _block_stats(rb, cb, scale, self_b, src * cfg.num_cols, cfg.num_cols,
                                cfg.precision, m, s)
            return (m, s, jax.lax.ppermute(cb, axis, perm)), None

        init = (jnp.full((_bsize(rb), _nblocks(rb)), -jnp.inf, scale.dtype),
                jnp.zeros((_bsize(rb), _nblocks(rb)), scale.dtype), cb)
        # d - 1 hops: the last slice is used where it arrives.
        (m, s, cb), _ = jax.lax.scan(step, init, jnp.arange(d - 1))
        m, s = _block_stats(rb, cb, scale, self_b, ((me + 1) % d) * cfg.num_cols, cfg.num_cols,
                            cfg.precision, m, s)
        return _from_blocks(_finish(m, s), cfg.num_rows)

    lse = jax.shard_map(body, mesh=mesh, in_specs=_ring_specs(rows, cols, self_index, axis),
                        out_specs=P(axis), check_vma=False)(rows, cols, scale, self_index)
    return lse, (rows, cols, scale, self_index, lse)


def _ring_bwd(cfg, where, residuals, g):
    rows, cols, scale, self_index, lse = residuals
    mesh, axis = where
    d = mesh.shape[axis]
    perm = [(i, (i + 1) % d) for i in range(d)]

    def body(rows, cols, scale, self_index, lse, g):
        me = jax.lax.axis_index(axis)
        rb, cb, self_b, _ = _layout(rows, cols, self_index, cfg, me * cfg.num_rows)
        nb = _nblocks(rb)
        lse_b, g_b = _to_blocks(lse, cfg.row_block, nb), _to_blocks(g, cfg.row_block, nb)

        def step(carry, k):
            accb, d_scale, cb, dcb = carry
            src = (me - k) % d
            accb, dcb, d_scale = _block_grads(
                rb, cb, scale, self_b, src * cfg.num_cols, cfg.num_cols, cfg.precision, lse_b,
                g_b, accb, dcb, d_scale)
            # The column slice and its gradient travel together; after d hops both are home.
            cb = jax.lax.ppermute(cb, axis, perm)
            if dcb is not None:
                dcb = jax.lax.ppermute(dcb, axis, perm)
            return (accb, d_scale, cb, dcb), None

        init = (_zeros(rb), jnp.zeros((), scale.dtype), cb,
                _zeros(cb) if cfg.cols_grad else None)
        (accb, d_scale, _, dcb), _ = jax.lax.scan(step, init, jnp.arange(d))
        d_rows, d_cols = _grads_out(cfg, rows, cols, accb, dcb, scale)
        return d_rows, d_cols, d_scale[None]

    row_spec, col_spec = _ring_specs(rows, cols, self_index, axis)[:2]
    in_specs = _ring_specs(rows, cols, self_index, axis) + (P(axis), P(axis))
    d_rows, d_cols, d_scale = jax.shard_map(
        body, mesh=mesh, in_specs=in_specs,
        out_specs=(row_spec, col_spec, P(axis)),
        check_vma=False)(rows, cols, scale, self_index, lse, g)
    return d_rows, d_cols, jnp.sum(d_scale), None


_ring_lse.defvjp(_ring_fwd, _ring_bwd)


# ----------------------------------------------------------------------------------------
# Same-label sums over the ring (SupCon's positives with labels).

def ring_same_label_sums(x: jax.Array, ids: jax.Array, *, ring_axis: str,
                         mesh: Mesh | None = None) -> jax.Array:
    """``out_i = sum_{j: ids_j == ids_i} x_j`` (self included) over rows sharded on a ring.

    Each device keeps its own rows; the (rows, ids) slices travel around the ring once,
    and every device adds, for its rows, the slice's rows of the same id (a
    ``[N/d, N/d]`` 0-1 matrix times the slice): temporaries O(N x D / d + (N / d)^2), no
    gather. The map is symmetric (same id both ways), so its VJP is the same ring over the
    cotangent. The dense reference is ``(ids[:, None] == ids[None, :]) @ x``.
    """
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    d = mesh.shape[ring_axis]
    if x.shape[0] % d:
        raise ValueError(f"ring_axis={ring_axis!r} shards the {x.shape[0]} rows over {d} "
                         "devices: the batch must divide by that; pad it or change the batch "
                         "size.")
    return _same_label_sums(x, jnp.asarray(ids), _MeshAxis(mesh, ring_axis))


def _same_label_ring(x, ids, where):
    mesh, axis = where
    d = mesh.shape[axis]
    perm = [(i, (i + 1) % d) for i in range(d)]

    def body(x, ids):
        def add(acc, cx, cid):
            same = (ids[:, None] == cid[None, :]).astype(x.dtype)
            return acc + jnp.matmul(same, cx, precision=jax.lax.Precision.HIGHEST)

        def step(carry, _):
            acc, cx, cid = carry
            acc = add(acc, cx, cid)
            return (acc, jax.lax.ppermute(cx, axis, perm), jax.lax.ppermute(cid, axis, perm)), None

        # d - 1 hops: the last slice is used where it arrives.
        (acc, cx, cid), _ = jax.lax.scan(step, (jnp.zeros_like(x), x, ids), None, length=d - 1)
        return add(acc, cx, cid)

    return jax.shard_map(body, mesh=mesh, in_specs=(P(axis), P(axis)), out_specs=P(axis),
                         check_vma=False)(x, ids)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _same_label_sums(x, ids, where):
    return _same_label_ring(x, ids, where)


def _same_label_sums_fwd(x, ids, where):
    return _same_label_ring(x, ids, where), ids


def _same_label_sums_bwd(where, ids, g):
    return _same_label_ring(g, ids, where), None


_same_label_sums.defvjp(_same_label_sums_fwd, _same_label_sums_bwd)
