"""Masked-patch reconstruction (MRCL's expression term), with MAE's patch layout.

MRCL has no public code; this is our reading of the paper (see METHODS.md): the
decoder reconstructs the unmasked image and the loss is the MSE on the masked patches
of per-patch-normalised pixels, as in MAE.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssljax.losses._common import compute_dtype

__all__ = ["masked_reconstruction", "patchify", "unpatchify"]


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """Cuts `[B, H, W, C]` images into `[B, (H/p) * (W/p), p * p * C]` patch tokens.

    Patches are in row-major order over the `(H/p, W/p)` grid and each token is laid
    out `(row in patch, column in patch, channel)`, MAE's `patchify` for NHWC images.

    Args:
        images: `[B, H, W, C]`, H and W divisible by `patch_size`.
        patch_size: side p of the square patches.

    Returns:
        `[B, L, p * p * C]` with `L = (H / p) * (W / p)`.

    References:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022;
        facebookresearch/mae `models_mae.py` (`patchify`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import patchify, unpatchify
        >>> x = jnp.arange(2 * 4 * 6 * 3.0).reshape(2, 4, 6, 3)
        >>> patchify(x, 2).shape
        (2, 6, 12)
        >>> bool(jnp.array_equal(unpatchify(patchify(x, 2), 2, grid=(2, 3)), x))
        True
    """
    if images.ndim != 4:
        raise ValueError(f"patchify needs images [B, H, W, C]; got shape {images.shape}.")
    b, h, w, c = images.shape
    p = int(patch_size)
    if p < 1 or h % p or w % p:
        raise ValueError(f"patch_size {patch_size} must divide the image size {h}x{w}.")
    x = images.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(
    tokens: jax.Array, patch_size: int, *, grid: tuple[int, int] | None = None
) -> jax.Array:
    """Inverse of `patchify`: `[B, L, p * p * C]` tokens back to `[B, H, W, C]` images.

    Args:
        tokens: `[B, L, p * p * C]` patch tokens in `patchify`'s layout.
        patch_size: side p of the square patches.
        grid: `(H / p, W / p)`; default a square grid, `sqrt(L)` on each side.

    Returns:
        `[B, H, W, C]` images.

    References:
        facebookresearch/mae `models_mae.py` (`unpatchify`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import unpatchify
        >>> unpatchify(jnp.zeros((1, 4, 2 * 2 * 3)), 2).shape
        (1, 4, 4, 3)
    """
    if tokens.ndim != 3:
        raise ValueError(f"unpatchify needs tokens [B, L, p*p*C]; got shape {tokens.shape}.")
    b, length, size = tokens.shape
    p = int(patch_size)
    if grid is None:
        side = math.isqrt(length)
        grid = (side, side)
    gh, gw = grid
    if gh * gw != length or size % (p * p):
        raise ValueError(
            f"tokens {tokens.shape} do not fit a {gh}x{gw} grid of {p}x{p} patches; "
            "pass grid=(H/p, W/p).")
    c = size // (p * p)
    x = tokens.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)


def _as_tokens(x: jax.Array, patch_size: int | None, name: str) -> jax.Array:
    if x.ndim == 3:
        return x
    if x.ndim == 4:
        if patch_size is None:
            raise ValueError(
                f"{name} is an image [B, H, W, C]; pass patch_size= to cut it into patches.")
        return patchify(x, patch_size)
    raise ValueError(
        f"{name} must be images [B, H, W, C] or patch tokens [B, L, p*p*C]; got {x.shape}.")


def masked_reconstruction(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    norm_pix: bool = True,
    patch_size: int | None = None,
    eps: float = 1e-6,
) -> jax.Array:
    """Mean squared error on the masked patches, with MAE's per-patch target normalisation.

    `pred` and `target` may each be images `[B, H, W, C]` (cut into patches of side
    `patch_size` with `patchify`) or patch tokens `[B, L, p * p * C]` in `patchify`'s
    layout (e.g. a ViT decoder's output); `mask` is `[B, H/p, W/p]` or `[B, L]`, 1 (or
    True) for a masked patch. Per patch: with `norm_pix`, the target's pixels are
    standardised over the patch, `(t - mean) / sqrt(var + eps)` with the unbiased
    variance (PyTorch's default, as in MAE); the patch loss is the mean over its
    `p * p * C` values of `(pred - target)^2`. The loss is the mask-weighted mean of
    the patch losses, i.e. over masked patches only (0 if nothing is masked).

    Args:
        pred: decoder output, images or patch tokens.
        target: the original (unmasked) images or their patch tokens.
        mask: `[B, H/p, W/p]` or `[B, L]`; 1 = masked (counted in the loss), 0 = visible.
        norm_pix: normalise each target patch by its own mean and std (MAE's
            `norm_pix_loss`).
        patch_size: patch side p; required when `pred` or `target` is an image.
        eps: added to the per-patch variance (MAE: 1e-6).

    Returns:
        Scalar float32 loss (float64 for float64 inputs).

    References:
        Liu et al., "Masked Reconstruction Contrastive Learning with Information
        Bottleneck Principle", 2022 (no public code; our reading);
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022;
        facebookresearch/mae `models_mae.py` (`forward_loss`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import masked_reconstruction
        >>> target = jnp.arange(2 * 4 * 4 * 1.0).reshape(2, 4, 4, 1)
        >>> mask = jnp.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
        >>> loss = masked_reconstruction(target + 1.0, target, mask, norm_pix=False, patch_size=2)
        >>> print(f"{loss:.4f}")
        1.0000
        >>> print(f"{masked_reconstruction(0 * target, target, mask, patch_size=2):.4f}")
        0.7500
    """
    dtype = compute_dtype(pred, target)
    pred = _as_tokens(pred, patch_size, "pred").astype(dtype)
    target = _as_tokens(target, patch_size, "target").astype(dtype)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target give different patch tokens: {pred.shape} vs {target.shape}.")
    b, length, size = target.shape
    if mask.shape[0] != b or math.prod(mask.shape[1:]) != length:
        raise ValueError(f"mask {mask.shape} does not match {length} patches per image; "
                         f"expected [B, H/p, W/p] or [{b}, {length}].")
    mask = mask.reshape(b, length).astype(dtype)
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.sum(jnp.square(target - mean), axis=-1, keepdims=True) / max(size - 1, 1)
        target = (target - mean) / jnp.sqrt(var + eps)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    total = jnp.sum(mask)
    return jnp.sum(per_patch * mask) / jnp.where(total > 0, total, 1.0)
