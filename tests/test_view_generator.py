"""InfoMin's view generator (a pixel-wise invertible flow) and the fixed colour spaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.models.view_generator import PixelFlow, split_views, to_color_space


def flow_and_input(vp, seed=0):
    g = PixelFlow(num_layers=4, hidden=16, volume_preserving=vp)
    x = jax.random.uniform(jax.random.key(seed), (3, 5, 6, 3))
    return g, g.init(jax.random.key(seed + 1), x), x


@pytest.mark.parametrize("vp", [True, False])
def test_flow_inverts(vp):
    g, v, x = flow_and_input(vp)
    y, _ = g.apply(v, x)
    assert np.abs(np.asarray(y - x)).max() > 0.1  # not the identity
    back = g.apply(v, y, method=PixelFlow.inverse)
    np.testing.assert_allclose(back, x, atol=1e-5)


def per_pixel_logdet(g, v, x):
    """sum over pixels of log|det d g(pixel) / d pixel|, by differentiating one pixel at a time."""
    def one(p):
        return g.apply(v, p.reshape(1, 1, 1, 3))[0].reshape(3)
    jac = jax.vmap(jax.jacfwd(one))(x.reshape(-1, 3))  # [B*H*W, 3, 3]
    return np.log(np.abs(np.linalg.det(np.asarray(jac, np.float64)))).reshape(
        x.shape[0], -1).sum(1)


def test_volume_preserving_logdet_is_zero():
    g, v, x = flow_and_input(True)
    _, logdet = g.apply(v, x)
    assert np.all(np.asarray(logdet) == 0.0)
    np.testing.assert_allclose(per_pixel_logdet(g, v, x), 0.0, atol=1e-4)


def test_nvp_logdet_matches_the_jacobian():
    g, v, x = flow_and_input(False)
    _, logdet = g.apply(v, x)
    want = per_pixel_logdet(g, v, x)
    assert np.abs(want).max() > 0.1  # a real change of volume
    np.testing.assert_allclose(logdet, want, rtol=1e-4, atol=1e-3)


def test_flow_is_pixel_wise_and_splits_one_and_two_channels():
    g, v, x = flow_and_input(False)
    y, _ = g.apply(v, x)
    x2 = x.at[1, 2, 3].set(jnp.array([0.9, 0.1, 0.5]))
    y2, _ = g.apply(v, x2)
    changed = np.any(np.asarray(y2 != y), axis=-1)
    assert changed[1, 2, 3] and changed.sum() == 1
    v1, v2 = split_views(y)
    assert v1.shape == (3, 5, 6, 1) and v2.shape == (3, 5, 6, 2)


def test_color_spaces_on_hand_computed_colours():
    white, black, red = jnp.ones(3), jnp.zeros(3), jnp.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(to_color_space(white, "lab"), [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(to_color_space(black, "lab"), [0.0, 0.0, 0.0], atol=1e-4)
    # sRGB red in CIELAB (D65): the textbook (53.24, 80.09, 67.20).
    np.testing.assert_allclose(to_color_space(red, "lab"), [53.24, 80.09, 67.20], atol=0.02)
    np.testing.assert_allclose(to_color_space(white, "ycbcr"), [235.0, 128.0, 128.0], atol=1e-3)
    np.testing.assert_allclose(to_color_space(black, "ycbcr"), [16.0, 128.0, 128.0], atol=1e-4)
    np.testing.assert_allclose(to_color_space(white, "ydbdr"), [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(to_color_space(red, "ydbdr"), [0.299, -0.45, -1.333], atol=1e-6)
    grey = jnp.full((3,), 0.4)  # no chroma in any space
    np.testing.assert_allclose(to_color_space(grey, "ydbdr")[1:], 0.0, atol=1e-6)
    np.testing.assert_allclose(to_color_space(grey, "ycbcr")[1:], 128.0, atol=1e-3)
    np.testing.assert_allclose(to_color_space(grey, "lab")[1:], 0.0, atol=0.01)
    with pytest.raises(ValueError, match="Unknown colour space"):
        to_color_space(white, "hsv")
