"""SimCLR-style augmentations, batched and stateless.

Every augmentation is split in two: ``sample_params`` draws the per-example random
parameters of a whole batch from one stateless seed, ``apply_params`` applies them.
The split lets a process draw the parameters of the *global* batch, keep only its
own rows and augment only its own images, so the data a run sees does not depend on
how many processes read it. All ops work on a float32 batch ``[B, H, W, C]`` in
[0, 1] at once: on a small CPU the per-op overhead, not the arithmetic, dominates.

References:
  Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations" (SimCLR), 2020, Appendix A; github.com/google-research/simclr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssljax.data import randaugment
from ssljax.data._tf import tf
from ssljax.data.ops import (  # noqa: F401  (re-exported: the ops' old home)
    _bcast,
    _bernoulli,
    _fit_kernel,
    _gray,
    _select,
    _uniform,
    blur_radius,
    color_jitter,
    fold_seed,
    gaussian_blur,
    gaussian_kernel,
    random_flip,
    random_grayscale,
    random_resized_crop,
    sample_crop,
    separable_blur,
    sigma_radius,
    solarize,
)
from ssljax.data.specs import AugmentConfig

__all__ = [
    "AugmentConfig",
    "augment_batch",
    "sample_params",
    "slice_params",
    "apply_params",
    "sample_crop",
    "random_resized_crop",
    "random_flip",
    "color_jitter",
    "random_grayscale",
    "gaussian_blur",
    "gaussian_kernel",
    "separable_blur",
    "blur_radius",
    "sigma_radius",
    "solarize",
    "fold_seed",
]

# Tags that derive one independent stream per op from the batch seed; fixed numbers so
# that adding an op never changes the random draws of the others.
_CROP, _FLIP, _JITTER, _GRAY, _BLUR, _SOLAR = 1, 2, 3, 4, 5, 6


def _jitter_ops(cfg: AugmentConfig, channels: int) -> list[str]:
    ops = [("brightness", cfg.brightness), ("contrast", cfg.contrast)]
    if channels == 3:  # saturation and hue do not exist for grayscale images
        ops += [("saturation", cfg.saturation), ("hue", cfg.hue)]
    return [name for name, strength in ops if strength > 0]


def sample_params(
    seed: tf.Tensor,
    batch_size: int,
    image_shape: tuple[Any, Any, int],
    cfg: AugmentConfig,
    *,
    crop: bool = True,
) -> dict[str, tf.Tensor]:
    """Draws the random parameters of a batch; every leaf has leading dimension B.

    Args:
      seed: stateless seed, int tensor of shape ``[2]``.
      batch_size: B, the number of examples to draw for (e.g. the global batch).
      image_shape: ``(H, W, C)`` of the input images (H and W may be tensors).
      cfg: the augmentation.
      crop: whether to draw the random resized crop.

    Returns:
      A dict of per-example tensors, consumed by :func:`apply_params`.
    """
    height, width, channels = image_shape
    params = {}
    if crop:
        params["crop"] = sample_crop(
            fold_seed(seed, _CROP), batch_size, height, width, cfg.crop_scale, cfg.crop_ratio)
    if cfg.flip_p > 0:
        params["flip"] = _bernoulli(fold_seed(seed, _FLIP), batch_size, cfg.flip_p)
    ops = _jitter_ops(cfg, channels)
    if cfg.jitter_p > 0 and ops:
        s_apply, s_factor, s_order = tf.unstack(
            tf.random.experimental.stateless_split(fold_seed(seed, _JITTER), 3))
        params["jitter"] = _bernoulli(s_apply, batch_size, cfg.jitter_p)
        factor_seeds = tf.unstack(tf.random.experimental.stateless_split(s_factor, 4))
        for i, name in enumerate(("brightness", "contrast", "saturation", "hue")):
            if name not in ops:
                continue
            strength = getattr(cfg, name)
            low, high = (-strength, strength) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)
            params[name] = _uniform(factor_seeds[i], [batch_size], low, high)
        if cfg.jitter_random_order:
            keys = tf.random.stateless_uniform([batch_size, len(ops)], s_order)
            params["jitter_order"] = tf.argsort(keys, axis=1, stable=True)
    if cfg.grayscale_p > 0 and channels == 3:
        params["grayscale"] = _bernoulli(fold_seed(seed, _GRAY), batch_size, cfg.grayscale_p)
    if cfg.blur_p > 0:
        s_apply, s_sigma = tf.unstack(tf.random.experimental.stateless_split(fold_seed(seed, _BLUR), 2))
        params["blur"] = _bernoulli(s_apply, batch_size, cfg.blur_p)
        params["blur_sigma"] = _uniform(s_sigma, [batch_size], *cfg.blur_sigma)
        # The kernel's width follows the largest sigma the config can draw, so it travels
        # with the parameters (static shape [B, 2R+1]); apply_params fits it to the image.
        params["blur_kernel"] = gaussian_kernel(
            params["blur_sigma"], sigma_radius(cfg.blur_sigma[1]))
    if cfg.solarize_p > 0:
        params["solarize"] = _bernoulli(fold_seed(seed, _SOLAR), batch_size, cfg.solarize_p)
    if cfg.randaugment_n > 0:
        params.update(randaugment.sample_randaugment(seed, batch_size, channels, cfg))
    return params


def slice_params(params: dict[str, tf.Tensor], start: Any, stop: Any) -> dict[str, tf.Tensor]:
    """Keeps rows ``[start:stop]`` of every parameter (this process's share)."""
    return {k: v[start:stop] for k, v in params.items()}


# ----------------------------------------------------------------------------- apply


def apply_params(
    images: tf.Tensor, params: Mapping[str, tf.Tensor], out_size: int | None = None
) -> tf.Tensor:
    """Applies sampled parameters in SimCLR's order and clips to [0, 1].

    Order: random resized crop, flip, colour jitter, grayscale, blur, solarize; with
    RandAugment (InfoMin Aug): crop, flip, jitter, blur, RandAugment, grayscale, solarize.

    Args:
      images: float32 ``[B, H, W, C]`` in [0, 1].
      params: from :func:`sample_params` (possibly sliced), B rows.
      out_size: side of the output when ``params`` has a crop.

    Returns:
      float32 ``[B, out_size, out_size, C]`` in [0, 1].
    """
    x = tf.convert_to_tensor(images, tf.float32)
    if "crop" in params:
        if out_size is None:
            raise ValueError("apply_params needs out_size when the parameters include a crop.")
        x = random_resized_crop(x, params["crop"], out_size)
    if "flip" in params:
        x = random_flip(x, params["flip"])
    if "jitter" in params:
        x = color_jitter(x, params)
    # InfoMin Aug (RandAugment on) puts grayscale last: jitter, blur, RandAugment, grayscale.
    infomin_order = "ra_op" in params
    if "grayscale" in params and not infomin_order:
        x = random_grayscale(x, params["grayscale"])
    if "blur" in params:
        side = min(int(x.shape[1]), int(x.shape[2]))
        kernel = params.get("blur_kernel")
        if kernel is None:  # hand-made parameters: size the kernel for the default sigma range
            kernel = gaussian_kernel(params["blur_sigma"],
                                     sigma_radius(AugmentConfig.blur_sigma[1]))
        blurred = separable_blur(x, _fit_kernel(kernel, side))
        x = _select(params["blur"], blurred, x)
    if infomin_order:
        x = randaugment.apply_randaugment(tf.clip_by_value(x, 0.0, 1.0), params)
        if "grayscale" in params:
            x = random_grayscale(x, params["grayscale"])
    if "solarize" in params:
        x = solarize(x, params["solarize"])
    return tf.clip_by_value(x, 0.0, 1.0)


def augment_batch(
    images: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, out_size: int
) -> tf.Tensor:
    """Augments a batch: draws per-example parameters from ``seed`` and applies them.

    Args:
      images: float32 ``[B, H, W, C]`` in [0, 1].
      seed: int tensor of shape ``[2]`` (stateless: same seed, same output).
      cfg: the augmentation.
      out_size: side of the square output.

    Returns:
      float32 ``[B, out_size, out_size, C]`` in [0, 1].

    >>> x = tf.random.uniform([4, 28, 28, 1])
    >>> augment_batch(x, tf.constant([0, 1]), AugmentConfig(), 24).shape
    TensorShape([4, 24, 24, 1])
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    batch = images.shape[0] if images.shape[0] is not None else shape[0]
    height = images.shape[1] if images.shape[1] is not None else shape[1]
    width = images.shape[2] if images.shape[2] is not None else shape[2]
    params = sample_params(seed, batch, (height, width, images.shape[-1]), cfg)
    return apply_params(images, params, out_size)
