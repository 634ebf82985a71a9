"""Tests of ssljax.data: sources, augmentations, pipelines, global arrays."""

import gzip
import os
import struct

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssljax.data import augment as A
from ssljax.data import pipeline, sources
from ssljax.data import (
    AugmentConfig,
    DatasetNotFoundError,
    augment_batch,
    dataset_info,
    global_iterator,
    load_arrays,
    make_eval_batches,
    make_pretrain_dataset,
    make_tfds_stream,
    to_global,
)

FMNIST_DIR = sources.DEFAULT_FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist is not installed")

# An augmentation that changes nothing: full-image crop, no flip, no colour ops.
IDENTITY = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def _np(x):
    return np.asarray(x)


# ============================================================================ sources


def _write_idx(path, array):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, [7, 28, 28], dtype=np.uint8), rng.integers(0, 10, [7])),
        "test": (rng.integers(0, 256, [3, 28, 28], dtype=np.uint8), rng.integers(0, 10, [3])),
    }
    for split, (image_file, label_file) in sources._IDX_FILES.items():
        _write_idx(tmp_path / image_file, arrays[split][0])
        _write_idx(tmp_path / label_file, arrays[split][1])
    return tmp_path, arrays


def test_idx_decoder_round_trip(tiny_idx_dir):
    directory, arrays = tiny_idx_dir
    x, y = load_arrays("fashion_mnist", "train", data_dir=str(directory))
    np.testing.assert_array_equal(x[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(y, arrays["train"][1])
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == (7, 28, 28, 1)
    x, y = load_arrays("fashion_mnist", "train[2:-1]+test[:1]", data_dir=str(directory))
    np.testing.assert_array_equal(
        y, np.concatenate([arrays["train"][1][2:6], arrays["test"][1][:1]]))


def test_idx_env_variable(tiny_idx_dir, monkeypatch):
    directory, arrays = tiny_idx_dir
    monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(directory))
    _, y = load_arrays("fashion_mnist", "test")
    np.testing.assert_array_equal(y, arrays["test"][1])


@needs_fmnist
def test_fashion_mnist_real_files():
    x, y = load_arrays("fashion_mnist", "train")
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))  # balanced classes
    info = dataset_info("fashion_mnist")
    np.testing.assert_allclose(x.mean() / 255, info.mean[0], atol=1e-3)
    np.testing.assert_allclose((x / 255).std(), info.std[0], atol=1e-3)
    xt, yt = load_arrays("fashion_mnist", "test")
    assert xt.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(yt), np.full(10, 1000))
    # Cached: a second load shares memory rather than decoding again.
    x2, _ = load_arrays("fashion_mnist", "train")
    assert np.shares_memory(x, x2)
    xs, ys = load_arrays("fashion_mnist", "train[:1000]")
    np.testing.assert_array_equal(xs, x[:1000])
    np.testing.assert_array_equal(ys, y[:1000])
    _, ys = load_arrays("fashion_mnist", "train[10%:20%]")
    np.testing.assert_array_equal(ys, y[6000:12000])
    _, ys = load_arrays("fashion_mnist", "test[-10:]")
    np.testing.assert_array_equal(ys, yt[-10:])


def test_missing_fashion_mnist_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_arrays("fashion_mnist", "train")
    assert "make install" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_missing_idx_falls_back_to_tfds(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(tmp_path / "nowhere"))
    with tfds.testing.mock_data(num_examples=5):
        x, y = load_arrays("fashion_mnist", "train")
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32


def test_unprepared_tfds_dataset_names_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
        load_arrays("cifar10", "train", data_dir=str(tmp_path))


def test_bad_split_and_dataset():
    with pytest.raises(ValueError, match="train"):
        sources.parse_split("validation", {"train": 10, "test": 2})
    with pytest.raises(ValueError, match="cifar10"):
        dataset_info("cifar11")
    assert sources.parse_split("train[25%:]", {"train": 8}) == [("train", 2, 8)]


def test_dataset_info():
    for name in ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagenet2012"):
        info = dataset_info(name)
        assert len(info.mean) == len(info.std) == info.image_shape[2]
    assert dataset_info("imagenet2012").num_classes == 1000
    assert dataset_info("imagenet2012").image_shape == (224, 224, 3)
    assert not dataset_info("imagenet2012").in_memory
    assert dataset_info("cifar100").num_classes == 100


