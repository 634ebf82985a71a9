"""SupCon (Khosla et al., NeurIPS 2020) as SelfCon's code trains it: ResNet, head
Linear(d, d) - ReLU - Linear(d, 128), L2-normalised, supervised contrastive loss.

Two augmented views per image (``data.num_views=2``); with one view it is SupCon-S (anchors
without a same-label partner in the batch are dropped); ``supcon.label=False`` drops the
labels (positives: the other views of the same image, a SimCLR-style loss).

References: raymin0223/self-contrastive-learning ``main_represent.py`` (``--method SupCon``),
``losses/losses.py`` (``ConLoss``); HobbitLong/SupContrast.
"""

from __future__ import annotations

import dataclasses

import jax

from ssljax import losses, models
from ssljax.methods import base, register
from ssljax.methods.multi_exit import (MultiExitMethod, SupConLossSettings, build_network,
                                       per_image)


@dataclasses.dataclass(frozen=True)
class SupConSettings:
    """SupCon's own setting (``config.supcon``)."""
    label: bool = True  # False: positives are the other views of the same image only


@register
class SupCon(MultiExitMethod):
    name = "supcon"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = base.from_section(SupConSettings, config.supcon)
        self.loss_settings = base.from_section(SupConLossSettings, config.loss)
        # SupCon has no sub-network, whatever config.model.exits says.
        self.model = models.MultiExitContrastive(build_network(config.model, exits=()),
                                                 hidden_dim=config.projector.hidden_dim,
                                                 out_dim=config.projector.out_dim)

    def loss(self, params, state, batch, rng, step):
        views = batch["views"]
        num_views, b = views.shape[1], views.shape[0]
        lc = self.loss_settings
        features, z, state = self.forward(params, state, views)
        labels = batch["label"] if self.settings.label else None
        loss = losses.supcon(per_image(z.backbone, num_views), labels,
                             temperature=lc.temperature, base_temperature=lc.base_temperature,
                             block_size=lc.block_size or None)
        return loss, base.LossOutput(state=state, metrics={},
                                     features=jax.lax.stop_gradient(features.backbone[:b]))

    @property
    def input_spec(self) -> base.InputSpec:
        return base.InputSpec(min_views=self.min_views, labels=self.settings.label)
