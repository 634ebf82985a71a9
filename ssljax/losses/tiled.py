"""Blockwise log-sum-exp of a similarity matrix that is never materialised.

Every contrastive objective in this package reduces to

    loss = mean_i( logsumexp_j(s_ij) - positive_i ),   s = rows @ cols.T,

where the positive term costs O(N D) and only the log-sum-exp touches all N x C
pairs. `tiled_logsumexp` computes that log-sum-exp with a loop over column blocks
and a running (max, sum), and its custom VJP saves only the inputs and the per-row
result, recomputing each block's softmax in the backward pass. Peak memory is
O(rows x block_size) instead of O(rows x cols).

Rows are processed all at once (not in a loop): under `jax.jit` with the rows
sharded over a mesh axis, each device keeps its own rows and the compiler gathers
the columns (N x D embeddings), so the tiled path stays exact and distributed with
no hand-written collectives, and per-device memory is O(rows / devices x block_size).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ssljax.losses._common import compute_dtype

__all__ = ["tiled_logsumexp"]


def tiled_logsumexp(
    rows: jax.Array,
    cols: jax.Array,
    *,
    self_index: jax.Array | None = None,
    block_size: int,
) -> jax.Array:
    """Row-wise `logsumexp(rows @ cols.T)` without building the `[M, C]` matrix.

    Args:
        rows: `[M, D]` query vectors (already scaled, e.g. by `1 / temperature`).
        cols: `[C, D]` key vectors.
        self_index: optional `[M]` integers; column `self_index[i]` is left out of row
            `i` (the "self" similarity of SimCLR/SupCon). Use a negative value to leave
            nothing out of a row.
        block_size: number of columns per block. Temporary memory of value-and-grad is
            about `M * block_size` floats plus a few copies of `rows` and `cols`
            (512 to 2048 is a good range; see experiments/losses_benchmark.md).

    Returns:
        `[M]` array, `log(sum_{j != self_index[i]} exp(rows[i] . cols[j]))`, computed in
        float32 (float64 for float64 inputs). Rows with every column left out give `-inf`.

    References:
        Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018;
        Dao et al., "FlashAttention", NeurIPS 2022 (recompute in the backward pass).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import tiled_logsumexp
        >>> x = jnp.eye(3)
        >>> dense = jax.nn.logsumexp(x @ x.T, axis=1)
        >>> bool(jnp.allclose(tiled_logsumexp(x, x, block_size=2), dense))
        True
    """
    if rows.ndim != 2 or cols.ndim != 2 or rows.shape[1] != cols.shape[1]:
        raise ValueError(
            "tiled_logsumexp needs rows [M, D] and cols [C, D]; "
            f"got {rows.shape} and {cols.shape}.")
    if int(block_size) < 1:
        raise ValueError(f"block_size must be a positive integer; got {block_size}.")
    dtype = compute_dtype(rows, cols)
    rows, cols = rows.astype(dtype), cols.astype(dtype)
    if self_index is None:
        self_index = jnp.full((rows.shape[0],), -1, jnp.int32)
    self_index = jnp.asarray(self_index, jnp.int32)
    return _lse(rows, cols, self_index, int(min(block_size, cols.shape[0])))


def _blocks(cols: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Pads the columns to whole blocks: `[n_blocks, block, D]` and each block's first index."""
    num_cols, dim = cols.shape
    n_blocks = math.ceil(num_cols / block)
    padded = jnp.pad(cols, ((0, n_blocks * block - num_cols), (0, 0)))
    return padded.reshape(n_blocks, block, dim), jnp.arange(n_blocks, dtype=jnp.int32) * block


def _masked_logits(rows, col_block, start, self_index, num_cols):
    logits = rows @ col_block.T
    col = start + jnp.arange(col_block.shape[0], dtype=jnp.int32)
    invalid = (col[None, :] >= num_cols) | (col[None, :] == self_index[:, None])
    return logits, invalid


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _lse(rows, cols, self_index, block):
    return _lse_fwd(rows, cols, self_index, block)[0]


def _lse_fwd(rows, cols, self_index, block):
    num_cols = cols.shape[0]
    col_blocks, starts = _blocks(cols, block)

    def step(carry, xs):
        run_max, run_sum = carry
        col_block, start = xs
        logits, invalid = _masked_logits(rows, col_block, start, self_index, num_cols)
        logits = jnp.where(invalid, -jnp.inf, logits)
        new_max = jnp.maximum(run_max, jnp.max(logits, axis=1))
        # A row whose columns so far are all left out has max -inf; shift by 0 instead
        # so that exp(-inf - (-inf)) never produces NaN.
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        run_sum = run_sum * jnp.exp(run_max - shift) + jnp.sum(
            jnp.exp(logits - shift[:, None]), axis=1)
        return (new_max, run_sum), None

    init = (jnp.full(rows.shape[:1], -jnp.inf, rows.dtype), jnp.zeros(rows.shape[:1], rows.dtype))
    (run_max, run_sum), _ = jax.lax.scan(step, init, (col_blocks, starts))
    lse = jnp.where(run_sum > 0, jnp.where(jnp.isfinite(run_max), run_max, 0.0) + jnp.log(run_sum),
                    -jnp.inf)
    return lse, (rows, cols, self_index, lse)


def _lse_bwd(block, residuals, g):
    rows, cols, self_index, lse = residuals
    num_cols = cols.shape[0]
    col_blocks, starts = _blocks(cols, block)
    safe_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)

    def step(d_rows, xs):
        col_block, start = xs
        logits, invalid = _masked_logits(rows, col_block, start, self_index, num_cols)
        # The softmax of this block, recomputed; d lse_i / d s_ij = p_ij.
        weights = jnp.exp(jnp.where(invalid, -jnp.inf, logits) - safe_lse[:, None]) * g[:, None]
        return d_rows + weights @ col_block, weights.T @ rows

    d_rows, d_col_blocks = jax.lax.scan(step, jnp.zeros_like(rows), (col_blocks, starts))
    d_cols = d_col_blocks.reshape(-1, cols.shape[1])[:num_cols]
    return d_rows, d_cols, None


_lse.defvjp(_lse_fwd, _lse_bwd)
