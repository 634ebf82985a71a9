"""Shared image ops of the augmentations, batched and stateless (TensorFlow).

Every op works on a float32 batch ``[B, H, W, C]`` in [0, 1] with per-example parameters
(``[B]`` or ``[B, ...]`` tensors), and every random draw comes from a stateless seed
(:func:`fold_seed`). The SimCLR augmentation (``augment``), RandAugment (``randaugment``)
and the jigsaw view (``jigsaw``) are built from these; this module imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ssljax.data._tf import tf

__all__ = [
    "fold_seed",
    "sample_crop",
    "random_resized_crop",
    "random_flip",
    "color_jitter",
    "random_grayscale",
    "gaussian_blur",
    "gaussian_kernel",
    "separable_blur",
    "blur_radius",
    "sigma_radius",
    "solarize",
]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision and tf.image use


def fold_seed(seed: tf.Tensor, *data: Any) -> tf.Tensor:
    """Derives a new stateless seed ``[2]`` from ``seed`` and integers ``data``."""
    seed = tf.cast(seed, tf.int64)
    for value in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def _bernoulli(seed, batch, p):
    return tf.random.stateless_uniform([batch], seed) < p


def _bcast(v):
    """[B] -> [B, 1, 1, 1] so a per-example value broadcasts over an image batch."""
    return tf.reshape(v, [-1, 1, 1, 1])


def _select(flag, a, b):
    """Per-example ``a if flag[b] else b``; a full-shape condition is ~2x faster in TF."""
    return tf.where(tf.broadcast_to(_bcast(flag), tf.shape(a)), a, b)


def _gray(x):
    """Luma ``[B, H, W, 1]``."""
    if x.shape[-1] == 1:
        return x
    return tf.tensordot(x, tf.constant(_LUMA, x.dtype), axes=[[3], [0]])[..., None]


# ----------------------------------------------------------------------------- crops

def sample_crop(
    seed: tf.Tensor,
    batch: Any,
    height: Any,
    width: Any,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tf.Tensor:
    """Draws random-resized-crop boxes with torchvision's rule.

    Tries ``attempts`` (area, log-ratio) draws per example and keeps the first that
    fits; if none fits it falls back to the largest central crop within ``ratio``.

    Args:
      seed: stateless seed ``[2]``.
      batch: number of boxes B.
      height, width: image size in pixels (ints or scalar tensors).
      scale: range of the crop area as a fraction of the image area.
      ratio: range of the aspect ratio width / height (sampled log-uniformly).
      attempts: draws per example before the fallback.

    Returns:
      float32 ``[B, 4]``: ``(y0, x0, h, w)`` in whole pixels.
    """
    height_f = tf.cast(height, tf.float32)
    width_f = tf.cast(width, tf.float32)
    area = height_f * width_f
    s_area, s_ratio, s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    target = area * _uniform(s_area, [batch, attempts], scale[0], scale[1])
    aspect = tf.exp(_uniform(s_ratio, [batch, attempts], math.log(ratio[0]), math.log(ratio[1])))
    w = tf.round(tf.sqrt(target * aspect))
    h = tf.round(tf.sqrt(target / aspect))
    fits = (w > 0) & (w <= width_f) & (h > 0) & (h <= height_f)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fits = tf.reduce_any(fits, axis=1)
    w = tf.gather(w, first, batch_dims=1)
    h = tf.gather(h, first, batch_dims=1)
    in_ratio = width_f / height_f
    fb_w = tf.where(in_ratio > ratio[1], tf.round(height_f * ratio[1]), width_f)
    fb_h = tf.where(in_ratio < ratio[0], tf.round(width_f / ratio[0]), height_f)
    w = tf.where(any_fits, w, fb_w)
    h = tf.where(any_fits, h, fb_h)
    y0 = tf.minimum(tf.floor(_uniform(s_y, [batch], 0.0, 1.0) * (height_f - h + 1)), height_f - h)
    x0 = tf.minimum(tf.floor(_uniform(s_x, [batch], 0.0, 1.0) * (width_f - w + 1)), width_f - w)
    return tf.stack([y0, x0, h, w], axis=1)


def random_resized_crop(images: tf.Tensor, crop: tf.Tensor, out_size: int) -> tf.Tensor:
    """Crops ``crop[b] = (y0, x0, h, w)`` pixels of each image and resizes to ``out_size``.

    Sample points are placed as in a half-pixel (``align_corners=False``) resize of
    the crop, so a full-image crop at the same size is the identity.
    """
    shape = tf.shape(images)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    y0, x0, h, w = tf.unstack(crop, axis=1)
    half_y = 0.5 * h / out_size
    half_x = 0.5 * w / out_size
    top = tf.clip_by_value(y0 + half_y - 0.5, 0.0, height - 1)
    bottom = tf.clip_by_value(y0 + h - half_y - 0.5, 0.0, height - 1)
    left = tf.clip_by_value(x0 + half_x - 0.5, 0.0, width - 1)
    right = tf.clip_by_value(x0 + w - half_x - 0.5, 0.0, width - 1)
    boxes = tf.stack(
        [top / tf.maximum(height - 1, 1.0), left / tf.maximum(width - 1, 1.0),
         bottom / tf.maximum(height - 1, 1.0), right / tf.maximum(width - 1, 1.0)], axis=1)
    return tf.image.crop_and_resize(
        images, boxes, tf.range(shape[0]), [out_size, out_size], method="bilinear")


def random_flip(images: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Mirrors left-right the images where ``flip`` (``[B]`` bool) is True."""
    # One per-example column gather: ~2x faster than reverse + select.
    cols = tf.range(tf.shape(images)[2])
    index = tf.where(flip[:, None], cols[::-1][None], cols[None])
    return tf.gather(images, index, axis=2, batch_dims=1)


