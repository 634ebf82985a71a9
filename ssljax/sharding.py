"""The device mesh and the shardings of batches and train state.

Two mesh axes. ``data``: batches are split over it. ``fsdp`` (fully sharded data parallelism,
``config.sharding.fsdp`` devices, default 1 = absent): batches are split over it too, and
every large array of the train state (parameters, optimizer moments) is split along one of
its dimensions over it, so each device stores ``1/fsdp`` of them between steps. The train
step (``train.CompiledStep``) gathers the parameters once at its start and the update
writes each device's slice back (ZeRO-style: the stored parameters and the optimizer state
are split; during the step the whole parameters and the activations of the device's share
of the batch are live). Losses are written on the global batch, so the compiler inserts the
few collectives they need.

References:
  ZeRO (Rajbhandari et al., 2020); big_vision's ``fsdp`` sharding rule.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssljax.config import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(num_devices: int | None = None, *, fsdp: int = 1) -> Mesh:
    """A ``data`` mesh, or a ``(data, fsdp)`` mesh when ``fsdp > 1``, over all (or the first
    ``num_devices``) devices of all processes.

    >>> make_mesh(1).axis_names
    ('data',)
    """
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"Asked for {num_devices} devices but only {len(devices)} exist; "
                             "lower the device count.")
        devices = devices[:num_devices]
    n = len(devices)
    auto = jax.sharding.AxisType.Auto
    if fsdp <= 1:
        return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(auto,), devices=devices)
    if n % fsdp:
        raise ConfigError(f"sharding.fsdp={fsdp} does not divide the {n} devices; set "
                          f"--config.sharding.fsdp to a divisor of {n}.")
    return jax.make_mesh((n // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS), axis_types=(auto, auto),
                         devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch is split over: all of them (``data``, and ``fsdp`` if present)."""
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device; other axes whole."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Where an array of ``shape`` is split over ``fsdp`` devices: its largest dimension that
    ``fsdp`` divides, if the array has at least ``min_size`` elements; else nowhere.

    >>> fsdp_spec((3, 3, 64, 128), 4, min_size=0)
    P(None, None, None, 'fsdp')
    >>> fsdp_spec((10,), 4, min_size=0)  # no dimension divides: replicated
    P()
    """
    if fsdp <= 1 or not shape or int(np.prod(shape)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], -d)):
        if shape[dim] % fsdp == 0:
            return P(*(FSDP_AXIS if d == dim else None for d in range(len(shape))))
    return P()


def state_sharding(mesh: Mesh, abstract_state: Any, *, fsdp_min_size: int = 2 ** 14) -> Any:
    """Shardings for the train state: replicated on a ``data`` mesh; on a mesh with an
    ``fsdp`` axis, arrays of at least ``fsdp_min_size`` elements are split over it
    (:func:`fsdp_spec`), small ones (biases, norms, scalars) stay replicated."""
    if FSDP_AXIS not in mesh.axis_names:
        return jax.tree.map(lambda _: replicated(mesh), abstract_state)
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, fsdp_min_size)),
        abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ConfigError(f"batch_size={global_batch_size} does not divide over {n} devices; "
                         f"set --config.batch_size to a multiple of {n}.")
    if global_batch_size % jax.process_count():
        raise ConfigError(f"batch_size={global_batch_size} does not divide over "
                         f"{jax.process_count()} processes; use a multiple of it.")
