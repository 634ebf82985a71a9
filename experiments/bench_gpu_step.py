"""Time the compiled train step of any config on a synthetic batch already on the device.

  python experiments/bench_gpu_step.py --config=configs/simclr.py:imagenet --batch=256 \\
      --config.model.dtype=bfloat16 [--config.model.name=vit_base ...] [--out=FILE.jsonl]

The step is the trainer's own (``ssljax.train.build_step``: jitted, sharded, the state
donated); the batch is built here, without the data pipeline (no TensorFlow needed): views
``[B, V, H, W, C]`` of standard normal pixels, labels, and the method's patch masks (exactly
``round(ratio * L)`` patches per masked view, as ``ssljax.data.masking`` draws them). After
``--warmup`` steps, ``--repeats`` timings of ``--steps`` steps each; the median is reported.
One JSON line on stdout (appended to ``--out`` too):

  ex_per_s        examples per second (an example is one image with all its views, as the
                  PyTorch peers in ../shared/bench/gpu/ count them);
  step_ms         median step time;
  model_flops     3 x the forward FLOPs of the method's loss (XLA's cost analysis of the
                  lowered forward with attention 'xla', so a fused kernel is counted too):
                  the analytic convention of the peers (ViT-B/16 at 224 px: 35.1 GFLOP per
                  view forward); tflops and mfu are from it;
  xla_flops       the compiled step's own ``cost_analysis()['flops']`` (what XLA counts;
                  custom calls such as cuDNN attention count 0), and xla_tflops from it;
  mfu             tflops over the device's dense bf16 peak (H100 / H200: 989 TFLOP/s;
                  --peak_tflops to override); None on a CPU;
  temp_gib        the compiled step's temporaries (``memory_analysis().temp_size_in_bytes``);
  peak_gib        the device's peak memory in use (GPU only), state and batch included.

On a CPU at a tiny size it checks itself (tests/test_bench_gpu_step.py):
  python experiments/bench_gpu_step.py --config=configs/simclr.py:fashion_mnist --batch=8 \\
      --config.model.name=vit_tiny --config.data.image_size=16 --steps=1 --repeats=1
All of ssljax, both PyTorch peers, eager and compiled, on one GPU:
  bash experiments/bench_gpu_step.sh
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import data, methods, sharding, train  # noqa: E402
from ssljax.config import validate_or_exit  # noqa: E402


def _define_flags() -> dict:
    """The command line (defined on use, so that tests can import this module beside
    ``ssljax.main``, which owns ``--config`` in their process)."""
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "configs/<method>.py:<variant>"),
        batch=flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's)."),
        warmup=flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation."),
        steps=flags.DEFINE_integer("steps", 10, "Steps per timed repeat."),
        repeats=flags.DEFINE_integer("repeats", 3, "Timed repeats (the median is reported)."),
        peak=flags.DEFINE_float("peak_tflops", 0.0,
                                "Peak dense bf16 TFLOP/s (0: by device kind)."),
        label=flags.DEFINE_string("label", "", "A name for this case in the JSON line."),
        out=flags.DEFINE_string("out", "", "Also append the JSON line to this file."))


# Dense bf16 peak FLOP/s by device kind (substring of jax's device_kind), without sparsity.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
             "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak of a device, by its ``device_kind``; None when unknown (CPU).

    >>> peak_flops("NVIDIA H200"), peak_flops("cpu")
    (989000000000000.0, None)
    """
    for name, peak in PEAK_BF16.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def synthetic_batch(config, method, batch_size: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of the shapes and dtypes the pipeline gives ``method``: standard normal
    views ``[B, V, S, S, C]`` (float32), labels ``[B]`` (int32) and, if the method asks for
    masks, bool ``[B, V, g, g]`` with exactly ``round(ratio * g * g)`` patches masked in each
    masked view (``data.mask.views``) and none in the others."""
    rng = np.random.default_rng(seed)
    info = data.dataset_info(config.data.name)
    size, channels = config.data.image_size, info.image_shape[-1]
    views = config.data.num_views
    batch = {"views": rng.standard_normal((batch_size, views, size, size, channels),
                                          dtype=np.float32),
             "label": rng.integers(0, info.num_classes, batch_size).astype(np.int32)}
    spec = method.input_spec
    mask = data.mask_config_from(spec.masks)
    if mask is not None:
        g = mask.grid(size)
        count = data.num_masked(mask.ratio, g * g)
        ranks = np.argsort(rng.random((batch_size, views, g * g)), axis=-1).argsort(axis=-1)
        masks = ranks < count
        masks[:, [v for v in range(views) if v not in mask.views]] = False
        batch["masks"] = masks.reshape(batch_size, views, g, g)
    if spec.jigsaw:
        raise NotImplementedError("A jigsaw view is not synthesised yet; benchmark a method "
                                  "without one.")
    return batch


def model_flops(method, ts, batch, rng) -> float:
    """3 x the forward FLOPs of ``method.loss`` (XLA's cost analysis of the lowered, not
    compiled, forward): the usual analytic count of a training step (backward = 2 x forward).
    ``method`` should use attention 'xla' so that attention is counted as matrix products."""
    lowered = jax.jit(method.loss).lower(ts.params, ts.state, batch, rng, ts.step)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return 3.0 * float(cost["flops"])


def _commit() -> str:
    if os.environ.get("SSLJAX_COMMIT"):
        return os.environ["SSLJAX_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=here, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=here, timeout=10)
        return (out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(config, batch_size: int, *, warmup: int = 3, steps: int = 10, repeats: int = 3,
        peak_tflops: float = 0.0) -> dict:
    """Compile and time the train step of ``config``; returns the figures (module docstring)."""
    config.batch_size = batch_size
    mesh = sharding.make_mesh()
    info = data.dataset_info(config.data.name)
    facts = methods.RunFacts.of(config, total_steps=10_000)
    method = methods.get_method(config.method)(config, num_classes=info.num_classes, run=facts)
    steps_obj = train.build_step(config, method, mesh, total_steps=10_000, steps_per_epoch=100)
    host = synthetic_batch(config, method, batch_size)
    batch = jax.device_put(host, sharding.batch_sharding(mesh))
    ts = steps_obj.init(train.init_key(0), batch)
    rng = jax.random.key(1)

    counting = config.copy_and_resolve_references()
    if "attention" in counting.model:
        counting.model.attention = "xla"
    counter = methods.get_method(config.method)(counting, num_classes=info.num_classes, run=facts)
    flops = model_flops(counter, ts, batch, rng)

    start = time.perf_counter()
    compiled = steps_obj.train_step.lower(ts, batch, rng).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0

    for _ in range(warmup):
        ts, metrics = compiled(ts, batch, rng)
    jax.block_until_ready(ts)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            ts, metrics = compiled(ts, batch, rng)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(times)

    device = jax.devices()[0]
    peak = peak_tflops * 1e12 if peak_tflops else peak_flops(device.device_kind)
    stats = device.memory_stats() or {}
    peak_bytes = stats.get("peak_bytes_in_use")
    tflops = flops / step_s / 1e12
    return dict(
        impl="ssljax", method=config.method, model=config.model.name,
        batch=batch_size, image_size=config.data.image_size, views=config.data.num_views,
        dtype=config.model.dtype, attention=config.model.get("attention"),
        remat=config.model.get("remat"), device=device.device_kind, devices=mesh.devices.size,
        jax=jax.__version__, compile_s=round(compile_s, 1), step_ms=round(step_s * 1e3, 3),
        times_ms=[round(t * 1e3, 3) for t in times], ex_per_s=round(batch_size / step_s, 1),
        model_flops=flops, tflops=round(tflops, 3),
        mfu=round(flops / step_s / peak, 4) if peak else None,
        xla_flops=xla_flops, xla_tflops=round(xla_flops / step_s / 1e12, 3),
        temp_gib=round(mem.temp_size_in_bytes / 2 ** 30, 3) if mem else None,
        argument_gib=round(mem.argument_size_in_bytes / 2 ** 30, 3) if mem else None,
        peak_gib=round(peak_bytes / 2 ** 30, 2) if peak_bytes else None,
        loss=float(metrics["loss"]))


def main(argv, f: dict) -> None:
    del argv
    config = f["config"].value
    if f["batch"].value:
        config.batch_size = f["batch"].value
    validate_or_exit(config)
    result = run(config, config.batch_size, warmup=f["warmup"].value, steps=f["steps"].value,
                 repeats=f["repeats"].value, peak_tflops=f["peak"].value)
    result = dict(label=f["label"].value or None, **result, commit=_commit(),
                  command=" ".join(["python", "experiments/bench_gpu_step.py"] + sys.argv[1:]))
    line = json.dumps(result)
    print(line, flush=True)
    if f["out"].value:
        with open(f["out"].value, "a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    _FLAGS = _define_flags()
    sys.exit(app.run(lambda argv: main(argv, _FLAGS)))
