"""Use what you trained (ssljax.encoder): load, export, and their bad inputs.

The reference is the run's own evaluation: ``EvalContext.features``, the extraction whose
features the probes of results.json scored, on the same (non-trivial) weights. The
checkpoints are written here as the trainer writes them (``Checkpointer`` and ``run.json``
of a tiny config), from an initial state whose parameters and BatchNorm statistics are
perturbed so that a wrong statistic, a skipped normalisation or a dropped mask shows.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import load_config, set_fields, tiny_config
from ssljax import checkpoint, encoder as enc, evaluate, sharding, train
from ssljax import workdir as workdir_lib
from ssljax.config import ConfigError
from ssljax.data import dataset_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 6


def _perturbed(tree, seed: int):
    """Every float leaf moved away from its initial value (variances kept positive)."""
    rng = np.random.default_rng(seed)

    def move(path, x):
        x = np.asarray(x)
        if x.dtype.kind != "f":
            return x
        noise = rng.normal(size=x.shape).astype(x.dtype)
        name = str(getattr(path[-1], "key", ""))
        if name == "var":
            return np.exp(0.3 * noise).astype(x.dtype)
        if name == "mean":
            return (0.3 * noise).astype(x.dtype)
        return (x * (1 + 0.2 * noise) + 0.02 * noise).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(move, tree)


def tiny(name: str, **overrides):
    """helpers.tiny_config, and for MetaMask (two heads, no ``projector``) the same shrink."""
    if name != "metamask":
        return tiny_config(name, **overrides)
    c = load_config("metamask")
    fields = {k: v for k, v in tiny_config("simclr").items()
              if k in ("batch_size", "total_steps", "eval")}
    set_fields(c, {"data.train_split": "train[:256]", "data.test_split": "test[:128]",
                   "data.image_size": 16, "model.width": 4, "model.stem_stride": 1,
                   "bt_projector.hidden_dims": (32,), "bt_projector.out_dim": 32,
                   "cl_projector.hidden_dims": (32,), "cl_projector.out_dim": 16,
                   **{k: v for k, v in fields.items() if k != "eval"},
                   "eval.baselines": False, "eval.knn_k": 5})
    return set_fields(c, overrides)


def write_run(workdir, method_name: str, *, mesh, **overrides):
    """A workdir as a run leaves it after step STEP: run.json and one checkpoint of a
    perturbed state, sharded over ``mesh``. Returns ``(config, method, state on host)``."""
    config = tiny(method_name, **overrides)
    info = dataset_info(config.data.name)
    method = __import__("ssljax.methods", fromlist=["get_method"]).get_method(config.method)(
        config, num_classes=info.num_classes)
    steps = train.build_step(config, method, mesh, total_steps=STEP, steps_per_epoch=16)
    example = {"views": np.zeros((8, config.data.num_views, 16, 16, 1), np.float32),
               "label": np.zeros((8,), np.int32)}
    example = jax.device_put(example, sharding.batch_sharding(mesh))
    abstract, shardings = steps.abstract_state(example)
    ts = jax.device_get(steps.init(train.init_key(0), example))
    ts = ts.replace(params=_perturbed(ts.params, 1), state=_perturbed(ts.state, 2))
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.check_identity(config, str(workdir))  # writes run.json as a run's start does
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(STEP, jax.device_put(ts, shardings), {"method": config.method})
    ckpt.close()
    return config, method, ts


def reference_features(config, method, ts, mesh):
    """The run's evaluation extraction (what results.json's probes scored)."""
    ctx = evaluate.EvalContext.create(config, method, mesh, dataset_info(config.data.name))
    (_, _), (test_f, test_y) = ctx.features(ts.params, ts.state)
    return ctx, test_f


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    """SimCLR written under an 8-device mesh whose FSDP axis splits every array of 64+
    elements, so the checkpoint's arrays are stored in pieces."""
    workdir = tmp_path_factory.mktemp("encoder") / "simclr"
    mesh = sharding.make_mesh(fsdp=8)
    config, method, ts = write_run(workdir, "simclr", mesh=mesh, **{
        "sharding.fsdp": 8, "sharding.fsdp_min_size": 64})
    ctx, test_f = reference_features(config, method, ts, sharding.make_mesh())
    return {"workdir": str(workdir), "config": config, "ctx": ctx, "features": test_f,
            "ts": ts}


