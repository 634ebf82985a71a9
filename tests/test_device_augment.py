"""ssljax.data.device_augment against the tf.data augmentation (ssljax.data.ops / augment).

Op by op on fixed parameters (the TF ops are the reference), the sampling distributions
statistically (two-sample KS / chi-square against the TF sampler), and the determinism of the
device path (1 vs 8 devices, bit for bit).

Tolerance of the op comparisons: 2e-6 absolute on [0, 1] images. Both sides compute in float32;
the device ops resample with matrix products (``w0 * a + w1 * b`` summed in another order than
tf.image's ``a + (b - a) * w``), and the colour ops clip at each stage, so the two differ by a
few float32 ulps (~1e-7 near 1), never by a misplaced pixel or factor (>= 1e-3 here).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import stats

from ssljax.data import augment as A
from ssljax.data import device_augment as D
from ssljax.data import ops
from ssljax.data.specs import AugmentConfig

ATOL = 2e-6


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _close(a, b, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


# ============================================================================ ops


@pytest.mark.parametrize("out", [7, 12, 1])
def test_resized_crop_matches_tf_crop_and_resize(out):
    x = _images([5, 17, 23, 3])
    boxes = np.array([[0, 0, 17, 23],  # whole image
                      [3, 4, 6, 9],
                      [16, 22, 1, 1],  # one pixel in the corner
                      [0, 10, 17, 13],  # touching the bottom-right edges
                      [5, 0, 12, 2]], np.float32)
    want = ops.random_resized_crop(tf.constant(x), tf.constant(boxes), out)
    got = jax.vmap(lambda i, b: D.resized_crop(i, b, out))(x, boxes)
    _close(got, want)


def test_resized_crop_of_whole_image_is_identity():
    x = _images([17, 17, 1])
    _close(D.resized_crop(x, jnp.array([0.0, 0.0, 17.0, 17.0]), 17), x)


def test_flip_matches_tf():
    x = _images([4, 5, 6, 3])
    do = np.array([True, False, True, False])
    _close(jax.vmap(D.flip)(x, do), ops.random_flip(tf.constant(x), tf.constant(do)))


def test_hsv_round_trip_matches_tf():
    x = _images([6, 7, 3])
    x[0, 0] = [0.5, 0.5, 0.5]  # grey: zero range
    x[0, 1] = [0, 0, 0]  # black: zero value
    x[0, 2] = [1.0, 0.2, 1.0]  # ties between channels
    _close(D.rgb_to_hsv(x), tf.image.rgb_to_hsv(x))
    hsv = tf.image.rgb_to_hsv(x).numpy()
    _close(D.hsv_to_rgb(hsv), tf.image.hsv_to_rgb(hsv))


def _jitter_params(batch, channels, order):
    rng = np.random.default_rng(1)
    names = ["brightness", "contrast"] + (["saturation", "hue"] if channels == 3 else [])
    params = {n: rng.uniform(-0.1, 0.1, batch) if n == "hue" else rng.uniform(0.6, 1.4, batch)
              for n in names}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    params["jitter"] = np.arange(batch) % 4 != 3
    if order:
        params["jitter_order"] = np.stack(
            [rng.permutation(len(names)) for _ in range(batch)]).astype(np.int32)
    return params


@pytest.mark.parametrize("channels,order", [(3, True), (3, False), (1, True)])
def test_color_jitter_matches_tf(channels, order):
    x = _images([8, 9, 10, channels])
    params = _jitter_params(8, channels, order)
    want = ops.color_jitter(tf.constant(x), {k: tf.constant(v) for k, v in params.items()})
    got = jax.vmap(D.color_jitter)(x, params)
    _close(got, want)


def test_grayscale_and_solarize_match_tf():
    x = _images([4, 5, 6, 3])
    do = np.array([True, False, True, True])
    _close(jax.vmap(D.grayscale)(x, do), ops.random_grayscale(tf.constant(x), tf.constant(do)))
    _close(jax.vmap(D.solarize)(x, do), ops.solarize(tf.constant(x), tf.constant(do)))


@pytest.mark.parametrize("side", [32, 6])  # 6: the kernel is cut to the image and renormalised
def test_blur_matches_tf(side):
    x = _images([4, side, side + 3, 3])
    sigma = np.array([0.1, 0.7, 1.3, 2.0], np.float32)
    do = np.array([True, True, True, False])
    radius = ops.sigma_radius(2.0)
    kernel = ops._fit_kernel(ops.gaussian_kernel(tf.constant(sigma), radius), side)
    want = ops._select(tf.constant(do), ops.separable_blur(tf.constant(x), kernel), tf.constant(x))
    got = jax.vmap(lambda i, s, d: D.blur(i, s, d, max_sigma=2.0))(x, sigma, do)
    _close(got, want, atol=3e-6)


def _to_tf_params(params, cfg):
    out = {k: tf.constant(np.asarray(v)) for k, v in params.items()}
    if "blur_sigma" in params:
        out["blur_kernel"] = ops.gaussian_kernel(out["blur_sigma"], ops.sigma_radius(cfg.blur_sigma[1]))
    return out


@pytest.mark.parametrize("channels", [3, 1])
def test_whole_view_matches_tf_apply_params(channels):
    """Every op in sequence, on parameters drawn by the device sampler."""
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.5, crop_scale=(0.2, 1.0))
    x = _images([16, 20, 24, channels])
    keys = D.example_keys(0, 3, 16, 0)
    params = jax.vmap(lambda k: D.sample_one(k, cfg, 20, 24, channels))(keys)
    got = jax.vmap(lambda i, p: D.apply_one(i, p, cfg, 14))(x, params)
    want = A.apply_params(tf.constant(x), _to_tf_params(params, cfg), 14)
    _close(got, want, atol=3e-6)


def test_crop_from_resized_source_matches_crop_of_original():
    """A box drawn on the original size and scaled to the host's fixed-size image crops the
    same region: with an integer downscale (nearest-exact here) the result is the original's
    crop up to the resize's own error, which is zero for a 2x box-aligned case."""
    x = _images([40, 60, 3])
    small = x[::2, ::2]  # the 'resized' source, 20 x 30
    box = jnp.array([8.0, 12.0, 24.0, 36.0])  # on the 40 x 60 original
    params = {"crop": box}
    got = D.apply_one(small, params, AugmentConfig(), 12, crop_scale=(0.5, 0.5))
    want = D.resized_crop(small, box * 0.5, 12)
    _close(got, want)


