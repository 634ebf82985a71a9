"""SimCLR (Chen et al., 2020): two augmented views, a projector, NT-Xent over the global batch.

References: google-research/simclr; lightly ``lightly/loss/ntx_ent_loss.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.methods import base, register


# Re-exported from their new home (ssljax.methods.base).
EncoderWithHead = base.EncoderWithHead


@dataclasses.dataclass(frozen=True)
class SimCLRSettings:
    """SimCLR's hyper-parameters (``config.loss``)."""
    temperature: float = 0.5
    block_size: int = 0  # > 0: the tiled loss, which never materialises the N x N logits

    def __post_init__(self):
        base.check(self.temperature > 0, f"loss.temperature={self.temperature} must be > 0; "
                   "set --config.loss.temperature to a positive number (SimCLR: 0.1 to 0.5).")
        base.check(self.block_size >= 0, f"loss.block_size={self.block_size} must be >= 0; "
                   "set --config.loss.block_size to 0 (dense) or a tile size.")


@register
class SimCLR(base.Method):
    name = "simclr"
    min_views = 2

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = base.from_section(SimCLRSettings, config.loss)
        dtype = base.compute_dtype(config.model.dtype)
        self.model = base.EncoderWithHead(backbone=base.build_backbone(config.model),
                                          head=base.build_head(config.projector, dtype))

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
        loss = losses.nt_xent(zs[0], zs[1], temperature=self.settings.temperature,
                              block_size=self.settings.block_size or None)
        features = jnp.split(features, num_views)[0]
        return loss, base.LossOutput(state=dict(state, **updates), metrics={},
                                     features=jax.lax.stop_gradient(features))
