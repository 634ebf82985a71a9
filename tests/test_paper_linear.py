"""The papers' linear protocols (ssljax.evaluate.paper_linear) and re-evaluation
(``python -m ssljax.evaluate``) of a checkpoint.

The probe is checked against a NumPy float64 reference of PyTorch's SGD on softmax
cross-entropy, the cosine schedule against PyTorch's recursive ``CosineAnnealingLR``, the
CorInfoMax test view by what it must crop, and re-evaluation against the trainer's own
evaluation of the same state.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import sharding
from ssljax.config import ConfigError
from ssljax.data import dataset_info
from ssljax.evaluate import evaluators, paper_linear as pl
from ssljax.evaluate.__main__ import evaluate_checkpoint
from test_encoder import STEP, write_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cosine_schedule_is_pytorchs_recursive_cosine_annealing():
    p = pl.PROTOCOLS["corinfomax"]
    lr, eta, T = p.lr, p.final_lr, p.epochs
    want = [lr]
    for t in range(1, T):  # torch.optim.lr_scheduler.CosineAnnealingLR.get_lr
        want.append(eta + (want[-1] - eta) * (1 + math.cos(math.pi * t / T))
                    / (1 + math.cos(math.pi * (t - 1) / T)))
    got = [pl.epoch_lr(p, e) for e in range(T)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # Shortened protocols keep the shape: SelfCon's decays at 60% and 80% of the epochs.
    got = [pl.epoch_lr(pl.PROTOCOLS["selfcon"], e, 10) for e in (5, 6, 8)]
    assert got == pytest.approx([3.0, 0.3, 0.03])


def numpy_probe(feats, labels, test_feats, test_labels, protocol, epochs, seed, num_classes):
    """PyTorch's loop in float64: nn.Linear's init, shuffled batches (last one kept),
    mean cross-entropy, SGD with momentum and coupled weight decay, lr per epoch."""
    rng = np.random.default_rng(seed)
    bound = 1 / math.sqrt(feats.shape[1])
    w = rng.uniform(-bound, bound, (feats.shape[1], num_classes)).astype(np.float32)
    b = rng.uniform(-bound, bound, (num_classes,)).astype(np.float32)
    w, b = w.astype(np.float64), b.astype(np.float64)
    bw, bb = np.zeros_like(w), np.zeros_like(b)
    accs = []
    for epoch in range(epochs):
        lr = pl.epoch_lr(protocol, epoch, epochs)
        order = np.random.default_rng([seed, epoch]).permutation(len(feats))
        for first in range(0, len(feats), protocol.batch_size):
            idx = order[first:first + protocol.batch_size]
            x, y = feats[idx].astype(np.float64), labels[idx]
            z = x @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            gw, gb = x.T @ p / len(y), p.mean(0)
            gw, gb = gw + protocol.weight_decay * w, gb + protocol.weight_decay * b
            bw, bb = protocol.momentum * bw + gw, protocol.momentum * bb + gb
            w, b = w - lr * bw, b - lr * bb
        accs.append(np.mean(np.argmax(test_feats @ w + b, -1) == test_labels))
    return w, b, accs


def test_probe_equals_a_numpy_reference():
    rng = np.random.default_rng(0)
    centres = rng.integers(40, 215, size=(3, 6, 6, 1))
    y = rng.integers(0, 3, 230)
    images = np.clip(centres[y] + rng.normal(0, 40, (230, 6, 6, 1)), 0, 255).astype(np.uint8)
    proj = rng.normal(size=(36, 5)).astype(np.float32)
    mean, std = (0.5,), (0.25,)
    protocol = dataclasses.replace(pl.PROTOCOLS["selfcon"], batch_size=64, lr=0.5,
                                   weight_decay=1e-3, epochs=5, decay_epochs=(3,))
    embed = lambda x: {"": x.reshape(len(x), -1) @ proj}  # noqa: E731
    out = pl.augmented_linear_probe(
        embed, images[:200], y[:200], images[200:], y[200:], num_classes=3, protocol=protocol,
        mean=mean, std=std, seed=3, augment=lambda im, seed: im.astype(np.float32) / 255.0)
    feats = lambda im: (((im / 255.0) - 0.5) / 0.25).reshape(len(im), -1) @ proj  # noqa: E731
    w, b, accs = numpy_probe(feats(images[:200]), y[:200], feats(images[200:]), y[200:],
                             protocol, 5, 3, 3)
    np.testing.assert_allclose(out["params"][""]["w"], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["params"][""]["b"], b, rtol=1e-4, atol=1e-5)
    assert out["top1"][""] == pytest.approx(accs)
    assert out["lr"] == [0.5, 0.5, 0.5, 0.05, 0.05]
    scores = pl.scores("selfcon", protocol, out)
    assert scores["paper_selfcon_linear_top1"] == round(100 * accs[-1], 2)
    assert scores["paper_selfcon_linear_best_top1"] == round(100 * max(accs), 2)


def test_named_feature_sets_get_a_probe_each_and_their_ensemble():
    """A multi-exit network (SelfCon): one classifier per exit, and the ensemble scores the
    mean of their logits, as SelfCon's main_linear.py does."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 160)
    images = (rng.integers(0, 60, (160, 4, 4, 1)) + 60 * y[:, None, None, None]).astype(
        np.uint8)
    proj = rng.normal(size=(16, 6)).astype(np.float32)
    embed = lambda x: {"backbone": x.reshape(len(x), -1) @ proj,  # noqa: E731
                       "subnet_stage2": x.reshape(len(x), -1)[:, :8]}
    protocol = dataclasses.replace(pl.PROTOCOLS["selfcon"], batch_size=32, lr=0.1, epochs=2)
    out = pl.augmented_linear_probe(
        embed, images[:120], y[:120], images[120:], y[120:], num_classes=3, protocol=protocol,
        mean=(0.5,), std=(0.25,), seed=0, augment=lambda im, s: im.astype(np.float32) / 255)
    feats = embed(jnp.asarray(((images[120:] / 255.0) - 0.5) / 0.25, jnp.float32))
    logits = {k: np.asarray(feats[k]) @ out["params"][k]["w"] + out["params"][k]["b"]
              for k in feats}
    for k in feats:
        assert out["top1"][k][-1] == pytest.approx(np.mean(logits[k].argmax(-1) == y[120:]))
    ensemble = np.mean(np.mean(list(logits.values()), 0).argmax(-1) == y[120:])
    assert out["ensemble"][-1] == pytest.approx(ensemble)
    scores = pl.scores("selfcon", protocol, out)
    assert {"paper_selfcon_linear_top1", "paper_selfcon_subnet_stage2_linear_top1",
            "paper_selfcon_ensemble_linear_top1",
            "paper_selfcon_ensemble_linear_best_top1"} <= set(scores)


