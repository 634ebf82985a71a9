"""CorInfoMax (Ozsoy et al., NeurIPS 2022): maximise the log-determinant mutual information.

As the official code (serdarozsoy/corinfomax-ssl, ``cifars-tiny``) does it:

* projector ``[Linear -> ReLU] x (L-1) -> Linear (no bias)`` with no BatchNorm (ImageNet-1k:
  ``projector.use_bn=True``), output L2-normalised; each view has its own forward pass;
* running means and covariances of both branches, ``state['corinfomax']`` (a
  :class:`ssljax.losses.CorInfoMaxState`, float64 when x64 is enabled, as the official
  state): the loss uses the old state as a constant and returns the new one (stop-gradient),
  which the trainer keeps, shards (replicated) and checkpoints with the rest of the state;
* ``loss = alpha * mean((z1 - z2)^2) - (logdet(R1 + eps I) + logdet(R2 + eps I)) / D``
  (:func:`ssljax.losses.corinfomax`; its Cholesky log-determinant falls back to a clamped
  eigenvalue form when a covariance is numerically singular, so it stays finite).
"""

from __future__ import annotations

import jax

from ssljax import losses
from ssljax.losses._common import l2_normalize
from ssljax.methods import base, register
from ssljax.methods.barlow_twins import TwoViewMethod


@register
class CorInfoMax(TwoViewMethod):
    name = "corinfomax"

    def init_model(self, rng, batch):
        params, state = super().init_model(rng, batch)
        state["corinfomax"] = losses.corinfomax_init(self.config.projector.out_dim,
                                                     r_init=self.config.loss.r_init)
        return params, state

    def project(self, params, state, views):
        features, zs, state = super().project(params, state, views)
        # The official projector ends with F.normalize; the loss's own normalisation is then
        # a no-op, kept so that the loss function is correct on its own.
        return features, [l2_normalize(z) for z in zs], state

    def loss(self, params, state, batch, rng, step):
        del rng, step
        features, (z1, z2), state = self.project(params, state, batch["views"])
        lc = self.config.loss
        loss, cim_state, parts = losses.corinfomax(
            z1, z2, state["corinfomax"], sim_weight=lc.sim_weight, la_R=lc.la_R, la_mu=lc.la_mu,
            eps=lc.eps, return_parts=True)
        return loss, base.LossOutput(state=dict(state, corinfomax=cim_state), metrics=parts,
                                     features=jax.lax.stop_gradient(features[0]))