# ============================================================================ sampling


def _host_params(cfg, batch, height, width, channels):
    seed = tf.constant([7, 0], tf.int64)
    p = A.sample_params(seed, batch, (height, width, channels), cfg)
    return {k: v.numpy() for k, v in p.items()}


def _device_params(cfg, batch, height, width, channels):
    keys = D.example_keys(11, 5, batch, 0)
    p = jax.jit(jax.vmap(lambda k: D.sample_one(k, cfg, height, width, channels)))(keys)
    return {k: np.asarray(v) for k, v in p.items()}


N_SAMPLES = 4000
P_MIN = 1e-3  # a KS/chi-square p-value below this fails (one false alarm per 1000 runs)


@pytest.mark.parametrize("height,width", [(32, 32), (375, 500)])
def test_crop_distribution_matches_host_sampler(height, width):
    cfg = AugmentConfig()
    host = _host_params(cfg, N_SAMPLES, height, width, 3)["crop"]
    dev = _device_params(cfg, N_SAMPLES, height, width, 3)["crop"]
    for name, f in [("area", lambda c: c[:, 2] * c[:, 3] / (height * width)),
                    ("log aspect", lambda c: np.log(c[:, 3] / c[:, 2])),
                    ("y centre", lambda c: (c[:, 0] + c[:, 2] / 2) / height),
                    ("x centre", lambda c: (c[:, 1] + c[:, 3] / 2) / width)]:
        p = stats.ks_2samp(f(host), f(dev)).pvalue
        assert p > P_MIN, f"crop {name}: KS p={p:.2g}"
    for c in (host, dev):  # both inside the image
        assert (c[:, 0] >= 0).all() and (c[:, 0] + c[:, 2] <= height).all()
        assert (c[:, 1] >= 0).all() and (c[:, 1] + c[:, 3] <= width).all()


