"""Input pipeline at ImageNet size: host augmentation (tf.data) against device augmentation.

  python experiments/bench_input.py [--images 256] [--height 375 --width 500]
      [--image-size 224] [--step-config configs/simclr.py:fashion_mnist] [--step-batch 256]

1. Builds a synthetic JPEG dataset of ImageNet-like size (``--images`` JPEGs of
   ``--width x --height``, smooth colour fields with texture, ~ImageNet's bytes per pixel) as
   a TFDS dataset in ``--data-dir`` (once; no download).
2. Host examples/s per thread (a child process per figure, TensorFlow limited to one thread;
   CPU-seconds per example from the child's own CPU time, so a loaded machine distorts less):
   ``host``: decode + today's augmentation of 2 views at ``--image-size`` (SimCLR ImageNet's
   recipe: ``make_tfds_stream``); ``device``: decode + resize only (``make_tfds_image_stream``).
3. Device-side augmentation: the jitted ``prepare`` stage alone on a ``--device-batch`` of
   resized images (seconds per example on this backend, compiled FLOPs per example).
4. The whole train step of ``--step-config`` with and without the augmentation inside it
   (synthetic batch already on the device), its cost in % and the compiled FLOPs of both.

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DATASET = "ssljax_synthetic_jpeg"
STEP_RATE = 3534  # examples/s of the ResNet-50 SimCLR step on one H200 (issue 24)


def _builder(data_dir: str, images: int, height: int, width: int):
    import numpy as np
    import tensorflow_datasets as tfds

    class SsljaxSyntheticJpeg(tfds.core.GeneratorBasedBuilder):
        """Smooth random colour fields with texture, JPEG-encoded (quality 90)."""
        VERSION = tfds.core.Version(f"1.0.{images}")
        # The name carries the shape, so that different sizes do not share a directory.
        name = f"{DATASET}_{width}x{height}"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(height, width, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=1000)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            import tensorflow as tf
            rng = np.random.default_rng(0)
            for i in range(images):
                coarse = rng.uniform(0, 255, (1, height // 40 + 2, width // 40 + 2, 3))
                x = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
                x = x + rng.normal(0, 12, (height, width, 3))  # texture: JPEG bytes ~ photos
                yield i, {"image": np.clip(x, 0, 255).astype(np.uint8),
                          "label": int(rng.integers(1000))}

    return SsljaxSyntheticJpeg(data_dir=data_dir)


def prepare_dataset(args) -> dict:
    builder = _builder(args.data_dir, args.images, args.height, args.width)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    files = [f for f in builder.data_path.iterdir() if "tfrecord" in f.name]
    size = sum(os.path.getsize(os.fspath(f)) for f in files)
    return {"name": builder.name, "jpeg_kb": round(size / args.images / 1024, 1)}


# ----------------------------------------------------------------------------- host figures


def host_rate(args, path: str) -> dict:
    """In a child: examples/s and CPU-seconds per example of one host path, one thread."""
    from ssljax import data
    from ssljax.data import device_input, pipeline
    from ssljax.data.specs import AugmentConfig

    pipeline.configure_tf(args.threads)
    builder = _builder(args.data_dir, args.images, args.height, args.width)
    common = dict(global_batch_size=args.batch, seed=0, data_dir=args.data_dir,
                  process_index=0, process_count=1, shuffle_buffer=args.images)
    if path == "host":
        cfg = AugmentConfig(blur_p=0.5, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                            crop_scale=(0.08, 1.0))
        info = data.dataset_info("imagenet2012")
        ds = pipeline.make_tfds_stream(builder.name, "train", num_views=2, augment=cfg,
                                       image_size=args.image_size, mean=info.mean, std=info.std,
                                       **common)
    else:
        ds = pipeline.make_tfds_image_stream(
            builder.name, "train", image_size=device_input.source_size(args.image_size), **common)
    it = ds.as_numpy_iterator()
    for _ in range(args.warmup):
        next(it)
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        next(it)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    n = args.steps * args.batch
    return {"examples_per_s": n / wall, "cpu_ms_per_example": 1000 * cpu / n}


# ----------------------------------------------------------------------------- device figures


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def _time(fn, *args, repeats: int):
    import jax
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_augment_cost(args) -> dict:
    """The jitted augmentation stage alone on resized ImageNet-size images."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ssljax import data
    from ssljax.data import device_input
    from ssljax.data.specs import AugmentConfig

    cfg = AugmentConfig(blur_p=0.5, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    info = data.dataset_info("imagenet2012")
    prepare = device_input.make_prepare(configs=[cfg, cfg], seed=0, image_size=args.image_size,
                                        mean=info.mean, std=info.std)
    side = device_input.source_size(args.image_size)
    b = args.device_batch
    batch = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, side, side, 3),
                                                                    dtype=np.uint8)),
             "source_shape": jnp.tile(jnp.array([[args.height, args.width]], jnp.int32), (b, 1)),
             "label": jnp.zeros([b], jnp.int32)}
    fn = jax.jit(lambda x, s: prepare(x, s)["views"])
    compiled = fn.lower(batch, jnp.int32(0)).compile()
    seconds = _time(compiled, batch, jnp.int32(0), repeats=args.repeats)
    return {"device_augment_ms_per_example": 1000 * seconds / b,
            "device_augment_gflops_per_example": _flops(compiled) / b / 1e9,
            "device_augment_batch": b, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind}


