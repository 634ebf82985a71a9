"""Dense, row-tiled and 2-D tiled NT-Xent: compiled temporary memory and time of value-and-grad.

For every N the script compiles `jax.value_and_grad(nt_xent)` (both inputs [N, D], so the
similarity matrix is 2N x 2N) three ways and reads `compiled.memory_analysis()`:

    dense       `block_size=None`: the 2N x 2N logits;
    row-tiled   ssljax's tiled path before the 2-D tiles: the normalised 2N x D matrix, all
                rows at once against B columns at a time (`tiled_logsumexp` with
                `row_block_size=2N`), 2N x B per tile;
    2-D tiled   `block_size=B`: B x B tiles, temporaries O(N D + B^2).

Compiling needs no memory, so every size is measured on a laptop; only N up to
`--time-max` is run and timed (median of `--repeats` runs after a warm-up, the variants
interleaved so that a busy machine slows them alike).

With `--devices d` (fake CPU devices), it also compiles with the batch sharded over d devices
and reports the per-device temporaries of dense, 2-D tiled under `jax.jit` sharding (the
compiler all-gathers each column tile) and the ring (`ring_axis=`, column slices passed
around the devices), for the sizes plus `--ring-sizes`.

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
from ssljax.losses._common import l2_normalize

GIB = 2.0**30
MIB = 2.0**20


def _nt_xent_row_tiled(z1, z2, *, temperature: float, block_size: int):
    """NT-Xent as ssljax computed it before the 2-D tiles: the normalised, interleaved
    2N x D matrix, every row at once against `block_size` columns at a time."""
    n, dim = z1.shape
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
    z = jnp.stack([z1, z2], axis=1).reshape(2 * n, dim)
    lse = L.tiled_logsumexp(z / temperature, z, self_index=jnp.arange(2 * n),
                            block_size=block_size, row_block_size=2 * n)
    return jnp.mean(lse) - jnp.mean(jnp.sum(z1 * z2, axis=-1) / temperature)


def _fn(kind: str, block_size: int, n: int, mesh=None):
    if kind == "row-tiled":
        return jax.value_and_grad(
            lambda a, b: _nt_xent_row_tiled(a, b, temperature=0.1, block_size=block_size),
            argnums=(0, 1))
    kw = {"dense": dict(),
          "2-D tiled": dict(block_size=block_size),
          "ring": dict(block_size=block_size, ring_axis="data", mesh=mesh)}[kind]
    return jax.value_and_grad(lambda a, b: L.nt_xent(a, b, temperature=0.1, **kw),
                              argnums=(0, 1))


def _compiled(kind: str, n: int, d: int, block_size: int, sharding=None, mesh=None):
    spec = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharding)
    return jax.jit(_fn(kind, block_size, n, mesh)).lower(spec, spec).compile()


def _times(compiled: dict, n: int, d: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    z1 = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    z2 = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    times = {k: [] for k in compiled}
    for c in compiled.values():
        jax.block_until_ready(c(z1, z2))  # warm-up
    for _ in range(repeats):
        for k, c in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(c(z1, z2))
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _mem(nbytes: int) -> str:
    return f"{nbytes / GIB:,.2f} GiB" if nbytes >= GIB else f"{nbytes / MIB:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[8192, 16384, 65536, 262144, 1048576])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--time-max", type=int, default=8192, help="time only N up to this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=8,
                        help="also compile with the batch sharded over this many (fake CPU)"
                             " devices and report the per-device memory; 1 to skip")
    parser.add_argument("--ring-sizes", type=int, nargs="*", default=[4194304],
                        help="extra N for the sharded table (compiled only)")
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    args = parser.parse_args()
    if args.devices > 1:  # must precede the first JAX operation; only the CPU backend reads it
        jax.config.update("jax_num_cpu_devices", args.devices)

    kinds = ["dense", "row-tiled", "2-D tiled"]
    header = ("| N | dense temp | row-tiled temp | 2-D tiled temp | dense time | row-tiled time"
              " | 2-D tiled time | 2-D / dense time |")
    rows = []
    print(header)
    print("|" + "---|" * 8)
    for n in args.sizes:
        compiled = {k: _compiled(k, n, args.dim, args.block_size) for k in kinds}
        mem = {k: c.memory_analysis().temp_size_in_bytes for k, c in compiled.items()}
        if n <= args.time_max:
            t = _times(compiled, n, args.dim, args.repeats)
            times = (" | ".join(f"{t[k]:.3f} s" for k in kinds)
                     + f" | {t['2-D tiled'] / t['dense']:.2f}x")
        else:
            times = "not run | not run | not run | -"
        row = f"| {n:,} | " + " | ".join(_mem(mem[k]) for k in kinds) + f" | {times} |"
        print(row, flush=True)
        rows.append(row)
        del compiled

    sharded_rows = []
    sharded_header = ("| N | dense temp per device | 2-D tiled (jit sharding) per device"
                      " | ring per device | ring / (2N x D / devices) |")
    if args.devices > 1:
        devices = jax.devices() if jax.device_count() >= args.devices else jax.devices("cpu")
        mesh = jax.make_mesh((args.devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=devices[:args.devices])
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        print(f"\nBatch sharded over {args.devices} devices (compiled only):")
        print(sharded_header)
        print("|" + "---|" * 5)
        for n in sorted(set(args.sizes) | set(args.ring_sizes)):
            mem = {k: _compiled(k, n, args.dim, args.block_size, sharding, mesh)
                   .memory_analysis().temp_size_in_bytes
                   for k in ("dense", "2-D tiled", "ring")}
            local = 2 * n * args.dim * 4 / args.devices
            row = (f"| {n:,} | {_mem(mem['dense'])} | {_mem(mem['2-D tiled'])} | "
                   f"{_mem(mem['ring'])} | {mem['ring'] / local:.1f} |")
            print(row, flush=True)
            sharded_rows.append(row)

    if args.out:
        device = jax.devices()[0]
        cmd = "python experiments/bench_losses.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None)
        with open(args.out, "w") as f:
            f.write("# NT-Xent: dense, row-tiled and 2-D tiled; memory and time of "
                    "value-and-grad\n\n")
            f.write(f"Produced by:\n\n    {cmd}\n\n")
            f.write(f"D = {args.dim}, float32, `block_size={args.block_size}`; device: "
                    f"{device.platform} ({device.device_kind}), {jax.device_count()} device(s); "
                    f"jax {jax.__version__}; {platform.processor() or platform.machine()}, "
                    f"{os.cpu_count()} CPU cores.\n\n")
            f.write("Temporary memory: `jax.jit(jax.value_and_grad(nt_xent)).lower(...).compile()"
                    ".memory_analysis().temp_size_in_bytes` (compiled only, so every size is "
                    "measured; inputs and outputs are not temporaries). Time: median of "
                    f"{args.repeats} runs after a warm-up, for N <= {args.time_max:,}.\n\n")
            f.write(header + "\n|" + "---|" * 8 + "\n" + "\n".join(rows) + "\n")
            if sharded_rows:
                f.write(f"\nThe same, compiled with both inputs sharded over {args.devices} "
                        "devices (mesh axis `data`), temporary memory per device:\n\n")
                f.write(sharded_header + "\n|" + "---|" * 5 + "\n" + "\n".join(sharded_rows)
                        + "\n")


if __name__ == "__main__":
    main()
