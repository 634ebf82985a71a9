"""InfoMin Aug: each RandAugment op against PIL (the official pipeline's library), the
sampling of ops and magnitudes, the InfoMin order, determinism per seed, the jigsaw view."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ssljax.data import augment as aug
from ssljax.data import infomin_aug as ia
from ssljax.data import make_pretrain_dataset

FILL_RGB = (124, 116, 104)
FILL_L = 117  # the luma of FILL_RGB, our fill for 1-channel images
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def fixed_image():
    """A 20 x 24 RGB image (non-square, so height and width cannot be swapped unnoticed)
    with gradients, a product pattern and noise: every op changes it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:20, 0:24]
    img = np.stack([(xx * 9 + yy * 3) % 256, (yy * 11 + 40) % 256, (xx * yy) % 200 + 30], -1)
    return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def pil_op(name, im, v, sign):
    """The official op (PyContrast's RandAugment.py) at magnitude v, written with PIL here."""
    fill = FILL_RGB if im.mode == "RGB" else FILL_L
    geo = dict(resample=Image.BILINEAR, fillcolor=fill)
    if name == "AutoContrast":
        return ImageOps.autocontrast(im)
    if name == "Equalize":
        return ImageOps.equalize(im)
    if name == "Invert":
        return ImageOps.invert(im)
    if name == "Rotate":
        return im.rotate(sign * v / 10 * 30, **geo)
    if name == "Posterize":
        return ImageOps.posterize(im, int(v / 10 * 4))
    if name == "Solarize":
        return ImageOps.solarize(im, int(v / 10 * 256))
    if name == "SolarizeAdd":
        add = int(v / 10 * 110)
        lut = [min(255, i + add) if i < 128 else i for i in range(256)]
        return im.point(lut * len(im.getbands()))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(im).enhance(v / 10 * 1.8 + 0.1)
    w, h = im.size
    matrix = {"ShearX": (1, sign * v / 10 * 0.3, 0, 0, 1, 0),
              "ShearY": (1, 0, 0, sign * v / 10 * 0.3, 1, 0),
              "TranslateX": (1, 0, sign * v / 10 * 0.45 * w, 0, 1, 0),
              "TranslateY": (1, 0, 0, 0, 1, sign * v / 10 * 0.45 * h)}[name]
    return im.transform(im.size, Image.AFFINE, matrix, **geo)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("name", ia.RA_OPS)
def test_each_op_matches_pil(name, mode):
    img = fixed_image()
    if mode == "L":
        img = np.asarray(Image.fromarray(img).convert("L"))[..., None]
    im = Image.fromarray(img if mode == "RGB" else img[..., 0])
    fill = (124.0, 116.0, 104.0) if mode == "RGB" else (float(FILL_L),)
    for v, sign in ((9.25, 1.0), (10.0, -1.0), (7.5, -1.0)):
        want = np.asarray(pil_op(name, im, v, sign), np.float32).reshape(img.shape)
        got = ia.apply_op(name, img[None].astype(np.float32), v, sign, fill=fill).numpy()[0]
        if name in ("Color",) and mode == "L":
            np.testing.assert_array_equal(got, img)  # PIL: a grey image has no colour
        if name in GEOMETRIC:
            # PIL interpolates in double precision from double magnitudes, we from float32
            # magnitudes: a level may truncate one lower on a few pixels.
            diff = np.abs(got - want)
            assert diff.max() <= 1.0 and np.mean(diff > 0) < 0.02, (v, sign, diff.max())
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {mode} v={v}")
        if name not in ("Color", "Solarize") or mode == "RGB":
            assert np.any(want != img) or (name == "Solarize" and v == 10.0)


def test_ops_change_the_image_as_named():
    # Hand-computed cases on a 1 x 2 image, independent of PIL.
    x = np.array([[[[10.0], [200.0]]]], np.float32)
    assert ia.apply_op("Invert", x, 10.0).numpy().ravel().tolist() == [245.0, 55.0]
    assert ia.apply_op("Posterize", x, 10.0).numpy().ravel().tolist() == [0.0, 192.0]
    assert ia.apply_op("SolarizeAdd", x, 10.0).numpy().ravel().tolist() == [120.0, 200.0]
    assert ia.apply_op("AutoContrast", x, 10.0).numpy().ravel().tolist() == [0.0, 255.0]
    # Brightness at magnitude 5 is factor 1.0: the identity.
    np.testing.assert_array_equal(ia.apply_op("Brightness", x, 5.0).numpy(), x)
    with pytest.raises(ValueError, match="Unknown RandAugment op"):
        ia.apply_op("Cutout", x, 10.0)


def infomin_config(**kw):
    base = dict(crop_scale=(0.2, 1.0), brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                blur_p=0.5, grayscale_p=0.2, randaugment_n=2)
    return aug.AugmentConfig(**{**base, **kw})


