"""ssljax's CPU XLA defaults: when they are added, that XLA accepts them, that they change the
compiled program (no YNNPACK fusions) and not its results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ssljax import xla_flags

FLAG = xla_flags.CPU_FLAGS[0]


def test_added_to_empty_and_existing_flags():
    env = {}
    assert xla_flags.apply_cpu_defaults(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"] == FLAG
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_flags.apply_cpu_defaults(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
    # A second call adds nothing.
    assert not xla_flags.apply_cpu_defaults(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_user_setting_opt_out_and_unverified_jaxlib_left_alone():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}
    assert not xla_flags.apply_cpu_defaults(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
    env = {"SSLJAX_XLA_CPU_DEFAULTS": "0"}
    assert not xla_flags.apply_cpu_defaults(env, jaxlib_version="0.10.2")
    assert "XLA_FLAGS" not in env
    env = {}
    assert not xla_flags.apply_cpu_defaults(env, jaxlib_version="0.9.2")
    assert not xla_flags.apply_cpu_defaults(env, jaxlib_version="")
    assert env == {}


# A ResNet block's gradient, the compiled program's text and the XLA_FLAGS the process saw.
_PROBE = r"""
import json, os, sys
import ssljax, jax, jax.numpy as jnp, numpy as np
from ssljax.models import resnet
model = resnet('resnet18', width=4, stem_stride=2)
x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 28, 28, 1)), jnp.float32)
v = model.init(jax.random.key(0), x, train=False)
def loss(p):
    y, _ = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(y ** 2)
grad = jax.jit(jax.grad(loss))
g = grad(v['params'])
np.save(sys.argv[1], np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]))
text = grad.lower(v['params']).compile().as_text()
print(json.dumps({'flags': os.environ.get('XLA_FLAGS', ''), 'ynn': '__ynn_fusion' in text}))
"""


def _probe(tmp_path, name, **env):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "SSLJAX_XLA_CPU_DEFAULTS": "1", **env}
    out = tmp_path / f"{name}.npy"
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(out)], env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


@pytest.mark.skipif(not xla_flags._jaxlib_version().startswith(xla_flags._VERIFIED_JAXLIB),
                    reason="the defaults apply to verified jaxlib versions only")
@pytest.mark.slow  # about 40 s: compiles a train step under three flag sets
def test_xla_accepts_the_flag_it_removes_ynn_fusions_and_keeps_the_gradients(tmp_path):
    on, g_on = _probe(tmp_path, "on")
    off, g_off = _probe(tmp_path, "off", SSLJAX_XLA_CPU_DEFAULTS="0")
    assert FLAG in on["flags"] and FLAG not in off["flags"]
    # The flag reaches XLA: the default program uses YNNPACK fusions, ours none.
    assert off["ynn"] and not on["ynn"]
    np.testing.assert_allclose(g_on, g_off, rtol=2e-4, atol=2e-4 * np.abs(g_off).max())


# With the defaults on, a batch sharded over 8 devices gives the 1-device gradient: BatchNorm
# statistics and the loss span the global batch (a per-device mistake moves it by percents).
_SHARDED = r"""
import sys
import jax
jax.config.update('jax_num_cpu_devices', 8)
import ssljax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ssljax.models import resnet
model = resnet('resnet18', width=4, stem_stride=2)
x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 28, 28, 1)), jnp.float32)
v = model.init(jax.random.key(0), x, train=False)
def loss(p, x):
    y, _ = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y))
grad = jax.jit(jax.grad(loss))
mesh = Mesh(np.array(jax.devices()), ('data',))
g8 = grad(v['params'], jax.device_put(x, NamedSharding(mesh, P('data'))))
g1 = grad(v['params'], x)
flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
np.save(sys.argv[1], np.stack([flat(g1), flat(g8)]))
"""


@pytest.mark.skipif(not xla_flags._jaxlib_version().startswith(xla_flags._VERIFIED_JAXLIB),
                    reason="the defaults apply to verified jaxlib versions only")
@pytest.mark.slow  # about 25 s idle: a fresh process compiles for one and eight devices
def test_with_the_defaults_eight_devices_give_the_one_device_gradient(tmp_path):
    out = tmp_path / "g.npy"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "SSLJAX_XLA_CPU_DEFAULTS": "1"}
    proc = subprocess.run([sys.executable, "-c", _SHARDED, str(out)], env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    g1, g8 = np.load(out)
    # Measured: 4e-5 of the largest entry (XLA's default kernels: 5e-6).
    np.testing.assert_allclose(g8, g1, rtol=0, atol=5e-4 * np.abs(g1).max())
