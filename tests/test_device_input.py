"""data.augment_on='device': the NumPy host loop, masks drawn in JAX, the choice of path,
and the trainer end to end (resume, 1 vs 8 devices, no TensorFlow installed)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import stats

from ssljax import data, sharding, train
from ssljax.config import ConfigError, validate
from ssljax.data import device_input as DI
from ssljax.data.specs import AugmentConfig, MaskConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from helpers import load_config, read_metrics, tiny_config  # noqa: E402


# ============================================================================ host loop


def _images(n=20):
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    return np.broadcast_to(x, (n, 3, 3, 1)).copy(), np.arange(n)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_host_batches_cover_each_epoch_once_and_resume_exactly():
    x, y = _images(20)
    straight = _take(DI.host_batches(x, y, global_batch_size=6, seed=1), 9)
    epoch0 = np.concatenate([b["label"] for b in straight[:3]])
    assert sorted(epoch0.tolist()) == sorted(set(epoch0.tolist()))  # no repeats in an epoch
    assert not np.array_equal(epoch0, np.concatenate([b["label"] for b in straight[3:6]]))
    for b in straight:
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])
    resumed = _take(DI.host_batches(x, y, global_batch_size=6, seed=1, start_step=4), 5)
    for a, b in zip(straight[4:], resumed):
        np.testing.assert_array_equal(a["label"], b["label"])


def test_host_batches_split_over_processes_give_the_global_batch():
    x, y = _images(20)
    whole = _take(DI.host_batches(x, y, global_batch_size=6, seed=2), 4)
    parts = [_take(DI.host_batches(x, y, global_batch_size=6, seed=2, process_index=p,
                                   process_count=3), 4) for p in range(3)]
    for s in range(4):
        np.testing.assert_array_equal(
            np.concatenate([parts[p][s]["label"] for p in range(3)]), whole[s]["label"])


@pytest.mark.slow  # builds a TFDS dataset; the default tier stays under 15 min
def test_tfds_image_stream_decodes_and_resizes_only():
    import tensorflow_datasets as tfds

    from ssljax.data import pipeline
    with tfds.testing.mock_data(num_examples=6):
        ds = pipeline.make_tfds_image_stream("imagenet2012", "train", global_batch_size=4,
                                             seed=0, image_size=20, process_index=0,
                                             process_count=1, shuffle_buffer=4)
        batch = next(ds.as_numpy_iterator())
        shapes = {tuple(e["image"].shape[:2])
                  for e in tfds.load("imagenet2012", split="train").as_numpy_iterator()}
    assert batch["image"].shape == (4, 20, 20, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    # Each image's decoded size, on which the device draws its crops.
    assert {tuple(r) for r in batch["source_shape"].tolist()} <= shapes
    prepare = DI.make_prepare(configs=[AugmentConfig()] * 2, seed=0, image_size=16,
                              mean=[0.5] * 3, std=[0.25] * 3)
    views = prepare({k: jnp.asarray(v) for k, v in batch.items()}, jnp.int32(0))["views"]
    assert views.shape == (4, 2, 16, 16, 3)


# ============================================================================ masks


@pytest.mark.parametrize("kind", ["random", "block"])
def test_masks_count_views_and_devices(kind):
    cfg = MaskConfig(ratio=0.25, patch_size=4, views=(1,), kind=kind, num_blocks=2)
    fn = jax.jit(lambda s: DI.sample_masks(0, s, 16, 2, 32, cfg))
    masks = np.asarray(fn(jnp.int32(3)))
    assert masks.shape == (16, 2, 8, 8)
    assert not masks[:, 0].any()
    assert (masks[:, 1].sum(axis=(1, 2)) == 16).all()  # round(0.25 * 64) per view
    assert len({m.tobytes() for m in masks[:, 1]}) == 16  # each example its own draw
    assert not np.array_equal(masks, np.asarray(fn(jnp.int32(4))))
    if kind == "block":
        return  # the draws below are the same code for both kinds
    # The same masks (and views) whatever the number of devices holding the batch, made as
    # the trainer makes them: inside the jitted step, from the sharded global batch.
    prepare = DI.make_prepare(configs=[AugmentConfig()] * 2, seed=0, image_size=32,
                              mean=[0.5] * 3, std=[0.5] * 3, mask=cfg)
    images = np.random.default_rng(0).integers(0, 256, [16, 32, 32, 3], dtype=np.uint8)
    outs = []
    for n in (1, 8):
        shard = NamedSharding(Mesh(np.asarray(jax.devices()[:n]), ("data",)), P("data"))
        fn = jax.jit(prepare, in_shardings=(shard, None), out_shardings=shard)
        outs.append(fn({"image": jax.device_put(images, shard),
                        "label": jax.device_put(np.zeros(16, np.int32), shard)}, jnp.int32(3)))
    np.testing.assert_array_equal(np.asarray(outs[0]["masks"]), masks)
    np.testing.assert_array_equal(np.asarray(outs[1]["masks"]), masks)
    np.testing.assert_allclose(np.asarray(outs[0]["views"]), np.asarray(outs[1]["views"]),
                               rtol=0, atol=1e-5)  # float rounding only (test_device_augment)


def test_random_masks_are_uniform_over_patches_like_the_host_sampler():
    import tensorflow as tf

    from ssljax.data import masking
    cfg = MaskConfig(ratio=0.5, patch_size=4, views=(0,))
    dev = np.asarray(DI.sample_masks(0, 0, 2000, 1, 16, cfg))[:, 0].reshape(2000, -1)
    host = masking.sample_masks(tf.constant([0, 1], tf.int64), 2000, 1, 16, cfg).numpy()
    host = host[:, 0].reshape(2000, -1)
    p = stats.chi2_contingency(np.stack([dev.sum(0), host.sum(0)])).pvalue
    assert p > 1e-3, f"per-patch frequencies differ from the host sampler's (p={p:.2g})"


# ============================================================================ which path


def test_resolve_picks_the_path_per_backend_and_refuses_host_only_ops():
    plain, ra = [AugmentConfig()] * 2, [AugmentConfig(), AugmentConfig(randaugment_n=2)]
    assert DI.resolve("auto", "cpu", plain)[0] is False
    assert DI.resolve("auto", "gpu", plain)[0] is True
    assert DI.resolve("auto", "tpu", ra)[0] is False  # host-only op: auto stays on the host
    assert DI.resolve("host", "gpu", plain)[0] is False
    assert DI.resolve("device", "cpu", plain)[0] is True
    with pytest.raises(ValueError, match=r"^RandAugment \(data\.augment2\.randaugment_n=2\).*"
                                         r"augment_on=host"):
        DI.resolve("device", "gpu", ra)
    with pytest.raises(ValueError, match="jigsaw view.*augment_on=host"):
        DI.resolve("device", "gpu", plain, jigsaw={"size": 64})


def test_infomin_on_the_device_stops_at_start_up_with_one_sentence():
    c = load_config("infomin")
    c.data.augment_on = "device"
    with pytest.raises(ConfigError) as e:
        validate(c)
    text = str(e.value)
    assert text.count(". ") == 0 and text.endswith(".")  # one sentence
    assert text.startswith("RandAugment (data.augment.randaugment_n=2)")
    assert "has no device implementation" in text and "augment_on=host" in text
    c.data.augment_on = "host"
    validate(c)


# ============================================================================ the trainer


def test_the_compiled_step_keys_the_views_by_the_train_state_step():
    """The trainer's step makes the views first, from TrainState.step: a state at step k (a
    fresh one after k steps, or one restored from a checkpoint) sees step k's views."""
    import optax

    from ssljax.methods.base import TrainState

    class Stub:  # a method that reports the views it was given
        def init(self, rng, batch, tx, probe_tx):
            return TrainState(step=jnp.int32(0), params={"w": jnp.zeros([])}, opt_state={},
                              state={}, probe_params={}, probe_opt_state={})

        def train_step(self, ts, batch, rng, tx, probe_tx, schedule):
            return ts.replace(step=ts.step + 1), {"views": batch["views"]}

    mesh = sharding.make_mesh(8)
    steps = train.CompiledStep(Stub(), optax.sgd(0.1), optax.sgd(0.1), lambda s: 0.1, mesh)
    steps.prepare = DI.make_prepare(configs=[AugmentConfig()] * 2, seed=5, image_size=8,
                                    mean=[0.5], std=[0.5])
    x = np.random.default_rng(0).integers(0, 256, [16, 10, 10, 1], dtype=np.uint8)
    host = {"image": x, "label": np.zeros(16, np.int32)}
    batch = train.data.to_global(host, sharding.batch_sharding(mesh))
    ts = steps.init(jax.random.key(0), batch)
    seen = []
    for _ in range(3):
        ts, metrics = steps.train_step(ts, batch, jax.random.key(0))
        seen.append(np.asarray(metrics["views"]))
    for k in range(3):
        want = steps.prepare({k2: jnp.asarray(v) for k2, v in host.items()}, jnp.int32(k))
        np.testing.assert_allclose(seen[k], np.asarray(want["views"]), rtol=0, atol=1e-5)
    assert np.abs(seen[0] - seen[1]).mean() > 0.1