def test_loaded_features_equal_the_evaluations(simclr_run):
    encoder = enc.load_encoder(simclr_run["workdir"])
    got = encoder(simclr_run["ctx"].test_images)
    want = simclr_run["features"][""]
    assert got.shape == want.shape == (128, 32)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert encoder.step == STEP
    prep = encoder.preprocessing
    assert (prep.image_size, prep.channels) == (28, 1)  # in memory: evaluated at 28 px
    assert prep.mean == dataset_info("fashion_mnist").mean


def test_only_what_the_evaluation_reads_is_restored(simclr_run):
    encoder = enc.load_encoder(simclr_run["workdir"])
    assert list(encoder.params) == ["backbone"]  # no projector head
    assert list(encoder.state) == ["batch_stats"]
    assert list(encoder.state["batch_stats"]) == ["backbone"]
    want = simclr_run["ts"].params["backbone"]
    for a, b in zip(jax.tree.leaves(encoder.params["backbone"]), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), b)
    # The module and variables work as plain Flax.
    x = encoder.preprocessing(simclr_run["ctx"].test_images[:4])
    f = encoder.module.apply(encoder.variables, x, method=type(encoder.module).features)
    np.testing.assert_allclose(f, simclr_run["features"][""][:4], rtol=2e-5, atol=2e-5)


def test_step_directory_and_explicit_step_name_the_same_checkpoint(simclr_run):
    workdir = simclr_run["workdir"]
    a = enc.load_encoder(os.path.join(workdir, "checkpoints", str(STEP)))
    b = enc.load_encoder(workdir, step=STEP)
    x = simclr_run["ctx"].test_images[:8]
    np.testing.assert_array_equal(a(x), b(x))


def test_exported_file_equals_the_checkpoint_and_needs_no_config(simclr_run, tmp_path):
    from ssljax import export
    out = tmp_path / "enc.safetensors"
    assert export.main(["--workdir", simclr_run["workdir"], "--out", str(out),
                        "--projector"]) == 0
    meta, tensors = enc.read_file(str(out))
    assert json.loads(meta["preprocessing"])["image_size"] == 28
    assert json.loads(meta["architecture"])["model"]["width"] == 4
    assert any(k.startswith("params/head/") for k in tensors)  # --projector
    assert not any("probe" in k or "opt_state" in k for k in tensors)
    loaded = enc.load_encoder(str(out))
    x = simclr_run["ctx"].test_images
    np.testing.assert_array_equal(loaded(x), enc.load_encoder(simclr_run["workdir"])(x))
    np.testing.assert_allclose(loaded(x), simclr_run["features"][""], rtol=2e-5, atol=2e-5)
    # The projector: the method's own head, inference mode.
    config = simclr_run["config"]
    ts = simclr_run["ts"]
    feats = loaded(x[:4])
    want = loaded.module.head.apply({"params": ts.params["head"],
                                     "batch_stats": ts.state["batch_stats"]["head"]},
                                    feats, train=False)
    np.testing.assert_allclose(loaded.project(feats), want, rtol=1e-5, atol=1e-5)
    assert config.method == loaded.config.method


