"""Train-step and input-pipeline throughput for a config, after warm-up, median of repeats.

  python experiments/bench_step.py --config=configs/simclr.py:fashion_mnist [--batch=256]
      [--config.model.width=32 ...]

The figure is images (examples, each with all its views) per second, as the PyTorch peer in
../shared/bench/torch_simclr_step.py counts them. To compare with that peer, give the same
shape: --batch=128 --config.model.width=32 --config.model.stem_stride=1
--config.projector.hidden_dims='(2048,)' --config.optimizer.name=sgd --config.data.image_size=28
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import data, methods, sharding, train  # noqa: E402
from ssljax.config import validate_or_exit  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<method>.py:<variant>")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's).")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
_TRACE = flags.DEFINE_string("trace_dir", "", "Also write a profiler trace of 2 steps here (Perfetto / TensorBoard).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 30, "Batches for the pipeline figure.")


def main(argv):
    del argv
    config = _CONFIG.value
    if _BATCH.value:
        config.batch_size = _BATCH.value
    validate_or_exit(config)
    data.configure_tf(config.data.tf_threads)
    mesh = sharding.make_mesh()
    info = data.dataset_info(config.data.name)
    images, labels = data.load_arrays(config.data.name, config.data.train_split or info.train_split,
                                      data_dir=config.data.data_dir)
    ds = data.make_pretrain_dataset(
        images, labels, global_batch_size=config.batch_size, num_views=config.data.num_views,
        augment=data.augment_configs(config.data), seed=config.seed,
        image_size=config.data.image_size, mean=info.mean, std=info.std)

    # Input pipeline alone.
    it = iter(ds.as_numpy_iterator())
    next(it)
    t0 = time.perf_counter()
    for _ in range(_PIPELINE_BATCHES.value):
        next(it)
    pipe_rate = _PIPELINE_BATCHES.value * config.batch_size / (time.perf_counter() - t0)

    # Train step alone, on one fixed batch already on the devices.
    batch = data.to_global(next(it), sharding.batch_sharding(mesh))
    method = methods.get_method(config.method)(
        config, num_classes=info.num_classes, run=methods.RunFacts.of(config, total_steps=10_000))
    steps = train.build_step(config, method, mesh, total_steps=10_000, steps_per_epoch=100)
    ts = steps.init(train.init_key(0), batch)
    rng = jax.random.key(1)
    for _ in range(2):  # compile and warm up
        ts, metrics = steps.train_step(ts, batch, rng)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        for _ in range(_STEPS.value):
            ts, metrics = steps.train_step(ts, batch, rng)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / _STEPS.value)
    step_time = statistics.median(times)
    if _TRACE.value:
        with jax.profiler.trace(_TRACE.value, create_perfetto_trace=True):
            for _ in range(2):
                ts, metrics = steps.train_step(ts, batch, rng)
            jax.block_until_ready(metrics)
    print(f"jax {jax.__version__} devices={mesh.devices.size} method={config.method} "
          f"model={config.model.name} width={config.model.width} batch={config.batch_size} "
          f"size={config.data.image_size} dtype={config.model.dtype}: "
          f"{step_time * 1000:.0f} ms/step, {config.batch_size / step_time:.1f} images/s "
          f"(train step); input pipeline {pipe_rate:.0f} images/s")


if __name__ == "__main__":
    sys.exit(app.run(main))
