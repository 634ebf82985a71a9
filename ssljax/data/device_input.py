"""The input of ``data.augment_on='device'``: a plain host loop, and the step's first stage.

With device augmentation the host only reads images (and, for streamed datasets, decodes and
resizes them to a fixed size: ``ssljax.data.pipeline.make_tfds_image_stream``); the views are
made inside the jitted train step by :func:`make_prepare`, from the global batch and the step.
For in-memory datasets (Fashion-MNIST's IDX files, arrays a user passes) the host side is
:func:`host_batches`, NumPy only, so a run needs no TensorFlow.

Batches on the host: ``{'image': uint8 [b, H, W, C], 'label': int32 [b]}`` (plus
``'source_shape'`` int32 ``[b, 2]`` from a resizing stream). After :func:`make_prepare`:
``{'views': float32 [B, V, S, S, C], 'label': [B]}`` (plus ``'masks'`` bool ``[B, V, g, g]``
for methods with masks), what every method expects.

This module imports no TensorFlow.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.data import device_augment
from ssljax.data.specs import AugmentConfig, MaskConfig, num_masked

__all__ = ["CHOICES", "resolve", "unsupported_reason", "host_batches", "make_prepare",
           "sample_masks", "source_size"]

CHOICES = ("auto", "host", "device")
_PERM_TAG, _MASK_TAG = 1, 4


def unsupported_reason(configs: Sequence[AugmentConfig], jigsaw: Any = None,
                       mask: MaskConfig | None = None) -> str | None:
    """One sentence naming the first op of a run's input that the device path lacks and the
    setting that avoids it; None when every op can run on the device. ``jigsaw`` and ``mask``
    are a method's extras (``ssljax.data.batch_extras``); masks are made on the device."""
    for v, cfg in enumerate(configs):
        for op, avoid in device_augment.unsupported(cfg):
            section = "data.augment" if v == 0 else "data.augment2"
            return (f"{op} ({section}.{avoid.split('=')[0]}={getattr(cfg, avoid.split('=')[0])}) "
                    "has no device implementation; set --config.data.augment_on=host (or "
                    f"--config.{section}.{avoid}).")
    if jigsaw:
        return ("The jigsaw view (data.jigsaw, InfoMin's PIRL view) has no device "
                "implementation; set --config.data.augment_on=host.")
    return None


def resolve(setting: str, backend: str, configs: Sequence[AugmentConfig],
            jigsaw: Any = None, mask: MaskConfig | None = None) -> tuple[bool, str]:
    """Whether the views are made on the device, and why.

    ``'auto'`` picks the device on accelerators (GPU, TPU) and the host on the CPU: on an
    accelerator the host's tf.data augmentation is the bottleneck (a few hundred examples/s
    per core at 224 px against thousands the step consumes), while on the CPU both paths share
    the same cores and the tf.data path runs beside the step, overlapped, for free. An
    ``'auto'`` run whose config needs a host-only op stays on the host.

    Raises:
      ValueError: ``'device'`` with an op the device path lacks (:func:`unsupported_reason`).
    """
    if setting not in CHOICES:
        raise ValueError(f"data.augment_on={setting!r} is not one of {', '.join(CHOICES)}; set "
                         "--config.data.augment_on to one of them.")
    reason = unsupported_reason(configs, jigsaw, mask)
    if setting == "device":
        if reason:
            raise ValueError(reason)
        return True, "data.augment_on=device"
    if setting == "host":
        return False, "data.augment_on=host"
    if backend == "cpu":
        return False, "data.augment_on=auto on the CPU: tf.data runs beside the step"
    if reason:
        return False, f"data.augment_on=auto stays on the host: {reason}"
    return True, f"data.augment_on=auto on {backend}: augmentation runs in the jitted step"


def source_size(image_size: int) -> int:
    """Side of the fixed-size images a streaming host sends for views of ``image_size``:
    ``ceil(image_size * 8 / 7)`` (256 for 224), the usual ImageNet resize. A crop of the whole
    image is then a downscale; a small crop (8% of the area) is upsampled from about a
    quarter fewer pixels than the decoded image would give (the price of a fixed shape).

    >>> source_size(224), source_size(32)
    (256, 37)
    """
    return int(math.ceil(image_size * 8 / 7))


# ----------------------------------------------------------------------------- host loop