def test_tfds_source_on_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        x, y = load_arrays("cifar10", "train")
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert len(np.unique(x.reshape(12, -1), axis=0)) == 12 and y.min() >= 0 and y.max() < 10
    info = dataset_info("cifar10")
    ds = make_pretrain_dataset(
        x, y, global_batch_size=4, num_views=2, augment=IDENTITY, seed=0,
        image_size=32, mean=info.mean, std=info.std)
    batch = next(ds.as_numpy_iterator())
    assert batch["views"].shape == (4, 2, 32, 32, 3)
    # Labels and images stay paired: each view is the normalised image of its label's row.
    rows = [np.flatnonzero(y == label) for label in batch["label"]]
    for b, candidates in enumerate(rows):
        expected = (x[candidates] / 255.0 - np.array(info.mean)) / np.array(info.std)
        assert np.abs(expected - batch["views"][b, 0]).max(axis=(1, 2, 3)).min() < 1e-4


# ============================================================================ augment


@pytest.fixture(scope="module")
def rgb():
    return tf.random.stateless_uniform([16, 20, 20, 3], [1, 2])


@pytest.fixture(scope="module")
def gray():
    return tf.random.stateless_uniform([16, 20, 20, 1], [3, 4])


FULL = AugmentConfig(blur_p=0.5, solarize_p=0.3, jitter_p=1.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("out_size", [20, 12])
def test_augment_shapes_range_determinism(rgb, gray, channels, out_size):
    x = rgb if channels == 3 else gray
    seed = tf.constant([5, 6])
    y = augment_batch(x, seed, FULL, out_size)
    assert y.shape == (16, out_size, out_size, channels) and y.dtype == tf.float32
    assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0
    np.testing.assert_array_equal(_np(y), _np(augment_batch(x, seed, FULL, out_size)))
    other = augment_batch(x, tf.constant([5, 7]), FULL, out_size)
    assert np.abs(_np(y) - _np(other)).mean() > 1e-2
    # Examples of one batch get different parameters.
    same = augment_batch(tf.repeat(x[:1], 16, axis=0), seed, FULL, out_size)
    assert np.abs(_np(same[0]) - _np(same[1])).mean() > 1e-3


def test_flip_p1_mirrors(rgb):
    cfg = dataclass_replace(IDENTITY, flip_p=1.0)
    np.testing.assert_allclose(_np(augment_batch(rgb, tf.constant([0, 0]), cfg, 20)),
                               _np(rgb)[:, :, ::-1], atol=1e-6)


def test_flip_half_flips_about_half():
    x = tf.reshape(tf.range(256 * 4, dtype=tf.float32) / 1024, [256, 2, 2, 1])
    flip = A.sample_params(tf.constant([1, 1]), 256, (2, 2, 1), dataclass_replace(IDENTITY, flip_p=0.5))["flip"]
    y = A.random_flip(x, flip)
    flipped = np.all(_np(y) == _np(x)[:, :, ::-1], axis=(1, 2, 3))
    np.testing.assert_array_equal(flipped, _np(flip))
    assert 90 < flipped.sum() < 166


def test_full_crop_is_identity(rgb):
    np.testing.assert_allclose(_np(augment_batch(rgb, tf.constant([3, 3]), IDENTITY, 20)), _np(rgb), atol=1e-5)


def test_crop_of_output_size_is_a_slice(rgb):
    crop = tf.constant([[2.0, 3.0, 10.0, 10.0], [0.0, 10.0, 10.0, 10.0]])
    y = A.random_resized_crop(rgb[:2], crop, 10)
    np.testing.assert_allclose(_np(y[0]), _np(rgb)[0, 2:12, 3:13], atol=1e-5)
    np.testing.assert_allclose(_np(y[1]), _np(rgb)[1, 0:10, 10:20], atol=1e-5)


def test_crop_box_distribution():
    crop = _np(A.sample_crop(tf.constant([0, 1]), 2000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3)))
    y0, x0, h, w = crop.T
    assert np.all(y0 >= 0) and np.all(x0 >= 0) and np.all(y0 + h <= 32) and np.all(x0 + w <= 32)
    area = h * w / 1024
    assert area.min() > 0.05 and area.max() <= 1.0
    assert 0.4 < area.mean() < 0.65  # E[U(0.08, 1)] = 0.54, minus rejected large draws
    assert np.all(w / h > 0.6) and np.all(w / h < 1.6)
    assert len(np.unique(y0)) > 10


