"""VICReg (Bardes et al., ICLR 2022): variance, invariance and covariance regularisation.

As the official code (facebookresearch/vicreg ``main_vicreg.py``) does it: each view goes
through backbone and expander in its own forward pass (per-view BatchNorm statistics); the
expander is ``[Linear -> BN -> ReLU] x (L-1) -> Linear (no bias)``; the loss is
:func:`ssljax.losses.vicreg` (coefficients 25 / 25 / 1) on the global batch, which is what
the official ``FullGatherLayer`` gathers by hand. Each term is logged unweighted.
"""

from __future__ import annotations

import dataclasses

import jax

from ssljax import losses
from ssljax.methods import base, register


@dataclasses.dataclass(frozen=True)
class VICRegSettings:
    """VICReg's coefficients (``config.loss``)."""
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0

    def __post_init__(self):
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            value = getattr(self, name)
            base.check(value >= 0, f"loss.{name}={value} must be >= 0; set "
                       f"--config.loss.{name} (VICReg: 25, 25, 1).")


@register
class VICReg(base.TwoViewMethod):
    name = "vicreg"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = base.from_section(VICRegSettings, config.loss)

    def loss(self, params, state, batch, rng, step):
        del rng, step
        features, (z1, z2), state = self.project(params, state, batch["views"])
        st = self.settings
        loss, parts = losses.vicreg(z1, z2, sim_coeff=st.sim_coeff, std_coeff=st.std_coeff,
                                    cov_coeff=st.cov_coeff, return_parts=True)
        return loss, base.LossOutput(state=state, metrics=parts,
                                     features=jax.lax.stop_gradient(features[0]))