def host_batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the global batch of every step from ``start_step`` on (NumPy).

    Step ``s`` reads positions ``(s % steps_per_epoch) * B + [0, B)`` of a permutation of the
    N examples drawn from ``(seed, s // steps_per_epoch)`` (the remainder of an epoch is
    dropped); this process keeps rows ``[p * b, (p + 1) * b)``. So the global batch of a step
    depends on ``(seed, step)`` only: a resumed run reads the batches an uninterrupted one
    reads, and the number of processes changes nothing.

    >>> x = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1)
    >>> b = next(host_batches(x, np.arange(8), global_batch_size=4, seed=0))
    >>> b["image"].shape, sorted(b["label"].tolist()) == sorted(b["image"].ravel().tolist())
    ((4, 1, 1, 1), True)
    """
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be divisible by the "
                         f"number of processes ({process_count}).")
    num = len(images)
    steps_per_epoch = num // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"global_batch_size={global_batch_size} exceeds the {num} examples.")
    local = global_batch_size // process_count
    lo = process_index * local
    epoch, perm = None, None
    for step in itertools.count(start_step):
        e, pos = divmod(step, steps_per_epoch)
        if e != epoch:
            epoch = e
            perm = np.random.default_rng([seed, _PERM_TAG, epoch]).permutation(num)
        index = perm[pos * global_batch_size + lo:pos * global_batch_size + lo + local]
        yield {"image": images[index], "label": labels[index]}


# ----------------------------------------------------------------------------- masks


def _block_scores(key, grid: int, num_blocks: int) -> jax.Array:
    """``ssljax.data.masking._block_scores`` for one example: ``[L]``."""
    k_c, k_r, k_n = jax.random.split(key, 3)
    centres = jax.random.uniform(k_c, [num_blocks, 2], maxval=float(grid))
    log_r = jax.random.uniform(k_r, [num_blocks, 1], minval=-1.0986123, maxval=1.0986123)
    scale = jnp.concatenate([jnp.exp(-0.5 * log_r), jnp.exp(0.5 * log_r)], axis=-1)
    ij = jnp.stack(jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32),
                                jnp.arange(grid, dtype=jnp.float32), indexing="ij"), -1)
    ij = ij.reshape(1, grid * grid, 2) + 0.5
    dist = jnp.max(jnp.abs(ij - centres[:, None]) * scale[:, None], axis=-1)
    return jnp.min(dist, axis=0) + jax.random.uniform(k_n, [grid * grid], maxval=1e-3)


def sample_masks(seed: int, step: jax.Array, batch: int, num_views: int, image_size: int,
                 cfg: MaskConfig) -> jax.Array:
    """Patch masks ``bool [batch, num_views, g, g]`` keyed by (seed, step, view, example):
    the kinds and counts of ``ssljax.data.masking.sample_masks`` (exactly
    ``num_masked(ratio, g * g)`` patches of each masked view; other views all False)."""
    grid = cfg.grid(image_size)
    length = grid * grid
    count = num_masked(cfg.ratio, length)
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _MASK_TAG), step)
    masks = []
    for v in range(num_views):
        if v not in cfg.views or count == 0:
            masks.append(jnp.zeros([batch, length], bool))
            continue
        keys = jax.vmap(lambda i, v=v: jax.random.fold_in(jax.random.fold_in(base, v), i))(
            jnp.arange(batch))
        if cfg.kind == "random":
            scores = jax.vmap(lambda k: jax.random.uniform(k, [length]))(keys)
        else:
            scores = jax.vmap(lambda k: _block_scores(k, grid, cfg.num_blocks))(keys)
        ranks = jnp.argsort(jnp.argsort(scores, axis=-1, stable=True), axis=-1, stable=True)
        masks.append(ranks < count)
    return jnp.stack(masks, axis=1).reshape(batch, num_views, grid, grid)


# ----------------------------------------------------------------------------- the step's stage


def make_prepare(
    *,
    configs: Sequence[AugmentConfig],
    seed: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mask: MaskConfig | None = None,
    jigsaw: Any = None,
) -> Callable[[Mapping[str, jax.Array], jax.Array], dict[str, jax.Array]]:
    """``prepare(batch, step) -> batch``: the first stage of the jitted step.

    ``mask`` and ``jigsaw`` are a method's extras (``ssljax.data.batch_extras``); a jigsaw
    view has no device implementation (:func:`resolve` keeps such runs on the host).

    Turns a host batch (``'image'``, ``'label'``, optional ``'source_shape'``) of the global
    batch into the views (and masks) of step ``step``; the masks are patch positions of the
    output views, so they line up with the views whatever the crop.
    """
    configs = tuple(configs)
    if jigsaw is not None:
        raise ValueError(unsupported_reason(configs, jigsaw))

    def prepare(batch: Mapping[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        out = {k: v for k, v in batch.items() if k not in ("image", "source_shape")}
        images = batch["image"]
        out["views"] = device_augment.augment_views(
            images, seed=seed, step=step, configs=configs, image_size=image_size, mean=mean,
            std=std, source_shape=batch.get("source_shape"))
        if mask is not None:
            out["masks"] = sample_masks(seed, step, images.shape[0], len(configs), image_size,
                                        mask)
        return out

    return prepare
