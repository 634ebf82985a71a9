"""What the supervised family (SelfCon, SupCon, CE, sub-network CE) shares: the multi-exit
network built from ``config.model``, one joint forward pass over all views, and named
features (backbone, sub-networks) for evaluation. Not a method itself.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ssljax import models
from ssljax.config import ConfigError
from ssljax.methods import base


def build_network(cfg: ml_collections.ConfigDict,
                  exits: Sequence[int] | None = None) -> models.MultiExitResNet:
    """The ResNet of ``config.model`` with the exits ``cfg.exits`` (or ``exits``) of kind
    ``cfg.exit_kind``."""
    exits = tuple(cfg.get("exits", ()) if exits is None else exits)
    if not cfg.name.startswith("resnet"):
        raise ConfigError(f"The multi-exit network (SelfCon, SupCon, CE) is built on a ResNet, "
                          f"not {cfg.name!r}; set --config.model.name=resnet18, resnet34 or "
                          "resnet50.")
    return models.MultiExitResNet(base.build_backbone(cfg), exits=exits,
                                  kind=cfg.get("exit_kind", "fc"))


def per_image(z: jax.Array, num_views: int) -> jax.Array:
    """``[V*B, D]`` view-major (as :func:`base.flatten_views` orders images) -> ``[B, V, D]``."""
    return jnp.swapaxes(z.reshape((num_views, -1) + z.shape[1:]), 0, 1)


def exit_names(exits: Sequence[int]) -> list[str]:
    """``'subnet'`` for a single exit, else ``'subnet<stage>'`` for each."""
    return ["subnet"] if len(exits) == 1 else [f"subnet{k}" for k in exits]


def check_num_views(config: ml_collections.ConfigDict, num_views: int, why: str) -> None:
    """One sentence when ``data.num_views`` is not what the method's setting needs."""
    if config.data.num_views != num_views:
        raise ValueError(f"{why} trains on {num_views} view(s) per image but "
                         f"data.num_views={config.data.num_views}; set "
                         f"--config.data.num_views={num_views}.")


class MultiExitMethod(base.Method):
    """A method whose ``self.model`` is a ``MultiExitContrastive`` or ``MultiExitClassifier``."""

    model: models.MultiExitContrastive | models.MultiExitClassifier

    def init_model(self, rng, batch):
        variables = self.model.init(rng, batch["views"][:, 0], train=False)
        return variables["params"], {"batch_stats": variables["batch_stats"]}

    def forward(self, params, state, views: jax.Array):
        """One train-mode pass over all ``V * B`` images (view-major), so BatchNorm statistics
        span every view, as the official code's concatenated batch does.

        Returns ``(features, outputs, new_state)``; ``outputs`` are projections or logits.
        """
        (features, outputs), updates = self.model.apply(
            {"params": params, **state}, base.flatten_views(views), train=True,
            mutable=["batch_stats"])
        return features, outputs, dict(state, **updates)

    def _features(self, params, state, images) -> models.MultiExitFeatures:
        return self.model.apply({"params": params, **state}, images,
                                method=type(self.model).features)

    def embed(self, params, state, images):
        return self._features(params, state, images).backbone

    def embed_named(self, params, state, images):
        out = self._features(params, state, images)
        if not out.exits:
            return {"": out.backbone}
        return {"backbone": out.backbone,
                **dict(zip(exit_names(self.model.network.exits), out.exits))}