def test_corinfomax_test_view_is_resize_36_centre_crop_32():
    """At 32 px the view is Resize(36) + CenterCrop(32): 2 of 36 pixels cut per side, so a
    2-pixel white frame (2 x 36/32 = 2.25 px after the resize) is mostly cut away, while the
    other protocols keep the image as it is."""
    x = np.zeros((1, 32, 32, 1), np.uint8)
    x[:, :2], x[:, -2:], x[:, :, :2], x[:, :, -2:] = 255, 255, 255, 255
    x[:, 12:20, 12:20] = 255  # a centred square, magnified by 36/32
    seen = pl.eval_view(x, pl.PROTOCOLS["corinfomax"])[0, ..., 0]
    assert seen.shape == (32, 32)
    assert seen[0].max() < 0.5 and seen[:, 0].max() < 0.5  # the frame is gone
    square = seen[4:28, 4:28].sum()
    assert 76 <= square <= 86  # 8 x 8 = 64 pixels grow by (36/32)^2 to about 81
    np.testing.assert_array_equal(pl.eval_view(x, pl.PROTOCOLS["selfcon"]), x / 255.0)


def test_training_images_are_cropped_and_flipped():
    x = np.tile(np.arange(16, dtype=np.uint8)[None, None, :, None] * 16, (64, 16, 1, 1))
    augment = pl._augment(pl.PROTOCOLS["selfcon"], 16)
    a, b = augment(x, 1), augment(x, 1)
    np.testing.assert_array_equal(a, b)  # stateless: the same seed, the same views
    assert not np.allclose(augment(x, 2), a)
    left, right = a[:, :, 0, 0], a[:, :, -1, 0]
    assert (left > right).any() and (left < right).any()  # some flipped, some not
    assert a.shape == (64, 16, 16, 1) and 0.0 <= a.min() and a.max() <= 1.0


# ----------------------------------------------------------------------------- re-evaluation

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A SimCLR checkpoint and the evaluation the trainer computes for it at the end."""
    workdir = tmp_path_factory.mktemp("reeval") / "run"
    mesh = sharding.make_mesh()
    config, method, ts = write_run(workdir, "simclr", mesh=mesh)
    info = dataset_info(config.data.name)
    trained = jax.device_put(ts, sharding.replicated(mesh))
    return {"workdir": str(workdir), "config": config, "method": method, "ts": trained,
            "mesh": mesh, "info": info,
            "results": evaluators.run_evaluators(config, method, trained, mesh, info)}


def knn_of_the_trained_state(run, *, k, temperature):
    """kNN top-1 on the evaluation's features of the state before it was saved."""
    from ssljax.evaluate import knn_top1
    ctx = evaluators.EvalContext.create(run["config"], run["method"], run["mesh"], run["info"])
    (tr_f, tr_y), (te_f, te_y) = ctx.features(run["ts"].params, run["ts"].state)
    return knn_top1(tr_f[""], tr_y, te_f[""], te_y, k=k, temperature=temperature,
                    num_classes=10)


def _listing(path):
    return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getsize(
        os.path.join(r, f))) for r, _, files in os.walk(path) for f in files)


