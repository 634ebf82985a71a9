"""Evaluation batches of in-memory arrays: every example once, in order; no TensorFlow
unless the images must be resized (moved here from ``pipeline`` so that a run with
``data.augment_on='device'`` on an in-memory dataset needs no TensorFlow at all)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["make_eval_batches"]


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be divisible by the number of "
            f"processes ({process_count}).")
    return global_batch_size // process_count


def _resize_center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to ``size`` (bilinear, antialiased) and centre-crops."""
    height, width = x.shape[1:3]
    if (height, width) == (size, size):
        return x
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    from ssljax.data._tf import tf  # only to resize: same-size evaluation needs no TensorFlow
    x = tf.image.resize(x, [new_h, new_w], method="bilinear", antialias=True).numpy()
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top:top + size, left:left + size]


def make_eval_batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields every example once, in order, without augmentation.

    ``batch_size`` is global: each process yields its contiguous share of each
    global batch, and all processes yield the same number of batches. The last
    global batch is padded to full size; ``mask`` marks the real examples.

    Args:
      images: uint8 ``[N, H, W, C]``.
      labels: int ``[N]``.
      batch_size: global batch size (divisible by ``process_count``).
      mean, std: per-channel normalisation in [0, 1] units.
      image_size: if given and different from the images, resize the shorter side
        to it and centre-crop.
      process_index, process_count: this process and how many read.

    Yields:
      ``{'image': float32 [b, S, S, C], 'label': int32 [b], 'mask': float32 [b]}``;
      padded rows have label 0 and mask 0.

    >>> x = np.zeros([5, 2, 2, 1], np.uint8)
    >>> [b["mask"].tolist() for b in make_eval_batches(x, np.arange(5), batch_size=4,
    ...                                                 mean=[0.], std=[1.])]
    [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    """
    local = _local_batch(batch_size, process_count)
    num_examples = len(images)
    labels = np.asarray(labels, np.int32)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    for first in range(0, num_examples, batch_size):
        index = first + process_index * local + np.arange(local)
        mask = index < num_examples
        index = np.where(mask, index, 0)
        x = images[index].astype(np.float32) / 255.0
        if image_size is not None:
            x = _resize_center_crop(x, image_size)
        yield {
            "image": (x - mean) / std,
            "label": np.where(mask, labels[index], 0).astype(np.int32),
            "mask": mask.astype(np.float32),
        }