def test_brightness_contrast_hand_computed():
    x = np.array([[0.2, 0.6], [0.4, 0.9]], np.float32).reshape(1, 2, 2, 1)
    xs = tf.constant(np.concatenate([x, x]))
    y = A.color_jitter(xs, {"brightness": tf.constant([1.5, 0.5])})
    np.testing.assert_allclose(_np(y)[0], np.minimum(x[0] * 1.5, 1.0), atol=1e-6)
    np.testing.assert_allclose(_np(y)[1], x[0] * 0.5, atol=1e-6)
    y = A.color_jitter(xs, {"contrast": tf.constant([2.0, 0.5])})
    m = 0.525  # mean of the image
    np.testing.assert_allclose(_np(y)[0], np.clip((x[0] - m) * 2 + m, 0, 1), atol=1e-6)
    np.testing.assert_allclose(_np(y)[1], (x[0] - m) * 0.5 + m, atol=1e-6)
    # Order matters and follows jitter_order: example 0 brightness first, 1 contrast first.
    y = A.color_jitter(xs, {"brightness": tf.constant([1.5, 1.5]), "contrast": tf.constant([2.0, 2.0]),
                            "jitter_order": tf.constant([[0, 1], [1, 0]])})
    b_first = np.clip(x[0] * 1.5, 0, 1)
    b_first = np.clip((b_first - b_first.mean()) * 2 + b_first.mean(), 0, 1)
    c_first = np.clip(np.clip((x[0] - m) * 2 + m, 0, 1) * 1.5, 0, 1)
    np.testing.assert_allclose(_np(y)[0], b_first, atol=1e-6)
    np.testing.assert_allclose(_np(y)[1], c_first, atol=1e-6)
    assert not np.allclose(b_first, c_first)


def test_rgb_contrast_saturation_hue(rgb):
    x = _np(rgb)[:2]
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
    y = A.color_jitter(tf.constant(x), {"contrast": tf.constant([0.5, 0.5])})
    m = luma.mean(axis=(1, 2))[:, None, None, None]
    np.testing.assert_allclose(_np(y), np.clip((x - m) * 0.5 + m, 0, 1), atol=1e-5)
    y = A.color_jitter(tf.constant(x), {"saturation": tf.constant([0.0, 1.5])})
    np.testing.assert_allclose(_np(y)[0], np.repeat(luma[0][..., None], 3, -1), atol=1e-5)
    sat = np.clip(luma[1][..., None] + (x[1] - luma[1][..., None]) * 1.5, 0, 1)
    np.testing.assert_allclose(_np(y)[1], sat, atol=1e-5)
    y = A.color_jitter(tf.constant(x), {"hue": tf.constant([0.1, -0.05])})
    np.testing.assert_allclose(_np(y)[0], _np(tf.image.adjust_hue(x[0], 0.1)), atol=1e-4)
    np.testing.assert_allclose(_np(y)[1], _np(tf.image.adjust_hue(x[1], -0.05)), atol=1e-4)


def test_jitter_probability(rgb):
    x = tf.repeat(rgb[:1], 200, axis=0)
    cfg = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, grayscale_p=0, jitter_p=0.5)
    y = augment_batch(x, tf.constant([9, 9]), cfg, 20)
    changed = np.abs(_np(y) - _np(x)).max(axis=(1, 2, 3)) > 1e-4
    assert 70 < changed.sum() < 130


def test_grayscale_image_through_full_jitter(gray):
    cfg = AugmentConfig(jitter_p=1.0, grayscale_p=1.0, hue=0.5, saturation=0.9)
    params = A.sample_params(tf.constant([1, 2]), 16, (20, 20, 1), cfg)
    assert "saturation" not in params and "hue" not in params and "grayscale" not in params
    y = augment_batch(gray, tf.constant([1, 2]), cfg, 20)
    assert y.shape == gray.shape
    assert np.abs(_np(y) - _np(augment_batch(gray, tf.constant([1, 2]), IDENTITY, 20))).mean() > 1e-3


def test_random_grayscale(rgb, gray):
    y = _np(A.random_grayscale(rgb, tf.constant([True] * 8 + [False] * 8)))
    luma = _np(rgb) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(y[:8], np.repeat(luma[:8, ..., None], 3, -1), atol=1e-6)
    np.testing.assert_array_equal(y[8:], _np(rgb)[8:])
    np.testing.assert_array_equal(_np(A.random_grayscale(gray, tf.ones([16], tf.bool))), _np(gray))


