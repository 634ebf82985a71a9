"""Weighted k-nearest-neighbour classification on L2-normalised features (Wu et al., 2018).

Each test example votes with its ``k`` most cosine-similar training examples, weighted by
``exp(similarity / temperature)``; the class with the largest total weight wins. This is
the monitor of InstDisc, MoCo and MetaMask (MetaMask: k = 5, temperature = 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_logits(train_f, train_y, test_f, *, k: int, temperature: float, num_classes: int):
    sim = test_f @ train_f.T  # [b, N]
    top_sim, top_idx = jax.lax.top_k(sim, k)
    weights = jnp.exp(top_sim / temperature)
    votes = jax.nn.one_hot(train_y[top_idx], num_classes) * weights[..., None]
    return votes.sum(axis=1)


def _normalize(x: np.ndarray) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                *, k: int = 200, temperature: float = 0.1, num_classes: int,
                chunk_size: int = 1024) -> np.ndarray:
    """Predicted class of each test example, ``[num_test]``."""
    if not 0 < k <= len(train_features):
        raise ValueError(f"knn k={k} must be between 1 and the number of training examples "
                         f"({len(train_features)}).")
    train_f = _normalize(train_features)
    test_f = _normalize(test_features)
    train_y = jnp.asarray(train_labels, jnp.int32)
    preds = []
    for start in range(0, len(test_f), chunk_size):
        logits = _knn_logits(train_f, train_y, test_f[start:start + chunk_size], k=k,
                             temperature=temperature, num_classes=num_classes)
        preds.append(np.asarray(jnp.argmax(logits, axis=-1)))
    return np.concatenate(preds)


def knn_top1(train_features, train_labels, test_features, test_labels, *, k: int = 200,
             temperature: float = 0.1, num_classes: int) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of the weighted kNN classifier."""
    preds = knn_predict(train_features, train_labels, test_features, k=k,
                        temperature=temperature, num_classes=num_classes)
    return float(np.mean(preds == np.asarray(test_labels)))
