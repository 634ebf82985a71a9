"""ResNets (He et al., 2016) for self-supervised learning, torchvision-compatible.

The layout follows torchvision's ResNet v1.5 (stride on the 3x3 convolution of a
bottleneck, 1x1-conv + BN downsampling shortcut, symmetric padding), so parameter
counts match torchvision and weights could be ported one to one. Two stems:

- ``'cifar'``: 3x3 conv (stride ``stem_stride``) + BN + ReLU, no max-pool, as used by
  SimCLR/SupCon/CorInfoMax/MetaMask/SelfCon on 32x32 images;
- ``'imagenet'``: 7x7 conv stride 2 + BN + ReLU + 3x3 max-pool stride 2.

BatchNorm is the plain ``nn.BatchNorm``: when the model runs under ``jax.jit`` with the
batch sharded over a mesh, the compiler computes the batch statistics over the *global*
batch (cross-device "SyncBN" with no extra code).

Parameters are always float32; ``dtype`` sets the compute dtype (e.g. ``jnp.bfloat16``
for mixed precision). BatchNorm statistics are reduced in float32 and the pooled
features are returned in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssljax.models.conv import conv_general_dilated

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNetStem",
    "ResNetStage",
    "ResNet",
    "resnet",
    "feature_dim",
    "RESNET_CONFIGS",
]

Dtype = Any

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}

# name -> (stage_sizes, block)
RESNET_CONFIGS: dict[str, tuple[tuple[int, ...], str]] = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
}


def _check_block(block: str) -> None:
    if block not in BLOCK_EXPANSION:
        raise ValueError(
            f"Unknown ResNet block {block!r}; use one of {sorted(BLOCK_EXPANSION)}."
        )


def feature_dim(name: str, width: int = 64) -> int:
    """Dimension of the pooled features of ``resnet(name, width=width)``.

    >>> feature_dim('resnet18'), feature_dim('resnet50'), feature_dim('resnet18', 16)
    (512, 2048, 128)
    """
    if name not in RESNET_CONFIGS:
        raise ValueError(f"Unknown ResNet {name!r}; valid names: {sorted(RESNET_CONFIGS)}.")
    _, block = RESNET_CONFIGS[name]
    return width * 8 * BLOCK_EXPANSION[block]


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str) -> nn.Conv:
    # Explicit symmetric padding as in PyTorch; "SAME" pads asymmetrically at stride 2.
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        # XLA:CPU is slow on 2x2 outputs (the last stage on 28/32-px images): see models/conv.py.
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def _batch_norm(
    train: bool, momentum: float, eps: float, dtype: Dtype, name: str, zero_scale: bool = False
) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=eps,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class _Block(nn.Module):
    """Fields shared by both residual blocks."""

    features: int  # channels of the 3x3 convs; the block outputs features * expansion
    strides: int = 1
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    expansion = 1

    def _bn(self, train: bool, name: str, zero_scale: bool = False) -> nn.BatchNorm:
        return _batch_norm(train, self.bn_momentum, self.bn_eps, self.dtype, name, zero_scale)

    def _shortcut(self, x, train: bool):
        out_features = self.features * self.expansion
        if self.strides == 1 and x.shape[-1] == out_features:
            return x
        x = _conv(out_features, 1, self.strides, self.dtype, "downsample_conv")(x)
        return self._bn(train, "downsample_bn")(x)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        residual = self._shortcut(x, train)
        y = _conv(self.features, 3, self.strides, self.dtype, "conv1")(x)
        y = nn.relu(self._bn(train, "bn1")(y))
        y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
        y = self._bn(train, "bn2", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + residual)


class Bottleneck(_Block):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 with expansion 4 (ResNet-50 and deeper)."""

    expansion = 4

    @nn.compact
    def __call__(self, x, *, train: bool):
        residual = self._shortcut(x, train)
        y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
        y = nn.relu(self._bn(train, "bn1")(y))
        y = _conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
        y = nn.relu(self._bn(train, "bn2")(y))
        y = _conv(self.features * 4, 1, 1, self.dtype, "conv3")(y)
        y = self._bn(train, "bn3", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + residual)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetStem(nn.Module):
    """The input layers before stage 1 (see the module docstring for the two kinds)."""

    width: int = 64
    stem: str = "cifar"
    stem_stride: int = 1
    stem_relu: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.stem == "cifar":
            x = _conv(self.width, 3, self.stem_stride, self.dtype, "conv")(x)
        elif self.stem == "imagenet":
            x = _conv(self.width, 7, 2, self.dtype, "conv")(x)
        else:
            raise ValueError(f"Unknown ResNet stem {self.stem!r}; use 'cifar' or 'imagenet'.")
        x = _batch_norm(train, self.bn_momentum, self.bn_eps, self.dtype, "bn")(x)
        if self.stem_relu:
            x = nn.relu(x)
        if self.stem == "imagenet":
            # reduce_window pads with -inf, like PyTorch's MaxPool2d(3, 2, padding=1).
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class ResNetStage(nn.Module):
    """``num_blocks`` residual blocks; the first one carries the stride and the projection.

    A standalone module so that multi-exit networks (e.g. SelfCon's sub-network, an
    unshared copy of the remaining stages) can build stages with the backbone's settings:
    ``ResNetStage(**backbone.stage_kwargs(k))``.
    """

    block: str
    num_blocks: int
    features: int
    strides: int = 1
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        _check_block(self.block)
        block_cls = functools.partial(
            BLOCKS[self.block],
            features=self.features,
            zero_init_residual=self.zero_init_residual,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            dtype=self.dtype,
        )
        for i in range(self.num_blocks):
            x = block_cls(strides=self.strides if i == 0 else 1, name=f"block{i}")(x, train=train)
        return x


