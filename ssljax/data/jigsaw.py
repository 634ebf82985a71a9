"""The PIRL jigsaw view of InfoMin, batched and stateless (TensorFlow).

As PyContrast's ``JigsawCrop``: a random resized crop of scale (0.6, 1) to ``size`` pixels,
a flip, then a 3 x 3 grid of cells of ``size // 3`` pixels and a random ``patch`` x ``patch``
crop inside each cell: ``[B, 9, patch, patch, C]``. Built on the shared ops
(``ssljax.data.ops``); its settings are :class:`ssljax.data.specs.JigsawConfig`.

References:
  Misra & van der Maaten, "Self-Supervised Learning of Pretext-Invariant Representations"
  (PIRL), CVPR 2020; Tian et al., "What Makes for Good Views for Contrastive Learning?",
  NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssljax.data._tf import tf
from ssljax.data.ops import fold_seed, random_flip, random_resized_crop, sample_crop
from ssljax.data.specs import JigsawConfig

__all__ = ["JigsawConfig", "sample_jigsaw", "jigsaw_patches"]

_JIG_TAG = 12  # the batch seed's stream of the jigsaw view


def sample_jigsaw(seed: tf.Tensor, batch_size: int, height: Any, width: Any,
                  cfg: JigsawConfig) -> dict[str, tf.Tensor]:
    """Per-example crop, flip and patch offsets of the jigsaw view."""
    s_crop, s_flip, s_off = tf.unstack(
        tf.random.experimental.stateless_split(fold_seed(seed, _JIG_TAG), 3))
    slack = cfg.size // cfg.grid - cfg.patch
    k = cfg.grid * cfg.grid
    return {
        "jig_crop": sample_crop(s_crop, batch_size, height, width, cfg.crop_scale,
                                cfg.crop_ratio),
        "jig_flip": tf.random.stateless_uniform([batch_size], s_flip) < cfg.flip_p,
        "jig_offset": tf.random.stateless_uniform([batch_size, k, 2], s_off, minval=0,
                                                  maxval=slack + 1, dtype=tf.int32),
    }


def jigsaw_patches(images: tf.Tensor, params: Mapping[str, tf.Tensor],
                   cfg: JigsawConfig) -> tf.Tensor:
    """The jigsaw view of float ``[B, H, W, C]`` images: ``[B, grid^2, patch, patch, C]``.

    Cells in row-major order; patch ``(r, c)`` is the ``patch``-sized square at
    ``(r * cell + dy, c * cell + dx)`` of the resized, flipped crop.

    >>> cfg = JigsawConfig(size=12, patch=3)
    >>> x = tf.random.uniform([2, 16, 16, 1])
    >>> jigsaw_patches(x, sample_jigsaw(tf.constant([0, 1]), 2, 16, 16, cfg), cfg).shape
    TensorShape([2, 9, 3, 3, 1])
    """
    x = random_resized_crop(images, params["jig_crop"], cfg.size)
    x = random_flip(x, params["jig_flip"])
    b, c = tf.shape(x)[0], x.shape[-1]
    cell = cfg.size // cfg.grid
    k = cfg.grid * cfg.grid
    grid = tf.range(k)
    origin = tf.stack([grid // cfg.grid, grid % cfg.grid], axis=1) * cell  # [k, 2]
    top_left = tf.cast(origin[None] + params["jig_offset"], tf.int32)  # [B, k, 2]
    # Gather rows then columns: index [B, k, patch] along each axis.
    steps = tf.range(cfg.patch)
    rows = top_left[..., 0:1] + steps  # [B, k, P]
    cols = top_left[..., 1:2] + steps
    patches = tf.gather(x, rows, axis=1, batch_dims=1)  # [B, k, P, W, C]
    patches = tf.gather(patches, cols, axis=3, batch_dims=2)  # [B, k, P, P, C]
    return tf.ensure_shape(tf.reshape(patches, [b, k, cfg.patch, cfg.patch, c]),
                           [None, k, cfg.patch, cfg.patch, c])
