"""SimCLR-style augmentations in JAX, run inside the jitted train step (``augment_on='device'``).

The same settings (:class:`~ssljax.data.specs.AugmentConfig`), the same op order and the same
formulas as the tf.data path (``ssljax.data.ops`` / ``ssljax.data.augment``): random resized
crop, flip, colour jitter (brightness, contrast, saturation, hue; random order), grayscale,
Gaussian blur and solarize. Every op works on one image ``[H, W, C]`` with scalar parameters
and is vmapped over the batch, so inside ``jax.jit`` it runs on the *global*, sharded batch.

Randomness is stateless: the parameters of example ``i`` (its row in the global batch of a
step), view ``v``, step ``s`` come from ``fold_in(key(seed), tag, s, v, i)``, so a run is
repeatable, resumes exactly (the step is ``TrainState.step``), and the views do not depend on
how many devices or processes hold the batch. The random streams differ from the tf.data path
(different generators); the distributions are the same (tests/test_device_augment.py).

Resampling is separable and cheap: the crop-and-resize is two gathers of rows and columns
and a blend (no dense interpolation matrix), the blur 2R+1 shifted sums per axis, so the
whole augmentation costs a few tens of MFLOP per 224-px view, ~0.1% of a ResNet-50 step.

Not on the device: RandAugment (InfoMin Aug) and the jigsaw view; :func:`unsupported` names
them so the trainer can stop at start-up with one sentence (``augment_on='auto'`` keeps such
configs on the host). RandAugment reproduces PIL's 8-bit arithmetic, and its geometric ops
need float64 to truncate to the same level as PIL (``ssljax.data.randaugment._affine``):
TPUs have no float64 and JAX runs float32 unless x64 is switched on globally. And each image
draws 2 of 15 ops: vmapped, a per-example switch evaluates all 15 for every image (the
tf.data version partitions the batch by op instead), ~7x the work.

This module imports no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ssljax.data.specs import AugmentConfig

__all__ = [
    "AugmentConfig",
    "augment_views",
    "apply_one",
    "sample_one",
    "example_keys",
    "resized_crop",
    "flip",
    "color_jitter",
    "grayscale",
    "blur",
    "solarize",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "unsupported",
]

_LUMA = (0.299, 0.587, 0.114)  # as ssljax.data.ops (ITU-R 601)
# Per-op streams, folded into each example's key: fixed numbers, so a new op never changes
# the draws of the others (as in ssljax.data.augment).
_CROP, _FLIP, _JITTER, _GRAY, _BLUR, _SOLAR = 1, 2, 3, 4, 5, 6
_AUG_TAG = 2  # the data seed's augmentation stream (ssljax.data.pipeline uses the same tag)
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_BLUR_TRUNCATE = 4.0


def unsupported(cfg: AugmentConfig) -> list[tuple[str, str]]:
    """The ops of ``cfg`` that have no device implementation, as ``(op, setting)`` pairs.

    >>> unsupported(AugmentConfig(randaugment_n=2))
    [('RandAugment', 'randaugment_n=0')]
    """
    missing = []
    if cfg.randaugment_n > 0:
        missing.append(("RandAugment", "randaugment_n=0"))
    return missing


# ----------------------------------------------------------------------------- keys


def example_keys(seed: int | jax.Array, step: jax.Array, num_examples: int,
                 view: int) -> jax.Array:
    """Keys ``[num_examples]`` of view ``view`` of the global batch of ``step``.

    Row ``i`` is ``fold_in(fold_in(fold_in(fold_in(key(seed), AUG), step), view), i)``: a
    function of (seed, step, view, global example index) only.
    """
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUG_TAG), step)
    base = jax.random.fold_in(base, view)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_examples))


# ----------------------------------------------------------------------------- sampling


def _sample_crop(key, height, width, scale, ratio, attempts=10):
    """One ``(y0, x0, h, w)`` box with the rule of ``ssljax.data.ops.sample_crop``."""
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    height = jnp.asarray(height, jnp.float32)
    width = jnp.asarray(width, jnp.float32)
    target = height * width * jax.random.uniform(k_area, [attempts], minval=scale[0],
                                                 maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, [attempts], minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(target * aspect))
    h = jnp.round(jnp.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    in_ratio = width / height
    fb_w = jnp.where(in_ratio > ratio[1], jnp.round(height * ratio[1]), width)
    fb_h = jnp.where(in_ratio < ratio[0], jnp.round(width / ratio[0]), height)
    w = jnp.where(fits.any(), w[first], fb_w)
    h = jnp.where(fits.any(), h[first], fb_h)
    y0 = jnp.minimum(jnp.floor(jax.random.uniform(k_y) * (height - h + 1)), height - h)
    x0 = jnp.minimum(jnp.floor(jax.random.uniform(k_x) * (width - w + 1)), width - w)
    return jnp.stack([y0, x0, h, w])


def _jitter_ops(cfg: AugmentConfig, channels: int) -> list[str]:
    ops = [("brightness", cfg.brightness), ("contrast", cfg.contrast)]
    if channels == 3:
        ops += [("saturation", cfg.saturation), ("hue", cfg.hue)]
    return [name for name, strength in ops if strength > 0]


def sample_one(key: jax.Array, cfg: AugmentConfig, height: Any, width: Any,
               channels: int) -> dict[str, jax.Array]:
    """The parameters of one example's view (scalars and small vectors), from ``key``.

    Same fields and distributions as ``ssljax.data.augment.sample_params`` (one row).
    ``height, width``: the size of the image the crop is drawn on (may be traced).
    """
    params = {"crop": _sample_crop(jax.random.fold_in(key, _CROP), height, width,
                                   cfg.crop_scale, cfg.crop_ratio)}
    if cfg.flip_p > 0:
        params["flip"] = jax.random.uniform(jax.random.fold_in(key, _FLIP)) < cfg.flip_p
    ops = _jitter_ops(cfg, channels)
    if cfg.jitter_p > 0 and ops:
        k_apply, k_factor, k_order = jax.random.split(jax.random.fold_in(key, _JITTER), 3)
        params["jitter"] = jax.random.uniform(k_apply) < cfg.jitter_p
        k_factors = jax.random.split(k_factor, 4)
        for i, name in enumerate(_JITTER_OPS):
            if name not in ops:
                continue
            s = getattr(cfg, name)
            low, high = (-s, s) if name == "hue" else (max(0.0, 1 - s), 1 + s)
            params[name] = jax.random.uniform(k_factors[i], minval=low, maxval=high)
        if cfg.jitter_random_order:
            params["jitter_order"] = jax.random.permutation(k_order, len(ops))
    if cfg.grayscale_p > 0 and channels == 3:
        params["grayscale"] = jax.random.uniform(jax.random.fold_in(key, _GRAY)) < cfg.grayscale_p
    if cfg.blur_p > 0:
        k_apply, k_sigma = jax.random.split(jax.random.fold_in(key, _BLUR))
        params["blur"] = jax.random.uniform(k_apply) < cfg.blur_p
        params["blur_sigma"] = jax.random.uniform(k_sigma, minval=cfg.blur_sigma[0],
                                                  maxval=cfg.blur_sigma[1])
    if cfg.solarize_p > 0:
        params["solarize"] = jax.random.uniform(jax.random.fold_in(key, _SOLAR)) < cfg.solarize_p
    return params


# ----------------------------------------------------------------------------- ops


def _lerp_along(x: jax.Array, start, stop, out: int, axis: int) -> jax.Array:
    """Samples ``out`` points spaced evenly from ``start`` to ``stop`` (pixel-centre
    coordinates, inside the image) along ``axis`` of ``x``, linearly, as
    tf.image.crop_and_resize places them: two row (or column) gathers and a blend."""
    size = x.shape[axis]
    if out > 1:
        pos = start + jnp.arange(out, dtype=jnp.float32) * ((stop - start) / (out - 1))
    else:
        pos = jnp.full([1], 0.5 * (start + stop), jnp.float32)
    lo = jnp.floor(pos)
    frac = pos - lo
    lo = lo.astype(jnp.int32)
    hi = jnp.minimum(lo + 1, size - 1)
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    a = jnp.take(x, lo, axis=axis)
    b = jnp.take(x, hi, axis=axis)
    return a + (b - a) * frac


def resized_crop(image: jax.Array, box: jax.Array, out_size: int) -> jax.Array:
    """Crops ``box = (y0, x0, h, w)`` pixels of ``image [H, W, C]`` and resizes it to
    ``out_size`` (bilinear, half-pixel sample points): ``ssljax.data.ops.random_resized_crop``.

    Box coordinates may be fractional (a crop drawn on a larger original and scaled to this
    image); sample points are clipped to the image as tf.image.crop_and_resize's box is.
    """
    height, width = image.shape[0], image.shape[1]
    y0, x0, h, w = box[0], box[1], box[2], box[3]
    half_y, half_x = 0.5 * h / out_size, 0.5 * w / out_size
    top = jnp.clip(y0 + half_y - 0.5, 0.0, height - 1)
    bottom = jnp.clip(y0 + h - half_y - 0.5, 0.0, height - 1)
    left = jnp.clip(x0 + half_x - 0.5, 0.0, width - 1)
    right = jnp.clip(x0 + w - half_x - 0.5, 0.0, width - 1)
    # Rows first, then columns: the order of tf.image.crop_and_resize's two lerps (top and
    # bottom rows at each column, then between them) is columns first; the results agree
    # to float32 rounding.
    x = _lerp_along(image, top, bottom, out_size, 0)
    return _lerp_along(x, left, right, out_size, 1)


def flip(image: jax.Array, do: jax.Array) -> jax.Array:
    """Mirrors ``image [H, W, C]`` left-right if ``do``."""
    return jnp.where(do, image[:, ::-1], image)


def _gray(x):
    if x.shape[-1] == 1:
        return x
    return (x[..., 0:1] * _LUMA[0] + x[..., 1:2] * _LUMA[1] + x[..., 2:3] * _LUMA[2])


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """tf.image.rgb_to_hsv's formulas (hue in [0, 1))."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = jnp.max(x, axis=-1)
    rng = value - jnp.min(x, axis=-1)
    sat = jnp.where(value > 0, rng / jnp.where(value > 0, value, 1.0), 0.0)
    norm = (1.0 / 6.0) / jnp.where(rng > 0, rng, 1.0)
    # The channel that holds the maximum, first on ties (tf's r == V, then g == V). Not an
    # equality test against ``value``: XLA may fuse and recompute ``x`` for each use with
    # another rounding (it did on 8 CPU devices), and then no channel equals the maximum.
    top = jnp.argmax(x, axis=-1)
    hue = jnp.where(top == 0, norm * (g - b),
                    jnp.where(top == 1, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0))
    hue = jnp.where(rng > 0, hue, 0.0)
    hue = jnp.where(hue < 0, hue + 1.0, hue)
    return jnp.stack([hue, sat, value], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """tf.image.hsv_to_rgb's formulas."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    dh = h * 6.0
    dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
    db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
    one_minus_s = 1.0 - s
    return jnp.stack([v * (one_minus_s + s * dr), v * (one_minus_s + s * dg),
                      v * (one_minus_s + s * db)], axis=-1)


def _brightness(x, f):
    return x * f


def _contrast(x, f):
    mean = jnp.mean(_gray(x))
    return (x - mean) * f + mean


def _saturation(x, f):
    gray = _gray(x)
    return gray + (x - gray) * f


def _hue(x, delta):
    hsv = rgb_to_hsv(x)
    hue = jnp.mod(hsv[..., :1] + delta, 1.0)
    return hsv_to_rgb(jnp.concatenate([hue, hsv[..., 1:]], axis=-1))


_JITTER_FNS = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation,
               "hue": _hue}


def color_jitter(image: jax.Array, params: Mapping[str, jax.Array]) -> jax.Array:
    """Brightness, contrast, saturation and hue with the factors in ``params``, each clipped
    to [0, 1], in the order ``params['jitter_order']`` (indices into the ops present, as
    ``ssljax.data.ops.color_jitter``) or the fixed order; unchanged where not ``jitter``."""
    channels = image.shape[-1]
    ops = [n for n in _JITTER_OPS
           if n in params and (channels == 3 or n in ("brightness", "contrast"))]
    if not ops:
        return image
    order = params.get("jitter_order")
    x = image
    for stage in range(len(ops)):
        if order is None:
            x = jnp.clip(_JITTER_FNS[ops[stage]](x, params[ops[stage]]), 0.0, 1.0)
            continue
        # Every op at every stage, then a select: under vmap a switch would do the same.
        # Brightness, contrast and saturation are one affine map a*x + b*gray + c*mean(gray).
        op = order[stage]
        linear = [n for n in ops if n != "hue"]
        a = jnp.float32(1.0)
        b = jnp.float32(0.0)
        c = jnp.float32(0.0)
        for name in linear:
            j = ops.index(name)
            f = params[name]
            a = jnp.where(op == j, f, a)
            if name == "contrast":
                c = jnp.where(op == j, 1.0 - f, c)
            if name == "saturation":
                b = jnp.where(op == j, 1.0 - f, b)
        gray = _gray(x)
        y = a * x + b * gray + c * jnp.mean(gray)
        if "hue" in ops:
            y = jnp.where(op == ops.index("hue"), _hue(x, params["hue"]), y)
        x = jnp.clip(y, 0.0, 1.0)
    if "jitter" in params:
        x = jnp.where(params["jitter"], x, image)
    return x


def grayscale(image: jax.Array, do: jax.Array) -> jax.Array:
    """Luma in every channel if ``do`` (no-op for 1 channel)."""
    if image.shape[-1] == 1:
        return image
    return jnp.where(do, jnp.broadcast_to(_gray(image), image.shape), image)


def sigma_radius(max_sigma: float) -> int:
    """``ceil(4 * max_sigma)``, at least 1 (``ssljax.data.ops.sigma_radius``)."""
    return max(1, math.ceil(_BLUR_TRUNCATE * float(max_sigma) - 1e-9))


def _blur_along(x: jax.Array, taps: jax.Array, axis: int) -> jax.Array:
    """``x`` convolved with ``taps`` ``[2R+1]`` along ``axis``, reflect padding (TF's
    'REFLECT', NumPy's 'reflect': the edge pixel is not repeated)."""
    radius = (taps.shape[0] - 1) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    xp = jnp.pad(x, pad, mode="reflect")
    size = x.shape[axis]
    out = taps[0] * jax.lax.slice_in_dim(xp, 0, size, axis=axis)
    for k in range(1, 2 * radius + 1):
        out = out + taps[k] * jax.lax.slice_in_dim(xp, k, k + size, axis=axis)
    return out


def blur(image: jax.Array, sigma: jax.Array, do: jax.Array, *, max_sigma: float) -> jax.Array:
    """Separable Gaussian blur of ``sigma`` pixels if ``do``: the kernel of
    ``ssljax.data.ops`` (radius ``ceil(4 * max_sigma)``, cut to the image side minus one and
    renormalised), reflect padding."""
    height, width = image.shape[0], image.shape[1]
    full = sigma_radius(max_sigma)
    radius = min(full, max(0, min(height, width) - 1))
    if radius == 0:
        return image
    # The kernel of the largest sigma's radius, cut to the image and renormalised (as
    # ssljax.data.ops._fit_kernel): the cut taps of a renormalised full kernel.
    offsets = jnp.arange(-full, full + 1, dtype=jnp.float32)
    taps = jnp.exp(-jnp.square(offsets) / (2.0 * jnp.square(sigma)))
    taps = taps / taps.sum()
    if radius < full:
        taps = taps[full - radius:full + radius + 1]
        taps = taps / taps.sum()
    out = _blur_along(_blur_along(image, taps, 0), taps, 1)
    return jnp.where(do, out, image)


def solarize(image: jax.Array, do: jax.Array, threshold: float = 0.5) -> jax.Array:
    """``x >= threshold -> 1 - x`` if ``do``."""
    return jnp.where(do & (image >= threshold), 1.0 - image, image)


def apply_one(image: jax.Array, params: Mapping[str, jax.Array], cfg: AugmentConfig,
              out_size: int, crop_scale: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """One view of one float image ``[H, W, C]`` in [0, 1]: crop, flip, jitter, grayscale,
    blur, solarize, clipped to [0, 1] (``ssljax.data.augment.apply_params``' order).

    ``crop_scale``: ``(sy, sx)`` maps a box drawn on the original image to this (resized) one.
    """
    box = params["crop"]
    if crop_scale is not None:
        sy, sx = crop_scale
        box = box * jnp.stack([sy, sx, sy, sx])
    x = resized_crop(image, box, out_size)
    if "flip" in params:
        x = flip(x, params["flip"])
    if "jitter" in params:
        x = color_jitter(x, params)
    if "grayscale" in params:
        x = grayscale(x, params["grayscale"])
    if "blur" in params:
        x = blur(x, params["blur_sigma"], params["blur"], max_sigma=cfg.blur_sigma[1])
    if "solarize" in params:
        x = solarize(x, params["solarize"])
    return jnp.clip(x, 0.0, 1.0)


def augment_views(
    images: jax.Array,
    *,
    seed: int,
    step: jax.Array,
    configs: Sequence[AugmentConfig],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    source_shape: jax.Array | None = None,
) -> jax.Array:
    """The V normalised views ``[B, V, S, S, C]`` of a global batch of images.

    Args:
      images: uint8 (or float in [0, 1]) ``[B, H, W, C]``, the whole global batch (inside
        ``jax.jit`` a sharded array; row ``i`` is global example ``i`` of the step).
      seed: the data seed.
      step: the training step (``TrainState.step``), a traced int.
      configs: one augmentation per view.
      image_size: S.
      mean, std: per-channel normalisation in [0, 1] units.
      source_shape: int ``[B, 2]``: each image's size before the host resized it to
        ``[H, W]``; crops are drawn on that size (as the host path draws them on the decoded
        image) and scaled. None: the images are at their own size.

    Returns:
      float32 ``[B, V, S, S, C]``.
    """
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
    batch, height, width, channels = x.shape
    if source_shape is None:
        source_shape = jnp.broadcast_to(jnp.array([height, width], jnp.int32), (batch, 2))
    source = source_shape.astype(jnp.float32)
    scale = (height / source[:, 0], width / source[:, 1])
    views = []
    for v, cfg in enumerate(configs):
        keys = example_keys(seed, step, batch, v)

        def one(key, image, src, sy, sx, cfg=cfg):
            params = sample_one(key, cfg, src[0], src[1], channels)
            return apply_one(image, params, cfg, image_size, crop_scale=(sy, sx))

        views.append(jax.vmap(one)(keys, x, source, scale[0], scale[1]))
    out = jnp.stack(views, axis=1)
    return (out - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
