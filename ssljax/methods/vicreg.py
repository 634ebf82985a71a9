"""VICReg (Bardes et al., ICLR 2022): variance, invariance and covariance regularisation.

As the official code (facebookresearch/vicreg ``main_vicreg.py``) does it: each view goes
through backbone and expander in its own forward pass (per-view BatchNorm statistics); the
expander is ``[Linear -> BN -> ReLU] x (L-1) -> Linear (no bias)``; the loss is
:func:`ssljax.losses.vicreg` (coefficients 25 / 25 / 1) on the global batch, which is what
the official ``FullGatherLayer`` gathers by hand. Each term is logged unweighted.
"""

from __future__ import annotations

import jax

from ssljax import losses
from ssljax.methods import base, register
from ssljax.methods.barlow_twins import TwoViewMethod


@register
class VICReg(TwoViewMethod):
    name = "vicreg"

    def loss(self, params, state, batch, rng, step):
        del rng, step
        features, (z1, z2), state = self.project(params, state, batch["views"])
        lc = self.config.loss
        loss, parts = losses.vicreg(z1, z2, sim_coeff=lc.sim_coeff, std_coeff=lc.std_coeff,
                                    cov_coeff=lc.cov_coeff, return_parts=True)
        return loss, base.LossOutput(state=state, metrics=parts,
                                     features=jax.lax.stop_gradient(features[0]))
