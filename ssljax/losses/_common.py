"""Small helpers shared by the objectives (private)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(*xs: jax.typing.ArrayLike) -> jnp.dtype:
    """float32 for float16/bfloat16/float32 inputs, float64 only when an input is float64.

    Losses accumulate sums of exponentials and squares; doing that in bfloat16 loses
    the loss entirely, so everything is upcast once at the start.
    """
    dtype = jnp.float32
    for x in xs:
        dtype = jnp.promote_types(dtype, jnp.result_type(x))
    return jnp.dtype(dtype)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """`x / max(||x||, eps)`, the PyTorch `F.normalize` convention.

    Written as `x * rsqrt(max(sum x^2, eps^2))` so that an all-zero row has a zero
    gradient instead of the NaN that differentiating `sqrt` at 0 gives.
    """
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
