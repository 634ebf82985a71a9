"""Settings and specs of the input pipeline, free of TensorFlow.

What a method, the trainer or a config check needs to know about the data without building
a pipeline: the augmentation of a view (:class:`AugmentConfig`), MRCL's patch masks
(:class:`MaskConfig`), InfoMin's jigsaw view (:class:`JigsawConfig`) and the static facts of
each dataset (:class:`DatasetInfo`: classes, image shape, normalisation, split sizes).
Importing this module imports neither TensorFlow nor JAX; the modules that implement these
settings with tf.data (``augment``, ``masking``, ``jigsaw``, ``pipeline``) import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AugmentConfig",
    "DatasetInfo",
    "JigsawConfig",
    "KINDS",
    "MaskConfig",
    "augment_configs",
    "batch_extras",
    "dataset_info",
    "jigsaw_config_from",
    "mask_config_from",
    "num_masked",
]


# ----------------------------------------------------------------------------- augmentation

@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one view's augmentation; defaults are SimCLR's CIFAR recipe.

    Attributes:
      crop_scale: range of the crop's area as a fraction of the image area.
      crop_ratio: range of the crop's aspect ratio (width / height), log-uniform.
      flip_p: probability of a horizontal flip.
      jitter_p: probability of colour jitter.
      brightness, contrast, saturation: jitter strength ``s``; factors are drawn from
        ``U[max(0, 1 - s), 1 + s]``. 0 disables the op.
      hue: hue shift drawn from ``U[-hue, hue]`` (fraction of the colour wheel).
      jitter_random_order: apply the four jitter ops in a random order per example
        (torchvision / SimCLR); False uses brightness, contrast, saturation, hue.
      grayscale_p: probability of converting to grayscale (no-op for 1 channel).
      blur_p: probability of a Gaussian blur.
      blur_sigma: range of the blur's standard deviation in pixels; the kernel reaches
        ``ceil(4 * blur_sigma[1])`` pixels each side (see :func:`blur_radius`).
      solarize_p: probability of solarizing (``x >= 0.5 -> 1 - x``).
      randaugment_n: RandAugment ops per image (InfoMin Aug: 2); 0 disables it. When on,
        the order is InfoMin Aug's: crop, flip, jitter, blur, RandAugment, grayscale
        (see ``ssljax.data.infomin_aug``).
      randaugment_m: RandAugment's magnitude (0-10).
      randaugment_mstd: standard deviation of the per-op magnitude noise.
      randaugment_p: probability of applying each drawn op.
      randaugment_fill: 8-bit fill colour of the geometric ops (one value per channel, or
        RGB whose luma fills 1-channel images).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_random_order: bool = True
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    randaugment_n: int = 0
    randaugment_m: float = 10.0
    randaugment_mstd: float = 0.5
    randaugment_p: float = 0.5
    randaugment_fill: tuple[float, ...] = (124.0, 116.0, 104.0)

    def __post_init__(self):
        object.__setattr__(self, "randaugment_fill",
                           tuple(float(v) for v in self.randaugment_fill))
        if self.randaugment_n < 0 or not 0.0 <= self.randaugment_m <= 10.0:
            raise ValueError("AugmentConfig needs randaugment_n >= 0 and randaugment_m in "
                             f"[0, 10], got {self.randaugment_n} and {self.randaugment_m}.")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1] or value[0] <= 0:
                raise ValueError(f"AugmentConfig.{name} must be (low, high) with 0 < low <= high, got {value}.")
            object.__setattr__(self, name, value)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p",
                     "randaugment_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} is a probability in [0, 1], got {getattr(self, name)}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        """Builds a config from a mapping (e.g. an ``ml_collections.ConfigDict``).

        Raises:
          ValueError: a key is not a field; the message lists the valid keys.

        >>> AugmentConfig.from_dict({"blur_p": 0.5}).blur_p
        0.5
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"Unknown augmentation key(s) {unknown}; valid keys are {valid}.")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- masks