def test_jitter_and_flags_distributions_match_host_sampler():
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.2)
    host = _host_params(cfg, N_SAMPLES, 32, 32, 3)
    dev = _device_params(cfg, N_SAMPLES, 32, 32, 3)
    for name in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
        p = stats.ks_2samp(host[name], dev[name]).pvalue
        assert p > P_MIN, f"{name}: KS p={p:.2g}"
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        table = [[host[name].sum(), N_SAMPLES - host[name].sum()],
                 [dev[name].sum(), N_SAMPLES - dev[name].sum()]]
        p = stats.chi2_contingency(table).pvalue
        assert p > P_MIN, f"{name}: chi-square p={p:.2g}"
    # The jitter order: a uniformly random permutation of the four ops on both paths.
    codes = lambda o: o @ np.array([64, 16, 4, 1])  # noqa: E731
    h = np.bincount(codes(host["jitter_order"]), minlength=256)
    d = np.bincount(codes(dev["jitter_order"]), minlength=256)
    used = (h + d) > 0
    assert used.sum() == 24
    p = stats.chi2_contingency(np.stack([h[used], d[used]])).pvalue
    assert p > P_MIN, f"jitter order: chi-square p={p:.2g}"


# ============================================================================ determinism


CFGS = [AugmentConfig(blur_p=0.5, solarize_p=0.2), AugmentConfig(grayscale_p=0.5)]


def _on(devices, fn, *args):
    """``fn(*args)`` jitted with the batch (first argument, and the output) split over
    ``devices``."""
    shard = NamedSharding(Mesh(np.asarray(devices), ("data",)), P("data"))
    jitted = jax.jit(fn, in_shardings=(shard,) + (None,) * (len(args) - 1), out_shardings=shard)
    return jax.tree.map(np.asarray, jitted(jax.device_put(args[0], shard), *args[1:]))


def _augment_on(devices, images, step):
    return _on(devices, lambda x, s: D.augment_views(x, seed=3, step=s, configs=CFGS,
                                                     image_size=12, mean=[0.5] * 3,
                                                     std=[0.25] * 3), images, jnp.int32(step))


def _params(x, step):
    """The parameters augment_views draws for view 0 (keys from the global row index)."""
    keys = D.example_keys(3, step, x.shape[0], 0)
    return jax.vmap(lambda k, i: D.sample_one(k, CFGS[0], 32, 32, 3))(keys, x)


@pytest.mark.slow  # about 25 s idle: compiles the augmentation for one and eight devices
def test_views_do_not_depend_on_the_number_of_devices():
    """Every random draw is bit for bit the same on 1 and 8 devices; the pixels agree to float
    rounding. (Not bit for bit: XLA's CPU code for a batch of 16 and for 8 shards of 2 may
    round a reduction or a fused multiply-add differently, ~1e-7; a wrong draw moves a
    pixel by whole tenths.)"""
    assert jax.device_count() >= 8, "conftest gives 8 CPU devices"
    images = np.random.default_rng(0).integers(0, 256, [16, 32, 32, 3], dtype=np.uint8)
    one = _on(jax.devices()[:1], _params, images, jnp.int32(4))
    eight = _on(jax.devices()[:8], _params, images, jnp.int32(4))
    for k in one:
        np.testing.assert_array_equal(one[k], eight[k], err_msg=k)
    one = _augment_on(jax.devices()[:1], images, 4)
    eight = _augment_on(jax.devices()[:8], images, 4)
    assert one.shape == (16, 2, 12, 12, 3)
    np.testing.assert_allclose(one, eight, rtol=0, atol=1e-5)  # 1e-5 of a std of 0.25
    # ... and do depend on the step, the view and the example.
    other_step = _augment_on(jax.devices()[:1], images, 5)
    assert np.abs(other_step - one).mean() > 0.1
    assert np.abs(one[:, 0] - one[:, 1]).mean() > 0.1
    same_image = np.repeat(images[:1], 16, axis=0)
    views = _augment_on(jax.devices()[:1], same_image, 4)
    assert np.abs(views[0] - views[1]).mean() > 0.1
    # Every row its own draw: keys by a local (per-shard) index would repeat rows.
    assert len({v.tobytes() for v in views[:, 0]}) == 16


def test_keys_are_a_function_of_seed_step_view_and_example():
    k = D.example_keys(0, 3, 8, 1)
    np.testing.assert_array_equal(jax.random.key_data(k[5]),
                                  jax.random.key_data(D.example_keys(0, 3, 6, 1)[5]))
    assert not np.array_equal(jax.random.key_data(k), jax.random.key_data(D.example_keys(0, 3, 8, 0)))
