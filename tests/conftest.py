"""Every test process sees 8 fake CPU devices, so sharding tests need no accelerator."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The suite runs XLA's own CPU kernels, the numerics its tolerances were set on: ssljax's CPU
# defaults (ssljax/xla_flags.py) change float32 summation order, which the 6-step width-4
# trajectory in test_train amplifies. tests/test_xla_flags.py checks the defaults themselves.
os.environ.setdefault("SSLJAX_XLA_CPU_DEFAULTS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
# Several tests compile the same train step; the on-disk cache compiles each program once.
jax.config.update("jax_compilation_cache_dir", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
