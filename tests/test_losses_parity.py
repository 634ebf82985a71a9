"""Reference parity: value and gradient against float64 NumPy transcriptions of the
official code (tests/test_losses_refs.py), in float64 (1e-5) and float32 (1e-4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssljax.losses as L
from test_losses_refs import nt_xent_metamask_ref, nt_xent_ref, numeric_grad

RTOL = {np.float64: 1e-5, np.float32: 1e-4}


def _rng(seed):
  return np.random.default_rng(seed)


def _assert_close(actual, expected, rtol, what=""):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  # Relative to the array's scale: entries of a gradient that are ~0 carry no information.
  scale = max(np.max(np.abs(expected)), 1e-12)
  err = np.max(np.abs(actual - expected)) / scale
  assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def _check(jax_fn, ref_fn, inputs, dtype, argnums=(0,)):
  """Value and gradients of jax_fn(*inputs) vs ref_fn(*inputs) (float64 NumPy)."""
  rtol = RTOL[dtype]
  expected = ref_fn(*inputs)
  with jax.enable_x64(dtype == np.float64):
    args = [jnp.asarray(x, dtype) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
            for x in inputs]
    value, grads = jax.value_and_grad(jax_fn, argnums=argnums)(*args)
    assert value.dtype == (jnp.float64 if dtype == np.float64 else jnp.float32)
  _assert_close(value, expected, rtol, "value")
  for argnum, g in zip(argnums, grads):
    _assert_close(g, numeric_grad(ref_fn, *inputs, argnum=argnum), rtol, f"grad[{argnum}]")


SHAPES = [(2, 3), (8, 5), (13, 16)]
DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_size", [None, 3])
def test_nt_xent_matches_lightly(shape, dtype, block_size):
  r = _rng(sum(shape))
  z1, z2 = r.normal(size=shape), r.normal(size=shape)
  _check(lambda a, b: L.nt_xent(a, b, temperature=0.3, block_size=block_size),
         lambda a, b: nt_xent_ref(a, b, 0.3), [z1, z2], dtype, argnums=(0, 1))


def test_nt_xent_matches_metamask_form():
  r = _rng(1)
  z1, z2 = r.normal(size=(6, 4)), r.normal(size=(6, 4))
  _check(lambda a, b: L.nt_xent(a, b, temperature=0.07),
         lambda a, b: nt_xent_metamask_ref(a, b, 0.07), [z1, z2], np.float64, argnums=(0, 1))
