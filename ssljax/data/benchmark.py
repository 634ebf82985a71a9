"""Input-pipeline throughput: ``python -m ssljax.data.benchmark [--threads 1 2] ...``.

Prints examples/second (each example yields ``--views`` augmented images) of
:func:`ssljax.data.pipeline.make_pretrain_dataset` on an in-memory dataset, with
TensorFlow limited to the given number of threads, as the trainer runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def measure(dataset: str, split: str, batch: int, views: int, image_size: int | None,
            steps: int, warmup: int, threads: int, synthetic: int = 0) -> float:
    """Examples per second of the pre-training pipeline after ``warmup`` batches."""
    import numpy as np

    from ssljax.data import augment, pipeline, sources

    pipeline.configure_tf(threads)
    info = sources.dataset_info(dataset)
    if synthetic:  # random pixels of the dataset's shape: no data needed
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (synthetic, *info.image_shape), dtype=np.uint8)
        labels = rng.integers(0, info.num_classes, synthetic).astype(np.int32)
    else:
        images, labels = sources.load_arrays(dataset, split)
    ds = pipeline.make_pretrain_dataset(
        images, labels, global_batch_size=batch, num_views=views,
        augment=augment.AugmentConfig(), seed=0, image_size=image_size or info.image_shape[0],
        mean=info.mean, std=info.std)
    it = ds.as_numpy_iterator()
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--synthetic", type=int, default=0,
                        help="use this many random images of the dataset's shape")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one TF runtime per thread setting: TF's pools are fixed at start
        rate = measure(args.dataset, args.split, args.batch, args.views, args.image_size,
                       args.steps, args.warmup, args.threads[0], args.synthetic)
        print(f"{rate:.0f}")
        return
    for threads in args.threads:
        cmd = [sys.executable, "-m", "ssljax.data.benchmark", "--child", "--threads", str(threads)]
        for flag in ("dataset", "split", "batch", "views", "steps", "warmup", "synthetic"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        if args.image_size:
            cmd += ["--image-size", str(args.image_size)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr.strip().splitlines()[-1])
        rate = float(done.stdout.split()[-1])
        print(f"{args.dataset} batch={args.batch} views={args.views} threads={threads}: "
              f"{rate:.0f} examples/s, {rate * args.views:.0f} augmented images/s")


if __name__ == "__main__":
    main()
