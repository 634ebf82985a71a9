"""XLA's CPU convolution against ssljax's two matrix-product forms, forward + backward, per shape.

  python experiments/bench_conv.py [--batch=512]

Prints, for each 3x3 (or 1x1) convolution shape of a narrow ResNet-18's last stages, the
median time of a jitted forward + backward (gradients for input and kernel) through
``jax.lax.conv_general_dilated``, ``ssljax.models.conv.conv_as_matmul`` (patches @ kernel)
and ``conv_as_dense`` (flat map @ dense kernel), each product's speed-up over lax, and the
largest difference of the outputs from lax's. ``ssljax.models.conv`` takes a product
where the output is at most 2x2 (the dense form where the input has fewer pixels than the
kernel has taps); the 3x3 and 4x4 rows show why not beyond.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

import ssljax  # noqa: E402,F401  (applies ssljax's XLA CPU defaults before JAX starts)
from ssljax.models.conv import conv_as_dense, conv_as_matmul  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 512, "Batch (SimCLR's 256 examples x 2 views).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")

# (input size, C_in, C_out, kernel, stride)
SHAPES = [
    (2, 128, 128, 3, 1),   # width-16 ResNet-18, stage 4, 28 px, stride-2 stem
    (4, 64, 128, 3, 2),    # its first conv
    (4, 64, 128, 1, 2),    # its shortcut
    (2, 256, 256, 3, 1),   # width 32
    (4, 128, 256, 3, 2),
    (2, 512, 512, 3, 1),   # width 64, or a 512-channel last stage
    (4, 256, 512, 3, 2),
    (3, 128, 128, 3, 1),   # 3x3 output: lax is faster from here on
    (4, 128, 128, 3, 1),
    (4, 256, 256, 3, 1),
]


def _median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main(argv):
    del argv
    print(f"jax {jax.__version__} {jax.devices()[0].device_kind} batch={_BATCH.value} "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'input':>6} {'C_in->C_out':>12} {'k':>2} {'s':>2} {'out':>4} {'lax ms':>9} "
          f"{'matmul ms':>10} {'ratio':>7} {'dense ms':>9} {'ratio':>7} {'max |diff|':>11}")
    for size, c_in, c_out, k, s in SHAPES:
        pad = ((k // 2, k // 2),) * 2
        x = jax.random.normal(jax.random.key(0), (_BATCH.value, size, size, c_in))
        w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out)) * 0.01

        def lax_conv(x, w):
            return jax.lax.conv_general_dilated(x, w, (s, s), pad,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def matmul_conv(x, w):
            return conv_as_matmul(x, w, (s, s), pad)

        def dense_conv(x, w):
            return conv_as_dense(x, w, (s, s), pad)

        times = []
        for conv in (lax_conv, matmul_conv, dense_conv):
            grad = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), (0, 1)))
            times.append(_median_ms(grad, x, w))
        y = lax_conv(x, w)
        diff = max(float(jnp.max(jnp.abs(y - conv(x, w)))) for conv in (matmul_conv, dense_conv))
        out = y.shape[1]
        print(f"{size:>4}px {c_in:>5}->{c_out:<5} {k:>2} {s:>2} {out:>3}px {times[0]:9.2f} "
              f"{times[1]:10.2f} {times[0] / times[1]:6.2f}x {times[2]:9.2f} "
              f"{times[0] / times[2]:6.2f}x {diff:11.1e}", flush=True)


if __name__ == "__main__":
    app.run(main)
