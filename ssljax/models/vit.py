"""Vision Transformer (Dosovitskiy et al., 2021) with MAE-style token dropping.

The encoder of MAE (facebookresearch/mae ``models_mae.py``), written in Flax: a patch
embedding (a ``p x p`` convolution of stride ``p``), fixed 2-D sine-cosine position
embeddings, an optional class token, pre-norm transformer blocks (LayerNorm eps 1e-6,
GELU MLP of ratio 4), a final LayerNorm. Given ``keep`` (indices of the visible patches),
the masked patches' tokens are *dropped* before the first block, as in MAE: the encoder
never sees them, and its cost falls with the mask ratio.

Like :class:`ssljax.models.ResNet`, ``ViT(x, train=...)`` returns float32 pooled features
``[B, feature_dim]``, so every method can use it as its backbone (``config.model.name``
``'vit_tiny'``, ``'vit_small'`` or ``'vit_base'``; ``config.model.patch_size``,
``config.model.pool``). Parameters are float32; ``dtype`` sets the compute dtype.

Attention (``attention``, ``config.model.attention``): ``'reference'`` is Flax's
``dot_product_attention`` (the score matrix and its softmax in the compute dtype);
``'xla'`` and ``'cudnn'`` are ``jax.nn.dot_product_attention``'s implementations (logits and
softmax in float32; cuDNN's is fused flash attention, which never stores the ``T x T``
scores); ``'auto'`` takes cuDNN on a GPU when the compute dtype is bfloat16 or float16 and
the head dimension suits it, XLA otherwise (CPU, TPU, float32). ``remat`` recomputes each
block's activations in the backward pass (``nn.remat``) instead of storing them: less
memory for large batches, about a quarter more FLOPs (+23% for a ViT-S/16 step).

Always (same parameters and values): the LayerNorms, the MLP's GELU and second layer, and
the XLA path's attention scores are recomputed in the backward pass, which then keeps no
float32 copy of the activations and one ``[B, T, 4D]`` array per block
(``experiments/bench_gpu_step.md``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ViT", "TransformerBlock", "vit", "keep_indices", "sincos_pos_embed", "VIT_CONFIGS",
           "ATTENTION_IMPLEMENTATIONS", "attention_fn"]

Dtype = Any

# name -> (width, depth, heads), as in DeiT / timm.
VIT_CONFIGS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}

_dense_init = nn.initializers.xavier_uniform()  # MAE's _init_weights for nn.Linear

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "reference")


def _auto_implementation(dtype, head_dim: int) -> str:
    """cuDNN's fused attention where it applies (a GPU, half precision, a head dim <= 128
    and a multiple of 8), else XLA's."""
    if (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 128):
        return "cudnn"
    return "xla"


def attention_fn(implementation: str = "auto"):
    """An ``attention_fn`` for :class:`flax.linen.MultiHeadDotProductAttention`: softmax
    attention by ``implementation`` (one of :data:`ATTENTION_IMPLEMENTATIONS`).

    The returned function takes ``query``, ``key``, ``value`` ``[B, T, N, H]`` (the layout
    both Flax and ``jax.nn.dot_product_attention`` use) and returns ``[B, T, N, H]``.

    >>> import jax.numpy as jnp
    >>> q = jnp.ones((1, 3, 2, 4))
    >>> attention_fn('xla')(q, q, q).shape
    (1, 3, 2, 4)
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"Unknown attention {implementation!r}; use one of "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}.")
    if implementation == "reference":
        return nn.dot_product_attention

    def attend(query, key, value, mask=None, dtype=None):
        if mask is not None:  # the ViT masks by dropping tokens, never by an attention mask
            raise ValueError("The ViT's attention takes no attention mask: pass the visible "
                             "tokens' indices as ViT(..., keep=...) instead.")
        impl = implementation
        if impl == "auto":
            impl = _auto_implementation(query.dtype, query.shape[-1])
            if impl == "cudnn":
                try:  # cuDNN's checks run at trace time: an old cuDNN or GPU says no here
                    return jax.nn.dot_product_attention(
                        query, key, value, implementation="cudnn").astype(dtype or query.dtype)
                except (NotImplementedError, RuntimeError) as e:
                    logging.getLogger("ssljax").warning(
                        "cuDNN attention is unavailable (%s); using XLA's.", e)
                    impl = "xla"
        fn = functools.partial(jax.nn.dot_product_attention, implementation=impl)
        if impl == "xla":
            # Keep only q, k, v for the backward pass and recompute the [B, N, T, T] scores
            # there (one more q k^T per block, a few % of a ViT's FLOPs): XLA's path would
            # otherwise store float32 logits and the probabilities of every block, which
            # with bfloat16 compute is more than Flax's attention stored.
            fn = jax.checkpoint(fn)
        return fn(query, key, value).astype(dtype or query.dtype)

    return attend


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings ``[grid_h * grid_w, dim]`` (row-major).

    Half the channels encode the row, half the column; each half is ``[sin, cos]`` of the
    position times ``1 / 10000^(k / (dim/4))``, as MAE's ``get_2d_sincos_pos_embed``.

    >>> sincos_pos_embed(8, 2, 3).shape
    (6, 8)
    """
    if dim % 4:
        raise ValueError(f"The ViT width {dim} must be a multiple of 4 for 2-D sin-cos embeddings.")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def embed_1d(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.concatenate([embed_1d(rows), embed_1d(cols)], axis=1).astype(np.float32)


def keep_indices(mask: jax.Array, num_masked: int) -> jax.Array:
    """Indices ``[B, L - num_masked]`` of the visible patches, in ascending order.

    Args:
      mask: ``[B, L]`` (or ``[B, g, g]``), True / 1 for a masked patch; every row must mask
        exactly ``num_masked`` patches (``ssljax.data.masking`` guarantees it).
      num_masked: the static number of masked patches per image.

    >>> import jax.numpy as jnp
    >>> keep_indices(jnp.array([[True, False, False, True]]), 2).tolist()
    [[1, 2]]
    """
    mask = mask.reshape(mask.shape[0], -1)
    order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)  # visible first
    return order[:, : mask.shape[1] - num_masked]