class ResNet(nn.Module):
    """ResNet backbone returning globally average-pooled features (no classifier).

    Input ``x`` is ``[B, H, W, C]`` (NHWC). Output: float32 ``[B, self.feature_dim]``; with
    ``return_stages=True`` a tuple ``(pooled, stages)`` where ``stages`` maps
    ``'stem', 'stage1', ... 'stage4'`` to the feature maps (in the compute dtype).

    Example (CorInfoMax's CIFAR backbone):

    >>> import jax, jax.numpy as jnp
    >>> model = resnet('resnet18', width=8, zero_init_residual=True)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    >>> feats, updates = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=True,
    ...                              mutable=['batch_stats'])
    >>> feats.shape, model.feature_dim
    ((2, 64), 64)

    Attributes:
      stage_sizes: number of blocks in each of the (usually 4) stages.
      block: ``'basic'`` or ``'bottleneck'`` (expansion 4).
      width: channels of stage 1; stage k uses ``width * 2**(k-1)`` (times the expansion).
      stage_widths: channels of each stage (times the expansion), overriding ``width`` for
        the stages (the stem keeps ``width``); empty (the default) means ``width * 2**k``.
        E.g. ``(32, 64, 128, 384)``: a wider last stage, i.e. more pooled features, where
        the feature map is smallest.
      stem: ``'cifar'`` or ``'imagenet'``.
      stem_stride: stride of the CIFAR stem's 3x3 conv (2 makes small CPU runs faster).
      stem_relu: ReLU after the stem BN (MetaMask's official build omits it).
      zero_init_residual: initialise the last BN scale of every residual branch to 0.
      bn_momentum: Flax convention (PyTorch's momentum 0.1 is 0.9 here).
      bn_eps: BatchNorm epsilon.
      dtype: compute dtype; parameters stay float32.
    """

    stage_sizes: Sequence[int]
    block: str
    width: int = 64
    stage_widths: Sequence[int] = ()
    stem: str = "cifar"
    stem_stride: int = 1
    stem_relu: bool = True
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    def stage_width(self, index: int) -> int:
        """Channels (before the block expansion) of stage number ``index`` (0-based)."""
        if not self.stage_widths:
            return self.width * 2**index
        if len(self.stage_widths) != len(self.stage_sizes):
            raise ValueError(
                f"model.stage_widths={tuple(self.stage_widths)} names {len(self.stage_widths)} "
                f"stages but the ResNet has {len(self.stage_sizes)}; give one width per stage "
                "or leave it empty for width * 2**k.")
        return int(self.stage_widths[index])

    @property
    def feature_dim(self) -> int:
        """Channels of the last stage, i.e. the dimension of the pooled features."""
        _check_block(self.block)
        return self.stage_width(len(self.stage_sizes) - 1) * BLOCK_EXPANSION[self.block]

    def stage_kwargs(self, index: int) -> dict[str, Any]:
        """Keyword arguments of ``ResNetStage`` number ``index`` (0-based) of this network."""
        return dict(
            block=self.block,
            num_blocks=self.stage_sizes[index],
            features=self.stage_width(index),
            strides=1 if index == 0 else 2,
            zero_init_residual=self.zero_init_residual,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            dtype=self.dtype,
        )

    def stem_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of this network's ``ResNetStem``."""
        return dict(
            width=self.width,
            stem=self.stem,
            stem_stride=self.stem_stride,
            stem_relu=self.stem_relu,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            dtype=self.dtype,
        )

    @nn.compact
    def __call__(self, x, *, train: bool, return_stages: bool = False):
        _check_block(self.block)
        x = jnp.asarray(x, self.dtype)
        x = ResNetStem(**self.stem_kwargs(), name="stem")(x, train=train)
        stages = {"stem": x}
        for i in range(len(self.stage_sizes)):
            x = ResNetStage(**self.stage_kwargs(i), name=f"stage{i + 1}")(x, train=train)
            stages[f"stage{i + 1}"] = x
        pooled = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
        if return_stages:
            return pooled, stages
        return pooled


def resnet(name: str, **kwargs: Any) -> ResNet:
    """Builds a named ResNet backbone; ``kwargs`` set any other ``ResNet`` field.

    >>> resnet('resnet50', width=16, stem='imagenet').feature_dim
    512
    """
    if name not in RESNET_CONFIGS:
        raise ValueError(f"Unknown ResNet {name!r}; valid names: {sorted(RESNET_CONFIGS)}.")
    stage_sizes, block = RESNET_CONFIGS[name]
    return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)