def test_reevaluation_reproduces_the_trainers_evaluation(run):
    before = _listing(run["workdir"])
    out, results = evaluate_checkpoint(run["workdir"])
    assert out == os.path.join(run["workdir"], f"results_step{STEP}.json")
    for key in ("knn_top1", "linear_probe_top1", "effective_rank"):
        assert results[key] == run["results"][key], key
    assert results["step"] == STEP
    after = _listing(run["workdir"])
    assert [f for f in after if f not in before] == [(f"results_step{STEP}.json",
                                                      os.path.getsize(out))]
    assert json.load(open(out))["knn_top1"] == run["results"]["knn_top1"]


def test_reevaluation_overrides_change_only_the_evaluation(run):
    _, results = evaluate_checkpoint(run["workdir"], name="k1",
                                     overrides=["--config.eval.knn_k=1"])
    want = knn_of_the_trained_state(run, k=1, temperature=0.1)
    assert results["knn_top1"] == round(100 * want, 2)
    assert results["overrides"] == ["eval.knn_k=1"]
    with pytest.raises(ConfigError, match="not its evaluation"):
        evaluate_checkpoint(run["workdir"], overrides=["--config.model.width=8"])
    with pytest.raises(ConfigError, match="did you mean 'eval.knn_k'"):
        evaluate_checkpoint(run["workdir"], overrides=["--config.eval.knn_kk=3"])
    with pytest.raises(ConfigError, match="eval.paper_protocol='nope' is not one of"):
        evaluate_checkpoint(run["workdir"], overrides=["--config.eval.paper_protocol=nope"])
    with pytest.raises(ConfigError, match="must be letters"):
        evaluate_checkpoint(run["workdir"], name="../x")


def test_paper_protocols_through_reevaluation(run):
    _, results = evaluate_checkpoint(run["workdir"], name="selfcon", overrides=[
        "--config.eval.paper_protocol=selfcon", "--config.eval.paper_epochs=2"])
    assert results["paper_selfcon_linear_best_top1"] >= results["paper_selfcon_linear_top1"]
    assert results["paper_selfcon_linear_best_epoch"] in (1, 2)
    assert 0 < results["paper_selfcon_linear_top1"] <= 100
    # MetaMask's protocol is its kNN (k 5, T 1) on the features the encoder gives.
    _, results = evaluate_checkpoint(run["workdir"], name="metamask", overrides=[
        "--config.eval.paper_protocol=metamask"])
    want = knn_of_the_trained_state(run, k=5, temperature=1.0)
    assert results["paper_metamask_knn_top1"] == round(100 * want, 2)


@pytest.mark.slow  # about 30 s: the dense probe and the random encoder compile twice
def test_reevaluation_runs_the_dense_probe_and_the_baselines_as_training_would(run):
    """The dense probe reads feature maps (other leaves than the features): re-evaluation
    restores those too, and scores what the trainer's evaluators score on the state."""
    overrides = {"eval.segmentation": True, "eval.segmentation_epochs": 1,
                 "eval.segmentation_train_examples": 128, "eval.baselines": True}
    _, results = evaluate_checkpoint(run["workdir"], name="all", overrides=[
        f"--config.{k}={v}" for k, v in overrides.items()])
    config = run["config"].copy_and_resolve_references()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    want = evaluators.run_evaluators(config, run["method"], run["ts"], run["mesh"], run["info"])
    assert {k for k in want} <= set(results)
    for key in ("segmentation_miou", "raw_pixels_knn_top1", "random_encoder_knn_top1",
                "knn_top1", "linear_probe_top1"):
        assert results[key] == pytest.approx(want[key], abs=0.011), key


def test_reevaluation_cli_bad_input_is_one_sentence(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    proc = subprocess.run([sys.executable, "-m", "ssljax.evaluate", f"--workdir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} has no "
                                                           "checkpoints/ folder")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- the CLI round trip

@pytest.mark.slow
def test_train_export_load_and_reevaluate_from_the_command_line(tmp_path):
    """A real (tiny) run through the trainer, then the two commands: the exported file's
    features equal the run's evaluation extraction, and re-evaluation reproduces
    results.json."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "tests/_tiny_run.py", str(workdir),
                           json.dumps({"method": "simclr", "devices": 1})], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.load(open(workdir / "results.json"))
    out = tmp_path / "simclr.safetensors"
    proc = subprocess.run([sys.executable, "-m", "ssljax.export", f"--workdir={workdir}",
                           f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "ssljax.evaluate", f"--workdir={workdir}",
                           "--name=again"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.load(open(workdir / "results_again.json"))
    assert again["knn_top1"] == trained["knn_top1"]
    assert again["linear_probe_top1"] == trained["linear_probe_top1"]
    # The exported encoder against the evaluation's own extraction of the checkpoint.
    from ssljax import encoder as enc, methods
    from ssljax.checkpoint import restore_latest_state_on_host
    config = enc.run_config(str(workdir))
    method = methods.get_method(config.method)(config, num_classes=10)
    _, state = restore_latest_state_on_host(str(workdir / "checkpoints"))
    ctx = evaluators.EvalContext.create(config, method, sharding.make_mesh(),
                                        dataset_info(config.data.name))
    (_, _), (want, _) = ctx.features(state["params"], state["state"])
    np.testing.assert_allclose(enc.load_encoder(str(out))(ctx.test_images), want[""],
                               rtol=2e-5, atol=2e-5)
