"""Input pipeline: dataset sources, batched stateless augmentations, per-process pipelines.

Importing this package hides GPUs from TensorFlow so that tf.data never reserves
accelerator memory that JAX needs.
"""

import tensorflow as _tf

try:
    _tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised by the caller
    pass

from ssljax.data.augment import AugmentConfig, augment_batch  # noqa: E402
from ssljax.data.masking import MaskConfig, mask_config_from, num_masked  # noqa: E402
from ssljax.data.pipeline import (  # noqa: E402
    configure_tf,
    global_iterator,
    make_eval_batches,
    make_tfds_eval_stream,
    make_pretrain_dataset,
    make_tfds_stream,
    to_global,
)
from ssljax.data.sources import (  # noqa: E402
    DatasetInfo,
    DatasetCorruptError,
    DatasetNotFoundError,
    dataset_info,
    load_arrays,
)

__all__ = [
    "AugmentConfig",
    "DatasetCorruptError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "MaskConfig",
    "augment_batch",
    "configure_tf",
    "dataset_info",
    "global_iterator",
    "load_arrays",
    "make_eval_batches",
    "make_tfds_eval_stream",
    "make_pretrain_dataset",
    "make_tfds_stream",
    "mask_config_from",
    "num_masked",
    "to_global",
]
