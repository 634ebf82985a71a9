"""Time the 2-D tiled NT-Xent (value and gradient) on one GPU: TFLOP/s and peak memory.

For each N and precision ("float32", "tensorfloat32", "bfloat16") it compiles
`jax.value_and_grad(nt_xent(z1, z2, temperature=0.1, block_size=B, precision=p))` with
z1, z2 of shape [N, D], runs it once to warm up and `--repeats` times timed, and reports

    time_s       median wall time of one value-and-grad step;
    tflops       executed matrix-product FLOP / time: 8 M^2 D with M = 2N rows and
                 columns (forward 2 M^2 D; backward 6 M^2 D: the recomputed logits and
                 two gradient products), in units of 1e12 / s;
    peak_bytes   the device's `memory_stats()["peak_bytes_in_use"]` (each case runs in its
                 own process, so the peak is that case's; includes inputs and outputs);
    temp_bytes   the compiled program's `memory_analysis().temp_size_in_bytes`.

Reference (issue 25): the row-tiled loss ran at about 62 TFLOP/s in float32 on an H200,
N = 65,536 in 204 ms; the goal for bfloat16 is at least 5x that.

Run on a GPU machine (about 5 minutes on an H100; the last line is one JSON object):
    python experiments/bench_losses_gpu.py
Check it on a CPU first (tiny sizes):
    python experiments/bench_losses_gpu.py --sizes 1024 --block-size 256 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _one(n: int, dim: int, block: int, row_block: int | None, precision: str,
         repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import ssljax.losses as L

    fn = jax.jit(jax.value_and_grad(
        lambda a, b: L.nt_xent(a, b, temperature=0.1, block_size=block,
                               row_block_size=row_block, precision=precision),
        argnums=(0, 1)))
    k1, k2 = jax.random.split(jax.random.key(0))
    z1 = jax.random.normal(k1, (n, dim), jnp.float32)
    z2 = z1 + 0.5 * jax.random.normal(k2, (n, dim), jnp.float32)
    start = time.perf_counter()
    compiled = fn.lower(z1, z2).compile()
    compile_s = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    loss, _ = jax.block_until_ready(compiled(z1, z2))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(z1, z2))
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    m = 2 * n
    stats = jax.devices()[0].memory_stats() or {}
    return dict(n=n, dim=dim, block_size=block, row_block_size=row_block or block,
                precision=precision, time_s=t, times_s=times, compile_s=compile_s,
                tflops=8 * m * m * dim / t / 1e12, peak_bytes=stats.get("peak_bytes_in_use"),
                temp_bytes=temp, loss=float(loss), device=str(jax.devices()[0].device_kind))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[65536, 1048576])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16384,
                        help="rows and columns per tile; on a GPU large tiles (1 GiB of float32"
                             " logits at 16,384) keep the loop short: 4,096 tiles at N = 1M")
    parser.add_argument("--row-block-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="fewer repeats for a case whose warm-up took longer than this")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args()

    if args.one:
        n, precision, repeats = args.one.split(",")
        print(json.dumps(_one(int(n), args.dim, args.block_size, args.row_block_size,
                              precision, int(repeats))))
        return

    results = []
    for n in args.sizes:
        for precision in args.precisions:
            # The 1M case runs for a minute per step in float32: one timed run there.
            repeats = args.repeats if n <= 262144 else 1
            cmd = [sys.executable, __file__, "--one", f"{n},{precision},{repeats}",
                   "--dim", str(args.dim), "--block-size", str(args.block_size)]
            if args.row_block_size:
                cmd += ["--row-block-size", str(args.row_block_size)]
            env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                result = dict(n=n, precision=precision, error=out.stderr[-2000:])
            else:
                result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            if "error" in result:
                print(f"N={n:,} {precision}: FAILED\n{result['error']}", flush=True)
            else:
                peak = result["peak_bytes"]
                print(f"N={n:,} {precision}: {result['time_s']:.3f} s, "
                      f"{result['tflops']:.2f} TFLOP/s, peak "
                      f"{'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}, temp "
                      f"{result['temp_bytes'] / 2**30:.2f} GiB, loss {result['loss']:.6f}",
                      flush=True)
    print(json.dumps(dict(benchmark="nt_xent 2-D tiled value_and_grad", results=results)))


if __name__ == "__main__":
    main()
