"""The training loop end to end on real Fashion-MNIST (tiny slices, tiny network).

Runs are shared through module-scoped fixtures because each compiles a ResNet step.
"""

import json
import math
import time
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssljax import checkpoint, sharding, train
from ssljax.config import ConfigError, check_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import simclr as simclr_config  # noqa: E402


def tiny_config(**overrides):
    c = simclr_config.get_config("fashion_mnist")
    c.data.train_split = "train[:256]"
    c.data.test_split = "test[:128]"
    c.data.image_size = 16
    c.model.width = 4
    # Stride-1 stem: stage 4 keeps 2x2 maps. With 1x1 maps BatchNorm normalises over 32
    # values per channel and the tiny net becomes chaotic: a 1e-7 change of the initial
    # parameters grows to 1% by step 6, and no device-count comparison can be tight.
    c.model.stem_stride = 1
    c.projector.hidden_dims = (32,)
    c.projector.out_dim = 16
    # T 0.2 (the main job's is 0.1): sharper logits magnify summation-order differences.
    c.loss.temperature = 0.2
    c.batch_size = 16
    c.total_steps = 6
    c.log_every = 1
    c.checkpoint_every = 1000
    c.optimizer.warmup_epochs = 0.0
    # SGD, not LARS: LARS scales each layer's step by ||p|| / ||g||, so layers with tiny
    # gradients take full-size steps along rounding noise, which is chaotic in the same way.
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.05
    c.eval.baselines = False
    c.eval.linear_epochs = 2
    c.eval.knn_k = 5
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def read_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def run_8dev(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run8"))
    results = train.train_and_evaluate(tiny_config(), workdir, mesh=sharding.make_mesh(8))
    return workdir, results


@pytest.fixture(scope="module")
def run_1dev(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run1"))
    results = train.train_and_evaluate(tiny_config(), workdir, mesh=sharding.make_mesh(1))
    return workdir, results


def test_run_writes_metrics_results_and_checkpoint(run_8dev):
    workdir, results = run_8dev
    losses = read_losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]  # log_every=1, every step
    assert all(math.isfinite(v) for v in losses.values())
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    assert {"step", "loss", "lr", "probe_top1"} <= set(first)
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk == results
    for key in ("linear_probe_top1", "knn_top1"):
        # Scored on the 128 test images: a whole number of them (padding not counted), and
        # well above chance (10%). Measured 46.88 / 46.88; with lr 0 (no training) 39.84 /
        # 49.22: at 6 steps this floor guards the evaluation (features, labels, probe), not
        # the learning (tests/test_update_is_gradient.py checks the steps).
        correct = results[key] * 128 / 100
        assert abs(correct - round(correct)) < 0.01, (key, results[key])
        assert results[key] > 25.0, (key, results[key])
    assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 6
    # TensorBoard received the logged scalars (the tag is in the event records).
    tb = os.path.join(workdir, "tensorboard")
    events = b"".join(open(os.path.join(tb, f), "rb").read() for f in os.listdir(tb))
    assert b"loss" in events and b"probe_top1" in events


def test_eight_devices_equal_one_device(run_8dev, run_1dev):
    # The objective, BatchNorm and the optimizer see the same global batch either way. A
    # sharding bug (per-device BN statistics, per-device negatives) changes step 1 by whole
    # percents. Later steps are compared loosely: in this width-4 net a nearly dead channel
    # lets BatchNorm magnify float32 summation-order differences (step 6 moves by ~5e-4).
    l8, l1 = read_losses(run_8dev[0]), read_losses(run_1dev[0])
    np.testing.assert_allclose([l8[s] for s in (1, 2, 3, 4)], [l1[s] for s in (1, 2, 3, 4)],
                               rtol=1e-5)
    np.testing.assert_allclose([l8[s] for s in (5, 6)], [l1[s] for s in (5, 6)], rtol=1e-3)


@pytest.mark.slow  # about 26 s; tests/test_preemption.py resumes exactly by default
def test_resume_continues_exactly(run_1dev, tmp_path):
    workdir = str(tmp_path)
    mesh = sharding.make_mesh(1)
    assert train.train_and_evaluate(tiny_config(stop_after_step=3), workdir, mesh=mesh) == {}
    assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 3
    # The checkpoint carries the training time so far; the resumed run adds its own to it.
    # (Set to 1000 s here, so that no real segment could reach it alone.)
    meta_file = os.path.join(workdir, "checkpoints", "3", "meta", "metadata")
    meta = json.load(open(meta_file))
    assert 0 < meta["train_time_s"] < 1000
    meta["train_time_s"] = 1000.0
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    t0 = time.time()
    results = train.train_and_evaluate(tiny_config(), workdir, mesh=mesh)
    segment = time.time() - t0
    assert results["train_time_earlier_s"] == 1000.0
    assert 1000.0 < results["train_time_s"] < 1000.0 + segment
    resumed, straight = read_losses(workdir), read_losses(run_1dev[0])
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([resumed[s] for s in (4, 5, 6)], [straight[s] for s in (4, 5, 6)],
                               rtol=1e-6)
    assert results["linear_probe_top1"] == run_1dev[1]["linear_probe_top1"]
    assert "train_time_earlier_s" not in run_1dev[1]  # a run in one go


@pytest.mark.slow  # about 36 s: a trainer run to a planted NaN
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(run_1dev, tmp_path,
                                                                       monkeypatch):
    workdir = str(tmp_path)
    mesh = sharding.make_mesh(1)
    train.train_and_evaluate(tiny_config(stop_after_step=2), workdir, mesh=mesh)
    with pytest.raises(train.NonFiniteLossError, match=r"step \d.*checkpoint at step 2.*intact"):
        # A NaN learning rate poisons the parameters at step 3; step 4's loss is NaN. The
        # validation that refuses it is lifted for this one call.
        monkeypatch.setattr(train, "validate", lambda config: None)
        train.train_and_evaluate(tiny_config(**{"optimizer.lr": float("nan")}), workdir, mesh=mesh)
    monkeypatch.undo()
    # The error closed the metrics writer: TensorBoard has the NaN run's step 3 (a writer
    # left open keeps it queued in memory).
    tb = os.path.join(workdir, "tensorboard")
    runs = sorted(os.listdir(tb), key=lambda f: os.path.getmtime(os.path.join(tb, f)))
    assert len(runs) == 2 and b"loss" in open(os.path.join(tb, runs[-1]), "rb").read()
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.all_steps() == [2]
    # The kept checkpoint restores and trains on: steps 3-6 and the probe as an uninterrupted
    # run's (the NaN run's rows for steps 3-4 are dropped on the resume).
    results = train.train_and_evaluate(tiny_config(), workdir, mesh=mesh)
    resumed, straight = read_losses(workdir), read_losses(run_1dev[0])
    steps = [json.loads(line).get("step") for line in open(os.path.join(workdir, "metrics.jsonl"))
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]  # never a step twice
    np.testing.assert_allclose([resumed[s] for s in (3, 4, 5, 6)],
                               [straight[s] for s in (3, 4, 5, 6)], rtol=1e-6)
    assert results["linear_probe_top1"] == run_1dev[1]["linear_probe_top1"]


def test_unknown_config_key_names_the_closest_key():
    cfg = tiny_config()
    check_overrides(["--config.optimizer.lr=0.1", "--workdir=x"], cfg)
    with pytest.raises(ConfigError, match=r"Unknown config key 'optimizer\.lrr'.*'optimizer\.lr'"):
        check_overrides(["--config.optimizer.lrr=0.1"], cfg)


def test_cli_rejects_unknown_key_in_one_sentence(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssljax.main", "--config=configs/simclr.py:fashion_mnist",
         f"--workdir={tmp_path}", "--config.optimizer.momentun=0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: Unknown config key 'optimizer.momentun' in --config.optimizer.momentun; "
        "did you mean 'optimizer.momentum'?"]
    assert not os.listdir(tmp_path)  # nothing was started


def test_missing_dataset_names_the_fix(tmp_path):
    from ssljax import data
    cfg = tiny_config(**{"data.name": "cifar10", "data.data_dir": str(tmp_path)})
    with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10"):
        train.train_and_evaluate(cfg, str(tmp_path / "run"), mesh=sharding.make_mesh(1))


class _PixelMethod:
    """A stand-in encoder whose features are its input pixels, flattened: the feature width
    tells which resolution the probes were given."""

    def init_model(self, rng, batch):
        return {}, {}

    def embed_named(self, params, state, images):
        return {"": images.reshape(images.shape[0], -1)}


@pytest.mark.parametrize("eval_size, width", [(0, 28 * 28), (14, 14 * 14)])
def test_eval_image_size_sets_the_probe_resolution(eval_size, width, monkeypatch):
    from ssljax import data
    seen = []
    real_score = train.evaluate.linear_probe

    def spy(train_x, *args, **kwargs):
        seen.append(np.asarray(train_x).shape[1])
        return real_score(train_x, *args, **kwargs)

    monkeypatch.setattr(train.evaluate, "linear_probe", spy)
    cfg = tiny_config(**{"data.train_split": "train[:512]", "data.test_split": "test[:256]",
                         "eval.image_size": eval_size, "eval.baselines": True,
                         "eval.knn_k": 10})
    info = data.dataset_info("fashion_mnist")
    results = train.evaluate_encoder(cfg, _PixelMethod(), type("TS", (), {"params": {}, "state": {}}),
                                     sharding.make_mesh(1), info)
    # Pre-trained and random encoder at the evaluation size; raw pixels always at full size.
    assert seen == [width, width, 28 * 28]
    if eval_size == 0:  # the pixel "encoder" at full size is the raw-pixel baseline itself
        assert results["knn_top1"] == results["raw_pixels_knn_top1"]
    else:  # halving the resolution keeps most of what raw pixels tell apart
        assert abs(results["knn_top1"] - results["raw_pixels_knn_top1"]) < 10