def test_a_one_device_process_loads_an_eight_device_checkpoint(simclr_run, tmp_path):
    """The checkpoint was written by 8 devices with arrays split over them; a process with
    one device loads it (and the exported file with no TensorFlow and no orbax)."""
    out = tmp_path / "enc.safetensors"
    enc.export_encoder(enc.load_encoder(simclr_run["workdir"]), str(out))
    images = tmp_path / "x.npy"
    np.save(images, simclr_run["ctx"].test_images)
    script = f"""
import sys, numpy as np, jax
import ssljax
assert jax.device_count() == 1, jax.device_count()
e = ssljax.load_encoder({str(out)!r})
assert "tensorflow" not in sys.modules and "orbax.checkpoint" not in sys.modules, "heavy import"
x = np.load({str(images)!r})
np.save({str(tmp_path / 'file.npy')!r}, e(x))
np.save({str(tmp_path / 'ckpt.npy')!r}, ssljax.load_encoder({simclr_run['workdir']!r})(x))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = simclr_run["features"][""]
    np.testing.assert_allclose(np.load(tmp_path / "ckpt.npy"), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.load(tmp_path / "file.npy"), want, rtol=2e-5, atol=2e-5)


_BACKBONE_ONLY = {"params": ["backbone"], "state": ["batch_stats"]}
# Every other method, slow tier (about 10 s each); the two view-learning methods need RGB
# configs of their own and are not covered here.
_OTHERS = ("barlow_twins", "ce", "corinfomax", "infomin", "moco", "mrcl", "simclr", "simsiam",
           "subnet_ce", "supcon", "vicreg")


@pytest.mark.parametrize("method_name, kept", [
    ("metamask", {"params": ["backbone"], "state": ["batch_stats", "mask"]}),
    ("selfcon", None),
    pytest.param("byol", _BACKBONE_ONLY, marks=pytest.mark.slow),
] + [pytest.param(m, None, marks=pytest.mark.slow) for m in _OTHERS])
def test_other_methods_load_what_their_evaluation_uses(method_name, kept, tmp_path):
    """MetaMask scores masked features (the mask is state), SelfCon a backbone and a
    sub-network exit, BYOL has an EMA target and a predictor (not loaded)."""
    mesh = sharding.make_mesh()
    config, method, ts = write_run(tmp_path / method_name, method_name, mesh=mesh)
    ctx, want = reference_features(config, method, ts, mesh)
    encoder = enc.load_encoder(str(tmp_path / method_name))
    got = encoder.features(ctx.test_images)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5)
    if kept is not None:
        assert sorted(encoder.params) == kept["params"]
        assert sorted(encoder.state) == kept["state"]


# ----------------------------------------------------------------------------- bad input

def _tree_bytes(path):
    return {os.path.relpath(os.path.join(r, f), path): os.path.getsize(os.path.join(r, f))
            for r, _, files in os.walk(path) for f in files}


def test_bad_paths_and_steps_are_one_sentence_and_touch_nothing(simclr_run, tmp_path):
    workdir = simclr_run["workdir"]
    before = _tree_bytes(workdir)
    cases = [
        ("", None, "The path is empty"),
        (str(tmp_path / "nope"), None, "does not exist"),
        (str(tmp_path), None, "has no checkpoints/ folder"),
        (workdir, 5, "step 5 .* does not exist; complete steps: 6"),
        (os.path.join(workdir, "checkpoints", "6"), 4, "is the checkpoint of step 6, not 4"),
    ]
    for path, step, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            enc.load_encoder(path, step=step)
        assert "\n" not in str(info.value)
    not_ours = tmp_path / "weights.safetensors"
    not_ours.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a file written by"):
        enc.load_encoder(str(not_ours))
    assert _tree_bytes(workdir) == before


def test_partial_checkpoint_is_named(simclr_run, tmp_path):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(simclr_run["workdir"], workdir)
    os.remove(workdir / "checkpoints" / str(STEP) / "commit_success.txt")
    with pytest.raises(ConfigError, match=r"holds only the incomplete checkpoint\(s\) \[6\]"):
        enc.load_encoder(str(workdir))
    with pytest.raises(ConfigError, match="step 6 .* is incomplete"):
        enc.load_encoder(str(workdir), step=STEP)


def test_damaged_array_data_is_one_sentence(simclr_run, tmp_path):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(simclr_run["workdir"], workdir)
    data = workdir / "checkpoints" / str(STEP) / "state"
    for root, _, files in os.walk(data):
        for f in files:
            if os.path.basename(root) == "d":  # the array chunks: cut to half
                path = os.path.join(root, f)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ConfigError, match="step 6 .* is (damaged|unreadable) .*pick another step") as info:
        enc.load_encoder(str(workdir))
    assert "\n" not in str(info.value)


def test_gs_paths_go_through_epath(simclr_run, monkeypatch):
    """A ``gs://`` workdir takes the same code path as a local one: every listing and read
    goes through etils.epath (here mapped onto the local workdir) and orbax gets the path
    as given. (Not tested against a real bucket.)"""
    from etils import epath
    real = epath.Path
    local = simclr_run["workdir"]
    seen = []

    def fake(p, *a):
        p = str(p)
        if p.startswith("gs://bucket/run"):
            seen.append(p)
            p = local + p[len("gs://bucket/run"):]
        return real(p, *a)

    monkeypatch.setattr(enc.epath, "Path", fake)
    encoder = enc.load_encoder("gs://bucket/run")
    assert seen and encoder.step == STEP
    np.testing.assert_allclose(encoder(simclr_run["ctx"].test_images[:16]),
                               simclr_run["features"][""][:16], rtol=2e-5, atol=2e-5)