def step_cost(args) -> dict:
    """The trainer's step of ``--step-config`` with and without device augmentation inside."""
    import jax
    import numpy as np

    from ssljax import data, methods, sharding, train

    path, _, variant = args.step_config.partition(":")
    import importlib.util
    spec = importlib.util.spec_from_file_location("_bench_config", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    config.batch_size = args.step_batch
    for item in args.set:
        key, value = item.split("=", 1)
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = type(node[last])(eval(value)) if not isinstance(node[last], str) else value
    info = data.dataset_info(config.data.name)
    mesh = sharding.make_mesh()
    batch_sharding = sharding.batch_sharding(mesh)
    size, views = config.data.image_size, config.data.num_views
    height, width, channels = info.image_shape
    if not info.in_memory:  # streamed: the host sends fixed-size resized images
        height = width = data.device_input.source_size(size)
    rng = np.random.default_rng(0)
    raw = {"image": rng.integers(0, 256, (args.step_batch, height, width, channels), np.uint8),
           "label": rng.integers(0, info.num_classes, args.step_batch).astype(np.int32)}
    if not info.in_memory:
        raw["source_shape"] = np.tile(np.array([[args.height, args.width]], np.int32),
                                      (args.step_batch, 1))
    made = {"views": rng.normal(size=(args.step_batch, views, size, size, channels)).astype(
        np.float32), "label": raw["label"]}
    out = {"step_config": args.step_config, "step_batch": args.step_batch,
           "step_image_size": size, "step_model": config.model.name,
           "step_dtype": config.model.dtype}
    method = methods.get_method(config.method)(config, num_classes=info.num_classes)
    runners = {}
    for name, batch, on_device in (("without", made, False), ("with", raw, True)):
        steps = train.build_step(config, method, mesh, total_steps=10_000, steps_per_epoch=100)
        if on_device:
            steps.prepare = data.device_input.make_prepare(
                configs=data.augment_configs(config.data), seed=0, image_size=size,
                mean=info.mean, std=info.std, mask=data.mask_config_from(method.input_spec.masks))
        batch = data.to_global(batch, batch_sharding)
        ts = steps.init(train.init_key(0), batch)
        compiled = steps.train_step.lower(ts, batch, jax.random.key(0)).compile()
        out[f"step_gflops_{name}_augment"] = _flops(compiled) / 1e9
        if args.flops_only:
            continue

        def run(batch=batch, compiled=compiled, holder=[ts]):
            holder[0], metrics = compiled(holder[0], batch, jax.random.key(0))
            return metrics["loss"]

        jax.block_until_ready(run())  # warm-up
        runners[name] = run
        del ts
    out["step_augment_flops_pct"] = 100 * (out["step_gflops_with_augment"]
                                           / out["step_gflops_without_augment"] - 1)
    if args.flops_only:
        return out
    # Alternate the two, so that a change of the machine's load hits both alike.
    times = {name: [] for name in runners}
    for _ in range(args.step_repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - t0)
    for name in runners:
        out[f"step_ms_{name}_augment"] = 1000 * statistics.median(times[name])
    out["step_augment_overhead_pct"] = 100 * (out["step_ms_with_augment"]
                                              / out["step_ms_without_augment"] - 1)
    return out


# ----------------------------------------------------------------------------- driver


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.path.join("/tmp", "ssljax_bench_input"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="host batch of the host figures")
    parser.add_argument("--steps", type=int, default=8, help="timed host batches")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-config", default="configs/simclr.py:fashion_mnist",
                        help="'' skips the whole-step figure")
    parser.add_argument("--step-batch", type=int, default=256)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--flops-only", action="store_true",
                        help="compile the step and report its FLOPs; no timing")
    parser.add_argument("--set", action="append", default=[],
                        help="config override of the step, e.g. model.dtype='bfloat16'")
    parser.add_argument("--only", choices=["host", "device"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["host", "device", "augment", "step"],
                        help="leave out a figure")
    args = parser.parse_args(argv)

    if args.only:  # a child: one host figure, with its own TF runtime and thread pools
        print(json.dumps(host_rate(args, args.only)))
        return

    results = {"jpeg": f"{args.width}x{args.height}", "image_size": args.image_size,
               "threads": args.threads}
    if "host" not in args.skip or "device" not in args.skip:
        results.update(prepare_dataset(args))
        print(f"dataset {results['name']}: {args.images} JPEGs of {args.width}x{args.height}, "
              f"{results['jpeg_kb']} KiB each", flush=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for path in ("host", "device"):
        if path in args.skip:
            continue
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", path,
                               *passthrough], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr.strip()[-2000:])
        figure = json.loads(done.stdout.strip().splitlines()[-1])
        results[f"{path}_path_examples_per_s_per_thread"] = round(figure["examples_per_s"], 1)
        results[f"{path}_path_cpu_ms_per_example"] = round(figure["cpu_ms_per_example"], 2)
        results[f"{path}_path_threads_for_{STEP_RATE}"] = round(
            STEP_RATE * figure["cpu_ms_per_example"] / 1000, 1)
        print(f"{path} path (decode + {'2-view augmentation' if path == 'host' else 'resize'}): "
              f"{figure['examples_per_s']:.1f} examples/s per thread, "
              f"{figure['cpu_ms_per_example']:.2f} CPU-ms per example", flush=True)
    if "host" not in args.skip and "device" not in args.skip:
        results["host_cpu_ratio"] = round(results["host_path_cpu_ms_per_example"]
                                          / results["device_path_cpu_ms_per_example"], 2)
    if "augment" not in args.skip:
        figure = device_augment_cost(args)
        results.update({k: round(v, 4) if isinstance(v, float) else v for k, v in figure.items()})
        print(f"device augmentation ({figure['backend']}): "
              f"{figure['device_augment_ms_per_example']:.3f} ms and "
              f"{figure['device_augment_gflops_per_example']:.3f} GFLOP per example", flush=True)
    if args.step_config and "step" not in args.skip:
        figure = step_cost(args)
        results.update({k: round(v, 3) if isinstance(v, float) else v for k, v in figure.items()})
        if args.flops_only:
            print(f"step {args.step_config} batch {args.step_batch}: "
                  f"{figure['step_gflops_without_augment']:.1f} GFLOP without, "
                  f"{figure['step_gflops_with_augment']:.1f} with device augmentation "
                  f"({figure['step_augment_flops_pct']:+.2f}%)", flush=True)
        else:
            print(f"step {args.step_config} batch {args.step_batch}: "
                  f"{figure['step_ms_without_augment']:.1f} ms without, "
                  f"{figure['step_ms_with_augment']:.1f} ms with device augmentation "
                  f"({figure['step_augment_overhead_pct']:+.1f}%; FLOPs "
                  f"{figure['step_augment_flops_pct']:+.2f}%)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
