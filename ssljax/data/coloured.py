"""Coloured Fashion-MNIST: each grayscale image tinted with a random colour.

The tint of example i of a split is a fixed function of (split, i): a colour drawn
uniformly from the RGB cube and scaled so that its largest channel is 1, multiplied into the
grayscale image. The colour is independent of the label, so it is a nuisance a good view
should discard (InfoMin's view-learning experiment needs colour images; Fashion-MNIST is
grayscale).
"""

from __future__ import annotations

import numpy as np

__all__ = ["tint_colours", "tint"]

_SPLIT_SEEDS = {"train": 1, "test": 2}


def tint_colours(split: str, n: int) -> np.ndarray:
    """The ``[n, 3]`` tints of the first ``n`` examples of ``split`` (max channel 1).

    >>> tint_colours("train", 2).max(axis=1).tolist()
    [1.0, 1.0]
    """
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"Coloured Fashion-MNIST has splits {sorted(_SPLIT_SEEDS)}, not {split!r}.")
    rng = np.random.default_rng([20200607, _SPLIT_SEEDS[split]])
    colours = rng.uniform(0.05, 1.0, size=(n, 3))
    return colours / colours.max(axis=1, keepdims=True)


def tint(gray: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 1]`` grayscale images times ``[N, 3]`` colours: uint8 ``[N, H, W, 3]``."""
    out = gray.astype(np.float32) * colours[:, None, None, :].astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
