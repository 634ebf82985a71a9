"""ssljax.models.conv: the matrix-product path for tiny outputs equals lax's convolution,
values and gradients, and is taken exactly where it should be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssljax.models import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _ours(x, w, strides, padding):
    return conv_lib.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _numpy_conv(x, w, stride, pad):
    """Direct-loop NumPy reference (float64)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = np.asarray(w, np.float64)
    kh, kw, _, c_out = w.shape
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, c_out))
    for i in range(ho):
        for j in range(wo):
            win = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", win, w)
    return out


# (input size, kernel, stride, padding): outputs 2x2, 1x1, 2x2 by stride 2, a 1x1 shortcut,
# a rectangular input, and 4x4 (lax's path).
CASES = [(2, 3, 1, 1), (1, 3, 1, 1), (4, 3, 2, 1), (4, 1, 2, 0), (3, 3, 2, 1), (4, 3, 1, 1)]


@pytest.mark.parametrize("size,k,stride,pad", CASES)
def test_matches_numpy_and_lax_with_gradients(size, k, stride, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, size, size + 1, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
    padding = ((pad, pad), (pad, pad))
    strides = (stride, stride)
    ours = _ours(x, w, strides, padding)
    np.testing.assert_allclose(ours, _numpy_conv(x, w, stride, pad), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, _lax(x, w, strides, padding), rtol=1e-5, atol=1e-5)

    cot = jnp.asarray(rng.normal(size=ours.shape), jnp.float32)
    g_ours = jax.grad(lambda x, w: jnp.sum(_ours(x, w, strides, padding) * cot), (0, 1))(x, w)
    g_lax = jax.grad(lambda x, w: jnp.sum(_lax(x, w, strides, padding) * cot), (0, 1))(x, w)
    for a, b in zip(g_ours, g_lax):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# (input h, w, kernel, stride, ((top, bottom), (left, right))): 3x3 on 2x2 (a ResNet's last
# stage), 1x1 and rectangular maps, stride 2, uneven padding, and cases where the dense form
# is not the cheaper one (it must still be right).
DENSE_CASES = [
    (2, 2, 3, 1, ((1, 1), (1, 1))),
    (1, 1, 3, 1, ((1, 1), (1, 1))),
    (2, 1, 3, 1, ((1, 1), (1, 1))),
    (2, 2, 3, 2, ((1, 1), (1, 1))),
    (3, 2, 3, 1, ((0, 2), (1, 0))),
    (4, 4, 3, 2, ((1, 1), (1, 1))),
    (3, 3, 1, 1, ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("h,w,k,stride,padding", DENSE_CASES)
def test_dense_form_matches_lax_with_gradients(h, w, k, stride, padding):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, h, w, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
    strides = (stride, stride)
    dense = conv_lib.conv_as_dense(x, kernel, strides, padding)
    ref = _lax(x, kernel, strides, padding)
    assert dense.shape == ref.shape
    np.testing.assert_allclose(dense, ref, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    g_dense = jax.grad(lambda x, k: jnp.sum(conv_lib.conv_as_dense(x, k, strides, padding) * cot),
                       (0, 1))(x, kernel)
    g_lax = jax.grad(lambda x, k: jnp.sum(_lax(x, k, strides, padding) * cot), (0, 1))(x, kernel)
    for a, b in zip(g_dense, g_lax):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dense_form_of_a_hand_case():
    """One channel, 2x2 input, 3x3 kernel, SAME: each output is the four inputs weighted by
    the kernel taps that reach them, by hand."""
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    k = np.arange(9.0).reshape(3, 3)  # k[a, b]: output (i, j) meets input (p, q) at a = p - i + 1
    want = np.array([[1 * k[1, 1] + 2 * k[1, 2] + 3 * k[2, 1] + 4 * k[2, 2],
                      1 * k[1, 0] + 2 * k[1, 1] + 3 * k[2, 0] + 4 * k[2, 1]],
                     [1 * k[0, 1] + 2 * k[0, 2] + 3 * k[1, 1] + 4 * k[1, 2],
                      1 * k[0, 0] + 2 * k[0, 1] + 3 * k[1, 0] + 4 * k[1, 1]]])
    got = conv_lib.conv_as_dense(jnp.asarray(x[None, :, :, None], jnp.float32),
                                 jnp.asarray(k[:, :, None, None], jnp.float32), (1, 1),
                                 ((1, 1), (1, 1)))
    np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], want, rtol=1e-6)


def _dot_contractions(fn, *args):
    """The contracted size of every dot_general in ``fn``'s jaxpr."""
    sizes = []
    for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns:
        if e.primitive.name == "dot_general":
            (lhs_contract, _), _ = e.params["dimension_numbers"]
            shape = e.invars[0].aval.shape
            sizes.append(int(np.prod([shape[d] for d in lhs_contract])))
    return sizes


@pytest.mark.parametrize("size,stride,k,contracted", [
    (2, 1, 3, 2 * 2 * 4),   # 2x2 map, 3x3 kernel: dense (4 pixels < 9 taps)
    (1, 1, 3, 1 * 1 * 4),   # 1x1 map: dense, only the centre tap
    (4, 2, 3, 3 * 3 * 4),   # stride 2 from 4x4: 16 pixels > 9 taps, patches
    (4, 2, 1, 1 * 1 * 4),   # 1x1 shortcut: patches (one tap)
])
def test_dense_or_patches_by_cost(size, stride, k, contracted):
    x = jnp.zeros((2, size, size, 4))
    w = jnp.zeros((k, k, 4, 6))
    pad = ((k // 2, k // 2),) * 2
    assert _dot_contractions(lambda x, w: _ours(x, w, (stride, stride), pad), x, w) == [contracted]


def test_string_padding_is_resolved_like_lax():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
    for padding in ("SAME", "VALID"):
        np.testing.assert_allclose(_ours(x, w, (2, 2), padding), _lax(x, w, (2, 2), padding),
                                   rtol=1e-5, atol=1e-5)


def _primitives(fn, *args):
    return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


@pytest.mark.parametrize("size,stride,matmul", [(2, 1, True), (4, 2, True), (3, 1, False),
                                                (4, 1, False)])
def test_dispatch_by_output_size(size, stride, matmul):
    x = jnp.zeros((2, size, size, 4))
    w = jnp.zeros((3, 3, 4, 4))
    prims = _primitives(lambda x, w: _ours(x, w, (stride, stride), ((1, 1), (1, 1))), x, w)
    assert ("conv_general_dilated" not in prims) == matmul
    assert ("dot_general" in prims) == matmul


def test_unhandled_forms_fall_back_to_lax():
    x = jnp.zeros((2, 2, 2, 4))
    pads = ((1, 1), (1, 1))
    grouped = lambda x, w: conv_lib.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), pads, dimension_numbers=NHWC, feature_group_count=2)
    assert "conv_general_dilated" in _primitives(grouped, x, jnp.zeros((3, 3, 2, 4)))
    dilated = lambda x, w: conv_lib.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), pads, rhs_dilation=(2, 2), dimension_numbers=NHWC)
    assert "conv_general_dilated" in _primitives(dilated, x, jnp.zeros((3, 3, 4, 4)))
    nchw = lambda x, w: conv_lib.conv_general_dilated(x, w, (1, 1), pads)  # noqa: E731
    assert "conv_general_dilated" in _primitives(nchw, jnp.zeros((2, 4, 2, 2)),
                                                 jnp.zeros((4, 4, 3, 3)))


def test_resnet_last_stage_uses_the_matmul_path():
    """On 28-px inputs with a stride-2 stem the last stage is 2x2: its 3x3 convs are products."""
    from ssljax.models import resnet

    model = resnet("resnet18", width=4, stem_stride=2)
    x = jnp.zeros((2, 28, 28, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    # 20 convolutions in ResNet-18 (stem, 16 in blocks, 3 shortcuts); stage 4's five have a
    # 2x2 output (conv1, conv2 of two blocks and the shortcut).
    kinds = [e.primitive.name for e in jaxpr.jaxpr.eqns
             if e.primitive.name in ("conv_general_dilated", "dot_general")]
    assert kinds.count("conv_general_dilated") == 15
    assert kinds.count("dot_general") >= 5
