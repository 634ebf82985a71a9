"""Light decoders that reconstruct the unmasked image from an encoder's output (MRCL).

* :class:`TransformerDecoder` (for the ViT), MAE's decoder: a linear map to the decoder
  width, a learned mask token at every dropped position, fixed sine-cosine position
  embeddings, a few transformer blocks, a LayerNorm and a linear map to the ``p*p*C``
  pixels of each patch. Output: patch tokens ``[B, L, p*p*C]`` in
  :func:`ssljax.losses.patchify`'s layout.
* :class:`ConvDecoder` (for the ResNet): from a ResNet stage's feature map, a few
  ``bilinear upsample -> 3x3 conv -> ReLU`` stages on a geometric ladder of sizes up to the
  image size, then a 1x1 convolution to the image's channels. Output: images ``[B, H, W, C]``.

Sizes (MAE: 8 blocks of width 512; here 2 blocks of width 128 by default) and the
upsampling ladder are our choices for MRCL, which has no public code (see METHODS.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.vit import TransformerBlock, sincos_pos_embed

__all__ = ["TransformerDecoder", "ConvDecoder"]

Dtype = Any
_dense_init = nn.initializers.xavier_uniform()


class TransformerDecoder(nn.Module):
    """MAE-style decoder: visible tokens plus mask tokens -> per-patch pixels.

    ``__call__(tokens, keep, grid)``: ``tokens`` ``[B, K, D]`` are the encoder's patch tokens
    at patch indices ``keep`` ``[B, K]`` (None: all ``L`` patches in order); ``grid`` is
    ``(H/p, W/p)``. Returns float32 ``[B, L, patch_size**2 * out_channels]``.

    >>> import jax, jax.numpy as jnp
    >>> dec = TransformerDecoder(dim=8, depth=1, heads=2, patch_size=2, out_channels=1)
    >>> tokens, keep = jnp.ones((1, 2, 16)), jnp.array([[0, 3]])
    >>> params = dec.init(jax.random.key(0), tokens, keep, (2, 2))
    >>> dec.apply(params, tokens, keep, (2, 2)).shape
    (1, 4, 4)
    """

    dim: int = 128
    depth: int = 2
    heads: int = 4
    patch_size: int = 4
    out_channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, keep, grid: tuple[int, int]):
        b, _, _ = tokens.shape
        length = grid[0] * grid[1]
        x = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="embed")(tokens)
        if keep is not None:
            mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.dim,))
            full = jnp.broadcast_to(mask_token.astype(x.dtype), (b, length, self.dim))
            # Each visible token back to its place in the grid (MAE's "unshuffle").
            x = jax.vmap(lambda f, i, t: f.at[i].set(t))(full, keep.astype(jnp.int32), x)
        x = x + sincos_pos_embed(self.dim, *grid).astype(x.dtype)
        for i in range(self.depth):
            x = TransformerBlock(self.dim, self.heads, dtype=self.dtype, name=f"block{i}")(x)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        x = nn.Dense(self.patch_size ** 2 * self.out_channels, dtype=self.dtype,
                     kernel_init=_dense_init, name="pred")(x)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class ConvDecoder(nn.Module):
    """Upsampling conv decoder: feature map ``[B, h, w, D]`` -> images ``[B, H, W, C]``.

    ``__call__(x, out_hw)``: stage ``i`` of ``n = len(channels)`` resizes bilinearly to
    ``h * (H/h)^((i+1)/n)`` (the last one exactly to ``(H, W)``), then applies a 3x3
    convolution with ``channels[i]`` outputs and a ReLU; a final 1x1 convolution gives the
    ``out_channels`` pixel values. Returns float32.

    >>> import jax, jax.numpy as jnp
    >>> dec = ConvDecoder(channels=(8, 4), out_channels=1)
    >>> x = jnp.ones((2, 2, 2, 16))
    >>> params = dec.init(jax.random.key(0), x, (28, 28))
    >>> dec.apply(params, x, (28, 28)).shape
    (2, 28, 28, 1)
    """

    channels: Sequence[int] = (64, 32)
    out_channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, out_hw: tuple[int, int]):
        b, h, w, _ = x.shape
        n = len(self.channels)
        for i, c in enumerate(self.channels):
            frac = (i + 1) / n
            size = (round(h * (out_hw[0] / h) ** frac), round(w * (out_hw[1] / w) ** frac))
            x = jax.image.resize(x, (b, *size, x.shape[-1]), method="bilinear")
            x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        param_dtype=jnp.float32, name=f"conv{i}")(x)
            x = nn.relu(x)
        if n == 0:
            x = jax.image.resize(x, (b, *out_hw, x.shape[-1]), method="bilinear")
        x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                    name="pred")(x)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))
