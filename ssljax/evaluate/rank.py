"""Effective rank of a set of embeddings: how many dimensions they really use.

Dimensional collapse (embeddings spanning a low-dimensional subspace) is what redundancy
reduction and information maximisation fight, so results.json reports this figure next to
the accuracies.
"""

from __future__ import annotations

import numpy as np


def effective_rank(features, *, center: bool = True, eps: float = 1e-12) -> float:
    """``exp(H(p))`` with ``p`` the normalised singular values of the ``[N, D]`` features.

    Between 1 (all embeddings on one line) and ``min(N, D)`` (singular values all equal).
    Features are centred first unless ``center=False``.

    References:
      Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.

    >>> round(effective_rank(np.eye(4), center=False), 6)
    4.0
    >>> round(effective_rank(np.outer(np.arange(1., 6.), np.ones(3)), center=False), 6)
    1.0
    """
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    if center:
        x = x - x.mean(0)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if total <= eps:
        return 0.0
    p = s / total
    p = p[p > eps]
    return float(np.exp(-np.sum(p * np.log(p))))
