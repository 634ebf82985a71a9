"""Barlow Twins (Zbontar et al., ICML 2021): make the cross-correlation of two views the identity.

As the official code (facebookresearch/barlowtwins ``main.py``) does it:

* each view goes through backbone and projector in its own forward pass, so BatchNorm
  statistics are per view (over the global batch of that view);
* the projector is ``[Linear (no bias) -> BN -> ReLU] x (L-1) -> Linear (no bias)``; the
  ``BatchNorm1d(affine=False)`` that the official model applies to the projector output is
  the per-dimension standardisation inside :func:`ssljax.losses.barlow_twins` (biased
  variance, eps 1e-5), so the projector itself ends without BatchNorm;
* ``loss = sum((1 - diag c)^2) + lambd * sum(offdiag c^2)`` with lambd 0.0051.

``config.loss.ddof=1, eps=0.0, lambd=5e-3`` gives MetaMask's variant of the loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import losses, models
from ssljax.methods import base, register
from ssljax.methods.simclr import EncoderWithHead


def build_projector(cfg, dtype) -> models.MLP:
    """The ``config.projector`` MLP (the redundancy-reduction methods' field names)."""
    return models.MLP(hidden_dims=tuple(cfg.hidden_dims), out_dim=cfg.out_dim,
                      use_bn=cfg.use_bn, last_bn=cfg.last_bn,
                      last_bn_affine=cfg.get("last_bn_affine", True),
                      use_bias_hidden=cfg.use_bias_hidden, use_bias_last=cfg.use_bias_last,
                      dtype=dtype)


def apply_per_view(model: nn.Module, params: Any, state: Any, views: jax.Array,
                   ) -> tuple[list[jax.Array], list[jax.Array], Any]:
    """Train-mode forward passes, one per view, as the official codes run ``model(y1)``,
    ``model(y2)``: BatchNorm normalises each view with its own statistics, and the running
    statistics are updated once per view, in order (what two PyTorch calls do).

    Args:
      views: ``[B, V, H, W, C]``.

    Returns:
      ``(features, projections, state)``: per-view lists of ``[B, F]`` and ``[B, D]``
      (float32), and ``state`` with the new ``batch_stats``.
    """
    features, projections = [], []
    batch_stats = state["batch_stats"]
    for v in range(views.shape[1]):
        (f, z), updates = model.apply({"params": params, "batch_stats": batch_stats},
                                      views[:, v], train=True, mutable=["batch_stats"])
        batch_stats = updates.get("batch_stats", batch_stats)  # none without BatchNorm (a ViT)
        features.append(f)
        projections.append(z.astype(jnp.promote_types(z.dtype, jnp.float32)))
    return features, projections, dict(state, batch_stats=batch_stats)


class TwoViewMethod(base.Method):
    min_views = 2
    """A backbone and a projector, one forward pass per view; subclasses define the loss."""

    def __init__(self, config, *, num_classes):
        super().__init__(config, num_classes=num_classes)
        dtype = base.compute_dtype(config.model.dtype)
        self.model = EncoderWithHead(backbone=base.build_backbone(config.model),
                                     head=build_projector(config.projector, dtype))

    def init_model(self, rng, batch):
        variables = self.model.init(rng, batch["views"][:, 0], train=False)
        return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

    def project(self, params, state, views):
        """Per-view features and projections (the method's view of the model output)."""
        return apply_per_view(self.model, params, state, views)

    def embed(self, params, state, images):
        return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                method=EncoderWithHead.features)


@register
class BarlowTwins(TwoViewMethod):
    name = "barlow_twins"

    def loss(self, params, state, batch, rng, step):
        del rng, step
        features, (z1, z2), state = self.project(params, state, batch["views"])
        lc = self.config.loss
        loss, parts = losses.barlow_twins(z1, z2, lambd=lc.lambd, ddof=lc.ddof, eps=lc.eps,
                                          return_parts=True)
        return loss, base.LossOutput(state=state, metrics=parts,
                                     features=jax.lax.stop_gradient(features[0]))