def _np_blur(image, sigma, radius):
    offsets = np.arange(-radius, radius + 1)
    k = np.exp(-offsets**2 / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    h, w = image.shape[:2]
    rows = sum(k[i] * padded[i:i + h] for i in range(2 * radius + 1))
    return sum(k[i] * rows[:, i:i + w] for i in range(2 * radius + 1))


def test_gaussian_blur(rgb):
    constant = tf.fill([4, 20, 20, 3], 0.3)
    sigma = tf.constant([0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(_np(A.gaussian_blur(constant, sigma, 2)), 0.3, atol=1e-6)
    noise = rgb[:4]
    blurred = _np(A.gaussian_blur(noise, sigma, 2))
    for b in range(4):
        np.testing.assert_allclose(blurred[b], _np_blur(_np(noise)[b], float(sigma[b]), 2), atol=1e-5)
    variances = blurred.var(axis=(1, 2, 3))
    assert np.all(variances < 0.7 * _np(noise).var())
    assert np.all(np.diff(variances) < 0)  # larger sigma, smoother
    assert A.blur_radius(224) == 11 and A.blur_radius(32) == 1


def test_solarize_hand_computed():
    x = np.array([0.1, 0.5, 0.7, 0.3], np.float32).reshape(1, 2, 2, 1)
    y = A.solarize(tf.constant(np.concatenate([x, x])), tf.constant([True, False]))
    np.testing.assert_allclose(_np(y)[0].ravel(), [0.1, 0.5, 0.3, 0.3], atol=1e-6)
    np.testing.assert_array_equal(_np(y)[1], x[0])


def test_config_from_dict():
    cfg = AugmentConfig.from_dict({"crop_scale": [0.2, 1.0], "blur_p": 1.0})
    assert cfg.crop_scale == (0.2, 1.0) and cfg.blur_p == 1.0 and cfg.flip_p == 0.5
    with pytest.raises(ValueError, match="valid keys.*crop_scale"):
        AugmentConfig.from_dict({"crop_scal": (0.2, 1.0)})
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(flip_p=1.5)
    assert AugmentConfig() == AugmentConfig(
        crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
        brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.0,
        blur_sigma=(0.1, 2.0), solarize_p=0.0)


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


# ============================================================================ pipeline

N, SIDE = 48, 12
MEAN, STD = (0.4,), (0.2,)


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, [N, SIDE, SIDE, 1], dtype=np.uint8)
    return images, np.arange(N, dtype=np.int32)  # label = example id


def _pretrain(data, n=None, **kw):
    images, labels = data if n is None else (data[0][:n], data[1][:n])
    args = dict(global_batch_size=8, num_views=2, augment=AugmentConfig(), seed=0,
                image_size=SIDE, mean=MEAN, std=STD)
    args.update(kw)
    return make_pretrain_dataset(images, labels, **args)


def _take(ds, n):
    return [jax.tree.map(np.asarray, b) for b in ds.take(n).as_numpy_iterator()]


@pytest.fixture(scope="module")
def base_run(small_data):
    """Steps 0..11 (two epochs of 6 steps) of the default pipeline, seed 0."""
    return _take(_pretrain(small_data), 12)


def test_pretrain_batch_format(base_run):
    batch = base_run[0]
    assert batch["views"].shape == (8, 2, SIDE, SIDE, 1) and batch["views"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert np.abs(batch["views"][:, 0] - batch["views"][:, 1]).mean() > 0.05
    # Normalised: raw pixels are uniform in [0, 1], so views span (0 - 0.4) / 0.2 .. 3.
    assert batch["views"].min() >= -2.0 - 1e-5 and batch["views"].max() <= 3.0 + 1e-5
    assert batch["views"].min() < -1.5 and batch["views"].max() > 2.5


def test_pretrain_per_view_configs(small_data):
    images, _ = small_data
    flip = dataclass_replace(IDENTITY, flip_p=1.0)
    batch = _take(_pretrain(small_data, num_views=3, augment=[IDENTITY, flip, AugmentConfig()]), 1)[0]
    assert batch["views"].shape == (8, 3, SIDE, SIDE, 1)
    expected = (images[batch["label"]] / 255.0 - MEAN[0]) / STD[0]
    np.testing.assert_allclose(batch["views"][:, 0], expected, atol=1e-5)
    np.testing.assert_allclose(batch["views"][:, 1], expected[:, :, ::-1], atol=1e-5)
    assert np.abs(batch["views"][:, 2] - expected).mean() > 0.05
    with pytest.raises(ValueError, match="one per view"):
        _pretrain(small_data, augment=[IDENTITY])


def test_pretrain_deterministic_resumable_seeded(small_data, base_run):
    # A second dataset with the same seed, resumed at step 7 (mid-epoch 1), reproduces
    # the uninterrupted run exactly.
    for k in (7,):
        resumed = _take(_pretrain(small_data, start_step=k), 2)
        for i in range(2):
            np.testing.assert_array_equal(resumed[i]["views"], base_run[k + i]["views"])
            np.testing.assert_array_equal(resumed[i]["label"], base_run[k + i]["label"])
    other = _take(_pretrain(small_data, seed=1), 1)[0]
    assert not np.array_equal(other["label"], base_run[0]["label"])


def test_pretrain_two_processes_equal_one(small_data, base_run):
    parts = [_take(_pretrain(small_data, start_step=4, process_index=p, process_count=2), 3) for p in range(2)]
    for s in range(3):
        assert parts[0][s]["views"].shape[0] == 4
        for key in ("views", "label"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][s][key], parts[1][s][key]]), base_run[4 + s][key])
    with pytest.raises(ValueError, match="divisible"):
        _pretrain(small_data, process_count=3)


