"""Offline linear probe: multinomial logistic regression on frozen, standardised features.

The whole optimisation runs in one compiled loop (minibatch AdamW or, as several papers'
protocols, SGD with momentum; cosine schedule), so a probe on 60,000 x 512 features takes
seconds on a CPU. The same code scores raw pixels, a random encoder and a pre-trained one,
so the three numbers are comparable.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


OPTIMIZERS = ("adamw", "sgd")


SCHEDULES = ("cosine", "piecewise")


def _schedule(lr, *, total: int, steps_per_epoch: int, schedule: str, final_lr_ratio,
              decay_epochs: tuple[int, ...], decay_rate: float) -> optax.Schedule:
    if schedule == "piecewise":
        # Step decay at epoch boundaries (SupCon/SelfCon linear protocol: x0.1 at 60 and 80).
        return optax.piecewise_constant_schedule(
            lr, {int(e) * steps_per_epoch: decay_rate for e in decay_epochs})
    return optax.cosine_decay_schedule(lr, total, alpha=final_lr_ratio)


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "optimizer",
                                             "schedule", "decay_epochs", "decay_rate"))
def _fit(x, y, key, *, num_classes: int, epochs: int, batch_size: int, lr: float,
         weight_decay: float, optimizer: str = "adamw", final_lr_ratio: float = 0.0,
         schedule: str = "cosine", decay_epochs: tuple[int, ...] = (),
         decay_rate: float = 0.1):
    n, d = x.shape
    steps_per_epoch = max(n // batch_size, 1)
    total = epochs * steps_per_epoch
    schedule = _schedule(lr, total=total, steps_per_epoch=steps_per_epoch, schedule=schedule,
                         final_lr_ratio=final_lr_ratio, decay_epochs=decay_epochs,
                         decay_rate=decay_rate)
    if optimizer == "sgd":
        # PyTorch SGD, momentum 0.9, coupled weight decay (CorInfoMax's linear evaluation).
        tx = optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(schedule, momentum=0.9))
    else:
        tx = optax.adamw(schedule, weight_decay=weight_decay)
    params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def epoch(carry, epoch_key):
        perm = jax.random.permutation(epoch_key, n)[: steps_per_epoch * batch_size]
        batches = perm.reshape(steps_per_epoch, -1)

        def step(carry, idx):
            p, opt_state = carry
            grads = jax.grad(loss_fn)(p, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        return jax.lax.scan(step, carry, batches)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)),
                                  jax.random.split(key, epochs))
    return params


def linear_probe(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                 epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 1024, seed: int = 0, optimizer: str = "adamw",
                 final_lr_ratio: float = 0.0, schedule: str = "cosine",
                 decay_epochs: tuple[int, ...] = (60, 80), decay_rate: float = 0.1,
                 return_logits: bool = False) -> dict:
    """Train a linear classifier on ``train_features`` and score it.

    Features are standardised with the training set's per-dimension mean and std (as a
    non-affine BatchNorm in front of the classifier would, MAE-style). ``optimizer`` is
    ``'adamw'`` (the default) or ``'sgd'`` (momentum 0.9, coupled weight decay). With
    ``schedule='cosine'`` the learning rate follows a cosine from ``lr`` to
    ``final_lr_ratio * lr``; with ``'piecewise'`` it is multiplied by ``decay_rate`` at the
    start of each epoch in ``decay_epochs`` (SupCon's and SelfCon's protocol).

    Returns:
      ``{'top1': test accuracy, 'train_top1': training accuracy}``, fractions in [0, 1], and
      with ``return_logits`` also ``'test_logits'`` ``[N_test, num_classes]`` (to ensemble
      several probes by the mean of their logits).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown linear-probe optimizer {optimizer!r}; use one of {OPTIMIZERS}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown linear-probe schedule {schedule!r}; use one of {SCHEDULES}.")
    train_x = np.asarray(train_features, np.float32).reshape(len(train_features), -1)
    test_x = np.asarray(test_features, np.float32).reshape(len(test_features), -1)
    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-6
    train_x = jnp.asarray((train_x - mean) / std)
    test_x = jnp.asarray((test_x - mean) / std)
    train_y = jnp.asarray(train_labels, jnp.int32)
    batch_size = min(batch_size, len(train_x))
    params = _fit(train_x, train_y, jax.random.key(seed), num_classes=num_classes, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                  final_lr_ratio=final_lr_ratio, schedule=schedule,
                  decay_epochs=tuple(int(e) for e in decay_epochs), decay_rate=float(decay_rate))

    def logits(x):
        return np.asarray(x @ params["w"] + params["b"])

    def accuracy(x, y):
        return float(np.mean(np.argmax(logits(x), -1) == np.asarray(y)))

    result = {"top1": accuracy(test_x, test_labels),
              "train_top1": accuracy(train_x, train_labels)}
    if return_logits:
        result["test_logits"] = logits(test_x)
    return result
