"""Error of the tiled contrastive loss's low-precision products against float64.

In-batch InfoNCE (`ssljax.losses.infonce`, N queries x N keys, D = 128, unit vectors,
temperature 0.1), tiled with `block_size`: the loss and the per-row log-sum-exp in
"float32", "tensorfloat32" and "bfloat16" precision against the same loss in float64;
the gradient error is measured at `--grad-n` (smaller: it costs three passes).

On a CPU "tensorfloat32" products are exact float32, so TF32 is also *emulated* here:
inputs rounded to TF32's 10-bit mantissa (`jax.lax.reduce_precision`), then float32
products, which is what a GPU's TF32 tensor cores compute.

Run (the figures in experiments/losses_benchmark.md):
    python experiments/bench_losses_precision.py --n 65536 --grad-n 8192
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import ssljax.losses as L


def _inputs(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d))
    k = q + 0.5 * rng.normal(size=(n, d))  # positives correlated with their queries
    return q, k


def _lse_and_loss(q, k, *, block_size, precision, temperature):
    def fn(q, k):
        # The log-sum-exp over keys is the low-precision part; the loss adds O(N D) terms.
        qn = q / jnp.linalg.norm(q, axis=1, keepdims=True)
        kn = k / jnp.linalg.norm(k, axis=1, keepdims=True)
        lse = L.tiled_logsumexp(qn, kn, block_size=block_size, scale=1.0 / temperature,
                                precision=precision)
        return lse, jnp.mean(lse - jnp.sum(qn * kn, axis=1) / temperature)
    return jax.jit(fn)(q, k)


def _grads(q, k, *, block_size, precision, temperature):
    fn = jax.grad(lambda q, k: L.infonce(q, k, temperature=temperature, block_size=block_size,
                                         precision=precision, stop_gradient_key=False),
                  argnums=(0, 1))
    return jax.jit(fn)(q, k)


def _tf32(x):
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--grad-n", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.1)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    kw = dict(block_size=args.block_size, temperature=args.temperature)
    results = {}
    q64, k64 = _inputs(args.n, args.dim)
    start = time.perf_counter()
    lse64, loss64 = _lse_and_loss(jnp.asarray(q64), jnp.asarray(k64), precision="float32", **kw)
    lse64, loss64 = np.asarray(lse64), float(loss64)
    print(f"float64 reference N={args.n}: loss {loss64:.10f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    q32, k32 = jnp.asarray(q64, jnp.float32), jnp.asarray(k64, jnp.float32)
    cases = [("float32", q32, k32, "float32"), ("tensorfloat32", q32, k32, "tensorfloat32"),
             ("tensorfloat32 (emulated)", _tf32(q32), _tf32(k32), "float32"),
             ("bfloat16", q32, k32, "bfloat16")]
    for name, q, k, precision in cases:
        if name == "tensorfloat32" and jax.devices()[0].platform == "cpu":
            continue  # exact float32 on a CPU: the emulated row stands for it
        start = time.perf_counter()
        lse, loss = _lse_and_loss(q, k, precision=precision, **kw)
        err = np.abs(np.asarray(lse, np.float64) - lse64)
        results[name] = dict(loss_abs_err=abs(float(loss) - loss64),
                             lse_max_abs_err=float(err.max()), lse_mean_abs_err=float(err.mean()))
        print(f"{name}: {results[name]} ({time.perf_counter() - start:.0f} s)", flush=True)

    if args.grad_n:
        q64, k64 = _inputs(args.grad_n, args.dim, seed=1)
        g64 = _grads(jnp.asarray(q64), jnp.asarray(k64), precision="float32", **kw)
        q32, k32 = jnp.asarray(q64, jnp.float32), jnp.asarray(k64, jnp.float32)
        for name, q, k, precision in [("float32", q32, k32, "float32"),
                                      ("tensorfloat32 (emulated)", _tf32(q32), _tf32(k32),
                                       "float32"),
                                      ("bfloat16", q32, k32, "bfloat16")]:
            g = _grads(q, k, precision=precision, **kw)
            rel = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))))
                      / float(np.max(np.abs(np.asarray(b)))) for a, b in zip(g, g64))
            results.setdefault(name, {})[f"grad_max_rel_err_n{args.grad_n}"] = rel
            print(f"{name}: gradient max error / max |gradient| at N={args.grad_n}: {rel:.2e}",
                  flush=True)
    print(json.dumps(dict(n=args.n, dim=args.dim, temperature=args.temperature,
                          block_size=args.block_size, loss_float64=loss64, errors=results)))


if __name__ == "__main__":
    main()
