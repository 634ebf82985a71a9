"""The Gaussian blur's kernel is wide enough for its sigma, and matches PIL's GaussianBlur.

The official CorInfoMax (and BYOL / VICReg / Barlow Twins) pipelines blur with PIL's
``ImageFilter.GaussianBlur(radius=sigma)``, sigma ~ U(0.1, 2), at every image size. PIL does
not convolve with a Gaussian: it runs three box blurs of a fractional radius chosen so that
their variance is sigma^2 (Pillow ``BoxBlur.c``: ``_gaussian_blur_radius``), extends the edge
pixels, and rounds to 8 bits after each of its six passes. ``_pil_kernel`` below rebuilds
that kernel in float64, which turns the comparison into a bound:

  |ours - PIL| <= sum |g2d - b2d| + 6 * 0.5 / 255

per pixel of an image in [0, 1] away from the border, where g2d is our 2-D kernel, b2d
PIL's exact box kernel, and each rounding is at most half a level and is not amplified by
the later (positive, normalised) passes. The first term is the box-vs-Gaussian difference,
0.026 .. 0.056 at the sigmas tested; the second is PIL's own quantisation.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFilter

from ssljax.data import augment as A

FMNIST = os.path.join(
    os.environ.get("SSLJAX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"),
    "t10k-images-idx3-ubyte.gz")
ROUNDING = 6 * 0.5 / 255  # PIL: 3 horizontal + 3 vertical passes, each rounded to uint8
MAX_SIGMA = 2.0  # the default (and CorInfoMax's) blur_sigma = (0.1, 2.0)


# ----------------------------------------------------------------------------- references


def _pil_box_radius(sigma: float, passes: int = 3) -> float:
    """Pillow BoxBlur.c ``_gaussian_blur_radius``: the fractional box radius per pass."""
    sigma2 = sigma * sigma / passes
    length = math.sqrt(12.0 * sigma2 + 1.0)
    whole = math.floor((length - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2)
    frac /= 6 * (sigma2 - (whole + 1) * (whole + 1))
    return whole + frac


def _pil_kernel(sigma: float, radius: int) -> np.ndarray:
    """PIL's 1-D kernel (three fractional boxes), exact in float64, centred in 2*radius+1 taps."""
    r = _pil_box_radius(sigma)
    whole = int(r)
    box = np.ones(2 * whole + 3)
    box[0] = box[-1] = r - whole
    box /= 2 * r + 1
    k = np.convolve(np.convolve(box, box), box)
    half = len(k) // 2
    assert half <= radius
    out = np.zeros(2 * radius + 1)
    out[radius - half:radius + half + 1] = k
    return out


def _gauss(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def _embed(k: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros(2 * radius + 1)
    half = len(k) // 2
    out[radius - half:radius + half + 1] = k
    return out


def _kernel_l1_2d(k1: np.ndarray, k2: np.ndarray) -> float:
    return float(np.abs(np.outer(k1, k1) - np.outer(k2, k2)).sum())


def _pil_blur(image_u8: np.ndarray, sigma: float) -> np.ndarray:
    mode = "L" if image_u8.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(image_u8[..., 0] if mode == "L" else image_u8, mode)
    out = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=sigma)), np.float64) / 255.0
    return out.reshape(image_u8.shape)


def _ours(images01: np.ndarray, sigma: float, max_sigma: float = MAX_SIGMA) -> np.ndarray:
    """Blur through apply_params, as the pipeline runs it (kernel sized by max_sigma)."""
    b = images01.shape[0]
    s = tf.fill([b], float(sigma))
    params = {"blur": tf.ones([b], tf.bool), "blur_sigma": s,
              "blur_kernel": A.gaussian_kernel(s, A.sigma_radius(max_sigma))}
    # apply_params clips to [0, 1]; a blur of [0, 1] images stays inside anyway.
    return A.apply_params(tf.constant(images01, tf.float32), params).numpy().astype(np.float64)


# ----------------------------------------------------------------------------- images


