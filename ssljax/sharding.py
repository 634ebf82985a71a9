"""The device mesh and the shardings of batches and train state.

One mesh axis, ``data``: batches are split over it, the train state is replicated. Losses
are written on the global batch, so the compiler inserts the few collectives they need.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssljax.config import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices of all processes."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"Asked for {num_devices} devices but only {len(devices)} exist; "
                             "lower the device count.")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, abstract_state: Any) -> Any:
    """Shardings for the train state: replicated on every device (pure data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ConfigError(f"batch_size={global_batch_size} does not divide over {n} devices; "
                         f"set --config.batch_size to a multiple of {n}.")
    if global_batch_size % jax.process_count():
        raise ConfigError(f"batch_size={global_batch_size} does not divide over "
                         f"{jax.process_count()} processes; use a multiple of it.")
