"""Multi-exit ResNets (SelfCon's sub-networks) and their projection / classification heads.

SelfCon (Bae et al., AAAI 2023) contrasts the outputs of one network at two depths: the
backbone, and a *sub-network* that leaves the backbone after stage 1, 2 or 3. The
sub-network shares the stages before its exit and owns what comes after:

- ``'fc'``: global average pooling of the exit's feature map, then a Linear layer to the
  backbone's feature dimension;
- ``'same'``: an unshared copy of the backbone's remaining stages (same block counts);
- ``'small'``: the remaining stages with half the blocks (at least one per stage).

Every exit (the backbone included) has its own projection head Linear(d, d) - ReLU -
Linear(d, 128), L2-normalised (:class:`MultiExitContrastive`), or its own linear classifier
(:class:`MultiExitClassifier`, for cross-entropy and sub-network cross-entropy). With no
exit, both are the plain SupCon / cross-entropy networks. Nothing is stop-gradient: the
shared stages receive the gradients of every exit.

References:
  Bae et al., "Self-Contrastive Learning: Single-viewed Supervised Contrastive Framework
  using Sub-network", AAAI 2023; raymin0223/self-contrastive-learning
  ``networks/resnet_big.py`` (``ResNet._make_sub_layer``, ``ConResNet``, ``CEResNet``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.heads import MLP, torch_dense
from ssljax.models.resnet import ResNet, ResNetStage, resnet

__all__ = [
    "EXIT_KINDS",
    "MultiExitResNet",
    "MultiExitContrastive",
    "MultiExitClassifier",
    "MultiExitFeatures",
    "multi_exit_resnet",
]

EXIT_KINDS = ("fc", "same", "small")


class MultiExitFeatures(NamedTuple):
    """Pooled float32 features: the backbone's ``[B, D]`` and one ``[B, D]`` per exit."""
    backbone: jax.Array
    exits: tuple[jax.Array, ...]


def _check_exits(exits: Sequence[int], kind: str, num_stages: int) -> None:
    if kind not in EXIT_KINDS:
        raise ValueError(f"Unknown sub-network kind {kind!r}; use one of {EXIT_KINDS}.")
    if len(set(exits)) != len(exits) or any(not 1 <= k < num_stages for k in exits):
        raise ValueError(f"Sub-network exits must be distinct stages in 1..{num_stages - 1} "
                         f"(after which stage the sub-network leaves); got {tuple(exits)}.")


class MultiExitResNet(nn.Module):
    """A ResNet backbone with sub-network exits after some of its stages.

    Returns :class:`MultiExitFeatures`: the backbone's pooled features and, for each stage in
    ``exits`` (in that order), the sub-network's pooled features, all ``[B, D]`` float32 with
    ``D = backbone.feature_dim``.

    >>> import jax, jax.numpy as jnp
    >>> from ssljax.models import resnet
    >>> net = MultiExitResNet(resnet('resnet18', width=4), exits=(1, 2), kind='small')
    >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 16, 16, 1)), train=False)
    >>> out = net.apply(variables, jnp.ones((2, 16, 16, 1)), train=False)
    >>> out.backbone.shape, [e.shape for e in out.exits]
    ((2, 32), [(2, 32), (2, 32)])

    Attributes:
      backbone: the :class:`~ssljax.models.ResNet` (any stem, depth or width).
      exits: stages (1-based) after which a sub-network leaves; ``()`` for none.
      kind: ``'fc'``, ``'same'`` or ``'small'`` (see the module docstring).
    """

    backbone: ResNet
    exits: Sequence[int] = (2,)
    kind: str = "fc"

    def _sub_network(self, k: int, x: jax.Array, train: bool) -> jax.Array:
        net = self.backbone
        if self.kind == "fc":
            pooled = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
            out = torch_dense(net.feature_dim, pooled.shape[-1], dtype=net.dtype,
                              name=f"exit{k}_fc")(pooled)
            return out.astype(jnp.promote_types(out.dtype, jnp.float32))
        for i in range(k, len(net.stage_sizes)):
            kwargs = net.stage_kwargs(i)
            if self.kind == "small":  # official: int(n / 2) blocks; we keep at least one
                kwargs["num_blocks"] = max(kwargs["num_blocks"] // 2, 1)
            x = ResNetStage(**kwargs, name=f"exit{k}_stage{i + 1}")(x, train=train)
        return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))

    @nn.compact
    def __call__(self, x, *, train: bool) -> MultiExitFeatures:
        _check_exits(self.exits, self.kind, len(self.backbone.stage_sizes))
        features, stages = self.backbone(x, train=train, return_stages=True)
        exits = tuple(self._sub_network(k, stages[f"stage{k}"], train) for k in self.exits)
        return MultiExitFeatures(features, exits)


