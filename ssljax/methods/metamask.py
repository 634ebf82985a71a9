"""MetaMask (Li et al., NeurIPS 2022): a meta-learnt dimensional mask for Barlow Twins.

The backbone features f are multiplied by a mask ``M = sigmoid(m)`` (one entry per feature
dimension, ``m`` initialised to 0) and the masked features feed two heads: a Barlow Twins
projector and a SimCLR projector. Each training step, as the official ``meta-mask.py``:

1. the network ``theta`` takes one optimizer step on ``L = L_BT + weight_cl * L_CL`` with the
   mask held fixed, giving ``theta_1``;
2. a *virtual* step replays that SGD step on ``L_CL`` alone::

       theta'(m) = theta_1 - eta * (mu * buf + grad_theta L_CL(theta_1, M(m)) + wd * theta_1)

   with ``eta`` the current learning rate and ``buf`` the optimizer's momentum buffer after
   step 1;
3. the mask's meta-gradient ``g_m = d/dm L_CL(theta'(m), M(m))``:

   - ``'exact'``: the total derivative, ``jax.grad`` through the virtual step (second order:
     JAX differentiates the inner backward pass);
   - ``'first_order'``: ``theta'`` held constant (the official ``--no-second-order``);
   - ``'finite_difference'``: the official DARTS approximation of the second-order term,
     ``g_m = g_1 - eta * (g_+ - g_-) / (2 R)`` with ``v = grad_theta' L_CL(theta', M)``,
     ``R = r / ||v||`` and ``g_+- = grad_m L_CL(theta_1 +- R v, M)``;
4. ``m`` takes one step of its own optimizer (PyTorch SGD with coupled weight decay; its
   learning rate follows the model's schedule, as the official code anneals both).

Where things live: ``m`` and its optimizer state are method state (``ts.state['mask']``,
``ts.state['mask_opt']``), so the trainer's optimizer only ever sees the network parameters
and the trainer needs no MetaMask-specific code.

The momentum buffer ``buf`` is read from the trainer's optimizer state by
:func:`ssljax.optim.momentum_buffer` (the optimizer module knows its own state: PyTorch's
``momentum_buffer``). The virtual step is only the replay of an SGD step for momentum SGD
with coupled weight decay, so other optimizers are rejected. The step itself is the base
class's (:meth:`ssljax.methods.base.Method.train_step`: the model's optimizer step and the
online probe); MetaMask extends its hook :meth:`MetaMask.model_step` with the meta step.

BatchNorm: as in the official code each view goes through the network on its own (per-view
batch statistics; the running statistics are updated once per view). Every virtual and
meta forward pass runs in train mode (batch statistics, as the official code does), and the
running statistics those passes would write are discarded: only the model step's are kept.
(The official code also lets the forward pass at ``theta_1`` of step 2 update the real
model's running statistics a second time; we do not.)

Evaluation uses the masked features ``f * M`` (the official kNN monitor: k = 5, T = 1).

References: Li et al., "MetaMask: Revisiting Dimensional Confounder for Self-Supervised
Learning", NeurIPS 2022; jiangmengli/MetaMask ``meta-mask.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssljax import losses, optim
from ssljax.config import ConfigError
from ssljax.methods import base, register

PyTree = Any

META_GRADS = ("exact", "first_order", "finite_difference", "none")


class MaskedTwoHeads(nn.Module):
    """A backbone whose masked features ``f * mask`` feed a Barlow Twins and a SimCLR head.

    Returns ``(masked features, z_bt, z_cl)``; a head that is not asked for returns None (the
    virtual and meta passes need only the SimCLR head). ``mask=None`` means no mask.
    """
    backbone: nn.Module
    bt_head: nn.Module
    cl_head: nn.Module

    def __call__(self, x, mask, *, train: bool, bt: bool = True, cl: bool = True):
        f = self.backbone(x, train=train)
        if mask is not None:
            f = f * mask.astype(f.dtype)
        z_bt = self.bt_head(f, train=train) if bt else None
        z_cl = self.cl_head(f, train=train) if cl else None
        return f, z_bt, z_cl

    def features(self, x):
        return self.backbone(x, train=False)


# Re-exported: its home is ssljax.optim.
momentum_buffer = optim.momentum_buffer


@dataclasses.dataclass(frozen=True)
class MetaMaskSettings:
    """MetaMask's hyper-parameters (``config.metamask``) and the facts of the model's
    optimizer that its virtual step replays (``config.optimizer``: momentum SGD)."""
    weight_bt: float = 1.0
    weight_cl: float = 10.0
    temperature: float = 0.07  # NT-Xent of the SimCLR head
    bt_lambd: float = 5e-3
    meta_grad: str = "exact"
    fd_r: float = 0.01
    mask_lr: float = 1e-3
    mask_momentum: float = 0.9
    mask_weight_decay: float = 5e-4
    mask_lr_follows_schedule: bool = True
    # The model's optimizer, as the virtual step replays it.
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_all: bool = True  # weight decay on every parameter (not optimizer.exclude_bias_and_norm)

    def __post_init__(self):
        if self.meta_grad not in META_GRADS:
            raise ConfigError(f"metamask.meta_grad={self.meta_grad!r} is not known; set "
                              "--config.metamask.meta_grad to one of "
                              f"{', '.join(repr(g) for g in META_GRADS)}.")
        if self.meta_grad != "none" and (self.optimizer != "sgd" or self.nesterov
                                         or self.momentum <= 0):
            raise ConfigError(
                "MetaMask's virtual step replays a momentum-SGD step; set "
                "--config.optimizer.name=sgd, --config.optimizer.momentum > 0 and "
                f"--config.optimizer.nesterov=False (got {self.optimizer}, momentum "
                f"{self.momentum}, nesterov {self.nesterov}).")
        base.check(self.temperature > 0, f"metamask.temperature={self.temperature} must be > 0; "
                   "set --config.metamask.temperature (MetaMask: 0.07).")

    @classmethod
    def from_config(cls, config) -> MetaMaskSettings:
        oc = config.optimizer
        return base.from_section(cls, config.metamask, optimizer=oc.name, momentum=oc.momentum,
                                 nesterov=oc.nesterov, weight_decay=oc.weight_decay,
                                 decay_all=not oc.exclude_bias_and_norm)


@register
class MetaMask(base.Method):
    name = "metamask"
    min_views = 2

    def __init__(self, config, *, num_classes, run=None, backbone: nn.Module | None = None,
                 bt_head: nn.Module | None = None, cl_head: nn.Module | None = None):
        """``backbone``, ``bt_head`` and ``cl_head`` replace the modules the config names
        (tests use tiny float64 networks)."""
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = mc = MetaMaskSettings.from_config(config)
        dtype = base.compute_dtype(config.model.dtype)
        if backbone is None:
            backbone = base.build_backbone(config.model)

        self.model = MaskedTwoHeads(
            backbone=backbone,
            bt_head=base.build_head(config.bt_projector, dtype) if bt_head is None else bt_head,
            cl_head=base.build_head(config.cl_projector, dtype) if cl_head is None else cl_head)
        self.meta_grad = mc.meta_grad
        self.mu = mc.momentum
        self.weight_decay = mc.weight_decay
        self.decay_all = mc.decay_all
        # PyTorch SGD for the mask: buf = mu * buf + (g + wd * m); m -= lr * buf.
        self.mask_tx = optax.chain(optax.add_decayed_weights(mc.mask_weight_decay),
                                   optax.trace(decay=mc.mask_momentum))
        self.peak_lr = self.run.peak_lr

    # -- the model ------------------------------------------------------------------------
    def mask_values(self, m: jax.Array) -> jax.Array:
        """``M = sigmoid(m)``; with ``meta_grad='none'`` a fixed all-ones mask (the official
        ``--disable-meta``)."""
        if self.meta_grad == "none":
            return jnp.ones_like(m)
        return jax.nn.sigmoid(m)

    def init_model(self, rng, batch):
        (features, _, _), variables = self.model.init_with_output(
            rng, batch["views"][:, 0], None, train=False)
        m = jnp.zeros(features.shape[-1:], jnp.float32)
        return variables["params"], {"batch_stats": variables["batch_stats"], "mask": m,
                                     "mask_opt": self.mask_tx.init(m)}

    def forward(self, params, batch_stats, views, mask, *, bt: bool, cl: bool):
        """Each view through the network on its own, in train mode (per-view BatchNorm
        statistics, as the official code); returns the outputs per view and the statistics."""
        outs = []
        for v in range(views.shape[1]):
            out, updates = self.model.apply(
                {"params": params, "batch_stats": batch_stats}, views[:, v], mask, train=True,
                bt=bt, cl=cl, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
            outs.append(out)
        return outs, batch_stats

    def cl_loss(self, params, batch_stats, views, m) -> jax.Array:
        """``L_CL(theta, M(m))``: NT-Xent of the SimCLR head on the masked features."""
        outs, _ = self.forward(params, batch_stats, views, self.mask_values(m), bt=False, cl=True)
        return losses.nt_xent(outs[0][2], outs[1][2], temperature=self.settings.temperature)

    def loss(self, params, state, batch, rng, step):
        del rng, step
        mc = self.settings
        mask = self.mask_values(state["mask"])
        with_cl = mc.weight_cl != 0
        outs, batch_stats = self.forward(params, state["batch_stats"], batch["views"], mask,
                                         bt=True, cl=with_cl)
        bt = losses.barlow_twins(outs[0][1], outs[1][1], lambd=mc.bt_lambd, ddof=1, eps=0.0)
        cl = (losses.nt_xent(outs[0][2], outs[1][2], temperature=mc.temperature) if with_cl
              else jnp.zeros((), bt.dtype))
        loss = mc.weight_bt * bt + mc.weight_cl * cl
        return loss, base.LossOutput(
            state=dict(state, batch_stats=batch_stats), metrics={"bt_loss": bt, "cl_loss": cl},
            features=jax.lax.stop_gradient(outs[0][0]))

    def embed(self, params, state, images):
        f = self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                             method=MaskedTwoHeads.features)
        return f * self.mask_values(state["mask"]).astype(f.dtype)

    # -- the meta step --------------------------------------------------------------------
    def virtual_params(self, params_1, batch_stats, buf, m, views, eta) -> PyTree:
        """``theta'(m) = theta_1 - eta (mu buf + grad L_CL(theta_1, M(m)) + wd theta_1)``.

        Weight decay follows the trainer's optimizer: every parameter (PyTorch) unless
        ``optimizer.exclude_bias_and_norm``."""
        grads = jax.grad(self.cl_loss)(params_1, batch_stats, views, m)
        decay = jax.tree.map(lambda p: self.weight_decay if self.decay_all or p.ndim > 1 else 0.0,
                             params_1)
        return jax.tree.map(lambda p, b, g, wd: p - eta * (self.mu * b + g + wd * p),
                            params_1, buf, grads, decay)

    def meta_objective(self, params_1, batch_stats, buf, m, views, eta) -> jax.Array:
        """The outer objective ``L_CL(theta'(m), M(m))``, a function of the mask alone."""
        theta = self.virtual_params(params_1, batch_stats, buf, m, views, eta)
        return self.cl_loss(theta, batch_stats, views, m)

    def meta_gradient(self, params_1, batch_stats, buf, m, views, eta, *,
                      kind: str | None = None, r: float | None = None):
        """``(L_CL(theta', M), g_m)`` for ``kind`` ('exact', 'first_order' or
        'finite_difference'; default ``metamask.meta_grad``)."""
        kind = kind or self.meta_grad
        if kind == "exact":
            return jax.value_and_grad(self.meta_objective, argnums=3)(
                params_1, batch_stats, buf, m, views, eta)
        theta = self.virtual_params(params_1, batch_stats, buf, m, views, eta)
        if kind == "first_order":
            theta = jax.lax.stop_gradient(theta)
            return jax.value_and_grad(self.cl_loss, argnums=3)(theta, batch_stats, views, m)
        if kind != "finite_difference":
            raise ValueError(f"Unknown meta-gradient kind {kind!r}; use one of {META_GRADS[:3]}.")
        r = self.settings.fd_r if r is None else r
        value, (v, g1) = jax.value_and_grad(self.cl_loss, argnums=(0, 3))(
            theta, batch_stats, views, m)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(v)))
        scale = r / jnp.maximum(norm, 1e-12)  # v = 0 (a dead head): no shift, g_m = g_1

        def grad_m_at(sign):
            shifted = jax.tree.map(lambda p, d: p + sign * scale * d, params_1, v)
            return jax.grad(self.cl_loss, argnums=3)(shifted, batch_stats, views, m)

        return value, g1 - eta * (grad_m_at(1.0) - grad_m_at(-1.0)) / (2 * scale)

    def mask_lr(self, schedule, step) -> jax.Array:
        """The mask's learning rate: ``metamask.mask_lr``, annealed like the model's."""
        lr = self.settings.mask_lr
        if self.settings.mask_lr_follows_schedule and self.peak_lr > 0:
            return lr * schedule(step) / self.peak_lr
        return jnp.asarray(lr, jnp.float32)

    def model_step(self, ts, batch, rng, tx, schedule):
        """The model step on ``L_BT + weight_cl L_CL`` (the base class's, the mask fixed),
        then the mask's meta step (2-4 above)."""
        params, opt_state, state, features, metrics = super().model_step(ts, batch, rng, tx,
                                                                         schedule)
        if self.meta_grad != "none":
            buf = optim.momentum_buffer(opt_state, params)
            lr = metrics["lr"]
            meta_loss, g_m = self.meta_gradient(params, state["batch_stats"], buf, state["mask"],
                                                batch["views"], lr)
            mask_updates, mask_opt = self.mask_tx.update(g_m, state["mask_opt"], state["mask"])
            mask_lr = self.mask_lr(schedule, ts.step)
            state = dict(state, mask=state["mask"] - mask_lr * mask_updates, mask_opt=mask_opt)
            metrics.update(meta_loss=meta_loss, meta_grad_norm=jnp.linalg.norm(g_m),
                           mask_lr=mask_lr)
        mask = self.mask_values(state["mask"])
        metrics.update(mask_mean=jnp.mean(mask), mask_min=jnp.min(mask), mask_max=jnp.max(mask))
        return params, opt_state, state, features, metrics