def _run(workdir, method="simclr", devices=1, **overrides):
    overrides = {"data.augment_on": "device", "total_steps": 6, "stop_after_step": 4,
                 **overrides}
    mesh = sharding.make_mesh(devices)
    return train.train_and_evaluate(tiny_config(method, **overrides), str(workdir), mesh=mesh)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    assert _run(workdir) == {}
    return read_metrics(str(workdir))


@pytest.mark.slow  # ~40 s: three tiny runs compile the step
def test_device_run_resumes_exactly(straight_run, tmp_path):
    _run(tmp_path, stop_after_step=2)
    _run(tmp_path)
    resumed = read_metrics(str(tmp_path))
    assert sorted(resumed) == [1, 2, 3, 4]
    np.testing.assert_allclose([resumed[s]["loss"] for s in (3, 4)],
                               [straight_run[s]["loss"] for s in (3, 4)], rtol=1e-6)


@pytest.mark.slow  # ~60 s
def test_device_run_on_eight_devices_matches_one(straight_run, tmp_path):
    _run(tmp_path, devices=8)
    eight = read_metrics(str(tmp_path))
    # The same views (bit for bit, test_device_augment); step 1 then differs only by the
    # step's own summation order across devices (test_train's tolerance).
    np.testing.assert_allclose([eight[s]["loss"] for s in (1, 2)],
                               [straight_run[s]["loss"] for s in (1, 2)], rtol=1e-5)


