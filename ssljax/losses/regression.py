"""Regression objective of BYOL: predict the target network's projection."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssljax.losses._common import compute_dtype, l2_normalize

__all__ = ["byol"]


def byol(p: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL's normalised regression loss, `mean_i(2 - 2 cos(p_i, z_i))`.

    Computed as the official code does, `||p/||p|| - z/||z||||^2` (equal to
    `2 - 2 cos`), with the target `z` under `stop_gradient`. Symmetrise by calling it
    twice: `byol(p1, z2) + byol(p2, z1)` is the official loss.

    Args:
        p: `[N, D]` online predictor outputs.
        z: `[N, D]` target (EMA) projections of the other view; never differentiated.

    Returns:
        Scalar float32 loss (float64 for float64 inputs), in `[0, 4]`.

    References:
        Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020;
        deepmind-research `byol/utils/helpers.py` (`regression_loss`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import byol
        >>> p = jnp.array([[1.0, 0.0], [0.0, 2.0]])
        >>> z = jnp.array([[3.0, 0.0], [1.0, 0.0]])
        >>> print(f"{byol(p, z):.4f}")
        1.0000
    """
    if p.shape != z.shape or p.ndim < 1:
        raise ValueError(
            f"byol needs p and z of the same shape [N, D]; got {p.shape} and {z.shape}.")
    dtype = compute_dtype(p, z)
    pn = l2_normalize(p.astype(dtype))
    zn = jax.lax.stop_gradient(l2_normalize(z.astype(dtype)))
    return jnp.mean(jnp.sum(jnp.square(pn - zn), axis=-1))
