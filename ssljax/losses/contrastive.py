"""Contrastive objectives: NT-Xent (SimCLR), InfoNCE (MoCo), symmetric InfoNCE (CMC),
SupCon and SelfCon.

All three are written on the global batch. Under `jax.jit` with the batch sharded
over a mesh axis, the compiler gathers the (N x D) embeddings for the negatives, so
negatives span every device; no N x N matrix crosses devices. With `block_size`
set, the similarity matrix is never materialised at all, in low precision if asked,
and with `ring_axis` as a ring over the devices (see `ssljax.losses.tiled`).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ssljax.losses._common import compute_dtype, l2_normalize
from ssljax.losses.tiled import (
    Precision,
    _mm,
    check_tiling,
    gram_logsumexp,
    ring_same_label_sums,
    tiled_logsumexp,
)

__all__ = ["nt_xent", "infonce", "supcon", "selfcon_loss", "symmetric_nce", "per_image"]


def _check_temperature(temperature) -> None:
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")


def _check_pair(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name} needs two [N, D] arrays of the same shape; got {a.shape} and {b.shape}.")


def _inv_norm(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """`1 / max(||x||, eps)` per row, as `l2_normalize` scales."""
    return jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1), eps * eps))


def _logsumexp(rows, cols, self_index, block_size, *, scale, row_block_size=None,
               precision="float32", ring_axis=None, mesh=None, cols_grad=True):
    """Row-wise log-sum-exp of `scale * rows @ cols.T` (cols None: rows' Gram matrix),
    column `self_index[i]` left out of row i."""
    if block_size is not None:
        return tiled_logsumexp(rows, cols, self_index=self_index, block_size=block_size,
                               row_block_size=row_block_size, scale=scale, precision=precision,
                               ring_axis=ring_axis, mesh=mesh, cols_grad=cols_grad)
    cols = rows if cols is None else cols
    if not (isinstance(scale, float) and scale == 1.0):
        rows = rows * scale
    if precision == "float32":
        logits = rows @ cols.T
    else:
        logits = _mm(rows, cols, (1, 1), precision, rows.dtype)
    if self_index is not None:
        col = jnp.arange(cols.shape[0])
        logits = jnp.where(col[None, :] == self_index[:, None], -jnp.inf, logits)
    return jax.nn.logsumexp(logits, axis=1)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float | jax.Array,
    block_size: int | None = None,
    row_block_size: int | None = None,
    precision: Precision = "float32",
    ring_axis: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
    """NT-Xent, the normalised-temperature cross-entropy of SimCLR.

    Each of the 2N L2-normalised embeddings is an anchor whose positive is the other
    view of the same example and whose 2N - 2 negatives are all other embeddings
    (itself excluded); logits are cosine similarities divided by the temperature; the
    loss is the cross-entropy averaged over the 2N anchors.

    Args:
        z1: `[N, D]` projections of the first views (raw; normalised here).
        z2: `[N, D]` projections of the second views, row i paired with `z1[i]`.
        temperature: softmax temperature (SimCLR 0.5 / 0.1 / 0.2; MetaMask 0.07). May be
            a traced scalar, e.g. a learnt temperature.
        block_size: if set, compute tile by tile (`block_size` x `block_size` tiles) with a
            custom VJP, never materialising the 2N x 2N similarity matrix; the value and
            gradient equal the dense path. Temporary memory O(N D + block_size^2).
        row_block_size, precision, ring_axis, mesh: see `infonce`.

    Returns:
        Scalar float32 loss (float64 for float64 inputs).

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020; lightly `lightly/loss/ntx_ent_loss.py`;
        MetaMask `meta-mask.py` (`contrastive_loss`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import nt_xent
        >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> z2 = jnp.array([[2.0, 0.1], [0.1, 3.0]])
        >>> print(f"{nt_xent(z1, z2, temperature=0.5):.4f}")
        0.2586
        >>> print(f"{nt_xent(z1, z2, temperature=0.5, block_size=2):.4f}")
        0.2586
    """
    _check_pair(z1, z2, "nt_xent")
    _check_temperature(temperature)
    check_tiling(block_size, row_block_size, precision, ring_axis, mesh)
    dtype = compute_dtype(z1, z2)
    n, dim = z1.shape
    if block_size is not None:
        # Tiles are read from z1 and z2 and normalised on the fly: neither the normalised
        # nor the interleaved 2N x D matrix is built, and one gradient is accumulated.
        z1, z2 = z1.astype(dtype), z2.astype(dtype)
        inv1, inv2 = _inv_norm(z1), _inv_norm(z2)
        positive = jnp.sum(z1 * z2, axis=-1) * (inv1 * inv2) / temperature
        lse = gram_logsumexp((z1, z2), (inv1, inv2), scale=1.0 / temperature,
                             block_size=block_size, row_block_size=row_block_size,
                             precision=precision, ring_axis=ring_axis, mesh=mesh)
        return jnp.mean(lse) - jnp.mean(positive)
    z1 = l2_normalize(z1.astype(dtype))
    z2 = l2_normalize(z2.astype(dtype))
    # Interleaved (z1[0], z2[0], z1[1], ...) rather than concatenated: a device that
    # holds rows i of z1 and z2 then holds rows 2i, 2i+1 of z, so sharding survives.
    z = jnp.stack([z1, z2], axis=1).reshape(2 * n, dim)
    positive = jnp.sum(z1 * z2, axis=-1) / temperature
    lse = _logsumexp(z / temperature, z, jnp.arange(2 * n), None, scale=1.0,
                     precision=precision)
    # Both anchors of a pair share the same positive logit, so mean over N = mean over 2N.
    return jnp.mean(lse) - jnp.mean(positive)


def infonce(
    query: jax.Array,
    key: jax.Array,
    *,
    temperature: float | jax.Array,
    queue: jax.Array | None = None,
    block_size: int | None = None,
    stop_gradient_key: bool = True,
    row_block_size: int | None = None,
    precision: Precision = "float32",
    ring_axis: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
    """InfoNCE in the MoCo form: the positive is the paired key, at logit index 0.

    With a queue (MoCo v2), the logits of query i are `[q_i.k_i, q_i @ queue.T] / T`
    and the negatives are exactly the queue (pass the queue *before* this step's keys
    are enqueued). Without a queue, the negatives are the other keys of the (global)
    batch: logits `q @ k.T / T`, target the diagonal.

    Args:
        query: `[N, D]` queries (raw; normalised here).
        key: `[N, D]` keys, row i the positive of `query[i]` (raw; normalised here).
        temperature: softmax temperature (MoCo v2 0.2, InfoMin 0.15).
        queue: optional `[K, D]` negatives, never differentiated.
        block_size: if set, compute tile by tile (`block_size` x `block_size` tiles of
            queries x negatives) with a custom VJP, never materialising the N x K (or
            N x N) logits; same value and gradient. Temporary memory O((N + K) D +
            block_size^2).
        stop_gradient_key: MoCo's key comes from the momentum encoder and carries no
            gradient (default). Set False for a two-sided InfoNCE in which the key encoder
            is trained too (e.g. InfoMin's view learning).
        row_block_size: rows per tile of the tiled path (default: `block_size`; a value
            >= N gives the row-tiled form, memory O(N x block_size)).
        precision: the similarity products' inputs: "float32" (default), "tensorfloat32"
            or "bfloat16", with float32 accumulation and a float32 log-sum-exp; errors
            against float64 are in `tiled_logsumexp` and experiments/losses_benchmark.md.
        ring_axis: with `block_size`, the name of the mesh axis the batch is sharded over:
            the tiled path runs as a ring (`jax.shard_map`, `jax.lax.ppermute` of the key
            tiles, Inf-CL style) and no device holds the whole N x D keys (or queue, which
            is sharded over the axis too). N (and K) must divide by the axis size.
        mesh: the mesh holding `ring_axis` (default: the one set with `jax.set_mesh`).

    Returns:
        Scalar float32 loss (float64 for float64 inputs): mean cross-entropy.

    References:
        He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
        CVPR 2020; Tian et al., "What Makes for Good Views for Contrastive Learning?",
        NeurIPS 2020; HobbitLong/PyContrast `pycontrast/memory/mem_moco.py`.

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import infonce
        >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> queue = jnp.array([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        >>> print(f"{infonce(q, q, temperature=0.2, queue=queue):.4f}")
        0.2135
        >>> print(f"{infonce(q, q, temperature=0.2):.4f}")
        0.0067
    """
    _check_pair(query, key, "infonce")
    _check_temperature(temperature)
    check_tiling(block_size, row_block_size, precision, ring_axis, mesh)
    tiling = dict(row_block_size=row_block_size, precision=precision, ring_axis=ring_axis,
                  mesh=mesh)
    dtype = compute_dtype(query, key, *(() if queue is None else (queue,)))
    if queue is not None and (queue.ndim != 2 or queue.shape[1] != query.shape[1]):
        raise ValueError(f"infonce needs queue [K, {query.shape[1]}]; got {queue.shape}.")
    if block_size is not None:
        # Tiles are normalised on the fly (multipliers 1 / ||x||): no normalised N x D copy.
        q, k = query.astype(dtype), key.astype(dtype)
        inv_q, inv_k = _inv_norm(q), _inv_norm(k)
        if stop_gradient_key:
            k, inv_k = jax.lax.stop_gradient(k), jax.lax.stop_gradient(inv_k)
        positive = jnp.sum(q * k, axis=-1) * (inv_q * inv_k) / temperature
        if queue is None:
            cols, inv_c, cols_grad = k, inv_k, not stop_gradient_key
        else:
            cols = jax.lax.stop_gradient(queue.astype(dtype))
            inv_c, cols_grad = _inv_norm(cols), False
        lse = tiled_logsumexp(q, cols, block_size=block_size, scale=1.0 / temperature,
                              row_multipliers=inv_q, col_multipliers=inv_c,
                              cols_grad=cols_grad, **tiling)
        if queue is not None:
            lse = jnp.logaddexp(positive, lse)
        return jnp.mean(lse - positive)
    q = l2_normalize(query.astype(dtype))
    k = l2_normalize(key.astype(dtype))
    if stop_gradient_key:
        k = jax.lax.stop_gradient(k)
    positive = jnp.sum(q * k, axis=-1) / temperature
    if queue is None:
        lse = _logsumexp(q / temperature, k, None, block_size, scale=1.0,
                         cols_grad=not stop_gradient_key, **tiling)
    else:
        negatives = jax.lax.stop_gradient(l2_normalize(queue.astype(dtype)))
        lse = jnp.logaddexp(positive, _logsumexp(q / temperature, negatives, None, block_size,
                                                 scale=1.0, cols_grad=False, **tiling))
    return jnp.mean(lse - positive)


def _anchor_views(anchors: str | Sequence[int], num_views: int) -> tuple[int, ...]:
    if isinstance(anchors, str):
        if anchors == "all":
            return tuple(range(num_views))
        if anchors == "one":
            return (0,)
        raise ValueError(
            f"anchors must be 'all', 'one' or a sequence of view indices; got {anchors!r}.")
    views = tuple(int(v) % num_views if -num_views <= int(v) < num_views else -1 for v in anchors)
    if not views or min(views) < 0 or len(set(views)) != len(views):
        raise ValueError(
            f"anchors must list distinct view indices in [0, {num_views}); got {tuple(anchors)}.")
    return views


def _positive_sums(contrast, ids, anchor_cols):
    """For each anchor: sum of its positives' embeddings and their count, in O(M D).

    Sorting the ids turns "same id" into contiguous segments, so the per-id sums are a
    `segment_sum` and no anchor x contrast mask is needed (the tiled path's point).
    """
    m = ids.shape[0]
    order = jnp.argsort(ids)
    sorted_ids = ids[order]
    new_segment = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                                   (sorted_ids[1:] != sorted_ids[:-1]).astype(jnp.int32)])
    segment = jnp.zeros((m,), jnp.int32).at[order].set(jnp.cumsum(new_segment))
    sums = jax.ops.segment_sum(contrast, segment, num_segments=m)
    counts = jax.ops.segment_sum(jnp.ones((m,), contrast.dtype), segment, num_segments=m)
    anchor_segment = segment[anchor_cols]
    # Self is never its own positive.
    return sums[anchor_segment] - contrast[anchor_cols], counts[anchor_segment] - 1


def supcon(
    features: jax.Array,
    labels: jax.Array | None = None,
    *,
    temperature: float | jax.Array,
    base_temperature: float = 0.07,
    anchors: str | Sequence[int] = "all",
    block_size: int | None = None,
    row_block_size: int | None = None,
    precision: Precision = "float32",
    ring_axis: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
    """Supervised (or self-supervised) contrastive loss of SupCon and SelfCon.

    The B * V L2-normalised embeddings form the contrast set. For each anchor, the
    positives are the other embeddings with the same label (the other views of the same
    image when `labels` is None), self excluded; the denominator runs over every
    embedding but the anchor itself. Per anchor,
    `loss = -(T / base_T) * mean_{p in P(a)} log_softmax(a . z / T)_p`,
    averaged over the anchors that have at least one positive (anchors without any
    positive, as in single-view SupCon-S, are dropped; with none left the loss is 0).

    Variants, by how `features` is stacked and which views anchor:
        * SupCon: `[B, 2, D]` two augmented views, `anchors='all'`.
        * SupCon-S: `[B, 1, D]` with labels; anchors with no same-label partner dropped.
        * SelfCon-S: `[B, 2, D]` = `[sub-network exit, backbone]` of one view, labels.
        * SelfCon-M: `[B, 4, D]` = 2 exits x 2 views; the -U variants pass `labels=None`.
        * Starred variants (SelfCon-S*/-M*): `anchors=` the sub-network entries only,
            e.g. `anchors=(0,)` or `(0, 2)`; the contrast set is still all B * V.
        * `anchors='one'`: SupCon's `contrast_mode='one'` (view 0 anchors).

    Args:
        features: `[B, V, D]` embeddings (raw; normalised here).
        labels: optional `[B]` integer class labels.
        temperature: softmax temperature (SelfCon/SupCon CIFAR: 0.1).
        base_temperature: the loss is scaled by `temperature / base_temperature`.
        anchors: 'all', 'one', or a sequence of view indices in `[0, V)`.
        block_size: if set, compute the denominators tile by tile with a custom VJP (the
            (B*V) x (B*V) logits are never materialised); same value and gradient.
        row_block_size, precision, ring_axis, mesh: see `infonce` (with `ring_axis`, B
            must divide by the axis size; with labels too, each anchor's positive sum
            goes round the same ring: `ssljax.losses.tiled.ring_same_label_sums`).

    Returns:
        Scalar float32 loss (float64 for float64 inputs).

    References:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020;
        Bae et al., "Self-Contrastive Learning: Single-viewed Supervised Contrastive
        Framework using Sub-network", AAAI 2023;
        raymin0223/self-contrastive-learning `losses/losses.py` (`ConLoss`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import supcon
        >>> f = jnp.array([[[1.0, 0.0], [0.9, 0.1]], [[0.0, 1.0], [0.2, 1.0]]])
        >>> print(f"{supcon(f, temperature=0.1):.4f}")
        0.0012
        >>> print(f"{supcon(f, jnp.array([3, 3]), temperature=0.1):.4f}")
        7.9516
    """
    if features.ndim != 3:
        raise ValueError(f"supcon needs features [B, V, D]; got shape {features.shape}.")
    _check_temperature(temperature)
    check_tiling(block_size, row_block_size, precision, ring_axis, mesh)
    b, v, dim = features.shape
    if labels is None:
        ids = jnp.arange(b, dtype=jnp.int32)
    else:
        labels = jnp.asarray(labels)
        if labels.shape != (b,):
            raise ValueError(f"supcon needs labels of shape ({b},); got {labels.shape}.")
        ids = labels
    views = _anchor_views(anchors, v)
    dtype = compute_dtype(features)
    if b * v == 1:  # A lone embedding has neither positives nor negatives.
        return jnp.zeros((), dtype)
    feats = l2_normalize(features.astype(dtype))
    # Batch-major order (row b * V + v) keeps each device's examples on that device.
    contrast = feats.reshape(b * v, dim)
    contrast_ids = jnp.repeat(ids, v)
    anchor_cols = (jnp.arange(b)[:, None] * v + jnp.asarray(views)[None, :]).reshape(-1)
    if ring_axis is None:
        anchor = contrast[anchor_cols]
    else:  # the same rows, sliced where they live (a gather would cross devices)
        anchor = feats[:, jnp.asarray(views)].reshape(b * len(views), dim)

    tiling = dict(row_block_size=row_block_size, precision=precision, ring_axis=ring_axis,
                  mesh=mesh)
    if block_size is None:  # the dense path, exactly as before
        lse = _logsumexp(anchor / temperature, contrast, anchor_cols, None, scale=1.0, **tiling)
    elif views == tuple(range(v)):  # every embedding anchors: the Gram matrix and the scale,
        # tiles normalised on the fly from the raw features (a reshape, no copy).
        raw = features.astype(dtype).reshape(b * v, dim)
        lse = gram_logsumexp((raw,), (_inv_norm(raw),), scale=1.0 / temperature,
                             block_size=block_size, **tiling)
    else:
        lse = _logsumexp(anchor, contrast, anchor_cols, block_size, scale=1.0 / temperature,
                         **tiling)
    if block_size is None:
        positive = ((ids[anchor_cols // v][:, None] == contrast_ids[None, :])
                    & (jnp.arange(b * v)[None, :] != anchor_cols[:, None]))
        logits = anchor @ contrast.T / temperature
        pos_logit_sum = jnp.sum(jnp.where(positive, logits, 0.0), axis=1)
        num_pos = jnp.sum(positive, axis=1).astype(dtype)
    elif labels is None and ring_axis is not None:
        # The positives are the anchor's other views, on its own device: no gather.
        pos_sum = (jnp.sum(feats, axis=1)[:, None] - feats[:, jnp.asarray(views)]).reshape(
            b * len(views), dim)
        num_pos = jnp.full((b * len(views),), v - 1, dtype)
        pos_logit_sum = jnp.sum(anchor * pos_sum, axis=-1) / temperature
    elif ring_axis is not None:
        # With labels: each row's same-label sum (and count, the appended 1) accumulated as
        # the slices go round the ring; self removed after. Sliced where the anchors live.
        ones = jnp.ones((b * v, 1), dtype)
        sums = ring_same_label_sums(jnp.concatenate([contrast, ones], axis=1), contrast_ids,
                                    ring_axis=ring_axis, mesh=mesh)
        sums = (sums - jnp.concatenate([contrast, ones], axis=1)).reshape(b, v, dim + 1)
        sums = sums[:, jnp.asarray(views)].reshape(b * len(views), dim + 1)
        pos_sum, num_pos = sums[:, :dim], jax.lax.stop_gradient(sums[:, dim])
        pos_logit_sum = jnp.sum(anchor * pos_sum, axis=-1) / temperature
    else:
        pos_sum, num_pos = _positive_sums(contrast, contrast_ids, anchor_cols)
        pos_logit_sum = jnp.sum(anchor * pos_sum, axis=-1) / temperature
    has_pos = num_pos > 0
    mean_log_prob_pos = pos_logit_sum / jnp.where(has_pos, num_pos, 1.0) - lse
    per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
    num_valid = jnp.sum(has_pos)
    return jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(num_valid, 1).astype(dtype)


def symmetric_nce(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """``(InfoNCE(z1 -> z2) + InfoNCE(z2 -> z1)) / 2`` with in-batch negatives, both sides
    trained (CMC's two-view objective).

    >>> z = jnp.eye(2)
    >>> print(f"{symmetric_nce(z, z, temperature=1.0):.4f}")
    0.3133
    """
    return 0.5 * (infonce(z1, z2, temperature=temperature, stop_gradient_key=False)
                  + infonce(z2, z1, temperature=temperature, stop_gradient_key=False))


def per_image(z: jax.Array, num_views: int) -> jax.Array:
    """``[V*B, D]`` view-major (view 0's B rows first) -> ``[B, V, D]``.

    >>> per_image(jnp.arange(4.0)[:, None], 2)[:, :, 0].tolist()
    [[0.0, 2.0], [1.0, 3.0]]
    """
    return jnp.swapaxes(z.reshape((num_views, -1) + z.shape[1:]), 0, 1)


ANCHORS = ("all", "subnet")


def selfcon_loss(z: jax.Array, z_exits: Sequence[jax.Array], labels: jax.Array | None, *,
                 num_views: int, temperature: float, base_temperature: float = 0.07,
                 anchors: str = "all", alpha: float = 1.0,
                 block_size: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SelfCon objective on projections of ``V`` views, as the official code stacks them.

    Args:
      z: ``[V*B, D]`` backbone projections, view-major (view 0's B images first).
      z_exits: one ``[V*B, D]`` array of sub-network projections per exit.
      labels: ``[B]`` class labels, or None for the unsupervised -U variants.
      num_views: V (1: SelfCon-S, 2: SelfCon-M).
      temperature, base_temperature, block_size: as for :func:`ssljax.losses.supcon`.
      anchors: ``'all'``: one SupCon loss over ``[V*B, E+1, D]`` = (exits..., backbone) of
        each image-view, with the labels repeated per view (for -MU, the positive of an
        embedding is the other exit of the same view, as in the official code);
        ``'subnet'`` (starred): ``supcon(backbone [B, V, D]) + alpha * supcon([B, V*(E+1), D],
        anchors = the sub-network entries)``.
      alpha: weight of the sub-network-anchored term of the starred variants.

    Returns:
      ``(loss, terms)``; ``terms`` has ``backbone_term`` and ``subnet_term`` for the starred
      variants, nothing otherwise.

    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0]]); sub = jnp.array([[0.8, 0.6], [0.6, 0.8]])
    >>> loss, _ = selfcon_loss(z, [sub], jnp.array([0, 1]), num_views=1, temperature=0.1)
    >>> print(f"{loss:.4f}")
    1.3811
    """
    if anchors not in ANCHORS:
        raise ValueError(f"selfcon anchors must be one of {ANCHORS}; got {anchors!r}.")
    kw = dict(temperature=temperature, base_temperature=base_temperature, block_size=block_size)
    if anchors == "all":
        stacked = jnp.stack([*z_exits, z], axis=1)  # [V*B, E+1, D]
        ids = None if labels is None else jnp.tile(labels, num_views)
        return supcon(stacked, ids, **kw), {}
    backbone = per_image(z, num_views)  # [B, V, D]
    subs = [per_image(s, num_views) for s in z_exits]
    everything = jnp.concatenate([*subs, backbone], axis=1)  # [B, V*(E+1), D]
    backbone_term = supcon(backbone, labels, **kw)
    subnet_term = supcon(everything, labels, anchors=tuple(range(len(subs) * num_views)),
                                **kw)
    return backbone_term + alpha * subnet_term, {"backbone_term": backbone_term,
                                                 "subnet_term": subnet_term}