_NO_TF = r"""
import json, os, sys
sys.modules["tensorflow"] = None  # 'import tensorflow' raises ImportError, as if not installed
sys.modules["tensorflow_datasets"] = None
sys.path[:0] = [{tests!r}, {repo!r}]
import jax
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
from helpers import tiny_config
from ssljax import sharding, train
c = tiny_config({method!r}, **{{"data.augment_on": "device", "total_steps": 3}})
results = train.train_and_evaluate(c, sys.argv[1], mesh=sharding.make_mesh(2))
loaded = [m for m in sys.modules if m.startswith("tensorflow") and sys.modules[m] is not None]
print(json.dumps(dict(results=results, loaded=loaded)))
"""


@pytest.mark.slow  # ~60 s each: a whole run (train, linear probe, kNN) in a fresh process
@pytest.mark.parametrize("method", ["simclr", "mrcl"])
def test_trains_and_evaluates_without_tensorflow(method, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", SSLJAX_XLA_CPU_DEFAULTS="0")
    code = _NO_TF.format(tests=os.path.join(REPO, "tests"), repo=REPO, method=method)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["results"]["steps"] == 3 and "linear_probe_top1" in out["results"]


VARIANTS = {"view_contrast": "rgb"}  # its Fashion-MNIST variant (coloured_fashion_mnist)
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
                 if f.endswith(".py") and not f.startswith("_"))


@pytest.mark.slow  # ~40 s per config: a fresh process compiles the step
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_on_the_device_from_the_command_line(name, tmp_path):
    """Each config file's Fashion-MNIST variant takes a step with --config.data.augment_on=device,
    or (InfoMin's jigsaw view, RandAugment) stops before any work with the one sentence."""
    variant = VARIANTS.get(name, "fashion_mnist")
    # Only keys every config has (tiny_config's head sizes do not fit every method).
    flags = [f"--config.{k}={v}" for k, v in (
        ("data.train_split", "train[:256]"), ("data.image_size", 16), ("model.width", 4),
        ("model.stem_stride", 1), ("batch_size", 16), ("total_steps", 2),
        ("stop_after_step", 1), ("log_every", 1), ("data.augment_on", "device"))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", SSLJAX_XLA_CPU_DEFAULTS="0")
    done = subprocess.run([sys.executable, "-m", "ssljax.main",
                           f"--config=configs/{name}.py:{variant}", f"--workdir={tmp_path}",
                           *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    c = load_config(name, variant)
    configs = data.augment_configs(c.data)
    from ssljax import methods
    method = methods.get_method(c.method)(c, num_classes=10)
    reason = DI.unsupported_reason(configs, method.input_spec.jigsaw)
    if reason:
        assert done.returncode != 0 and reason in done.stderr, done.stderr[-2000:]
        return
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(str(tmp_path))
    assert sorted(rows) == [1] and np.isfinite(rows[1]["loss"])


@pytest.mark.slow  # ~40 s
def test_streamed_dataset_trains_with_device_augmentation(tmp_path):
    """The GPU path: a TFDS stream (mock ImageNet) decoded and resized on the host, the views
    made in the step from each image's decoded size."""
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=64):
        assert _run(tmp_path, **{"data.name": "imagenet2012", "total_steps": 3,
                                 "stop_after_step": 2}) == {}
    rows = read_metrics(str(tmp_path))
    assert sorted(rows) == [1, 2] and all(np.isfinite(r["loss"]) for r in rows.values())
