"""Optimizers and learning-rate schedules, built from optax parts.

Every recipe in the papers we reproduce is one of three optimizers:

* ``sgd``: PyTorch SGD with *coupled* weight decay (``g + wd * p`` enters the momentum
    buffer), which is what every official PyTorch code base uses;
* ``lars``: SimCLR/BYOL/Barlow Twins LARS, biases and norm parameters excluded from
    weight decay and from trust-ratio adaptation;
* ``adamw``: decoupled weight decay (ViTs, MetaMask's mask in some ablations).

Schedules are linear warm-up then cosine decay, optionally stepped once per epoch (several
official codes do that, and parity needs it).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ssljax.config import ConfigError


def base_learning_rate(cfg: Any, global_batch_size: int) -> float:
    """The peak learning rate after the recipe's batch-size scaling rule."""
    rule = cfg.lr_scaling
    if rule == "linear":  # lr * B / 256 (SimCLR, BYOL, MoCo, SupCon ...)
        return cfg.lr * global_batch_size / 256
    if rule == "sqrt":  # lr * sqrt(B) (SimCLR's small-batch LARS rule)
        return cfg.lr * math.sqrt(global_batch_size)
    if rule == "none":
        return cfg.lr
    raise ValueError(
            f"optimizer.lr_scaling={rule!r} is not known; use 'linear', 'sqrt' or 'none'.")


def make_schedule(cfg: Any, *, global_batch_size: int, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up (from ``warmup_init * peak``) then cosine decay to ``final_lr_ratio * peak``.

    ``cfg.warmup_epochs`` is converted to steps with ``steps_per_epoch``; with
    ``cfg.step_per_epoch`` the schedule is evaluated at the first step of the current epoch,
    as PyTorch codes that call ``scheduler.step()`` once per epoch do.
    """
    peak = base_learning_rate(cfg, global_batch_size)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
            init_value=peak * cfg.warmup_init,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
            end_value=peak * cfg.final_lr_ratio,
    )
    if not cfg.step_per_epoch:
        return schedule
    if warmup_steps > 0 and cfg.warmup_init == 0:
        raise ConfigError(
            "optimizer.step_per_epoch holds each epoch at the learning rate of its first step, "
            "so a warm-up from optimizer.warmup_init = 0 trains the whole first epoch at lr 0; "
            "set --config.optimizer.warmup_init to a fraction above 0 or "
            "--config.optimizer.step_per_epoch=False.")
    return lambda step: schedule((step // steps_per_epoch) * steps_per_epoch)


def decay_mask(params: Any) -> Any:
    """True for weight matrices and kernels; False for biases and norm scales/offsets (1-D)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer named by ``cfg.name`` ('sgd', 'lars', 'adamw' or 'adam')."""
    name = cfg.name
    wd = cfg.weight_decay
    mask = decay_mask if cfg.exclude_bias_and_norm else None
    if name == "sgd":
        # PyTorch SGD: buf = mu * buf + (g + wd * p); p -= lr * buf. optax's trace starts at 0,
        # so the first buffer is g + wd * p exactly as in torch.
        return optax.chain(
            optax.add_decayed_weights(wd, mask=mask),
            optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    if name == "lars":
        lars_mask = decay_mask if cfg.exclude_bias_and_norm else True
        return optax.lars(schedule, weight_decay=wd, weight_decay_mask=lars_mask,
                      trust_coefficient=cfg.trust_coefficient, eps=0.0,
                      trust_ratio_mask=lars_mask, momentum=cfg.momentum,
                      nesterov=cfg.nesterov)
    if name == "adamw":
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=wd, mask=mask)
    if name == "adam":
        return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    raise ValueError(f"optimizer.name={name!r} is not known; use 'sgd', 'lars', 'adamw' or 'adam'.")


def momentum_buffer(opt_state: Any, params: Any) -> Any:
    """The momentum buffer of an ``sgd`` optimizer state (:func:`make_optimizer`): PyTorch's
    ``momentum_buffer``, a pytree shaped like ``params``.

    ``make_optimizer('sgd')`` is ``add_decayed_weights`` then optax's ``sgd``, whose one
    ``optax.TraceState`` holds that buffer; this module builds the optimizer, so it is the
    one that reads its state (MetaMask's virtual step replays an SGD step with it).

    Raises:
      ValueError: the state holds no single momentum buffer shaped like ``params``.
    """
    traces = [s.trace for s in jax.tree.leaves(
        opt_state, is_leaf=lambda s: isinstance(s, optax.TraceState))
        if isinstance(s, optax.TraceState)]
    if len(traces) != 1 or jax.tree.structure(traces[0]) != jax.tree.structure(params):
        raise ValueError(
            "MetaMask's virtual step needs the momentum buffer of a momentum-SGD optimizer, "
            f"but the optimizer state holds {len(traces)} matching optax.TraceState; use "
            "--config.optimizer.name=sgd with --config.optimizer.momentum > 0.")
    return traces[0]
