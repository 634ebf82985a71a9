"""What the supervised family (SelfCon, SupCon, CE, sub-network CE) shares: the multi-exit
network built from ``config.model``, one joint forward pass over all views, named features
(backbone, sub-networks) for evaluation, and the classifier the cross-entropy baselines
train (:class:`ClassifierMethod`). Not a method itself: nothing here is registered.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import ml_collections

from ssljax import losses, models
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


# ``[V*B, D]`` view-major (as :func:`base.flatten_views` orders images) -> ``[B, V, D]``.
per_image = losses.per_image


def exit_names(exits: Sequence[int]) -> list[str]:
    """``'subnet'`` for a single exit, else ``'subnet<stage>'`` for each."""
    return ["subnet"] if len(exits) == 1 else [f"subnet{k}" for k in exits]


@dataclasses.dataclass(frozen=True)
class SupConLossSettings:
    """The supervised contrastive loss's hyper-parameters (``config.loss``; SupCon, SelfCon)."""
    temperature: float = 0.1
    base_temperature: float = 0.07
    block_size: int = 0

    def __post_init__(self):
        for name in ("temperature", "base_temperature"):
            value = getattr(self, name)
            base.check(value > 0, f"loss.{name}={value} must be > 0; set "
                       f"--config.loss.{name} to a positive number (SupCon: 0.1 and 0.07).")
        base.check(self.block_size >= 0, f"loss.block_size={self.block_size} must be >= 0; "
                   "set --config.loss.block_size to 0 (dense) or a tile size.")


def check_num_views(config: ml_collections.ConfigDict, num_views: int, why: str) -> None:
    """One sentence when ``data.num_views`` is not what the method's setting needs."""
    if config.data.num_views != num_views:
        raise ValueError(f"{why} trains on {num_views} view(s) per image but "
                         f"data.num_views={config.data.num_views}; set "
                         f"--config.data.num_views={num_views}.")


class MultiExitMethod(base.Method):
    """A method whose ``self.model`` is a ``MultiExitContrastive`` or ``MultiExitClassifier``."""

    model: models.MultiExitContrastive | models.MultiExitClassifier

    @property
    def input_spec(self) -> base.InputSpec:
        """The supervised family reads the labels."""
        return base.InputSpec(min_views=self.min_views, labels=True)

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


class ClassifierMethod(MultiExitMethod):
    """A ResNet and a linear classifier trained together on one view (the cross-entropy
    baselines, :mod:`ssljax.methods.ce` and :mod:`ssljax.methods.subnet_ce`); subclasses
    set ``default_exits`` and may extend :meth:`objective`."""

    default_exits: tuple[int, ...] | None = ()  # None: config.model.exits

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        check_num_views(config, 1, f"{self.name}")
        self.model = models.MultiExitClassifier(
            build_network(config.model, exits=self.default_exits), num_classes=num_classes)

    def objective(self, logits: models.MultiExitFeatures, labels: jax.Array):
        loss, acc = losses.cross_entropy(logits.backbone, labels)
        return loss, {"train_top1": acc}

    def loss(self, params, state, batch, rng, step):
        features, logits, state = self.forward(params, state, batch["views"])
        loss, metrics = self.objective(logits, batch["label"])
        return loss, base.LossOutput(state=state, metrics=metrics,
                                     features=jax.lax.stop_gradient(features.backbone))
