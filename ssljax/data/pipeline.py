"""Per-process tf.data pipelines that feed global ``jax.Array`` batches.

Pre-training data is *indexed by global step*: element ``s`` of
:func:`make_pretrain_dataset` is this process's share of the global batch of
training step ``s``, computed from ``(seed, s)`` alone. So a run restarted at step
``k`` sees exactly the batches an uninterrupted run sees from ``k`` on, and the
global batch does not depend on the number of processes that read it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from ssljax.data import augment as aug
from ssljax.data import jigsaw as jig
from ssljax.data import masking
from ssljax.data._tf import tf
from ssljax.data.eval_batches import _local_batch, make_eval_batches  # noqa: F401  (old home)
from ssljax.data.transfer import global_iterator, to_global  # noqa: F401  (their old home)

__all__ = [
    "configure_tf",
    "make_pretrain_dataset",
    "make_tfds_stream",
    "make_tfds_image_stream",
    "make_eval_batches",
    "make_tfds_eval_stream",
    "to_global",
    "global_iterator",
]

_TF_THREADS: int | None = None
# Streams derived from the user's seed; distinct tags keep them independent.
_PERM_TAG, _AUG_TAG, _CROP_TAG, _MASK_TAG = 1, 2, 3, 4
_JIGSAW_TAG = 1_000_003  # folded in after the example index, where views fold 0..V-1


def configure_tf(threads: int | None = None) -> None:
    """Keeps TensorFlow off accelerators and bounds its CPU threads.

    TF shares the host with JAX: it must not reserve GPU memory, and on a small CPU
    its default thread pools (one thread per core, twice) starve the train step.

    Args:
      threads: size of the private thread pool of every dataset built afterwards by
        this module (and, if TF has not started yet, of TF's global pools). None
        leaves TF's defaults.
    """
    global _TF_THREADS
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised; it then holds no GPU if hidden earlier
        pass
    if threads is not None:
        if threads < 1:
            raise ValueError(f"configure_tf(threads) needs threads >= 1 or None, got {threads}.")
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised: the per-dataset pool still applies
            pass
    _TF_THREADS = threads


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if _TF_THREADS is not None:
        options.threading.private_threadpool_size = _TF_THREADS
        options.threading.max_intra_op_parallelism = 1
        options.autotune.cpu_budget = _TF_THREADS
    return options


def _view_configs(augment, num_views: int) -> list[aug.AugmentConfig]:
    if isinstance(augment, aug.AugmentConfig):
        return [augment] * num_views
    configs = list(augment)
    if len(configs) != num_views:
        raise ValueError(
            f"Got {len(configs)} augmentation configs for num_views={num_views}; "
            "pass one config, or one per view.")
    return configs


def _normalize(x, mean, std):
    mean = tf.constant(np.asarray(mean, np.float32))
    std = tf.constant(np.asarray(std, np.float32))
    return (x - mean) / std


def _multi_view(images, seed, global_batch_size, start, configs, image_size, mean, std):
    """Augments uint8 ``images`` (rows ``start:start+b`` of the global batch) into V views.

    The parameters are drawn for the whole global batch and then sliced, so every
    process draws the same numbers for the same example.
    """
    height, width, channels = images.shape[1:]
    x = tf.cast(images, tf.float32) / 255.0
    local = images.shape[0]  # static, so every op below has a known shape
    views = []
    for v, cfg in enumerate(configs):
        params = aug.sample_params(
            aug.fold_seed(seed, v), global_batch_size, (height, width, channels), cfg)
        views.append(aug.apply_params(x, aug.slice_params(params, start, start + local), image_size))
    return _normalize(tf.stack(views, axis=1), mean, std)


def _jigsaw_view(images, seed, global_batch_size, start, cfg, mean, std):
    """The jigsaw view of uint8 ``images`` (rows ``start:start+b`` of the global batch)."""
    x = tf.cast(images, tf.float32) / 255.0
    params = jig.sample_jigsaw(seed, global_batch_size, images.shape[1], images.shape[2], cfg)
    params = aug.slice_params(params, start, start + images.shape[0])
    return _normalize(jig.jigsaw_patches(x, params, cfg), mean, std)


def make_pretrain_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    num_views: int,
    augment: aug.AugmentConfig | Sequence[aug.AugmentConfig],
    seed: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    jigsaw: Any = None,
    mask: masking.MaskConfig | None = None,
) -> tf.data.Dataset:
    """Infinite dataset of multi-view batches, one element per training step.

    For step ``s``: ``epoch = s // steps_per_epoch`` (``N // global_batch_size``,
    the remainder is dropped), a permutation of the N examples derived statelessly
    from ``(seed, epoch)`` picks the global batch, and the augmentation parameters
    of the whole global batch are drawn from ``(seed, s, view)``; this process keeps
    rows ``[process_index * b, (process_index + 1) * b)`` with
    ``b = global_batch_size // process_count``.

    Args:
      images: uint8 ``[N, H, W, C]``, held in memory.
      labels: int ``[N]``.
      global_batch_size: examples per step over all processes.
      num_views: V, augmented views of each example.
      augment: one config for every view, or a list of V (asymmetric views).
      seed: data seed (order and augmentations).
      image_size: side of the square output views.
      mean, std: per-channel normalisation in [0, 1] units.
      start_step: the first element is the batch of this step (resuming).
      process_index, process_count: this process and how many read.
      jigsaw: an ``ssljax.data.specs.JigsawConfig`` adds a PIRL jigsaw view of each example,
        ``'jigsaw': float32 [b, 9, P, P, C]`` (normalised like the views).
      mask: if given, each element also carries ``'masks'``: bool ``[b, V, S/p, S/p]``
        patch masks (:mod:`ssljax.data.masking`), drawn for the global batch from
        ``(seed, s)``.

    Returns:
      A ``tf.data.Dataset`` of ``{'views': float32 [b, V, S, S, C], 'label': int32 [b]}``
      (plus ``'masks'`` with ``mask``).

    >>> x = np.zeros([8, 28, 28, 1], np.uint8); y = np.arange(8)
    >>> ds = make_pretrain_dataset(x, y, global_batch_size=4, num_views=2,
    ...     augment=aug.AugmentConfig(), seed=0, image_size=28, mean=[0.5], std=[0.5])
    >>> next(iter(ds))["views"].shape
    TensorShape([4, 2, 28, 28, 1])
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
    num_examples = images.shape[0]
    if len(labels) != num_examples:
        raise ValueError(f"{num_examples} images but {len(labels)} labels.")
    local = _local_batch(global_batch_size, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    steps_per_epoch = num_examples // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"global_batch_size={global_batch_size} exceeds the {num_examples} examples.")
    configs = _view_configs(augment, num_views)

    images_t = tf.Variable(images, trainable=False)
    labels_t = tf.constant(np.asarray(labels, np.int32))
    base = tf.constant([seed, 0], tf.int64)
    perm_seed = aug.fold_seed(base, _PERM_TAG)
    aug_seed = aug.fold_seed(base, _AUG_TAG)
    mask_seed = aug.fold_seed(base, _MASK_TAG)
    lo = process_index * local
    if mask is not None:
        mask.grid(image_size)  # a patch size that does not divide the image fails here

    @tf.autograph.experimental.do_not_convert  # plain Python control flow; faster tracing
    def make_batch(step):
        epoch = step // steps_per_epoch
        positions = (step % steps_per_epoch) * global_batch_size + lo + tf.range(local, dtype=tf.int64)
        index = tf.random.experimental.index_shuffle(
            positions, aug.fold_seed(perm_seed, epoch), tf.constant(num_examples - 1, tf.int64))
        local_images = tf.gather(images_t, index)
        views = _multi_view(
            local_images, aug.fold_seed(aug_seed, step), global_batch_size, lo,
            tuple(configs), image_size, tuple(mean), tuple(std))
        out = {"views": views, "label": tf.gather(labels_t, index)}
        if jigsaw is not None:
            out["jigsaw"] = _jigsaw_view(local_images, aug.fold_seed(aug_seed, step),
                                         global_batch_size, lo, jigsaw, mean, std)
        if mask is not None:
            masks = masking.sample_masks(aug.fold_seed(mask_seed, step), global_batch_size,
                                         num_views, image_size, mask)
            out["masks"] = masks[lo:lo + local]
        return out

    ds = tf.data.Dataset.counter(start_step, dtype=tf.int64)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def make_tfds_stream(
    name: str,
    split: str,
    *,
    global_batch_size: int,
    num_views: int,
    augment: aug.AugmentConfig | Sequence[aug.AugmentConfig],
    seed: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    data_dir: str | None = None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle_buffer: int = 10_000,
    jigsaw: Any = None,
    mask: masking.MaskConfig | None = None,
) -> tf.data.Dataset:
    """Infinite multi-view stream from a TFDS dataset too large for memory (ImageNet).

    Each process reads its own slice of the split (``tfds.split_for_jax_process``)
    with shuffled files and a shuffle buffer, decodes each image once and takes V
    random resized crops of it; the remaining augmentations run batched. Each pass over
    the process's slice reads every example once. Unlike :func:`make_pretrain_dataset` the
    order is not a function of the step: a restart at ``start_step`` draws a fresh (seeded)
    order and fresh augmentations, so it replays none of the batches before the restart.

    Args:
      name: TFDS name, e.g. ``imagenet2012``; must be prepared in ``data_dir``.
      split: split to read, e.g. ``'train'``.
      global_batch_size, num_views, augment, seed, image_size, mean, std: as for
        :func:`make_pretrain_dataset`.
      data_dir: TFDS data directory.
      start_step: folded into the seeds so that a resumed run does not replay.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
      shuffle_buffer: examples in the shuffle buffer per process.
      jigsaw: as for :func:`make_pretrain_dataset`.
      mask: as for :func:`make_pretrain_dataset` (masks drawn per process and batch).

    Returns:
      A ``tf.data.Dataset`` of ``{'views': float32 [b, V, S, S, 3], 'label': int32 [b]}``
      (plus ``'masks'`` with ``mask``).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = _local_batch(global_batch_size, process_count)
    configs = _view_configs(augment, num_views)
    base = aug.fold_seed(tf.constant([seed, 0], tf.int64), process_index, start_step)
    ds = _open_tfds_train(name, split, data_dir=data_dir, seed=seed, start_step=start_step,
                          process_index=process_index, process_count=process_count,
                          shuffle_buffer=shuffle_buffer)

    crop_seed = aug.fold_seed(base, _CROP_TAG)
    aug_seed = aug.fold_seed(base, _AUG_TAG)

    @tf.autograph.experimental.do_not_convert
    def decode_and_crop(i, example):
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32)[None] / 255.0
        shape = tf.shape(image)
        views = []
        for v, cfg in enumerate(configs):
            crop = aug.sample_crop(  # one example of dynamic shape
                aug.fold_seed(crop_seed, i, v), 1, shape[1], shape[2], cfg.crop_scale, cfg.crop_ratio)
            views.append(aug.random_resized_crop(image, crop, image_size)[0])
        if jigsaw is not None:
            params = jig.sample_jigsaw(aug.fold_seed(crop_seed, i, _JIGSAW_TAG), 1, shape[1],
                                       shape[2], jigsaw)
            patches = _normalize(jig.jigsaw_patches(image, params, jigsaw), mean, std)[0]
            return tf.stack(views), tf.cast(example["label"], tf.int32), patches
        return tf.stack(views), tf.cast(example["label"], tf.int32)

    @tf.autograph.experimental.do_not_convert
    def augment_rest(step, batch):
        crops, label = batch[:2]
        views = []
        for v, cfg in enumerate(configs):
            params = aug.sample_params(
                aug.fold_seed(aug_seed, step, v), local, (image_size, image_size, 3), cfg, crop=False)
            views.append(aug.apply_params(crops[:, v], params))
        out = {"views": _normalize(tf.stack(views, axis=1), mean, std), "label": label}
        if jigsaw is not None:
            out["jigsaw"] = batch[2]
        if mask is not None:
            out["masks"] = masking.sample_masks(aug.fold_seed(base, _MASK_TAG, step), local,
                                                num_views, image_size, mask)
        return out

    ds = ds.map(decode_and_crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).enumerate()
    ds = ds.map(augment_rest, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _open_tfds_train(name, split, *, data_dir, seed, start_step, process_index, process_count,
                     shuffle_buffer):
    """This process's slice of a TFDS split for pre-training: undecoded, file- and
    buffer-shuffled, repeated and enumerated."""
    from ssljax import _extras
    tfds = _extras.require("tensorflow_datasets", part=f"Streaming {name!r} through TFDS")

    from ssljax.data.sources import DatasetNotFoundError

    process_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count)
    read_config = tfds.ReadConfig(shuffle_seed=int(seed) + 1000003 * process_index + start_step)
    try:
        ds = tfds.builder(name, data_dir=data_dir).as_dataset(
            split=process_split, shuffle_files=True, read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()})
    except (tfds.core.DatasetNotFoundError, AssertionError, FileNotFoundError) as e:
        where = data_dir or "~/tensorflow_datasets"
        manual = (f" (after putting the ILSVRC2012 tar files in {where}/downloads/manual)"
                  if name.startswith("imagenet") else "")
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {where}; run "
            f"`tfds build {name} --data_dir={where}`{manual} first.") from e
    # Shuffled within each pass, then repeated: every epoch reads each example of this
    # process's slice exactly once, in a new (seeded) order.
    ds = ds.shuffle(shuffle_buffer, seed=int(seed) + process_index + 7919 * start_step,
                    reshuffle_each_iteration=True).repeat()
    return ds.enumerate()


def make_tfds_image_stream(
    name: str,
    split: str,
    *,
    global_batch_size: int,
    seed: int,
    image_size: int,
    data_dir: str | None = None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """The host half of ``data.augment_on='device'`` for a streamed dataset (ImageNet).

    Reads and shuffles like :func:`make_tfds_stream`, decodes each image and resizes it
    (bilinear, aspect not kept) to ``image_size x image_size`` uint8; no augmentation. The
    device draws each crop on the decoded size, carried as ``'source_shape'``, and maps it to
    the resized image (``ssljax.data.device_augment.augment_views``).

    Returns:
      A ``tf.data.Dataset`` of ``{'image': uint8 [b, S, S, 3], 'source_shape': int32 [b, 2],
      'label': int32 [b]}``.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = _local_batch(global_batch_size, process_count)
    ds = _open_tfds_train(name, split, data_dir=data_dir, seed=seed, start_step=start_step,
                          process_index=process_index, process_count=process_count,
                          shuffle_buffer=shuffle_buffer)
    ds = ds.map(lambda i, example: decode_and_resize(example, image_size),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


@tf.autograph.experimental.do_not_convert
def decode_and_resize(example, image_size: int):
    """One TFDS example to ``{'image': uint8 [S, S, 3], 'source_shape', 'label'}``."""
    image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
    shape = tf.shape(image)[:2]
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
            "source_shape": tf.cast(shape, tf.int32),
            "label": tf.cast(example["label"], tf.int32)}


def _split_size(builder, split: str, read) -> int:
    """Examples in ``split``: from the dataset's metadata, or counted where it has none."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        return int(read(split).reduce(0, lambda n, _: n + 1))


def make_tfds_eval_stream(
    name: str,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    data_dir: str | None = None,
    max_examples: int = 0,
    crop_fraction: float = 0.875,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of a TFDS split too large for memory (ImageNet) once, in order.

    The streamed counterpart of :func:`make_eval_batches`, for frozen-feature evaluation:
    each process reads its own part of the split (``tfds.even_splits``, the split
    ``tfds.split_for_jax_process`` makes), resizes the shorter side to
    ``image_size / crop_fraction`` and centre-crops ``image_size`` (the usual ImageNet
    evaluation transform). All processes yield the same number of batches; the last ones
    are padded, and ``mask`` marks the real examples.

    Args:
      name, split: TFDS dataset and split, e.g. ``('imagenet2012', 'validation')``.
      batch_size: global batch size (divisible by the process count).
      image_size, mean, std: the evaluation resolution and normalisation.
      data_dir: TFDS data directory.
      max_examples: if > 0, only the first ``max_examples`` examples of the split.
      crop_fraction: centre-crop fraction of the resized image.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.

    Yields:
      ``{'image': float32 [b, S, S, 3], 'label': int32 [b], 'mask': float32 [b]}``.
    """
    from ssljax import _extras
    from ssljax.data.sources import DatasetNotFoundError
    tfds = _extras.require("tensorflow_datasets", part=f"Streaming {name!r} through TFDS")

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = _local_batch(batch_size, process_count)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if max_examples > 0:
            split = f"{split}[:{max_examples}]"
        parts = tfds.even_splits(split, n=process_count)
        read = lambda part: builder.as_dataset(  # noqa: E731
            split=part, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        counts = [_split_size(builder, part, read) for part in parts]
        ds = read(parts[process_index])
    except (tfds.core.DatasetNotFoundError, AssertionError, FileNotFoundError) as e:
        where = data_dir or "~/tensorflow_datasets"
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {where}; run "
            f"`tfds build {name} --data_dir={where}` first.") from e
    num_batches = -(-max(counts) // local)
    resize_to = int(round(image_size / crop_fraction))

    @tf.autograph.experimental.do_not_convert
    def preprocess(example):
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32) / 255.0
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = resize_to / tf.reduce_min(shape)
        new = tf.cast(tf.math.round(shape * scale), tf.int32)
        new = tf.maximum(new, image_size)
        image = tf.image.resize(image, new, method="bilinear", antialias=True)
        image = tf.image.crop_to_bounding_box(image, (new[0] - image_size) // 2,
                                              (new[1] - image_size) // 2, image_size, image_size)
        return {"image": _normalize(image, mean, std),
                "label": tf.cast(example["label"], tf.int32), "mask": tf.constant(1.0)}

    pad = num_batches * local - counts[process_index]
    padding = tf.data.Dataset.from_tensors({
        "image": tf.zeros([image_size, image_size, 3], tf.float32),
        "label": tf.constant(0, tf.int32), "mask": tf.constant(0.0)}).repeat(pad)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(padding).batch(local).prefetch(tf.data.AUTOTUNE)
    yield from ds.as_numpy_iterator()