def test_pretrain_epochs_cover_every_example_once(small_data, base_run):
    epoch0 = np.concatenate([b["label"] for b in base_run[:6]])
    epoch1 = np.concatenate([b["label"] for b in base_run[6:]])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(N))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(N))
    assert not np.array_equal(epoch0, epoch1) and not np.array_equal(epoch0, np.arange(N))
    # With a remainder (N=45): 5 steps, 40 distinct examples, none twice.
    batches = _take(_pretrain(small_data, n=45, augment=IDENTITY), 5)
    labels = np.concatenate([b["label"] for b in batches])
    assert len(np.unique(labels)) == 40 and labels.max() < 45


def test_tfds_stream_on_mock_imagenet():
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.2)
    with tfds.testing.mock_data(num_examples=6):
        ds = make_tfds_stream(
            "imagenet2012", "train", global_batch_size=4, num_views=2, augment=cfg, seed=0,
            image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
            process_index=0, process_count=1, shuffle_buffer=4)
        batches = _take(ds, 3)  # repeats past the 6 examples
    for batch in batches:
        assert batch["views"].shape == (4, 2, 16, 16, 3) and batch["views"].dtype == np.float32
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert batch["views"].min() >= -2.0 - 1e-5 and batch["views"].max() <= 2.0 + 1e-5
        assert np.abs(batch["views"][:, 0] - batch["views"][:, 1]).mean() > 1e-2


def test_tfds_stream_unprepared(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="tfds build imagenet2012"):
        make_tfds_stream("imagenet2012", "train", global_batch_size=4, num_views=2,
                         augment=AugmentConfig(), seed=0, image_size=16, mean=(0.5,) * 3,
                         std=(0.5,) * 3, data_dir=str(tmp_path), process_index=0, process_count=1)


# ============================================================================ eval, global


