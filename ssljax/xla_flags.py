"""XLA settings that make ssljax's train step faster on the CPU backend.

jaxlib 0.10 hands convolutions, reductions and elementwise fusions on the CPU to YNNPACK
("ynn fusions"). For the small, narrow ResNets of CPU-sized runs these are slower than
XLA's own kernels: turning them off made the SimCLR Fashion-MNIST train step 1.2x faster
and a width-32, stride-1 ResNet-18 forward + backward 1.8x faster on the 2-core development
machine (``experiments/bench_step.py``; README, Benchmarks). The results are the same
computation, to float32 rounding.

``apply_cpu_defaults()`` appends ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNN
fusions) to ``XLA_FLAGS``. It is called when ``ssljax`` is imported and must run before
JAX starts its backends (the first ``jax.devices()`` or computation); later calls change
nothing in a running process. It leaves ``XLA_FLAGS`` alone when

- the variable already sets that flag (your choice wins),
- ``SSLJAX_XLA_CPU_DEFAULTS=0`` is set, or
- the installed jaxlib is not a version it was measured on (an unknown flag would stop
  XLA at start-up).

It only affects CPU compilation; GPU and TPU programs are unchanged.
"""

from __future__ import annotations

import importlib.metadata
import os

__all__ = ["CPU_FLAGS", "apply_cpu_defaults"]

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)

# jaxlib releases whose XLA knows the flags above (checked by tests/test_xla_flags.py).
_VERIFIED_JAXLIB = ("0.10.",)


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def apply_cpu_defaults(environ: dict | None = None, jaxlib_version: str | None = None) -> bool:
    """Adds ``CPU_FLAGS`` to ``environ['XLA_FLAGS']`` (default: ``os.environ``).

    Returns True if the flags were added.
    """
    environ = os.environ if environ is None else environ
    if environ.get("SSLJAX_XLA_CPU_DEFAULTS", "1") == "0":
        return False
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    if not version.startswith(_VERIFIED_JAXLIB):
        return False
    current = environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
    if not missing:
        return False
    environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return True
