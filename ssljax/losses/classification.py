"""The supervised objective of the cross-entropy baselines."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["cross_entropy"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and top-1 accuracy (float32) of ``[N, C]`` logits.

    >>> ce, acc = cross_entropy(jnp.array([[2.0, 0.0], [0.0, 2.0]]), jnp.array([0, 0]))
    >>> print(f"{ce:.4f} {acc:.1f}")
    1.1269 0.5
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce, jnp.mean(jnp.argmax(logits, -1) == labels)