def _shapes(n: int, size: int, seed: int) -> np.ndarray:
    """Real-looking synthetic RGB uint8 images: a gradient, discs and boxes, some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.stack([c0 + c1 * xx + c2 * yy for c0, c1, c2 in rng.uniform(0, 0.5, (3, 3))], -1)
        for _ in range(4):
            color = rng.uniform(0, 1, 3)
            cy, cx, rad = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.3)
            if rng.uniform() < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2
            else:
                inside = (np.abs(yy - cy) < rad) & (np.abs(xx - cx) < rad * 0.6)
            img[inside] = color
        img += rng.normal(0, 0.05, img.shape)  # sensor-like texture
        out.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    return np.stack(out)


def _fashion_mnist(n: int) -> np.ndarray:
    if not os.path.exists(FMNIST):
        return _shapes(n, 28, 0)[..., :1]
    with gzip.open(FMNIST) as f:
        data = np.frombuffer(f.read(16 + n * 28 * 28), np.uint8, offset=16)
    return data.reshape(n, 28, 28, 1)


IMAGES = {28: lambda: _fashion_mnist(6), 32: lambda: _shapes(6, 32, 1),
          96: lambda: _shapes(4, 96, 2)}


# ----------------------------------------------------------------------------- tests


def test_pil_kernel_reimplementation_matches_pil():
    """Our float64 copy of PIL's kernel (used for the tolerance) is PIL's, up to rounding."""
    for sigma in (0.5, 1.0, 1.5, 2.0):
        radius = 8
        bar = np.zeros((1, 9, 33, 1), np.uint8)
        bar[0, :, 16] = 255  # a vertical line: each row's profile is 255 * the 1-D kernel
        profile = _pil_blur(bar[0], sigma)[4, 16 - radius:16 + radius + 1, 0]
        np.testing.assert_allclose(profile, _pil_kernel(sigma, radius), atol=ROUNDING)
        x = np.arange(-radius, radius + 1)
        # By construction PIL's kernel has variance sigma^2 exactly.
        assert abs((_pil_kernel(sigma, radius) * x * x).sum() - sigma ** 2) < 1e-9


@pytest.mark.parametrize("size", [28, 32, 96])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_matches_pil(size, sigma):
    images = IMAGES[size]()
    ours = _ours(images / 255.0, sigma)
    pil = np.stack([_pil_blur(im, sigma) for im in images])
    radius = A.blur_radius(size, MAX_SIGMA)
    assert radius == 8
    # Away from the border (PIL extends the edge pixels, we reflect them).
    m = radius
    err = np.abs(ours - pil)[:, m:-m, m:-m]
    bound = _kernel_l1_2d(_gauss(sigma, radius), _pil_kernel(sigma, radius)) + ROUNDING
    assert err.max() <= bound, (err.max(), bound)
    # On average far closer than the worst case: under 1.5 grey levels.
    assert err.mean() < 1.5 / 255, err.mean() * 255


def test_old_three_tap_kernel_misses_pil():
    """The kernel of SimCLR's 10% rule (radius 1 at 32 px) is far from PIL at sigma 2."""
    images = _shapes(6, 32, 1) / 255.0
    old = A.gaussian_blur(tf.constant(images, tf.float32), tf.fill([6], 2.0), A.blur_radius(32))
    pil = np.stack([_pil_blur(im, 2.0) for im in _shapes(6, 32, 1)])
    err = np.abs(old.numpy() - pil)[:, 8:-8, 8:-8]
    bound = _kernel_l1_2d(_gauss(2.0, 8), _pil_kernel(2.0, 8)) + ROUNDING
    new_err = np.abs(_ours(images, 2.0) - pil)[:, 8:-8, 8:-8]
    assert err.max() > bound and err.mean() > 3 * new_err.mean()


@pytest.mark.parametrize("size", [28, 32, 96])
@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_blur_spread_is_sigma_squared(size, sigma):
    """A single bright pixel spreads with second moment sigma^2 (2%), per axis."""
    img = np.zeros((1, size, size, 1))
    c = size // 2
    img[0, c, c] = 1.0
    out = _ours(img, sigma)[0, :, :, 0]
    x = np.arange(size) - c
    assert abs(out.sum() - 1.0) < 1e-5
    var_x = (out.sum(0) * x ** 2).sum() / out.sum()
    var_y = (out.sum(1) * x ** 2).sum() / out.sum()
    for var in (var_x, var_y):
        assert abs(var / sigma ** 2 - 1) < 0.02, (var, sigma ** 2)


def test_radius_follows_max_sigma_and_is_sampled_with_the_params():
    assert A.sigma_radius(2.0) == 8 and A.sigma_radius(1.0) == 4 and A.sigma_radius(0.1) == 1
    assert A.blur_radius(32, 2.0) == 8 and A.blur_radius(224, 2.0) == 8
    assert A.blur_radius(96, 3.0) == 12
    assert A.blur_radius(224) == 11 and A.blur_radius(32) == 1  # the old rule, for old callers
    for sigma_range, taps in (((0.1, 2.0), 17), ((0.1, 1.0), 9), ((0.5, 3.0), 25)):
        cfg = A.AugmentConfig(blur_p=1.0, blur_sigma=sigma_range)
        params = A.sample_params(tf.constant([3, 4]), 16, (32, 32, 3), cfg)
        assert params["blur_kernel"].shape == (16, taps)
        want = A.gaussian_kernel(params["blur_sigma"], taps // 2).numpy()
        np.testing.assert_allclose(params["blur_kernel"].numpy(), want, rtol=1e-6)
        sliced = A.slice_params(params, 4, 8)
        assert sliced["blur_kernel"].shape == (4, taps)


@pytest.mark.parametrize("size", [1, 2, 5, 8, 9])
def test_tiny_images_truncate_the_kernel(size):
    """Reflect padding needs radius < side: the kernel is cut at side - 1 and renormalised."""
    cfg = A.AugmentConfig(blur_p=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                          jitter_p=0.0, grayscale_p=0.0)
    const = tf.fill([3, size, size, 3], 0.25)
    np.testing.assert_allclose(A.augment_batch(const, tf.constant([1, 2]), cfg, size).numpy(),
                               0.25, atol=1e-6)
    rng = np.random.default_rng(size)
    img = rng.uniform(size=(2, size, size, 1)).astype(np.float32)
    radius = A.blur_radius(size, MAX_SIGMA)
    assert radius == min(8, size - 1)
    out = _ours(img, 2.0)
    if radius == 0:
        np.testing.assert_array_equal(out, img)
    else:
        expect = A.gaussian_blur(tf.constant(img), tf.fill([2], 2.0), radius).numpy()
        np.testing.assert_allclose(out, expect, atol=1e-6)


def test_hand_made_params_without_kernel_still_blur():
    img = _shapes(2, 32, 3) / 255.0
    params = {"blur": tf.ones([2], tf.bool), "blur_sigma": tf.fill([2], 2.0)}
    out = A.apply_params(tf.constant(img, tf.float32), params).numpy()
    np.testing.assert_allclose(out, _ours(img, 2.0), atol=1e-6)