def _brightness(x, f):
    return x * _bcast(f)


def _contrast(x, f):
    # torchvision blends with the mean of the grayscale image (one scalar per image).
    mean = tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True)
    return (x - mean) * _bcast(f) + mean


def _saturation(x, f):
    gray = _gray(x)
    return gray + (x - gray) * _bcast(f)


def _hue(x, delta):
    hsv = tf.image.rgb_to_hsv(x)
    hue = tf.math.floormod(hsv[..., :1] + _bcast(delta), 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))


_JITTER_FNS = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation, "hue": _hue}


def color_jitter(images: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Brightness, contrast, saturation and hue jitter with per-example factors.

    ``params`` holds a ``[B]`` factor for each op that runs (only brightness and
    contrast for 1-channel images), optionally ``jitter_order`` ``[B, n_ops]`` (a
    permutation per example; without it the order is brightness, contrast,
    saturation, hue) and ``jitter`` ``[B]`` bool (which examples change). Each op
    is clipped to [0, 1], as torchvision does.

    With a random order, stage k splits the batch by the op each example puts at
    position k (``tf.dynamic_partition``), runs each op on its group only and
    stitches the batch back: every example pays for each op once, and examples
    left unjittered pay nothing.
    """
    channels = images.shape[-1]
    ops = [n for n in ("brightness", "contrast", "saturation", "hue")
           if n in params and (channels == 3 or n in ("brightness", "contrast"))]
    if not ops:
        return images
    order = params.get("jitter_order")
    if order is None:
        x = images
        for name in ops:
            x = tf.clip_by_value(_JITTER_FNS[name](x, params[name]), 0.0, 1.0)
        if "jitter" in params:
            x = _select(params["jitter"], x, images)
        return x
    n = len(ops)
    rows = tf.range(tf.shape(images)[0])
    skip = tf.logical_not(params["jitter"]) if "jitter" in params else None
    x = images
    for stage in range(n):
        group = order[:, stage]
        if skip is not None:
            group = tf.where(skip, n, group)  # group n: passes through unchanged
        row_parts = tf.dynamic_partition(rows, group, n + 1)
        x_parts = tf.dynamic_partition(x, group, n + 1)
        out = []
        for j, name in enumerate(ops):
            factor = tf.dynamic_partition(params[name], group, n + 1)[j]
            out.append(tf.clip_by_value(_JITTER_FNS[name](x_parts[j], factor), 0.0, 1.0))
        x = tf.dynamic_stitch(row_parts, out + [x_parts[n]])
    return tf.ensure_shape(x, images.shape)


def random_grayscale(images: tf.Tensor, gray: tf.Tensor) -> tf.Tensor:
    """Replaces RGB by its luma (kept as 3 channels) where ``gray`` is True."""
    if images.shape[-1] == 1:
        return images
    return _select(gray, tf.broadcast_to(_gray(images), tf.shape(images)), images)


_BLUR_TRUNCATE = 4.0  # kernel half-width in units of the largest sigma


def sigma_radius(max_sigma: float) -> int:
    """Kernel radius that holds a Gaussian of ``max_sigma`` pixels: ``ceil(4 * max_sigma)``.

    At 4 sigma the truncated tail holds < 1e-4 of the mass and the sampled kernel's
    variance is within 0.1% of ``sigma^2`` (at sigma >= 1). At least 1.

    >>> sigma_radius(2.0), sigma_radius(0.1)
    (8, 1)
    """
    return max(1, math.ceil(_BLUR_TRUNCATE * float(max_sigma) - 1e-9))


def blur_radius(image_size: int, max_sigma: float | None = None) -> int:
    """Kernel radius of the Gaussian blur on images of side ``image_size``.

    With ``max_sigma`` (the largest sigma the augmentation can draw, ``blur_sigma[1]``):
    ``sigma_radius(max_sigma)`` at every image size, capped at ``image_size - 1`` because
    reflect padding needs a radius below the side. On images that small (side <= 4 sigma)
    the kernel is truncated there and renormalised, so the blur is narrower than sigma;
    1-pixel images are not blurred (radius 0). This is what :func:`apply_params` uses.

    Without ``max_sigma``: SimCLR's kernel of ~10% of the side (kept for old callers; it
    does not depend on sigma: 3 taps at 32 px cap the spread near 0.8 px).

    >>> blur_radius(32, 2.0), blur_radius(224, 2.0), blur_radius(5, 2.0), blur_radius(224)
    (8, 8, 4, 11)
    """
    if max_sigma is None:
        return max(1, (image_size // 10) // 2)
    return max(0, min(sigma_radius(max_sigma), int(image_size) - 1))


def gaussian_kernel(sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Per-example normalised 1-D Gaussian taps ``[B, 2 * radius + 1]`` for ``sigma [B]``."""
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    kernel = tf.exp(-tf.square(offsets)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    return kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)


