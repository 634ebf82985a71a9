"""Frozen-feature evaluation of streamed (not in-memory) TFDS datasets, on a tiny prepared one."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import tiny_config
from ssljax import data, train
from ssljax.data.sources import DatasetInfo

N = 11
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def tiny_stream(tmp_path_factory):
    """A prepared TFDS dataset: image i is a constant 20 x 24 image of value 20 * i, label i."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    images = (20 * np.arange(N, dtype=np.uint8))[:, None, None, None] * np.ones(
        (1, 20, 24, 3), np.uint8)
    split = lambda: tf.data.Dataset.from_tensor_slices(  # noqa: E731
        {"image": images, "label": np.arange(N)})
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_stream", version="1.0.0", data_dir=data_dir,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=N)}),
        split_datasets={"train": split(), "validation": split()})
    return data_dir


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_every_example_once_over_processes(tiny_stream, process_count):
    seen, lengths = [], set()
    for index in range(process_count):
        batches = list(data.make_tfds_eval_stream(
            "tiny_stream", "validation", batch_size=6, image_size=16, mean=MEAN, std=STD,
            data_dir=tiny_stream, max_examples=10, process_index=index,
            process_count=process_count))
        lengths.add(len(batches))
        for b in batches:
            assert b["image"].shape == (6 // process_count, 16, 16, 3)
            real = b["mask"] > 0
            seen.extend(b["label"][real].tolist())
            # Resize + centre crop keeps a constant image constant: (20 i / 255 - 0.5) / 0.25.
            expected = (20 * b["label"][real] / 255.0 - 0.5) / 0.25
            np.testing.assert_allclose(b["image"][real], np.broadcast_to(
                expected[:, None, None, None], b["image"][real].shape), atol=1e-5)
            assert np.all(b["label"][~real] == 0) and np.all(b["image"][~real] == 0)
    assert len(lengths) == 1  # every process runs the same number of batches
    # Each of the split's first 10 examples exactly once (the prepared split's own order).
    first10 = tfds.builder("tiny_stream", data_dir=tiny_stream).as_dataset(split="validation[:10]")
    assert sorted(seen) == sorted(int(e["label"]) for e in first10.as_numpy_iterator())
    assert len(set(seen)) == 10


def test_unprepared_stream_names_the_fix(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="tfds build imagenet2012"):
        next(data.make_tfds_eval_stream("imagenet2012", "validation", batch_size=4, image_size=16,
                                        mean=MEAN, std=STD, data_dir=str(tmp_path)))


@pytest.mark.integration
def test_trainer_scores_a_streamed_dataset(tiny_stream, tmp_path, monkeypatch):
    """Pre-training and offline evaluation both stream; results.json has the probes and the
    random-encoder baseline, and no raw-pixel baseline."""
    info = DatasetInfo(name="tiny_stream", num_classes=N, image_shape=(16, 16, 3), mean=MEAN,
                       std=STD, num_train=N, num_test=N, test_split="validation",
                       num_pretrain=N, in_memory=False)
    real = data.dataset_info
    monkeypatch.setattr(data, "dataset_info",
                        lambda name: info if name == "tiny_stream" else real(name))
    c = tiny_config("simclr", **{"data.name": "tiny_stream", "data.data_dir": tiny_stream,
                                 "batch_size": 8, "total_steps": 2, "eval.baselines": True,
                                 "eval.batch_size": 8, "eval.train_examples": 9})
    c.data.train_split = ""
    c.data.test_split = ""
    results = train.train_and_evaluate(c, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        assert json.load(f) == results
    for key in ("linear_probe_top1", "knn_top1", "random_encoder_linear_probe_top1",
                "random_encoder_knn_top1", "effective_rank", "online_probe_top1"):
        assert key in results, key
    assert not any(k.startswith("raw_pixels_") for k in results)
    # Scored on the N streamed test images: a whole number of them (the padding of the last
    # eval batch of 8 not counted).
    for key in ("linear_probe_top1", "knn_top1"):
        correct = results[key] * N / 100
        assert abs(correct - round(correct)) < 0.01 * N / 100 + 1e-9, (key, results[key])
