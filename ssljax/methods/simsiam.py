"""SimSiam (Chen & He, CVPR 2021): predict one view's projection from the other's, with no
negatives and no momentum encoder: ``L = (D(p1, sg(z2)) + D(p2, sg(z1))) / 2``, ``D = -cos``.

Reference: facebookresearch/simsiam ``simsiam/builder.py``. Built from the shared parts
(:func:`ssljax.methods.base.build_backbone`, :func:`~ssljax.methods.base.build_head`) and an
objective of :mod:`ssljax.losses` (``byol(p, z) / 2 - 1 = -cos(p, sg(z))``); each view has
its own forward pass, as the official ``f(x1)``, ``f(x2)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ssljax import losses
from ssljax.methods import base, register


class SimSiamNet(nn.Module):
    """Backbone, projector and predictor; returns ``(features, z, p)``."""
    backbone: nn.Module
    head: nn.Module
    predictor: nn.Module

    def __call__(self, x, *, train: bool):
        f = self.backbone(x, train=train)
        z = self.head(f, train=train)
        return f, z, self.predictor(z, train=train)

    def features(self, x):
        return self.backbone(x, train=False)


@register
class SimSiam(base.Method):
    name = "simsiam"
    min_views = 2

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        dtype = base.compute_dtype(config.model.dtype)
        self.model = SimSiamNet(base.build_backbone(config.model),
                                base.build_head(config.projector, dtype),
                                base.build_head(config.predictor, dtype))

    def loss(self, params, state, batch, rng, step):
        del rng, step
        stats, outs = state["batch_stats"], []
        for v in range(2):
            out, updates = self.model.apply({"params": params, "batch_stats": stats},
                                            batch["views"][:, v], train=True,
                                            mutable=["batch_stats"])
            stats = updates["batch_stats"]
            outs.append(out)
        (f1, z1, p1), (_, z2, p2) = outs
        d12, d21 = losses.byol(p1, z2) / 2 - 1, losses.byol(p2, z1) / 2 - 1
        return (d12 + d21) / 2, base.LossOutput(
            state=dict(state, batch_stats=stats), metrics={"d12": d12, "d21": d21},
            features=jax.lax.stop_gradient(f1))