def _fit_kernel(kernel: tf.Tensor, side: int) -> tf.Tensor:
    """Cuts a ``[B, 2R+1]`` kernel to radius ``<= side - 1`` (reflect padding), renormalised."""
    full = (int(kernel.shape[1]) - 1) // 2
    radius = min(full, max(0, side - 1))
    if radius == full:
        return kernel
    kernel = kernel[:, full - radius:full + radius + 1]
    return kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)


def separable_blur(images: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Blurs image ``b`` with the separable kernel ``kernel[b]`` ``[B, 2r+1]``, reflect padding.

    The batch is folded into channels so that one separable depthwise convolution
    applies B different kernels at once. Needs ``r < min(H, W)``.
    """
    radius = (int(kernel.shape[1]) - 1) // 2
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    if radius == 0:
        return images
    if radius >= min(height, width):
        raise ValueError(f"Blur radius {radius} needs images larger than {height}x{width} "
                         "(reflect padding); fit the kernel with blur_radius first.")
    batch = tf.shape(images)[0]
    kernel = tf.transpose(tf.repeat(kernel, channels, axis=0))  # [k, B*C], index b*C + c
    x = tf.transpose(images, [1, 2, 0, 3])
    x = tf.reshape(x, [1, tf.shape(x)[0], tf.shape(x)[1], batch * channels])
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.nn.depthwise_conv2d(x, kernel[:, None, :, None], [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, kernel[None, :, :, None], [1, 1, 1, 1], "VALID")
    x = tf.reshape(x, [tf.shape(x)[1], tf.shape(x)[2], batch, channels])
    x = tf.transpose(x, [2, 0, 1, 3])
    return tf.ensure_shape(x, [None, height, width, channels])


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Blurs each image with its own Gaussian ``sigma[b]`` (pixels), reflect padding.

    ``radius`` is the kernel's half-width in pixels (see :func:`blur_radius`; below the
    image side). The taps are the sampled Gaussian, normalised to sum 1. PIL's
    ``GaussianBlur(radius=sigma)`` (the official BYOL/VICReg/CorInfoMax pipelines) instead
    runs three box blurs of the same variance and extends the edge pixels.
    """
    return separable_blur(images, gaussian_kernel(sigma, radius))


def solarize(images: tf.Tensor, flag: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts pixels at or above ``threshold`` where ``flag`` is True (BYOL's rule)."""
    return tf.where(_bcast(flag) & (images >= threshold), 1.0 - images, images)
