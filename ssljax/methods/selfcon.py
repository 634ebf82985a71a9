"""SelfCon (Bae et al., AAAI 2023): contrast a network's backbone with its own sub-network.

One view per image is enough (SelfCon-S): the sub-network's projection and the backbone's
projection of the same image are two "views" for the supervised contrastive loss, so the
step costs one forward pass instead of SupCon's two. Settings (``config.selfcon``):

- ``multiview``: SelfCon-M, two augmented views (``data.num_views=2``);
- ``label``: False for the unsupervised -U variants (positives: the same image only);
- ``anchors``: ``'all'`` (SelfCon-S/-M) or ``'subnet'`` (the starred variants S*/M*:
  only sub-network projections anchor, ``alpha`` weighs that term, and a SupCon term on the
  backbone projections alone is added).

The sub-network (``config.model.exits``, ``config.model.exit_kind``) and the heads are
:class:`ssljax.models.MultiExitContrastive`.

References: raymin0223/self-contrastive-learning ``main_represent.py`` (``_train``),
``losses/losses.py`` (``ConLoss``), ``networks/resnet_big.py``.
"""

from __future__ import annotations

import dataclasses

import jax

from ssljax import losses, models
from ssljax.methods import base, register
from ssljax.methods.multi_exit import (MultiExitMethod, SupConLossSettings, build_network,
                                       check_num_views)

# Re-exported: the objective's home is ssljax.losses.contrastive.
ANCHORS = losses.contrastive.ANCHORS
selfcon_loss = losses.contrastive.selfcon_loss


@dataclasses.dataclass(frozen=True)
class SelfConSettings:
    """SelfCon's own settings (``config.selfcon``)."""
    multiview: bool = False  # SelfCon-M: two views
    label: bool = True  # False: the unsupervised -U variants
    anchors: str = "all"  # or 'subnet' (the starred variants)
    alpha: float = 1.0  # weight of the sub-network-anchored term (starred)

    def __post_init__(self):
        if self.anchors not in ANCHORS:
            raise ValueError(f"selfcon.anchors={self.anchors!r} is not known; set "
                             "--config.selfcon.anchors to 'all' (SelfCon-S/-M) or 'subnet' "
                             "(the starred variants).")


@register
class SelfCon(MultiExitMethod):
    name = "selfcon"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = sc = base.from_section(SelfConSettings, config.selfcon)
        self.loss_settings = base.from_section(SupConLossSettings, config.loss)
        check_num_views(config, 2 if sc.multiview else 1,
                        "SelfCon-M (selfcon.multiview=True)" if sc.multiview else
                        "SelfCon-S (selfcon.multiview=False)")
        if not tuple(config.model.exits):
            raise ValueError("SelfCon needs a sub-network; set --config.model.exits='(2,)'.")
        self.model = models.MultiExitContrastive(build_network(config.model),
                                                 hidden_dim=config.projector.hidden_dim,
                                                 out_dim=config.projector.out_dim)

    def loss(self, params, state, batch, rng, step):
        views = batch["views"]
        num_views, b = views.shape[1], views.shape[0]
        sc, lc = self.settings, self.loss_settings
        features, z, state = self.forward(params, state, views)
        loss, terms = selfcon_loss(
            z.backbone, z.exits, batch["label"] if sc.label else None, num_views=num_views,
            temperature=lc.temperature, base_temperature=lc.base_temperature,
            anchors=sc.anchors, alpha=sc.alpha, block_size=lc.block_size or None)
        return loss, base.LossOutput(state=state, metrics=terms,
                                     features=jax.lax.stop_gradient(features.backbone[:b]))

    @property
    def input_spec(self) -> base.InputSpec:
        """One view (SelfCon-S) or two (-M); labels unless the -U variants."""
        return base.InputSpec(min_views=2 if self.settings.multiview else 1,
                              labels=self.settings.label)
