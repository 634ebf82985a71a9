"""InfoMin Aug's RandAugment, batched and stateless (TensorFlow).

**RandAugment** as InfoMin's official code runs it (HobbitLong/PyContrast
``datasets/RandAugment.py``, ``rand-n2-m10-mstd0.5``): each image draws ``n`` ops uniformly,
with replacement, from the 15 below; each op is applied with probability ``p`` (0.5) at a
magnitude drawn from ``N(m, mstd)`` clipped to [0, 10]; signed ops negate their argument
with probability 1/2. Arguments at magnitude ``v``:

=============  ==========================================================================
AutoContrast   per-channel min/max stretch to [0, 255] (PIL ``ImageOps.autocontrast``)
Equalize       per-channel histogram equalisation (PIL ``ImageOps.equalize``)
Invert         ``255 - x``
Rotate         ``+-30 v / 10`` degrees about the centre
Posterize      keep ``int(4 v / 10)`` bits (timm's "PosterizeTpu")
Solarize       invert pixels ``>= int(256 v / 10)``
SolarizeAdd    add ``int(110 v / 10)`` to pixels ``< 128`` (clipped at 255)
Color          blend with the luma image, factor ``1.8 v / 10 + 0.1``
Contrast       blend with the mean luma, same factor
Brightness     blend with black, same factor
Sharpness      blend with PIL's 3x3 SMOOTH filter (borders kept), same factor
ShearX/Y       shear ``+-0.3 v / 10``
TranslateX/Y   shift ``+-0.45 v / 10`` of the width / height ("TranslateXRel")
=============  ==========================================================================

Every op reproduces PIL's arithmetic on 8-bit images (the official pipeline works on PIL
images): the view is quantised to 256 levels when RandAugment starts and each op returns
integer levels (truncation where PIL's C code truncates). Geometric ops sample bilinearly
at pixel centres and fill outside the image with ``fill`` (the official ImageNet mean,
(124, 116, 104)), as PIL's affine transform does. One difference: the official code picks
bilinear or bicubic resampling at random per op; we always use bilinear.

Ops run only on the images that draw them (``tf.dynamic_partition``), so a batch pays for
each image's two ops, not for all fifteen.

Used by the SimCLR augmentation (``ssljax.data.augment``) when ``randaugment_n > 0``.

References:
  Tian et al., "What Makes for Good Views for Contrastive Learning?", NeurIPS 2020;
  Cubuk et al., "RandAugment", 2019.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

from ssljax.data._tf import tf
from ssljax.data.ops import fold_seed
from ssljax.data.specs import AugmentConfig

__all__ = ["RA_OPS", "MAX_LEVEL", "DEFAULT_FILL", "sample_randaugment", "apply_randaugment",
           "apply_op"]

MAX_LEVEL = 10.0
RA_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
          "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
          "TranslateY")
# The official fill colour: the ImageNet mean in 8-bit levels.
DEFAULT_FILL = (124.0, 116.0, 104.0)
_RA_TAG = 11  # the batch seed's stream of RandAugment (the augment tags are 1-6)


# ----------------------------------------------------------------------------- helpers

def _b(v):
    return tf.reshape(v, [-1, 1, 1, 1])


def _luma_levels(x):
    """PIL's ``convert('L')``: ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16`` on levels."""
    if x.shape[-1] == 1:
        return x
    xi = tf.cast(x, tf.int32)
    y = (xi[..., 0:1] * 19595 + xi[..., 1:2] * 38470 + xi[..., 2:3] * 7471 + 0x8000) // 65536
    return tf.cast(y, tf.float32)


def _blend(degenerate, x, factor):
    """PIL ``Image.blend(degenerate, x, factor)`` on 8-bit images: truncated, clipped."""
    out = degenerate + _b(factor) * (x - degenerate)
    return tf.clip_by_value(tf.floor(out), 0.0, 255.0)


def _enhance_factor(v):
    # In double, then rounded to float: PIL's Python computes the factor in double and its
    # C blend takes a float.
    return tf.cast(tf.cast(v, tf.float64) / MAX_LEVEL * 1.8 + 0.1, tf.float32)


