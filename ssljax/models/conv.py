"""A drop-in ``conv_general_dilated`` that avoids XLA:CPU's slow path for tiny outputs.

On the CPU backend (jaxlib 0.10), XLA's convolution is very slow when a 3x3 kernel meets a
feature map of 2x2 or less, which is exactly the last stage of a ResNet on 28- or 32-pixel
images with a stride-2 stem. Forward and backward of one 3x3 convolution on a batch of 512
(``experiments/bench_conv.py``, 2-core AMD EPYC with AVX-512):

===========================  ========  ==============  =====
output, channels              XLA conv  patches @ kernel  ratio
===========================  ========  ==============  =====
2x2, 128 -> 128                97 ms        7 ms        13x
2x2 (stride 2), 128 -> 256    246 ms       13 ms        19x
2x2, 256 -> 256               953 ms       27 ms        35x
2x2, 512 -> 512              7458 ms      119 ms        63x
4x4, 128 -> 128                22 ms       46 ms        0.5x
===========================  ========  ==============  =====

For outputs of at most ``MAX_MATMUL_OUTPUT`` pixels on a side, :func:`conv_general_dilated`
computes the convolution as one matrix product, which XLA differentiates into two more, in
whichever of two forms costs fewer multiply-adds:

- :func:`conv_as_matmul` gathers the kh x kw shifted (strided) windows of the padded input
  side by side and multiplies them by the kernel reshaped to ``(kh * kw * C_in, C_out)``;
- :func:`conv_as_dense`, taken where the input map has fewer pixels than the kernel has taps
  (3x3 on 2x2, where five of every patch's nine taps are padding), multiplies the flattened
  map by a ``(H * W * C_in, Ho * Wo * C_out)`` matrix assembled from the kernel: 1.5-2.5x
  faster again at 2x2 for 512-128 channels (``experiments/bench_conv.py``).

Larger outputs, other backends, and anything it does not handle (dilation, grouped
convolutions, layouts other than NHWC/HWIO) go to ``jax.lax.conv_general_dilated``
unchanged. All compute the same sum; they differ by float32 rounding only (relative 1e-6).

Flax modules take it as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``; the
parameters are unchanged, so checkpoints are interchangeable.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["MAX_MATMUL_OUTPUT", "conv_general_dilated", "conv_as_matmul", "conv_as_dense"]

# Largest output height/width (pixels) computed as a matrix product on the CPU.
MAX_MATMUL_OUTPUT = 2


def _out_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def conv_as_matmul(lhs, rhs, window_strides: Sequence[int], padding: Sequence[tuple[int, int]],
                   precision=None):
    """2-D convolution of NHWC ``lhs`` with HWIO ``rhs`` as one product of patches and kernel.

    ``padding`` is ``((top, bottom), (left, right))``. Any size works; it is fast only where
    the output is tiny (see the module docstring).
    """
    b, h, w, c = lhs.shape
    kh, kw, c_in, c_out = rhs.shape
    if c_in != c:
        raise ValueError(f"Kernel expects {c_in} input channels, the input has {c}.")
    sh, sw = window_strides
    ho = _out_size(h, kh, sh, padding[0])
    wo = _out_size(w, kw, sw, padding[1])
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    windows = [
        lax.slice(x, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
    y = jnp.dot(patches.reshape(b * ho * wo, kh * kw * c), rhs.reshape(kh * kw * c, c_out),
                precision=precision)
    return y.reshape(b, ho, wo, c_out)


def conv_as_dense(lhs, rhs, window_strides: Sequence[int],
                  padding: Sequence[tuple[int, int]], precision=None):
    """2-D convolution of NHWC ``lhs`` with HWIO ``rhs`` as one dense layer on the flat map.

    Every (input pixel, output pixel) pair gets the kernel tap that joins them, or zeros
    where none does: a ``(H * W * C_in, Ho * Wo * C_out)`` matrix assembled from the kernel,
    by which the flattened input is multiplied. That costs ``H * W`` multiply-adds per output
    pixel and channel pair against ``kh * kw`` for :func:`conv_as_matmul`: fewer where the
    input has fewer pixels than the kernel has taps, as a 3x3 convolution on a 2x2 map
    (4 against 9, since 5 of the 9 taps of every patch land on padding). Any size works.
    """
    b, h, w, c = lhs.shape
    kh, kw, c_in, c_out = rhs.shape
    if c_in != c:
        raise ValueError(f"Kernel expects {c_in} input channels, the input has {c}.")
    ho = _out_size(h, kh, window_strides[0], padding[0])
    wo = _out_size(w, kw, window_strides[1], padding[1])

    zeros = jnp.zeros((c, c_out), rhs.dtype)

    def tap(p, i, size_k, stride, pad_before):
        t = p + pad_before - stride * i  # kernel index joining input p to output i
        return t if 0 <= t < size_k else None

    # Built from static slices and concatenations (no gather: its gradient would be a
    # scatter-add, which is slow on the CPU). Rows: input pixels; columns: output pixels.
    rows = []
    for p in range(h):
        for q in range(w):
            blocks = []
            for i in range(ho):
                a = tap(p, i, kh, window_strides[0], padding[0][0])
                for j in range(wo):
                    e = tap(q, j, kw, window_strides[1], padding[1][0])
                    blocks.append(zeros if a is None or e is None else rhs[a, e])
            rows.append(jnp.concatenate(blocks, axis=1))
    dense = jnp.concatenate(rows, axis=0)  # [H * W * C, Ho * Wo * O]
    y = jnp.dot(lhs.reshape(b, h * w * c), dense, precision=precision)
    return y.reshape(b, ho, wo, c_out)


def _is_nhwc_hwio(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    if dimension_numbers is None:  # lax's default is NCHW / OIHW
        return False
    want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, ("NHWC", "HWIO", "NHWC"))
    got = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return got == want


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``jax.lax.conv_general_dilated``, with tiny 2-D outputs on the CPU as a matrix product."""
    args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
    plain = (
        jax.default_backend() == "cpu"
        and lhs.ndim == 4
        and feature_group_count == 1 and batch_group_count == 1
        and preferred_element_type is None
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and _is_nhwc_hwio(lhs.shape, rhs.shape, dimension_numbers)
    )
    if plain:
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
        padding = tuple(tuple(p) for p in padding)
        out = [_out_size(lhs.shape[1 + d], rhs.shape[d], window_strides[d], padding[d])
               for d in (0, 1)]
        if max(out) <= MAX_MATMUL_OUTPUT:
            # Per output pixel and channel pair the dense form costs H * W multiply-adds
            # and the patch form kh * kw: take the cheaper.
            if lhs.shape[1] * lhs.shape[2] < rhs.shape[0] * rhs.shape[1]:
                return conv_as_dense(lhs, rhs, window_strides, padding, precision)
            return conv_as_matmul(lhs, rhs, window_strides, padding, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
