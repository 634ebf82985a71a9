"""Dense vs tiled NT-Xent: compiled peak temporary memory and measured time of value-and-grad.

For every N the script compiles `jax.value_and_grad(nt_xent)` (both inputs [N, D]) with
the dense path and with `block_size`, and reads `compiled.memory_analysis()`: compiling
needs no memory, so even N = 65,536 (a 131,072 x 131,072 similarity matrix, 64 GiB in
float32) is measured on a laptop. Only sizes up to `--time-max` are run and timed.

Run (the table in experiments/losses_benchmark.md):
    python experiments/bench_losses.py --out experiments/losses_benchmark.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ssljax.losses as L


def _compiled(n: int, d: int, block_size: int | None, sharding=None):
    fn = jax.value_and_grad(
        lambda a, b: L.nt_xent(a, b, temperature=0.1, block_size=block_size), argnums=(0, 1))
    spec = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharding)
    return jax.jit(fn).lower(spec, spec).compile()


def _time(compiled, n: int, d: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    z1 = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    z2 = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    jax.block_until_ready(compiled(z1, z2))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(z1, z2))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--time-max", type=int, default=8192, help="time only N up to this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=8,
                        help="also compile with the batch sharded over this many (fake CPU)"
                             " devices and report the per-device memory; 1 to skip")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    if args.devices > 1:  # must precede the first JAX operation; only the CPU backend reads it
        jax.config.update("jax_num_cpu_devices", args.devices)

    mib = 2.0**20
    rows = []
    header = ("| N | 2N x 2N logits | dense temp | tiled temp | tiled / dense | dense time"
              " | tiled time | tiled / dense |")
    print(header)
    print("|" + "---|" * 8)
    for n in args.sizes:
        dense = _compiled(n, args.dim, None)
        tiled = _compiled(n, args.dim, args.block_size)
        dense_mem = dense.memory_analysis().temp_size_in_bytes
        tiled_mem = tiled.memory_analysis().temp_size_in_bytes
        if n <= args.time_max:
            dense_t = _time(dense, n, args.dim, args.repeats)
            tiled_t = _time(tiled, n, args.dim, args.repeats)
            times = f"{dense_t:.3f} s | {tiled_t:.3f} s | {tiled_t / dense_t:.2f}x"
        else:
            times = "not run | not run | -"
        row = (f"| {n:,} | {(2 * n) ** 2 * 4 / mib:,.0f} MiB | {dense_mem / mib:,.1f} MiB"
               f" | {tiled_mem / mib:,.1f} MiB | 1/{dense_mem / tiled_mem:,.0f} | {times} |")
        print(row, flush=True)
        rows.append(row)

    sharded_rows = []
    sharded_header = "| N | dense temp per device | tiled temp per device | tiled / dense |"
    if args.devices > 1:
        devices = jax.devices() if jax.device_count() >= args.devices else jax.devices("cpu")
        mesh = jax.make_mesh((args.devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=devices[:args.devices])
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        print(f"\nBatch sharded over {args.devices} devices (compiled only):")
        print(sharded_header)
        print("|" + "---|" * 4)
        for n in args.sizes:
            dense_mem, tiled_mem = (
                _compiled(n, args.dim, bs, sharding).memory_analysis().temp_size_in_bytes
                for bs in (None, args.block_size))
            row = (f"| {n:,} | {dense_mem / mib:,.1f} MiB | {tiled_mem / mib:,.1f} MiB"
                   f" | 1/{dense_mem / tiled_mem:,.0f} |")
            print(row, flush=True)
            sharded_rows.append(row)

    if args.out:
        device = jax.devices()[0]
        cmd = "python experiments/bench_losses.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None)
        with open(args.out, "w") as f:
            f.write("# Dense vs tiled NT-Xent: memory and time of value-and-grad\n\n")
            f.write(f"Produced by:\n\n    {cmd}\n\n")
            f.write(f"D = {args.dim}, float32, tiled `block_size={args.block_size}`; device: "
                    f"{device.platform} ({device.device_kind}), {jax.device_count()} device(s); "
                    f"jax {jax.__version__}; {platform.processor() or platform.machine()}, "
                    f"{os.cpu_count()} CPU cores.\n\n")
            f.write("Temporary memory: `jax.jit(jax.value_and_grad(nt_xent)).lower(...).compile()"
                    ".memory_analysis().temp_size_in_bytes` (compiled only, so every size is "
                    "measured). Time: median of "
                    f"{args.repeats} runs after a warm-up, for N <= {args.time_max:,}.\n\n")
            f.write(header + "\n|" + "---|" * 8 + "\n" + "\n".join(rows) + "\n")
            if sharded_rows:
                f.write(f"\nThe same, compiled with both inputs sharded over {args.devices} "
                        "devices (mesh axis `data`; each device holds N / devices rows and gathers the "
                        "N x D embeddings), temporary memory per device:\n\n")
                f.write(sharded_header + "\n|" + "---|" * 4 + "\n" + "\n".join(sharded_rows) + "\n")


if __name__ == "__main__":
    main()
