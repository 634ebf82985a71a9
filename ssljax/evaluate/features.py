"""Frozen-encoder features of a whole dataset, computed sharded over the mesh."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from ssljax import data, sharding


def extract_features(embed: Callable[[jax.Array], jax.Array], images: np.ndarray,
                     labels: np.ndarray, *, mesh: Mesh, batch_size: int, mean, std,
                     image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``embed`` applied to every example once; returns ``(features [N, D], labels [N])``.

    ``embed`` may return a pytree of ``[B, D_i]`` arrays (e.g. a dict of named features); the
    features returned are then the same pytree of ``[N, D_i]`` arrays.

    Every process passes the whole ``images``/``labels`` arrays; each feeds its own share of
    every batch (``make_eval_batches``), and the compiled function replicates the features,
    so every process returns all examples.
    """
    batch_size -= batch_size % mesh.devices.size
    return features_of_batches(embed, data.make_eval_batches(
        images, labels, batch_size=batch_size, mean=mean, std=std, image_size=image_size,
        process_index=jax.process_index(), process_count=jax.process_count()), mesh=mesh)


def features_of_batches(embed: Callable[[jax.Array], Any], batches: Iterable[dict[str, Any]], *,
                        mesh: Mesh) -> tuple[Any, np.ndarray]:
    """``embed`` over evaluation batches (``{'image', 'label', 'mask'}``, this process's share
    of each global batch, as :func:`ssljax.data.make_eval_batches` and
    :func:`ssljax.data.make_tfds_eval_stream` yield them); padded rows (mask 0) are dropped.
    Every process returns the features of all processes' examples."""
    batch_sharding = sharding.batch_sharding(mesh)
    # Labels and the padding mask travel with the features, so every host gets all three.
    embed_fn = jax.jit(lambda b: (embed(b["image"]), b["label"], b["mask"]),
                       out_shardings=sharding.replicated(mesh))
    feats, labs = [], []
    for batch in batches:
        f, y, mask = jax.device_get(embed_fn(data.to_global(batch, batch_sharding)))
        keep = mask > 0
        feats.append(jax.tree.map(lambda a: np.asarray(a, np.float32)[keep], f))
        labs.append(y[keep])
    return jax.tree.map(lambda *xs: np.concatenate(xs), *feats), np.concatenate(labs)