# LayerNorm computes its statistics and the normalisation in float32; as is, the backward
# pass keeps three float32 copies of its [B, T, D] input (for bfloat16 activations, six times
# the input's bytes). Recomputing it there from its input (elementwise work, fused on an
# accelerator) keeps only the input. Same parameters (nn.remat keeps names), same values.
_LayerNorm = nn.remat(nn.LayerNorm)


class _GeluDense(nn.Dense):
    """``Dense(gelu(x))``, the MLP's second layer with its activation. Recomputed in the
    backward pass (``_GeluFc2``), the block keeps only the first layer's output for it:
    exact GELU's backward otherwise keeps three more ``[B, T, 4D]`` arrays and the second
    layer its ``gelu(x)`` input (PyTorch's compiler recomputes pointwise ops the same way)."""

    def __call__(self, inputs):
        return super().__call__(nn.gelu(inputs, approximate=False))


_GeluFc2 = nn.remat(_GeluDense)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))``."""

    dim: int
    heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attention: str = "auto"  # one of ATTENTION_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, x):
        norm = lambda name: _LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)  # noqa: E731
        y = norm("norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=_dense_init, attention_fn=attention_fn(self.attention), name="attn")(y, y)
        x = x + y
        y = norm("norm2")(x)
        y = nn.Dense(int(self.dim * self.mlp_ratio), dtype=self.dtype, kernel_init=_dense_init,
                     name="fc1")(y)
        y = _GeluFc2(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(y)
        return x + y


class ViT(nn.Module):
    """ViT encoder returning pooled features; drops masked tokens when given ``keep``.

    ``__call__(x, *, train, keep=None, return_tokens=False)``: ``x`` is ``[B, H, W, C]``
    with H and W divisible by ``patch_size``; ``keep`` ``[B, K]`` are the indices (row-major
    over the patch grid) of the tokens the encoder sees. Returns float32 ``[B, dim]``:
    the class token's output (``pool='cls'``) or the mean of the patch tokens
    (``pool='mean'``, no class token); with ``return_tokens`` also the normalised patch
    tokens ``[B, K, dim]`` (``K = L`` without ``keep``) in the order of ``keep``.

    >>> import jax, jax.numpy as jnp
    >>> model = ViT(dim=16, depth=1, heads=2, patch_size=4)
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> params = model.init(jax.random.key(0), x, train=False)
    >>> pooled, tokens = model.apply(params, x, train=False, keep=jnp.array([[0, 3], [1, 2]]),
    ...                              return_tokens=True)
    >>> pooled.shape, tokens.shape
    ((2, 16), (2, 2, 16))
    """

    dim: int = 192
    depth: int = 12
    heads: int = 3
    patch_size: int = 16
    mlp_ratio: float = 4.0
    pool: str = "cls"
    dtype: Dtype = jnp.float32
    attention: str = "auto"  # softmax attention's implementation (module docstring)
    remat: bool = False  # recompute each block's activations in the backward pass

    @property
    def feature_dim(self) -> int:
        return self.dim

    @nn.compact
    def __call__(self, x, *, train: bool, keep: jax.Array | None = None,
                 return_tokens: bool = False):
        del train  # no dropout or BatchNorm: train and eval passes are the same
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"Unknown ViT pool {self.pool!r}; use 'cls' or 'mean'.")
        b, h, w, _ = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"The ViT patch size {p} must divide the image size {h}x{w}; set "
                             "--config.model.patch_size to a divisor.")
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=_dense_init, name="patch_embed")(
                        jnp.asarray(x, self.dtype))
        x = x.reshape(b, -1, self.dim)
        x = x + sincos_pos_embed(self.dim, h // p, w // p).astype(self.dtype)
        if keep is not None:
            x = jnp.take_along_axis(x, keep[..., None].astype(jnp.int32), axis=1)
        if self.pool == "cls":
            # The class token's position embedding is zero (MAE), so it is the token itself.
            cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.dim))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.dim)), x], 1)
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"Unknown ViT attention {self.attention!r}; use one of "
                             f"{', '.join(ATTENTION_IMPLEMENTATIONS)}.")
        # nn.remat keeps the parameter tree (same names), so checkpoints do not change.
        block_cls = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        for i in range(self.depth):
            x = block_cls(self.dim, self.heads, self.mlp_ratio, self.dtype, self.attention,
                          name=f"block{i}")(x)
        x = _LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        tokens = x[:, 1:] if self.pool == "cls" else x
        pooled = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        return (pooled, tokens) if return_tokens else pooled


def vit(name: str, **kwargs: Any) -> ViT:
    """A named ViT (``'vit_tiny'``, ``'vit_small'``, ``'vit_base'``); ``kwargs`` set other fields.

    >>> vit('vit_small', patch_size=4).feature_dim
    384
    """
    if name not in VIT_CONFIGS:
        raise ValueError(f"Unknown ViT {name!r}; valid names: {sorted(VIT_CONFIGS)}.")
    dim, depth, heads = VIT_CONFIGS[name]
    return ViT(dim=dim, depth=depth, heads=heads, **kwargs)