def multi_exit_resnet(name: str, *, exits: Sequence[int] = (2,), kind: str = "fc",
                      **resnet_kwargs: Any) -> MultiExitResNet:
    """``MultiExitResNet`` around ``resnet(name, **resnet_kwargs)``.

    >>> multi_exit_resnet('resnet50', exits=(3,), kind='same', width=8).backbone.feature_dim
    256
    """
    return MultiExitResNet(resnet(name, **resnet_kwargs), exits=tuple(exits), kind=kind)


def _l2_normalize(z: jax.Array) -> jax.Array:
    # F.normalize(z, dim=1): z / max(||z||, 1e-12), with a finite gradient at 0.
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))


class MultiExitContrastive(nn.Module):
    """Multi-exit network with one projection head per exit (SelfCon's and SupCon's net).

    Returns ``(features, projections)``, both :class:`MultiExitFeatures`; each projection is
    Linear(D, hidden) - ReLU - Linear(hidden, out_dim), L2-normalised, float32.

    Attributes:
      network: the :class:`MultiExitResNet` (``exits=()`` for SupCon).
      hidden_dim: width of the heads' hidden layer; 0 means D (the official heads).
      out_dim: projection dimension (128).
    """

    network: MultiExitResNet
    hidden_dim: int = 0
    out_dim: int = 128

    def _head(self, name: str) -> MLP:
        hidden = self.hidden_dim or self.network.backbone.feature_dim
        return MLP((hidden,), self.out_dim, use_bn=False, dtype=self.network.backbone.dtype,
                   name=name)

    @nn.compact
    def __call__(self, x, *, train: bool) -> tuple[MultiExitFeatures, MultiExitFeatures]:
        features = self.network(x, train=train)
        z = _l2_normalize(self._head("head")(features.backbone, train=train))
        exits = tuple(_l2_normalize(self._head(f"exit{k}_head")(f, train=train))
                      for k, f in zip(self.network.exits, features.exits))
        return features, MultiExitFeatures(z, exits)

    def features(self, x) -> MultiExitFeatures:
        """Inference-mode pooled features of the backbone and every exit."""
        return self.network(x, train=False)


class MultiExitClassifier(nn.Module):
    """Multi-exit network with one linear classifier per exit (cross-entropy baselines).

    Returns ``(features, logits)``, both :class:`MultiExitFeatures` (logits ``[B, C]``).
    """

    network: MultiExitResNet
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train: bool) -> tuple[MultiExitFeatures, MultiExitFeatures]:
        features = self.network(x, train=train)
        dim = self.network.backbone.feature_dim
        dtype = self.network.backbone.dtype

        def classify(f, name):
            return torch_dense(self.num_classes, dim, dtype=dtype, name=name)(f).astype(
                jnp.float32)

        logits = MultiExitFeatures(
            classify(features.backbone, "classifier"),
            tuple(classify(f, f"exit{k}_classifier")
                  for k, f in zip(self.network.exits, features.exits)))
        return features, logits

    def features(self, x) -> MultiExitFeatures:
        """Inference-mode pooled features of the backbone and every exit."""
        return self.network(x, train=False)
