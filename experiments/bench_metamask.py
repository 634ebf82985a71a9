"""Cost of MetaMask's meta step: one train step of each meta-gradient kind vs Barlow Twins.

  python experiments/bench_metamask.py --config=configs/metamask.py:fashion_mnist [--batch=128]
      [--steps=3 --repeats=5 --config.model.width=16 ...]

Every variant is the same MetaMask step (same backbone, heads, batch, per-view BatchNorm,
optimizer and online probe), jitted by the trainer's ``build_step`` and timed in one
process on one fixed batch already on the devices, median of ``--repeats`` timed repeats of
``--steps`` steps after compilation and warm-up:

  barlow_twins   ``metamask.weight_cl=0, meta_grad='none'``: the Barlow Twins step alone
  bt+cl          ``meta_grad='none'``: the model step on L_BT + 10 L_CL, no mask
  first_order    model step + virtual step + first-order meta-gradient + mask step
  finite_diff    ... with the official DARTS finite-difference second-order term
  exact          ... with the exact second-order meta-gradient (jax.grad through the update)
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import data, methods, sharding, train  # noqa: E402
from ssljax.config import validate_or_exit  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/metamask.py:fashion_mnist",
                                          "configs/metamask.py:<variant>")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's).")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
_VARIANTS = flags.DEFINE_list("variants", "barlow_twins,bt+cl,first_order,finite_diff,exact",
                              "Variants to time, in this order.")

VARIANTS = {
    "barlow_twins": dict(weight_cl=0.0, meta_grad="none"),
    "bt+cl": dict(meta_grad="none"),
    "first_order": dict(meta_grad="first_order"),
    "finite_diff": dict(meta_grad="finite_difference"),
    "exact": dict(meta_grad="exact"),
}


def time_variant(config, overrides, batch, mesh, num_classes):
    config = config.copy_and_resolve_references()
    config.metamask.update(overrides)
    method = methods.get_method("metamask")(
        config, num_classes=num_classes, run=methods.RunFacts.of(config, total_steps=10_000))
    steps = train.build_step(config, method, mesh, total_steps=10_000, steps_per_epoch=100)
    ts = steps.init(train.init_key(0), batch)
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    ts, metrics = steps.train_step(ts, batch, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    ts, metrics = steps.train_step(ts, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        for _ in range(_STEPS.value):
            ts, metrics = steps.train_step(ts, batch, rng)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / _STEPS.value)
    return statistics.median(times), compile_s, float(metrics["loss"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # the table, not absl INFO lines
    config = _CONFIG.value
    if config.method != "metamask":
        raise app.UsageError("--config must be a MetaMask config (configs/metamask.py:<variant>).")
    if _BATCH.value:
        config.batch_size = _BATCH.value
    validate_or_exit(config)
    mesh = sharding.make_mesh()
    info = data.dataset_info(config.data.name)
    size, channels = config.data.image_size, info.image_shape[-1]
    rng = np.random.default_rng(0)
    shape = (config.batch_size, 2, size, size, channels)
    batch = {"views": rng.normal(size=shape).astype(np.float32),
             "label": rng.integers(0, info.num_classes, config.batch_size).astype(np.int32)}
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))

    rows = []
    for name in _VARIANTS.value:
        step_s, compile_s, loss = time_variant(config, VARIANTS[name], batch, mesh,
                                               info.num_classes)
        rows.append((name, step_s, compile_s))
        print(f"{name}: {step_s * 1000:.0f} ms/step (first step {compile_s:.0f}s, loss {loss:.3f})",
              flush=True)

    base = dict((n, s) for n, s, _ in rows).get("barlow_twins")
    print(f"\njax {jax.__version__}, {jax.devices()[0].platform} x {mesh.devices.size}, "
          f"{os.cpu_count()} CPU cores; {config.model.name} width {config.model.width} "
          f"stem_stride {config.model.stem_stride}, {size}x{size}x{channels}, batch "
          f"{config.batch_size}, BT head {tuple(config.bt_projector.hidden_dims)}->"
          f"{config.bt_projector.out_dim}, CL head {tuple(config.cl_projector.hidden_dims)}->"
          f"{config.cl_projector.out_dim}, dtype {config.model.dtype}; median of "
          f"{_REPEATS.value} x {_STEPS.value} steps\n")
    print("| variant | ms / step | x Barlow Twins step | first step (compile) |")
    print("|---|---|---|---|")
    for name, step_s, compile_s in rows:
        ratio = f"{step_s / base:.2f}x" if base else "-"
        print(f"| {name} | {step_s * 1000:.0f} | {ratio} | {compile_s:.0f} s |")


if __name__ == "__main__":
    sys.exit(app.run(main))
