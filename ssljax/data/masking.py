"""Per-view patch masks drawn in tf.data, beside the views (MRCL's masked views).

An image of side ``S`` is cut into a ``(S/p) x (S/p)`` grid of ``p x p`` patches; a mask is
a boolean ``[S/p, S/p]`` grid, True for a masked patch. Every masked view hides exactly
``num_masked(ratio, L) = round(ratio * L)`` of its ``L`` patches, so a ViT can drop a
static number of tokens (MAE) and the ratio holds per image, not just on average.

Two kinds:

* ``'random'``: a uniformly random subset of the patches (MAE's shuffle-and-keep).
* ``'block'``: ``num_blocks`` compact regions. Each block has a random centre and a random
  aspect ratio; a patch's score is its scaled Chebyshev distance to the nearest centre (plus
  a tiny random tie-break), and the ``round(ratio * L)`` patches of lowest score are
  masked: rectangles grown around the centres until the count is reached (clipped by the
  image border, they grow on the other side). Our simplification of BEiT's block-wise
  masking, which draws rectangles one by one until the count is reached.

Masks are drawn statelessly from a seed for the whole global batch (like the views), so
they are a function of ``(seed, step, view)`` only. Views not in ``views`` get an all-False
mask, so a batch always carries ``[B, V, S/p, S/p]``.

MRCL (Liu et al., 2022) masks "random patches"; the kinds, patch size and which views are
masked are our reading (see METHODS.md).
"""

from __future__ import annotations

from typing import Any

from ssljax.data._tf import tf
from ssljax.data.ops import fold_seed
from ssljax.data.specs import KINDS, MaskConfig, mask_config_from, num_masked  # noqa: F401

__all__ = ["MaskConfig", "num_masked", "sample_masks", "mask_config_from"]


def _rank_smallest(scores: tf.Tensor, count: int) -> tf.Tensor:
    """True for the ``count`` smallest entries of each row of ``scores [B, L]``."""
    order = tf.argsort(scores, axis=-1, stable=True)
    ranks = tf.argsort(order, axis=-1, stable=True)
    return ranks < count


def _block_scores(seed: tf.Tensor, batch: int, grid: int, num_blocks: int) -> tf.Tensor:
    centres = tf.random.stateless_uniform([batch, num_blocks, 2], fold_seed(seed, 1),
                                          maxval=float(grid))
    # Aspect ratio log-uniform in [1/3, 3] (BEiT's range); height scale sqrt(r), width 1/sqrt(r).
    log_r = tf.random.stateless_uniform([batch, num_blocks, 1], fold_seed(seed, 2),
                                        minval=-1.0986123, maxval=1.0986123)
    scale = tf.concat([tf.exp(-0.5 * log_r), tf.exp(0.5 * log_r)], axis=-1)  # [B, K, 2]
    ij = tf.stack(tf.meshgrid(tf.range(grid, dtype=tf.float32),
                              tf.range(grid, dtype=tf.float32), indexing="ij"), -1)
    ij = tf.reshape(ij, [1, 1, grid * grid, 2]) + 0.5
    dist = tf.reduce_max(tf.abs(ij - centres[:, :, None]) * scale[:, :, None], axis=-1)
    noise = tf.random.stateless_uniform([batch, grid * grid], fold_seed(seed, 3), maxval=1e-3)
    return tf.reduce_min(dist, axis=1) + noise  # [B, L]


def sample_masks(seed: tf.Tensor, batch: int, num_views: int, image_size: int,
                 cfg: MaskConfig) -> tf.Tensor:
    """Boolean masks ``[batch, num_views, g, g]`` (``g = image_size // patch_size``).

    Args:
      seed: stateless seed ``[2]`` (e.g. folded from the data seed and the step).
      batch: number of examples (the global batch: callers slice their rows).
      num_views: V; views not in ``cfg.views`` get all-False masks.
      image_size: side of the square views.
      cfg: the mask parameters.

    Returns:
      ``tf.bool [batch, num_views, g, g]``; each masked view has exactly
      ``num_masked(cfg.ratio, g * g)`` True entries.

    >>> m = sample_masks(tf.constant([0, 1], tf.int64), 3, 2, 8, MaskConfig(ratio=0.25,
    ...                  patch_size=2, views=(1,)))
    >>> m.shape, tf.reduce_sum(tf.cast(m, tf.int32), axis=[2, 3]).numpy().tolist()
    (TensorShape([3, 2, 4, 4]), [[0, 4], [0, 4], [0, 4]])
    """
    grid = cfg.grid(image_size)
    length = grid * grid
    count = num_masked(cfg.ratio, length)
    for v in cfg.views:
        if not 0 <= v < num_views:
            raise ValueError(f"Mask view index {v} is out of range for {num_views} views; set "
                             "--config.data.mask.views to indices below data.num_views.")
    masks = []
    for v in range(num_views):
        if v not in cfg.views or count == 0:
            masks.append(tf.zeros([batch, length], tf.bool))
            continue
        view_seed = fold_seed(seed, v)
        if cfg.kind == "random":
            scores = tf.random.stateless_uniform([batch, length], view_seed)
        else:
            scores = _block_scores(view_seed, batch, grid, cfg.num_blocks)
        masks.append(_rank_smallest(scores, count))
    return tf.reshape(tf.stack(masks, axis=1), [batch, num_views, grid, grid])


def pixel_mask(masks: Any, patch_size: int) -> Any:
    """Upsamples patch masks ``[..., g, g]`` to pixel masks ``[..., g*p, g*p]`` (NumPy/JAX)."""
    return masks.repeat(patch_size, axis=-2).repeat(patch_size, axis=-1)