def _affine(x, matrix, fill):
    """PIL's ``Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)``.

    ``matrix`` ``[n, 6]`` maps an output pixel centre ``(x + 0.5, y + 0.5)`` to input
    coordinates; a centre outside the input takes ``fill`` ``[n, C]``, inside it is sampled
    bilinearly with edge-clamped neighbours and truncated to a level.
    """
    # float64, as PIL's C code: in float32 a weight of 0.2 and a level sum of 37.0 can come
    # out as 36.99999 and truncate one level lower.
    n, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    x = tf.cast(x, tf.float64)
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float64) + 0.5, tf.range(w, dtype=tf.float64) + 0.5,
                         indexing="ij")
    m = [tf.reshape(tf.cast(matrix[:, i], tf.float64), [-1, 1, 1]) for i in range(6)]
    xin = m[0] * xs + m[1] * ys + m[2]
    yin = m[3] * xs + m[4] * ys + m[5]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xf, yf = xin - 0.5, yin - 0.5
    x0, y0 = tf.floor(xf), tf.floor(yf)
    dx, dy = (xf - x0)[..., None], (yf - y0)[..., None]

    def clip(v, size):
        return tf.clip_by_value(tf.cast(v, tf.int32), 0, size - 1)

    rows = tf.broadcast_to(tf.reshape(tf.range(n), [-1, 1, 1]), tf.shape(xin))

    def at(yy, xx):
        return tf.gather_nd(x, tf.stack([rows, clip(yy, h), clip(xx, w)], axis=-1))

    top = at(y0, x0) * (1 - dx) + at(y0, x0 + 1) * dx
    bottom = at(y0 + 1, x0) * (1 - dx) + at(y0 + 1, x0 + 1) * dx
    v = tf.cast(tf.floor(top * (1 - dy) + bottom * dy), tf.float32)
    fill = tf.broadcast_to(tf.reshape(fill, [-1, 1, 1, c]), tf.shape(v))
    return tf.where(inside[..., None], v, fill)


# ----------------------------------------------------------------------------- the 15 ops
# Each op: (levels [n, H, W, C], magnitude [n], sign [n] in {-1, 1}, fill [n, C]) -> levels.