def test_randaugment_draws_follow_the_recipe():
    cfg = infomin_config()
    p = ia.sample_randaugment(tf.constant([3, 4]), 20000, 3, cfg)
    op, apply, mag, sign = (p[k].numpy() for k in ("ra_op", "ra_apply", "ra_mag", "ra_sign"))
    assert op.shape == (20000, 2) and set(np.unique(op)) == set(range(15))
    # Uniform over the 15 ops, with replacement (both layers may draw the same op).
    np.testing.assert_allclose(np.bincount(op.ravel()) / op.size, 1 / 15, atol=0.01)
    assert np.mean(op[:, 0] == op[:, 1]) == pytest.approx(1 / 15, abs=0.01)
    assert np.mean(apply) == pytest.approx(0.5, abs=0.01)
    # N(10, 0.5) clipped to [0, 10]: half the draws sit at 10, the rest below, std 0.5.
    assert mag.max() == 10.0 and np.mean(mag == 10.0) == pytest.approx(0.5, abs=0.01)
    below = mag[mag < 10]
    assert np.mean(10 - below) == pytest.approx(0.5 * np.sqrt(2 / np.pi), abs=0.01)
    assert set(np.unique(sign)) == {-1.0, 1.0} and np.mean(sign) == pytest.approx(0, abs=0.02)


def test_randaugment_runs_each_drawn_op_on_its_image():
    # The batched application (dynamic partition over ops) equals the ops applied one image
    # and one layer at a time.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(12, 10, 12, 3)).astype(np.float32) / 255.0
    p = ia.sample_randaugment(tf.constant([5, 6]), 12, 3, infomin_config())
    got = ia.apply_randaugment(tf.constant(x), p).numpy()
    for i in range(12):
        y = np.round(x[i:i + 1] * 255)
        for layer in range(2):
            if p["ra_apply"][i, layer]:
                y = ia.apply_op(ia.RA_OPS[int(p["ra_op"][i, layer])], y, p["ra_mag"][i, layer],
                                p["ra_sign"][i, layer], fill=p["ra_fill"][i]).numpy()
        np.testing.assert_array_equal(got[i], y[0] / 255.0, err_msg=str(i))


def test_infomin_aug_is_deterministic_in_range_and_grayscale_comes_last():
    x = tf.constant(fixed_image()[None].repeat(8, 0).astype(np.float32) / 255.0)
    cfg = infomin_config()
    a = aug.augment_batch(x, tf.constant([1, 2]), cfg, 16).numpy()
    b = aug.augment_batch(x, tf.constant([1, 2]), cfg, 16).numpy()
    c = aug.augment_batch(x, tf.constant([1, 3]), cfg, 16).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.shape == (8, 16, 16, 3)
    # RandAugment's output is 8-bit levels (then maybe grayscale, exact in levels too).
    params = aug.sample_params(tf.constant([1, 2]), 8, (20, 24, 3), cfg)
    assert "ra_op" in params
    # Grayscale after RandAugment: with grayscale always on, colour ops cannot bring colour
    # back, so every output pixel is grey.
    gray = aug.augment_batch(x, tf.constant([1, 2]), infomin_config(grayscale_p=1.0), 16).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-6)
    np.testing.assert_allclose(gray[..., 1], gray[..., 2], atol=1e-6)
    # Off, the pipeline is the SimCLR one: no RandAugment parameters.
    assert "ra_op" not in aug.sample_params(tf.constant([1, 2]), 8, (20, 24, 3),
                                            infomin_config(randaugment_n=0))


def test_jigsaw_patches_are_crops_of_the_resized_view():
    cfg = ia.JigsawConfig(size=15, patch=4)
    x = tf.random.stateless_uniform([3, 20, 24, 3], [0, 1])
    params = ia.sample_jigsaw(tf.constant([7, 8]), 3, 20, 24, cfg)
    patches = ia.jigsaw_patches(x, params, cfg).numpy()
    assert patches.shape == (3, 9, 4, 4, 3)
    view = aug.random_flip(aug.random_resized_crop(x, params["jig_crop"], 15),
                           params["jig_flip"]).numpy()
    off = params["jig_offset"].numpy()
    assert off.min() >= 0 and off.max() <= 15 // 3 - 4
    for b in range(3):
        for k in range(9):
            r, c = divmod(k, 3)
            y0, x0 = r * 5 + off[b, k, 0], c * 5 + off[b, k, 1]
            np.testing.assert_array_equal(patches[b, k], view[b, y0:y0 + 4, x0:x0 + 4])
    with pytest.raises(ValueError, match="does not fit"):
        ia.JigsawConfig(size=15, patch=6)


@pytest.mark.integration
def test_pipeline_adds_a_deterministic_jigsaw_view():
    images = (np.arange(16 * 28 * 28) % 251).reshape(16, 28, 28, 1).astype(np.uint8)
    labels = np.arange(16)
    kw = dict(global_batch_size=8, num_views=2, augment=infomin_config(), seed=0, image_size=28,
              mean=[0.5], std=[0.5], jigsaw=ia.JigsawConfig(size=30, patch=8))
    one = next(iter(make_pretrain_dataset(images, labels, **kw)))
    two = next(iter(make_pretrain_dataset(images, labels, **kw)))
    assert one["jigsaw"].shape == (8, 9, 8, 8, 1)
    np.testing.assert_array_equal(one["jigsaw"], two["jigsaw"])
    np.testing.assert_array_equal(one["views"], two["views"])
    # Two processes reading halves of the global batch see the same rows.
    half = next(iter(make_pretrain_dataset(images, labels, **kw, process_index=1,
                                           process_count=2)))
    np.testing.assert_allclose(half["jigsaw"], one["jigsaw"][4:], atol=1e-6)
    np.testing.assert_allclose(half["views"], one["views"][4:], atol=1e-6)
