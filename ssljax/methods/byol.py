"""BYOL (Grill et al., NeurIPS 2020): predict an EMA target network's projection of the other view.

As the official code (deepmind-research ``byol/byol_experiment.py``, ``byol/utils/networks.py``)
computes it:

* online network: backbone, projector ``MLP(4096 -> 256)`` and predictor of the same shape,
  each ``Linear (with bias) -> BatchNorm (scale and offset) -> ReLU -> Linear (no bias)``
  (``networks.MLP``: ``use_bias_last=False``, no BatchNorm after the last Linear); target
  network: backbone and projector, no predictor;
* the backbone is Haiku's ResNet v1, whose *bottleneck* blocks (ResNet-50 and deeper)
  start with the scale of their last BatchNorm at zero (``hk.nets.ResNet.BlockV1``,
  ``batchnorm_2``): each such block is the identity on its shortcut at init. Basic blocks
  (ResNet-18/34) and the shortcut BatchNorms start at one. The configs set
  ``model.zero_init_residual`` accordingly (``configs/byol.py``);
* the target network gets its *own* random initialisation, not a copy of the online one
  (``_make_initial_state`` splits the seed into an online and a target key). Here, with
  ``byol.target_init='independent'`` (the default), the online network is initialised
  with the method's key ``rng`` and the target with :func:`target_init_key` ``(rng)`` =
  ``jax.random.fold_in(rng, 1)``, both deterministic from ``config.seed``;
  ``byol.target_init='copy'`` starts the target as a copy of the online backbone and
  projector (the paper's description; ssljax's behaviour before);
* each view goes through both networks in its own forward pass (BatchNorm statistics over
  the global batch of that view: the official cross-replica BN);
* ``loss = byol(p1, z2) + byol(p2, z1)`` with ``byol(p, z) = mean(2 - 2 cos(p, z))`` and the
  target projections ``z`` under stop-gradient (:func:`ssljax.losses.byol`);
* after the optimizer step, ``p_t = tau p_t + (1 - tau) p`` with the new online parameters
  (parameters only: the target's BatchNorm statistics come from its own passes), and
  ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` at step k of K (0.996 -> 1).

The target network lives in the method state (``TrainState.state['target']``), built by
:meth:`BYOL.init_model` inside the trainer's jitted init: sharded, donated and checkpointed
with the train state, whichever ``target_init``.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import losses, models
from ssljax.config import ConfigError
from ssljax.methods import base, register
from ssljax.methods.momentum import ema


class OnlineNetwork(nn.Module):
    """Backbone, projector (``head``, so the target's parameters share its names) and
    predictor; returns ``(features, projection, prediction)``."""
    backbone: nn.Module
    head: nn.Module
    predictor: nn.Module

    def __call__(self, x, *, train: bool):
        features = self.backbone(x, train=train)
        z = self.head(features, train=train)
        return features, z, self.predictor(z, train=train)

    def features(self, x):
        return self.backbone(x, train=False)


def target_momentum(step: jax.Array, total_steps: int, base_momentum: float) -> jax.Array:
    """BYOL's cosine schedule ``1 - (1 - base) (cos(pi step / total) + 1) / 2``.

    >>> round(float(target_momentum(0, 100, 0.996)), 6), float(target_momentum(100, 100, 0.996))
    (0.996, 1.0)
    """
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base_momentum) * (jnp.cos(math.pi * frac) + 1.0) / 2.0


TARGET_INITS = ("independent", "copy")


def target_init_key(rng: jax.Array) -> jax.Array:
    """The key of the target network's own initialisation (``byol.target_init='independent'``),
    from the key ``rng`` that initialises the online network: ``jax.random.fold_in(rng, 1)``."""
    return jax.random.fold_in(rng, 1)


def _mlp(cfg, dtype) -> models.MLP:
    # The reference's networks.MLP: the hidden Linear has a bias, the last one none. Configs
    # without the keys get the reference's choice.
    return base.build_head(cfg, dtype, use_bias_hidden=True, use_bias_last=False)


@dataclasses.dataclass(frozen=True)
class BYOLSettings:
    """BYOL's hyper-parameters (``config.byol``)."""
    base_momentum: float = 0.996  # the target's EMA momentum at step 0 (cosine to 1)
    target_init: str = "independent"  # or 'copy'

    def __post_init__(self):
        if not 0.0 <= self.base_momentum <= 1.0:
            raise ConfigError(f"byol.base_momentum={self.base_momentum} must be in [0, 1]; "
                              "set --config.byol.base_momentum (BYOL: 0.996).")
        if self.target_init not in TARGET_INITS:
            raise ConfigError(f"byol.target_init={self.target_init!r} is not valid; use "
                              "'independent' (the target's own random init, as the reference) "
                              "or 'copy' (a copy of the online network).")


@register
class BYOL(base.Method):
    name = "byol"
    min_views = 2

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = base.from_section(BYOLSettings, config.byol)
        self.target_init = self.settings.target_init
        dtype = base.compute_dtype(config.model.dtype)
        backbone = base.build_backbone(config.model)
        head = _mlp(config.projector, dtype)
        self.model = OnlineNetwork(backbone=backbone, head=head,
                                   predictor=_mlp(config.predictor, dtype))
        self.target = base.EncoderWithHead(backbone=backbone, head=head)

    def init_model(self, rng, batch):
        x = batch["views"][:, 0]
        variables = self.model.init(rng, x, train=False)
        params, stats = variables["params"], variables["batch_stats"]
        if self.target_init == "copy":
            # The target starts as a copy of the online backbone and projector.
            target = {"params": {k: jax.tree.map(jnp.copy, params[k])
                                 for k in ("backbone", "head")},
                      "batch_stats": {k: jax.tree.map(jnp.copy, stats[k])
                                      for k in ("backbone", "head") if k in stats}}
        else:
            # Its own random init (same architecture and parameter names, another key).
            own = self.target.init(target_init_key(rng), x, train=False)
            target = {"params": own["params"], "batch_stats": own.get("batch_stats", {})}
        return params, {"batch_stats": stats, "target": target}

    def momentum(self, step: jax.Array) -> jax.Array:
        if self.run.total_steps <= 0:
            raise ValueError("BYOL's target schedule needs the run length; build the method "
                             "with run=RunFacts(total_steps=...) (ssljax.methods.base), or set "
                             "--config.total_steps.")
        return target_momentum(step, self.run.total_steps, self.settings.base_momentum)

    def loss(self, params, state, batch, rng, step):
        del rng
        views = batch["views"]
        stats, target = state["batch_stats"], state["target"]
        target_stats = target["batch_stats"]
        feats, preds, targets = [], [], []
        for v in range(views.shape[1]):
            (f, _, p), upd = self.model.apply({"params": params, "batch_stats": stats}, views[:, v],
                                              train=True, mutable=["batch_stats"])
            stats = upd["batch_stats"]
            (_, z), upd = self.target.apply({"params": target["params"], "batch_stats": target_stats},
                                            views[:, v], train=True, mutable=["batch_stats"])
            target_stats = upd["batch_stats"]
            feats.append(f)
            preds.append(p)
            targets.append(jax.lax.stop_gradient(z))
        loss_12 = losses.byol(preds[0], targets[1])
        loss_21 = losses.byol(preds[1], targets[0])
        new_state = dict(state, batch_stats=stats, target=dict(target, batch_stats=target_stats))
        return loss_12 + loss_21, base.LossOutput(
            state=new_state, metrics={"loss_12": loss_12, "loss_21": loss_21,
                                      "tau": self.momentum(step)},
            features=jax.lax.stop_gradient(feats[0]))

    def after_update(self, params, state, step):
        online = {k: params[k] for k in ("backbone", "head")}
        target = state["target"]
        return dict(state, target=dict(target, params=ema(target["params"], online,
                                                          self.momentum(step))))