def _fields(section: Any) -> dict[str, Any]:
    """A config section (an ``ml_collections.ConfigDict`` or a mapping) as a plain dict."""
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def augment_configs(data_cfg: Any) -> list[AugmentConfig]:
    """One :class:`AugmentConfig` per view of a ``config.data`` section: ``augment``, with
    ``augment2``'s fields over it on views 2 and later.

    >>> v1, v2 = augment_configs({"num_views": 2, "augment": {"blur_p": 1.0},
    ...                           "augment2": {"blur_p": 0.1}})
    >>> v1.blur_p, v2.blur_p
    (1.0, 0.1)
    """
    first = _fields(data_cfg["augment"])
    second = dict(first, **_fields(data_cfg.get("augment2") or {}))
    return [AugmentConfig.from_dict(first if v == 0 else second)
            for v in range(data_cfg["num_views"])]


KINDS = ("random", "block")


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Which views are masked and how.

    Attributes:
      ratio: fraction of the patches masked in a masked view, in [0, 1).
      patch_size: side of the square patches in pixels; must divide the image size.
      views: indices of the masked views (the others get all-False masks).
      kind: ``'random'`` or ``'block'``.
      num_blocks: number of blocks of a ``'block'`` mask.
    """

    ratio: float = 0.5
    patch_size: int = 4
    views: tuple[int, ...] = (0, 1)
    kind: str = "random"
    num_blocks: int = 1

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {self.ratio}; set "
                             "--config.data.mask.ratio to a fraction such as 0.5.")
        if self.kind not in KINDS:
            raise ValueError(f"Unknown mask kind {self.kind!r}; use one of {KINDS}.")
        if self.patch_size < 1 or self.num_blocks < 1:
            raise ValueError("mask patch_size and num_blocks must be positive integers.")
        object.__setattr__(self, "views", tuple(int(v) for v in self.views))

    def grid(self, image_size: int) -> int:
        """Patches per side for square images of side ``image_size``."""
        if image_size % self.patch_size:
            raise ValueError(f"The mask patch size {self.patch_size} must divide the image size "
                             f"{image_size}; set --config.data.mask.patch_size to a divisor.")
        return image_size // self.patch_size


def mask_config_from(cfg: Mapping[str, Any] | None) -> MaskConfig | None:
    """``config.data.mask`` as a :class:`MaskConfig`, or None when masking is off.

    Masking is off when the section is absent or ``enabled`` is False. A ratio of 0 with
    masking on still emits (all-False) masks, so the model's inputs keep their structure.
    """
    if cfg is None:
        return None
    fields = dict(cfg)
    if not fields.pop("enabled", True):
        return None
    valid = [f.name for f in dataclasses.fields(MaskConfig)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"Unknown mask key(s) {unknown}; valid keys are {valid + ['enabled']}.")
    return MaskConfig(**fields)


def num_masked(ratio: float, num_patches: int) -> int:
    """Masked patches per image: ``round(ratio * num_patches)``.

    >>> num_masked(0.5, 49), num_masked(0.75, 64), num_masked(0.0, 49)
    (24, 48, 0)
    """
    return int(round(ratio * num_patches))


# ----------------------------------------------------------------------------- jigsaw

@dataclasses.dataclass(frozen=True)
class JigsawConfig:
    """PIRL's jigsaw view: a crop resized to ``size``, 3 x 3 cells, a ``patch`` crop in each.

    The official ImageNet values are ``size=255, patch=64`` (cells of 85 pixels).
    """
    size: int = 255
    patch: int = 64
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    grid: int = 3

    def __post_init__(self):
        if self.patch > self.size // self.grid:
            raise ValueError(f"jigsaw.patch={self.patch} does not fit in a cell of "
                             f"{self.size // self.grid} pixels; lower it or raise jigsaw.size.")
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        object.__setattr__(self, "crop_ratio", tuple(float(v) for v in self.crop_ratio))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JigsawConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"Unknown jigsaw key(s) {unknown}; valid keys are {valid}.")
        return cls(**dict(d))


def jigsaw_config_from(cfg: Mapping[str, Any] | None) -> JigsawConfig | None:
    """A jigsaw view's settings (``config.data.jigsaw`` or ``InputSpec.jigsaw``) as a
    :class:`JigsawConfig`; None when absent or empty."""
    if not cfg:
        return None
    return JigsawConfig.from_dict(_fields(cfg))


def batch_extras(spec: Any) -> dict[str, Any]:
    """The pipeline's keyword arguments for what a method's batches carry besides views and
    labels, from its ``ssljax.methods.InputSpec``: ``mask`` (a :class:`MaskConfig` or None)
    and ``jigsaw`` (a :class:`JigsawConfig` or None). The trainer passes them on unread, so
    a method with a new input changes this function and the pipeline, not the trainer.

    >>> from types import SimpleNamespace
    >>> batch_extras(SimpleNamespace(masks={"ratio": 0.25}, jigsaw=None))["mask"].ratio
    0.25
    """
    return dict(mask=mask_config_from(spec.masks), jigsaw=jigsaw_config_from(spec.jigsaw))


# ----------------------------------------------------------------------------- datasets

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that the trainer and configs need.

    Attributes:
      name: canonical dataset name (the TFDS name).
      num_classes: number of label classes.
      image_shape: ``(H, W, C)`` of the images as stored (imagenet: the training size).
      mean: per-channel mean in [0, 1] units, length C.
      std: per-channel standard deviation in [0, 1] units, length C.
      num_train: examples in ``train_split``.
      num_test: examples in ``test_split``.
      train_split: split used for supervised training / probes.
      test_split: split used for evaluation.
      pretrain_split: split used for self-supervised pre-training (STL-10 adds its
        unlabelled images; labels there are -1).
      num_pretrain: examples in ``pretrain_split``.
      in_memory: whether :func:`load_arrays` is the intended reader (False: stream
        with :func:`ssljax.data.pipeline.make_tfds_stream`).
      class_names: the label names, by label (empty where there are too many to show:
        pictures then use the numbers).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    num_test: int
    train_split: str = "train"
    test_split: str = "test"
    pretrain_split: str = "train"
    num_pretrain: int = 0
    in_memory: bool = True
    class_names: tuple[str, ...] = ()


_FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                          "Shirt", "Sneaker", "Bag", "Ankle boot")

_INFOS = {
    info.name: info
    for info in [
        DatasetInfo(
            name="fashion_mnist", num_classes=10, image_shape=(28, 28, 1),
            mean=(0.2860,), std=(0.3530,), num_train=60_000, num_test=10_000,
            num_pretrain=60_000, class_names=_FASHION_MNIST_CLASSES),
        DatasetInfo(  # ssljax.data.coloured: Fashion-MNIST tinted with random colours
            name="coloured_fashion_mnist", num_classes=10, image_shape=(28, 28, 3),
            mean=(0.1974, 0.1974, 0.1974), std=(0.2813, 0.2813, 0.2813), num_train=60_000,
            num_test=10_000, num_pretrain=60_000, class_names=_FASHION_MNIST_CLASSES),
        DatasetInfo(
            name="cifar10", num_classes=10, image_shape=(32, 32, 3),
            mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
            num_train=50_000, num_test=10_000, num_pretrain=50_000,
            class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                         "horse", "ship", "truck")),
        DatasetInfo(
            name="cifar100", num_classes=100, image_shape=(32, 32, 3),
            mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
            num_train=50_000, num_test=10_000, num_pretrain=50_000),
        DatasetInfo(
            name="stl10", num_classes=10, image_shape=(96, 96, 3),
            mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
            num_train=5_000, num_test=8_000,
            pretrain_split="train+unlabelled", num_pretrain=105_000,
            class_names=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey",
                         "ship", "truck")),
        DatasetInfo(
            name="imagenet2012", num_classes=1000, image_shape=(224, 224, 3),
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            num_train=1_281_167, num_test=50_000, test_split="validation",
            num_pretrain=1_281_167, in_memory=False),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """Returns the :class:`DatasetInfo` of a supported dataset.

    Args:
      name: one of ``fashion_mnist``, ``cifar10``, ``cifar100``, ``stl10``,
        ``imagenet2012``.

    Returns:
      The dataset's static facts.

    >>> dataset_info("cifar10").num_classes
    10
    """
    try:
        return _INFOS[name]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {name!r}; choose one of {sorted(_INFOS)}.") from None
