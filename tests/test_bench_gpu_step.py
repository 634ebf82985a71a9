"""experiments/bench_gpu_step.py (issue 27): runs where TensorFlow is absent, at a tiny size on
the CPU, and its synthetic batch has the pipeline's shapes and exact mask counts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, load_config
from test_imports import _HIDE_TENSORFLOW

sys.path.insert(0, os.path.join(REPO, "experiments"))

import bench_gpu_step  # noqa: E402
from ssljax import methods  # noqa: E402

_RUN_HIDDEN = _HIDE_TENSORFLOW + '''
import runpy
sys.argv = ["bench_gpu_step.py"] + ARGS
try:
    runpy.run_path("experiments/bench_gpu_step.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
assert not [m for m in sys.modules if m.startswith("tensorflow")], "TensorFlow was imported"
'''


def _bench(args: list[str], tmp_path) -> dict:
    out = tmp_path / "rows.jsonl"
    code = _RUN_HIDDEN.replace("ARGS", repr(args + [f"--out={out}"]))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               SSLJAX_COMMIT="test")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text().splitlines()[-1]) == row  # the same line in --out
    return row


def _check_row(row, batch):
    assert row["batch"] == batch and row["commit"] == "test"
    # ex_per_s is written to 0.1 and step_ms to 0.001: the rounding bounds the difference.
    assert row["step_ms"] > 0 and row["ex_per_s"] == pytest.approx(batch / row["step_ms"] * 1e3,
                                                                    rel=1e-3, abs=0.051)
    assert row["model_flops"] > 0 and row["tflops"] > 0 and row["temp_gib"] > 0
    assert row["mfu"] is None  # a CPU has no entry in the peak table
    assert np.isfinite(row["loss"])
    assert row["command"].startswith("python experiments/bench_gpu_step.py --config=")


@pytest.mark.slow  # 13-26 s: the default tier stays under 15 min
def test_resnet_step_on_cpu_without_tensorflow(tmp_path):
    row = _bench(["--config=configs/simclr.py:fashion_mnist", "--batch=8",
                  "--config.model.width=4", "--config.data.image_size=16",
                  "--config.projector.hidden_dims=(32,)", "--warmup=1", "--steps=1",
                  "--repeats=2", "--label=tiny"], tmp_path)
    _check_row(row, 8)
    assert row["label"] == "tiny" and row["method"] == "simclr" and len(row["times_ms"]) == 2
    # Model FLOPs are 3 x the forward's; XLA counts the compiled step (forward, backward,
    # optimizer and probe) on its own, within a factor of 2 of that for a ResNet.
    assert 0.5 < row["xla_flops"] / row["model_flops"] < 2.0


@pytest.mark.slow  # a 12-block ViT-Tiny compiles in about 30 s on 2 cores
def test_mrcl_vit_step_on_cpu_without_tensorflow(tmp_path):
    row = _bench(["--config=configs/mrcl.py:fashion_mnist,vit", "--batch=4",
                  "--config.data.image_size=16", "--warmup=1", "--steps=1", "--repeats=1"],
                 tmp_path)
    _check_row(row, 4)
    assert row["model"] == "vit_tiny" and row["attention"] == "auto"


def test_the_peak_table():
    assert bench_gpu_step.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench_gpu_step.peak_flops("NVIDIA H200") == 989e12
    assert bench_gpu_step.peak_flops("cpu") is None


def test_vit_b16_model_flops_match_the_peer_analytic_count():
    """ViT-B/16 at 224 px: 35.1 GFLOP per image forward, the figure the PyTorch peer uses
    (../shared/bench/gpu/torch_vitb16_simclr_step.py), so both MFUs share one convention.
    Lowered only (no compilation), at batch 2."""
    import jax
    c = load_config("simclr", "imagenet")
    c.model.name, c.model.patch_size, c.model.attention = "vit_base", 16, "xla"
    c.batch_size = 2
    method = methods.get_method("simclr")(c, num_classes=1000)
    batch = bench_gpu_step.synthetic_batch(c, method, 2)
    state = jax.eval_shape(lambda: method.init_model(jax.random.key(0), batch))
    params, mstate = state
    lowered = jax.jit(method.loss).lower(params, mstate, batch, jax.random.key(1), 0)
    forward = float(lowered.cost_analysis()["flops"])
    per_view = forward / (2 * 2)  # batch 2, two views
    assert per_view == pytest.approx(35.1e9, rel=0.03)


def test_synthetic_batch_masks_exactly_the_ratio_on_the_masked_views():
    c = load_config("mrcl", "fashion_mnist")
    c.data.mask.views = (1,)
    method = methods.get_method("mrcl")(c, num_classes=10)
    batch = bench_gpu_step.synthetic_batch(c, method, 6)
    assert batch["views"].shape == (6, 2, 28, 28, 1) and batch["views"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["label"].max() < 10
    masks = batch["masks"]
    assert masks.shape == (6, 2, 7, 7) and masks.dtype == bool
    assert (masks[:, 0].sum((1, 2)) == 0).all()
    assert (masks[:, 1].sum((1, 2)) == round(c.data.mask.ratio * 49)).all()
    assert len({m.tobytes() for m in masks[:, 1]}) == 6  # drawn per image


def test_the_table_from_json_lines():
    import bench_gpu_step_table
    rows = [dict(label="vitb16_simclr", impl="ssljax", ex_per_s=2000.0, mfu=0.45, temp_gib=30.2,
                 device="NVIDIA H200", commit="abc"),
            dict(label="torch_vitb16_compile", ex_per_s=1600.0, mfu_analytic=0.35, mem_gib=34.0),
            dict(label="torch_vitb16_compile", ex_per_s=1653.0, mfu_analytic=0.35, mem_gib=34.0),
            dict(label="torch_resnet50_eager", img_per_s=2386.0, ex_per_s=2386.0, mem_gib=20.0)]
    text = bench_gpu_step_table.table(rows)
    assert ("| ViT-B/16 | 2,000, 45% MFU, 30 GiB | - | 1,653, 35% MFU, 34 GiB | 1.21x |"
            in text)  # the last row of a label counts
    assert "| ResNet-50 | - | 2,386, 20 GiB | - | - |" in text
    assert "NVIDIA H200, commit abc" in text
