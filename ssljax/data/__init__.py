"""Input pipeline: dataset sources, batched stateless augmentations, per-process pipelines.

Layers, each importing only those above it:

* ``specs``: settings and dataset facts (:class:`AugmentConfig`, :class:`MaskConfig`,
  :class:`JigsawConfig`, :class:`DatasetInfo`); no TensorFlow, no JAX.
* ``sources`` (in-memory arrays; NumPy) and ``transfer`` (host batches to global
  ``jax.Array`` batches); no TensorFlow.
* ``ops``: the shared batched image ops (TensorFlow, kept off accelerators by ``_tf``).
* ``augment`` (SimCLR's augmentation), ``randaugment``, ``jigsaw``, ``masking``: built on
  ``ops`` only (``augment`` also runs ``randaugment``); ``infomin_aug`` re-exports the
  last two under their old path.
* ``pipeline``: the tf.data pipelines of pre-training and evaluation.
* ``device_augment`` and ``device_input`` (JAX, no TensorFlow): ``data.augment_on='device'``,
  the views made inside the jitted step, fed by a NumPy host loop (in-memory data) or by
  ``pipeline.make_tfds_image_stream`` (decode and resize only); ``eval_batches``: the
  in-memory evaluation batches (TensorFlow only to resize).

Importing this package imports no TensorFlow: the names below that need it (the
augmentation and the pipelines) load their module on first use, so methods, models and
config checks that read data settings work where TensorFlow is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from ssljax.data.sources import (
    DatasetCorruptError,
    DatasetInfo,
    DatasetNotFoundError,
    dataset_info,
    load_arrays,
)
from ssljax.data.specs import (
    AugmentConfig,
    JigsawConfig,
    MaskConfig,
    augment_configs,
    batch_extras,
    jigsaw_config_from,
    mask_config_from,
    num_masked,
)
from ssljax.data.eval_batches import make_eval_batches
from ssljax.data.transfer import global_iterator, to_global
from ssljax.data import device_input  # noqa: E402  (JAX, no TensorFlow: augment_on='device')

# Names whose module imports TensorFlow: loaded on first access (PEP 562).
_LAZY = {
    "augment_batch": "ssljax.data.augment",
    "configure_tf": "ssljax.data.pipeline",
    "make_tfds_eval_stream": "ssljax.data.pipeline",
    "make_pretrain_dataset": "ssljax.data.pipeline",
    "make_tfds_stream": "ssljax.data.pipeline",
    "make_tfds_image_stream": "ssljax.data.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssljax.data' has no attribute {name!r}")


__all__ = [
    "AugmentConfig",
    "DatasetCorruptError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "JigsawConfig",
    "MaskConfig",
    "augment_batch",
    "augment_configs",
    "batch_extras",
    "configure_tf",
    "dataset_info",
    "global_iterator",
    "jigsaw_config_from",
    "load_arrays",
    "make_eval_batches",
    "make_tfds_eval_stream",
    "make_pretrain_dataset",
    "make_tfds_stream",
    "make_tfds_image_stream",
    "device_input",
    "mask_config_from",
    "num_masked",
    "to_global",
]
