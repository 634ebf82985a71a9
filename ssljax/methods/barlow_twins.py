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

import dataclasses

import jax

from ssljax import losses
from ssljax.methods import base, register


# Re-exported from their new home (ssljax.methods.base).
EncoderWithHead = base.EncoderWithHead
TwoViewMethod = base.TwoViewMethod
apply_per_view = base.apply_per_view


@dataclasses.dataclass(frozen=True)
class BarlowTwinsSettings:
    """Barlow Twins' hyper-parameters (``config.loss``)."""
    lambd: float = 0.0051  # weight of the off-diagonal term
    ddof: int = 0  # 0: biased variance (official); 1: MetaMask's variant
    eps: float = 1e-5  # standardisation epsilon

    def __post_init__(self):
        base.check(self.lambd >= 0, f"loss.lambd={self.lambd} must be >= 0; set "
                   "--config.loss.lambd (Barlow Twins: 0.0051).")
        base.check(self.ddof in (0, 1), f"loss.ddof={self.ddof} must be 0 or 1; set "
                   "--config.loss.ddof=0 (official) or 1 (MetaMask's variant).")
        base.check(self.eps >= 0, f"loss.eps={self.eps} must be >= 0; set --config.loss.eps.")


@register
class BarlowTwins(base.TwoViewMethod):
    name = "barlow_twins"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = base.from_section(BarlowTwinsSettings, config.loss)

    def loss(self, params, state, batch, rng, step):
        del rng, step
        features, (z1, z2), state = self.project(params, state, batch["views"])
        st = self.settings
        loss, parts = losses.barlow_twins(z1, z2, lambd=st.lambd, ddof=st.ddof, eps=st.eps,
                                          return_parts=True)
        return loss, base.LossOutput(state=state, metrics=parts,
                                     features=jax.lax.stop_gradient(features[0]))