def _auto_contrast(x, v, s, fill):
    x64 = tf.cast(x, tf.float64)
    lo = tf.reduce_min(x64, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x64, axis=[1, 2], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.clip_by_value(tf.floor(x64 * scale - lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, out, x64), tf.float32)


def _equalize(x, v, s, fill):
    n, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    levels = tf.cast(x, tf.int32)
    # One histogram per (image, channel): offset each row's levels by 256 * row.
    per_row = tf.reshape(tf.transpose(levels, [0, 3, 1, 2]), [-1, h * w])
    rows = tf.shape(per_row)[0]
    offsets = 256 * tf.range(rows)[:, None]
    hist = tf.reshape(tf.math.bincount(tf.reshape(per_row + offsets, [-1]), minlength=256 * rows,
                                       maxlength=256 * rows), [rows, 256])
    present = hist > 0
    last = 255 - tf.argmax(tf.cast(present[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
    h_last = tf.gather(hist, last, batch_dims=1)
    step = (h * w - h_last) // 255
    identity = (tf.reduce_sum(tf.cast(present, tf.int32), axis=1) <= 1) | (step == 0)
    safe = tf.maximum(step, 1)[:, None]
    cum = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.minimum((safe // 2 + cum) // safe, 255)
    lut = tf.where(identity[:, None], tf.range(256)[None], lut)
    out = tf.gather(lut, per_row, batch_dims=1)
    out = tf.transpose(tf.reshape(out, [n, c, h, w]), [0, 2, 3, 1])
    return tf.cast(out, tf.float32)


def _invert(x, v, s, fill):
    return 255.0 - x


def _rotate(x, v, s, fill):
    h, w = x.shape[1], x.shape[2]
    degrees = tf.cast(s * v, tf.float64) / MAX_LEVEL * 30.0
    # PIL's Image.rotate: angle -degrees (counter-clockwise image rotation) about (w/2, h/2).
    theta = -degrees * (math.pi / 180.0)
    a, b = tf.cos(theta), tf.sin(theta)
    d, e = -tf.sin(theta), tf.cos(theta)
    cx, cy = w / 2.0, h / 2.0
    c = -cx * a - cy * b + cx
    f = -cx * d - cy * e + cy
    return _affine(x, tf.stack([a, b, c, d, e, f], axis=1), fill)


def _posterize(x, v, s, fill):
    bits = tf.cast(tf.floor(v / MAX_LEVEL * 4.0), tf.int32)
    shift = tf.cast(tf.bitwise.left_shift(1, 8 - bits), tf.float32)
    out = tf.floor(x / _b(shift)) * _b(shift)
    return tf.where(_b(bits) >= 8, x, out)


def _solarize(x, v, s, fill):
    threshold = tf.floor(v / MAX_LEVEL * 256.0)
    return tf.where(x >= _b(threshold), 255.0 - x, x)


def _solarize_add(x, v, s, fill):
    add = tf.floor(v / MAX_LEVEL * 110.0)
    return tf.where(x < 128.0, tf.minimum(255.0, x + _b(add)), x)


def _color(x, v, s, fill):
    if x.shape[-1] == 1:  # PIL: an 'L' image is its own grey version
        return x
    return _blend(tf.broadcast_to(_luma_levels(x), tf.shape(x)), x, _enhance_factor(v))


def _contrast(x, v, s, fill):
    mean = tf.floor(tf.reduce_mean(_luma_levels(x), axis=[1, 2, 3], keepdims=True) + 0.5)
    return _blend(tf.broadcast_to(mean, tf.shape(x)), x, _enhance_factor(v))


def _brightness(x, v, s, fill):
    return _blend(tf.zeros_like(x), x, _enhance_factor(v))


def _sharpness(x, v, s, fill):
    # PIL's SMOOTH: [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded; border pixels unchanged.
    c = x.shape[-1]
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, c, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")
    smooth = tf.clip_by_value(tf.floor(smooth + 0.5), 0.0, 255.0)
    h, w = x.shape[1], x.shape[2]
    # The slice is a no-op, except for an empty batch (no image drew this op), where
    # TensorFlow's oneDNN kernel returns the input's size instead of the VALID size.
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])[:, :h, :w]
    interior = tf.pad(tf.ones([h - 2, w - 2], tf.bool), [[1, 1], [1, 1]])
    degenerate = tf.where(interior[None, :, :, None], smooth, x)
    return _blend(degenerate, x, _enhance_factor(v))


def _shear(axis):
    def op(x, v, s, fill):
        f = tf.cast(s * v, tf.float64) / MAX_LEVEL * 0.3
        one, zero = tf.ones_like(f), tf.zeros_like(f)
        row = [one, f, zero, zero, one, zero] if axis == "x" else [one, zero, zero, f, one, zero]
        return _affine(x, tf.stack(row, axis=1), fill)
    return op


def _translate(axis):
    def op(x, v, s, fill):
        pct = tf.cast(s * v, tf.float64) / MAX_LEVEL * 0.45
        one, zero = tf.ones_like(pct), tf.zeros_like(pct)
        if axis == "x":
            row = [one, zero, pct * x.shape[2], zero, one, zero]
        else:
            row = [one, zero, zero, zero, one, pct * x.shape[1]]
        return _affine(x, tf.stack(row, axis=1), fill)
    return op


_OP_FNS: dict[str, Callable] = {
    "AutoContrast": _auto_contrast, "Equalize": _equalize, "Invert": _invert,
    "Rotate": _rotate, "Posterize": _posterize, "Solarize": _solarize,
    "SolarizeAdd": _solarize_add, "Color": _color, "Contrast": _contrast,
    "Brightness": _brightness, "Sharpness": _sharpness, "ShearX": _shear("x"),
    "ShearY": _shear("y"), "TranslateX": _translate("x"), "TranslateY": _translate("y"),
}


def apply_op(name: str, levels: tf.Tensor, magnitude: Any, sign: Any = 1.0,
             fill: Any = DEFAULT_FILL) -> tf.Tensor:
    """One RandAugment op on 8-bit levels ``[n, H, W, C]`` (floats in {0..255}).

    Args:
      name: one of :data:`RA_OPS`.
      levels: the images, integer-valued float32.
      magnitude: scalar or ``[n]`` in [0, 10].
      sign: scalar or ``[n]``, +1 or -1 (signed ops only).
      fill: ``[C]`` or ``[n, C]`` levels for pixels that a geometric op brings in.

    Returns:
      Integer-valued float32 levels of the same shape.

    >>> x = tf.constant([[[[10.0], [200.0]]]])
    >>> apply_op("Invert", x, 10.0)[0, 0, :, 0].numpy().tolist()
    [245.0, 55.0]
    """
    if name not in _OP_FNS:
        raise ValueError(f"Unknown RandAugment op {name!r}; use one of {', '.join(RA_OPS)}.")
    levels = tf.convert_to_tensor(levels, tf.float32)
    n = tf.shape(levels)[0]
    c = levels.shape[-1]
    magnitude = tf.broadcast_to(tf.cast(magnitude, tf.float32), [n])
    sign = tf.broadcast_to(tf.cast(sign, tf.float32), [n])
    fill = tf.cast(fill, tf.float32)
    if fill.shape.rank == 1:
        fill = tf.broadcast_to(_fill_for_channels(fill, c)[None], [n, c])
    return _OP_FNS[name](levels, magnitude, sign, fill)


def _fill_for_channels(fill: tf.Tensor, channels: int) -> tf.Tensor:
    """An RGB fill for 1-channel images becomes its luma."""
    if fill.shape[0] == channels:
        return fill
    if channels == 1 and fill.shape[0] == 3:
        return tf.reduce_sum(fill * tf.constant([0.299, 0.587, 0.114]), keepdims=True)
    raise ValueError(f"randaugment_fill has {fill.shape[0]} values for {channels}-channel images; "
                     "give one value per channel.")


# ----------------------------------------------------------------------------- RandAugment

def sample_randaugment(seed: tf.Tensor, batch_size: int, channels: int,
                       cfg: AugmentConfig) -> dict[str, tf.Tensor]:
    """Draws RandAugment's per-example parameters (``cfg.randaugment_*``) from ``seed``.

    Returns ``ra_op`` int32 ``[B, n]`` (indices into :data:`RA_OPS`), ``ra_apply`` bool
    ``[B, n]``, ``ra_mag`` ``[B, n]`` (clipped to [0, 10]), ``ra_sign`` ``[B, n]`` and
    ``ra_fill`` ``[B, C]``.
    """
    n = cfg.randaugment_n
    s_op, s_apply, s_mag, s_sign = tf.unstack(
        tf.random.experimental.stateless_split(fold_seed(seed, _RA_TAG), 4))
    op = tf.random.stateless_uniform([batch_size, n], s_op, minval=0, maxval=len(RA_OPS),
                                     dtype=tf.int32)
    apply = tf.random.stateless_uniform([batch_size, n], s_apply) < cfg.randaugment_p
    mag = cfg.randaugment_m + cfg.randaugment_mstd * tf.random.stateless_normal(
        [batch_size, n], s_mag)
    sign = tf.where(tf.random.stateless_uniform([batch_size, n], s_sign) > 0.5, -1.0, 1.0)
    fill = _fill_for_channels(tf.constant(cfg.randaugment_fill, tf.float32), channels)
    return {"ra_op": op, "ra_apply": apply,
            "ra_mag": tf.clip_by_value(mag, 0.0, MAX_LEVEL), "ra_sign": sign,
            "ra_fill": tf.tile(fill[None], [batch_size, 1])}


def apply_randaugment(images: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Applies sampled RandAugment parameters to float ``[B, H, W, C]`` images in [0, 1].

    The images are quantised to 8-bit levels first (the official pipeline works on PIL
    images); the result is in [0, 1] again.
    """
    x = tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0)
    num_ops = len(RA_OPS)
    rows = tf.range(tf.shape(x)[0])
    for layer in range(params["ra_op"].shape[1]):
        group = tf.where(params["ra_apply"][:, layer], params["ra_op"][:, layer], num_ops)
        row_parts = tf.dynamic_partition(rows, group, num_ops + 1)
        x_parts = tf.dynamic_partition(x, group, num_ops + 1)
        mags = tf.dynamic_partition(params["ra_mag"][:, layer], group, num_ops + 1)
        signs = tf.dynamic_partition(params["ra_sign"][:, layer], group, num_ops + 1)
        fills = tf.dynamic_partition(params["ra_fill"], group, num_ops + 1)
        out = [_OP_FNS[name](x_parts[j], mags[j], signs[j], fills[j])
               for j, name in enumerate(RA_OPS)]
        x = tf.ensure_shape(tf.dynamic_stitch(row_parts, out + [x_parts[num_ops]]), images.shape)
    return x / 255.0
