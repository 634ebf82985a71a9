"""SimCLR (Chen et al., 2020): two augmented views, a projector, NT-Xent over the global batch.

References: google-research/simclr; lightly ``lightly/loss/ntx_ent_loss.py``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import losses, models
from ssljax.methods import base, register


class EncoderWithHead(nn.Module):
    """A backbone and a projector head; returns ``(features, projections)``."""
    backbone: nn.Module
    head: nn.Module

    def __call__(self, x, *, train: bool):
        features = self.backbone(x, train=train)
        return features, self.head(features, train=train)

    def features(self, x):
        return self.backbone(x, train=False)


def build_projector(cfg, dtype) -> models.MLP:
    return models.MLP(hidden_dims=tuple(cfg.hidden_dims), out_dim=cfg.out_dim,
                      use_bn=cfg.use_bn, last_bn=cfg.last_bn, dtype=dtype)


@register
class SimCLR(base.Method):
    name = "simclr"
    min_views = 2

    def __init__(self, config, *, num_classes):
        super().__init__(config, num_classes=num_classes)
        dtype = base.compute_dtype(config.model.dtype)
        self.model = EncoderWithHead(backbone=base.build_backbone(config.model),
                                     head=build_projector(config.projector, dtype))

    def init_model(self, rng, batch):
        variables = self.model.init(rng, batch["views"][:, 0], train=False)
        return variables["params"], {"batch_stats": variables["batch_stats"]}

    def loss(self, params, state, batch, rng, step):
        views = batch["views"]
        num_views = views.shape[1]
        # One forward pass over all views: BatchNorm statistics span the 2N images, as in
        # SimCLR's cross-replica BN.
        (features, z), updates = self.model.apply(
            {"params": params, **state}, base.flatten_views(views), train=True,
            mutable=["batch_stats"])
        z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
        zs = jnp.split(z, num_views)
        loss = losses.nt_xent(zs[0], zs[1], temperature=self.config.loss.temperature,
                              block_size=self.config.loss.block_size or None)
        features = jnp.split(features, num_views)[0]
        return loss, base.LossOutput(state=dict(state, **updates), metrics={},
                                     features=jax.lax.stop_gradient(features))

    def embed(self, params, state, images):
        return self.model.apply({"params": params, **state}, images,
                                method=EncoderWithHead.features)
