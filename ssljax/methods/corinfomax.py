"""CorInfoMax (Ozsoy et al., NeurIPS 2022): maximise the log-determinant mutual information.

As the official code (serdarozsoy/corinfomax-ssl, ``cifars-tiny``) does it:

* projector ``[Linear -> ReLU] x (L-1) -> Linear (no bias)`` with no BatchNorm (ImageNet-1k:
  ``projector.use_bn=True``), output L2-normalised; each view has its own forward pass;
* running means and covariances of both branches, ``state['corinfomax']`` (a
  :class:`ssljax.losses.CorInfoMaxState`): the loss uses the old state as a constant and
  returns the new one (stop-gradient), which the trainer keeps, shards (replicated) and
  checkpoints with the rest of the state;
* ``corinfomax.state_dtype``: ``'float64'`` (the default, as the official state and
  log-determinant) or ``'float32'``. float64 needs no global ``jax_enable_x64``: the state is
  made under ``jax.enable_x64`` and stays float64 through the jitted, donated, sharded step
  (JAX >= 0.10 keeps an existing array's float64 dtype at the ``jit`` boundary); the loss
  traces its update and log-determinant, forward and backward, in a local x64 scope
  (:func:`ssljax.losses.corinfomax`) and returns a float32 loss, so the gradient, network
  and optimizer stay float32 (the logged ``sim`` / ``cov`` are float64). Copying host data
  to the devices with x64 off does canonicalise float64 to float32, and orbax's restore
  does that: restored so, the state is taken back to float64 by the loss (one float32
  rounding, with a warning) unless the restore runs under ``jax.enable_x64(True)``, which
  is bit-exact. ``'float32'`` runs it all in float32: over 50 steps at D=64, N=256,
  la = 0.01, it is ~1e-7 relative from float64 in the loss and ~4e-7 in the state (the
  float64 path: ~1e-15);
* ``loss = alpha * mean((z1 - z2)^2) - (logdet(R1 + eps I) + logdet(R2 + eps I)) / D``
  (:func:`ssljax.losses.corinfomax`; its Cholesky log-determinant falls back to a clamped
  eigenvalue form when a covariance is numerically singular, so it stays finite).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.config import ConfigError
from ssljax.losses._common import l2_normalize
from ssljax.losses.information import _x64_scope
from ssljax.methods import base, register


logger = logging.getLogger(__name__)

STATE_DTYPES = ("float64", "float32")


@dataclasses.dataclass(frozen=True)
class CorInfoMaxSettings:
    """CorInfoMax's hyper-parameters (``config.loss``, ``config.corinfomax``) and the
    projection width its running covariances have (``config.projector.out_dim``)."""
    dim: int
    sim_weight: float = 250.0  # the paper's alpha
    la_R: float = 0.01  # covariance forgetting factor
    la_mu: float = 0.01  # mean forgetting factor
    eps: float = 1e-8
    r_init: float = 1.0  # the initial covariance scale
    state_dtype: str = "float64"

    def __post_init__(self):
        if self.state_dtype not in STATE_DTYPES:
            raise ConfigError(f"corinfomax.state_dtype={self.state_dtype!r} is not valid; "
                              "set --config.corinfomax.state_dtype to 'float64' (the official "
                              "precision, the default) or 'float32'.")
        for name in ("la_R", "la_mu"):
            value = getattr(self, name)
            base.check(0 <= value <= 1, f"loss.{name}={value} must be in [0, 1]; set "
                       f"--config.loss.{name} (CorInfoMax: 0.01).")
        base.check(self.eps > 0, f"loss.eps={self.eps} must be > 0; set --config.loss.eps "
                   "(CorInfoMax: 1e-8).")

    @classmethod
    def from_config(cls, config) -> CorInfoMaxSettings:
        own = config.get("corinfomax", {})
        return base.from_section(cls, config.loss, dim=config.projector.out_dim,
                                 state_dtype=own.get("state_dtype", "float64"))


@register
class CorInfoMax(base.TwoViewMethod):
    name = "corinfomax"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = CorInfoMaxSettings.from_config(config)
        self.state_dtype = jnp.dtype(self.settings.state_dtype)

    def init_model(self, rng, batch):
        params, state = super().init_model(rng, batch)
        state["corinfomax"] = losses.corinfomax_init(self.settings.dim,
                                                     r_init=self.settings.r_init,
                                                     dtype=self.state_dtype)
        return params, state

    def project(self, params, state, views):
        features, zs, state = super().project(params, state, views)
        # The official projector ends with F.normalize; the loss's own normalisation is then
        # a no-op, kept so that the loss function is correct on its own.
        return features, [l2_normalize(z) for z in zs], state

    def loss(self, params, state, batch, rng, step):
        del rng, step
        features, (z1, z2), state = self.project(params, state, batch["views"])
        st = self.settings
        loss, cim_state, parts = losses.corinfomax(
            z1, z2, self._configured_state(state["corinfomax"]), sim_weight=st.sim_weight,
            la_R=st.la_R, la_mu=st.la_mu, eps=st.eps, return_parts=True)
        return loss, base.LossOutput(state=dict(state, corinfomax=cim_state), metrics=parts,
                                     features=jax.lax.stop_gradient(features[0]))

    def _configured_state(self, cim_state):
        """The state in ``corinfomax.state_dtype``. A float64 state arrives as float32 when it
        was copied to the devices with x64 off (orbax's restore does that unless it runs under
        ``jax.enable_x64``): it is taken back to float64 here, so the run goes on in float64
        after one float32 rounding of the restored state, instead of silently in float32."""
        if all(x.dtype == self.state_dtype for x in cim_state):
            return cim_state
        logger.warning("CorInfoMax: the %s state arrived as %s (a checkpoint restored without "
                       "x64?); converting it back to %s.", self.state_dtype,
                       cim_state.R1.dtype, self.state_dtype)
        with _x64_scope(self.state_dtype):
            return jax.tree.map(lambda x: x.astype(self.state_dtype), cim_state)