def test_eval_batches_cover_every_example_once(small_data):
    images, labels = small_data[0][:13], small_data[1][:13]
    batches = list(make_eval_batches(images, labels, batch_size=4, mean=MEAN, std=STD))
    assert len(batches) == 4
    for b in batches:
        assert b["image"].shape == (4, SIDE, SIDE, 1) and b["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 13 + [0] * 3)
    real = np.concatenate([b["label"] for b in batches])[mask == 1]
    np.testing.assert_array_equal(real, labels)
    image = np.concatenate([b["image"] for b in batches])[:13]
    np.testing.assert_allclose(image, (images / 255.0 - MEAN[0]) / STD[0], atol=1e-6)
    parts = [list(make_eval_batches(images, labels, batch_size=4, mean=MEAN, std=STD,
                                    process_index=p, process_count=2)) for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4
    for s in range(4):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([parts[0][s][key], parts[1][s][key]]), batches[s][key])
    resized = next(make_eval_batches(images, labels, batch_size=4, mean=MEAN, std=STD, image_size=6))
    assert resized["image"].shape == (4, 6, 6, 1)


def test_to_global_on_mesh(base_run):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    sharding = NamedSharding(mesh, P("data"))
    first = base_run[0]
    batch = to_global(first, sharding)
    assert batch["views"].shape == (8, 2, SIDE, SIDE, 1) and batch["label"].shape == (8,)
    assert batch["views"].sharding == sharding
    assert {s.data.shape for s in batch["views"].addressable_shards} == {(1, 2, SIDE, SIDE, 1)}
    np.testing.assert_array_equal(np.asarray(batch["views"]), first["views"])
    out = list(global_iterator(iter(base_run[:3]), sharding))
    assert len(out) == 3 and out[2]["label"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(out[2]["label"]), base_run[2]["label"])
    ds = tf.data.Dataset.from_tensor_slices({"x": np.arange(32).reshape(4, 8)})
    out = [np.asarray(b["x"]) for b in global_iterator(ds, sharding)]
    np.testing.assert_array_equal(np.stack(out), np.arange(32).reshape(4, 8))


def test_configure_tf_hides_gpus():
    pipeline.configure_tf(2)
    try:
        assert tf.config.get_visible_devices("GPU") == []
        options = pipeline._options()
        assert options.threading.private_threadpool_size == 2
        assert options.autotune.cpu_budget == 2
    finally:
        pipeline.configure_tf(None)
    with pytest.raises(ValueError, match="threads"):
        pipeline.configure_tf(0)


# ============================================================================ TFDS stream split
@pytest.fixture(scope="module")
def ids_tfds(tmp_path_factory):
    """A prepared TFDS dataset of 60 8x8 images whose label is the example's index, so a
    batch's labels say which examples it holds."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    n = 60
    images = (np.arange(n)[:, None, None, None] * np.ones((1, 8, 8, 3))).astype(np.uint8)
    builder = tfds.dataset_builders.TfDataBuilder(
        name="ssljax_ids", config="default", version="1.0.0", data_dir=data_dir,
        split_datasets={"train": tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": np.arange(n)})},
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=n)}))
    builder.download_and_prepare()
    return data_dir, n


def _ids_stream(data_dir, *, process_index, process_count, start_step=0, global_batch=6):
    return make_tfds_stream("ssljax_ids", "train", global_batch_size=global_batch, num_views=1,
                            augment=IDENTITY, seed=3, image_size=8, mean=(0.5,) * 3,
                            std=(0.5,) * 3, data_dir=data_dir, start_step=start_step,
                            process_index=process_index, process_count=process_count,
                            shuffle_buffer=16)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_tfds_stream_reads_every_example_once_per_epoch_over_processes(ids_tfds,
                                                                       process_count):
    data_dir, n = ids_tfds
    steps_per_epoch = n // 6  # global batch 6: 10 steps an epoch on every process
    per_process = [np.concatenate([b["label"] for b in _take(
        _ids_stream(data_dir, process_index=p, process_count=process_count), 2 * steps_per_epoch)])
        for p in range(process_count)]
    for epoch in range(2):  # each epoch: every example exactly once, over all processes
        part = slice(epoch * n // process_count, (epoch + 1) * n // process_count)
        seen = np.concatenate([labels[part] for labels in per_process])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    # Processes read disjoint slices; the second epoch comes in another order.
    if process_count > 1:
        assert not set(per_process[0]) & set(per_process[1])
    first = per_process[0][: n // process_count]
    assert not np.array_equal(first, per_process[0][n // process_count: 2 * n // process_count])


def test_tfds_stream_resumes_with_a_fresh_order_that_replays_nothing(ids_tfds):
    data_dir, n = ids_tfds
    take = lambda **kw: np.concatenate(  # noqa: E731
        [b["label"] for b in _take(_ids_stream(data_dir, process_index=0, process_count=1, **kw),
                                   n // 6)])
    start = take(start_step=0)
    resumed = take(start_step=4)
    # Repeatable: the same (seed, start_step) gives the same stream ...
    np.testing.assert_array_equal(resumed, take(start_step=4))
    # ... a restart is not a replay of the first batches, and its epoch is still complete.
    assert not np.array_equal(resumed[:24], start[:24])
    np.testing.assert_array_equal(np.sort(resumed), np.arange(n))
