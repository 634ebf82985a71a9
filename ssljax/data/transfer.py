"""Host-to-device transfer: this process's share of a batch to global ``jax.Array`` batches.

Free of TensorFlow: the pipeline (``ssljax.data.pipeline``) produces host batches, and this
module places them on the mesh, a few batches ahead of the step.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

__all__ = ["to_global", "global_iterator"]


def to_global(batch: dict[str, Any], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Turns this process's share of a batch into global arrays (batch axis 0).

    Args:
      batch: pytree of host arrays (numpy or tf tensors), leading dim = local batch.
      sharding: e.g. ``NamedSharding(mesh, P('data'))``; used for every leaf.

    Returns:
      The same pytree of global ``jax.Array``s whose leading dim is the global batch.
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def global_iterator(
    ds: Iterable[dict[str, Any]],
    sharding: jax.sharding.Sharding,
    *,
    prefetch: int = 2,
) -> Iterator[dict[str, jax.Array]]:
    """Iterates a dataset as global arrays, ``prefetch`` batches ahead on device.

    The host-to-device copies are asynchronous, so keeping a couple of batches in
    flight overlaps the transfer with the running step.
    """
    # A tf.data.Dataset (duck-typed, so that this module needs no TensorFlow) or any iterable.
    source = ds.as_numpy_iterator() if hasattr(ds, "as_numpy_iterator") else iter(ds)
    queue: collections.deque = collections.deque()
    for batch in source:
        queue.append(to_global(batch, sharding))
        if len(queue) > prefetch:
            yield queue.popleft()
    while queue:
        yield queue.popleft()

