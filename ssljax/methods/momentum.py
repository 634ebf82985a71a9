"""What the momentum methods share: the EMA update, the queue of negatives, BatchNorm per
group of the batch, and the MoCo v2 core (query and key encoders, shuffled grouped BatchNorm,
queue) that MoCo and InfoMin build on. BYOL uses the EMA; MRCL's InfoNCE option the EMA and
the queue.

Not a method: nothing here is registered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ssljax.config import ConfigError
from ssljax.losses import infonce
from ssljax.losses._common import l2_normalize
from ssljax.methods import base

PyTree = Any


def ema(target: PyTree, online: PyTree, momentum: float | jax.Array) -> PyTree:
    """``target * m + online * (1 - m)``, leaf by leaf: the momentum (EMA) update.

    >>> ema({"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}, 0.75)["w"].item()
    1.5
    """
    return jax.tree.map(lambda t, p: momentum * t + (1.0 - momentum) * p.astype(t.dtype),
                        target, online)


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes ``keys`` (``[B, D]``) into the ring buffer ``queue`` (``[K, D]``) at ``ptr``.

    Row ``(ptr + i) % K`` receives ``keys[i]``; the new pointer is ``(ptr + B) % K``. So after
    any number of steps the queue holds the last K keys, the oldest overwritten first.

    >>> q, p = enqueue(jnp.zeros((3, 1)), jnp.int32(2), jnp.array([[1.0], [2.0]]))
    >>> q[:, 0].tolist(), int(p)
    ([2.0, 0.0, 1.0], 1)
    """
    size, batch = queue.shape[0], keys.shape[0]
    if batch > size:
        raise ValueError(f"The queue ({size} keys) is smaller than the global batch ({batch}); "
                         "raise --config.moco.queue_size to at least the batch size.")
    rows = (ptr + jnp.arange(batch)) % size
    return queue.at[rows].set(keys.astype(queue.dtype)), (ptr + batch) % size


def group_apply(apply_fn: Callable[..., tuple[Any, PyTree]], batch_stats: PyTree, x: jax.Array,
                groups: int) -> tuple[Any, PyTree]:
    """Train-mode forward pass with BatchNorm statistics per group of consecutive rows.

    Args:
      apply_fn: ``(batch_stats, x) -> (outputs, new_batch_stats)``, a train-mode pass.
      batch_stats: the running statistics before the pass.
      x: ``[B, ...]`` (or a pytree of such arrays); rows ``[g B/G, (g+1) B/G)`` form group g.
      groups: G, which must divide B. G = 1 is an ordinary pass over the whole batch.

    Returns:
      The outputs (rows in the order of ``x``) and the running statistics, averaged over
      the groups.
    """
    b = jax.tree.leaves(x)[0].shape[0]
    if groups < 1 or b % groups:
        raise ConfigError(f"The batch of {b} does not split into {groups} BatchNorm groups; "
                          "set --config.moco.bn_groups to a divisor of the batch size.")
    xg = jax.tree.map(lambda a: a.reshape((groups, b // groups) + a.shape[1:]), x)
    out, stats = jax.vmap(lambda xi: apply_fn(batch_stats, xi))(xg)
    out = jax.tree.map(lambda o: o.reshape((b,) + o.shape[2:]), out)
    return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def key_permutation(rng: jax.Array, batch_size: int) -> jax.Array:
    """The permutation of the key batch before grouped BatchNorm (shuffle BN)."""
    return jax.random.permutation(rng, batch_size)


def contrast_accuracy(q: jax.Array, k: jax.Array, queue: jax.Array) -> jax.Array:
    """Fraction of queries whose positive logit beats every negative (PyContrast's ``acc``)."""
    qn, kn, neg = l2_normalize(q), l2_normalize(k), l2_normalize(queue)
    pos = jnp.sum(qn * kn, axis=-1)
    return jnp.mean(pos > jnp.max(qn @ neg.T, axis=-1))


def copy_encoder(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    """A key (or target) encoder that starts as a copy of the online one:
    ``{'params': ..., 'batch_stats': ...}``."""
    return {"params": jax.tree.map(jnp.copy, params),
            "batch_stats": jax.tree.map(jnp.copy, batch_stats)}


@dataclasses.dataclass(frozen=True)
class MoCoSettings:
    """MoCo v2's hyper-parameters (``config.moco``), the queue's key width
    (``config.projector.out_dim``) and the global batch size they must fit."""
    dim: int
    batch_size: int
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999  # EMA of the key encoder
    bn_groups: int = 8  # BatchNorm groups (the official per-GPU BN)
    shuffle_bn: bool = True

    def __post_init__(self):
        if not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"moco.momentum={self.momentum} must be in [0, 1]; set "
                              "--config.moco.momentum (MoCo: 0.999).")
        if self.queue_size < self.batch_size:
            raise ConfigError(
                f"moco.queue_size={self.queue_size} is smaller than batch_size={self.batch_size}; "
                "raise --config.moco.queue_size.")
        if self.bn_groups < 1 or self.batch_size % self.bn_groups:
            raise ConfigError(
                f"batch_size={self.batch_size} does not split into moco.bn_groups="
                f"{self.bn_groups} BatchNorm groups; set --config.moco.bn_groups to a divisor.")
        base.check(self.temperature > 0, f"moco.temperature={self.temperature} must be > 0; "
                   "set --config.moco.temperature (MoCo v2: 0.2).")

    @classmethod
    def from_config(cls, config, run: base.RunFacts) -> MoCoSettings:
        return base.from_section(cls, config.moco, dim=config.projector.out_dim,
                                 batch_size=run.batch_size)


class QueueContrast(base.Method):
    """The MoCo v2 core (:mod:`ssljax.methods.moco`): a query encoder (``config.model`` and
    ``config.projector``), its EMA key encoder and a queue of negatives (``config.moco``).
    :class:`ssljax.methods.moco.MoCo` is this; InfoMin adds a jigsaw branch."""

    min_views = 2

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = self.moco = MoCoSettings.from_config(config, self.run)
        dtype = base.compute_dtype(config.model.dtype)
        self.model = base.EncoderWithHead(backbone=base.build_backbone(config.model),
                                          head=base.build_head(config.projector, dtype))

    # -- the model ------------------------------------------------------------------------
    def init_model(self, rng, batch):
        model_rng, queue_rng = jax.random.split(rng)
        variables = self.model.init(model_rng, batch["views"][:, 0], train=False)
        return self.init_state(variables, queue_rng)

    def init_state(self, variables, queue_rng):
        """``(params, state)``: the key encoder a copy of the query encoder, a random queue."""
        params = variables["params"]
        mc = self.moco
        # The official queue starts as random unit vectors; the key encoder as a copy.
        queue = l2_normalize(jax.random.normal(queue_rng, (mc.queue_size, mc.dim)))
        state = {"batch_stats": variables.get("batch_stats", {}),
                 "key": copy_encoder(params, variables.get("batch_stats", {})),
                 "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}
        return params, state

    def _apply(self, params, **kwargs):
        def fn(batch_stats, x):
            out, updates = self.model.apply({"params": params, "batch_stats": batch_stats}, x,
                                            train=True, mutable=["batch_stats"], **kwargs)
            return out, updates.get("batch_stats", {})
        return fn

    def encode_queries(self, params, batch_stats, x):
        """``((features, q), batch_stats)``: the query encoder, BN per group in batch order."""
        return group_apply(self._apply(params), batch_stats, x, self.moco.bn_groups)

    def encode_keys(self, key_vars, x, rng, *, shuffle: bool | None = None):
        """``(k, batch_stats)``: the key encoder under shuffled, grouped BatchNorm.

        With ``shuffle`` (default ``moco.shuffle_bn``) the batch is permuted by
        :func:`key_permutation` of ``rng`` before the grouping and the keys are put back in
        the order of ``x``.
        """
        mc = self.moco
        shuffle = mc.shuffle_bn if shuffle is None else shuffle
        if shuffle:
            perm = key_permutation(rng, x.shape[0])
            x = x[perm]
        (_, k), batch_stats = group_apply(self._apply(key_vars["params"]), key_vars["batch_stats"],
                                          x, mc.bn_groups)
        if shuffle:
            k = jnp.zeros_like(k).at[perm].set(k)  # un-shuffle: row perm[i] came from x[perm[i]]
        return jax.lax.stop_gradient(k.astype(jnp.promote_types(k.dtype, jnp.float32))), batch_stats

    # -- the objective --------------------------------------------------------------------
    def contrast(self, params, state, batch, rng):
        """The instance InfoNCE, its metrics, the query features, the keys and the new state
        (shared with InfoMin)."""
        views = batch["views"]
        (features, q), batch_stats = self.encode_queries(params, state["batch_stats"], views[:, 0])
        k, key_stats = self.encode_keys(state["key"], views[:, 1], rng)
        queue = state["queue"]  # before this step's keys: the negatives
        loss = infonce(q, k, temperature=self.moco.temperature, queue=queue)
        acc = contrast_accuracy(jax.lax.stop_gradient(q), k, queue)
        new_queue, ptr = enqueue(queue, state["queue_ptr"], l2_normalize(k))
        new_state = dict(state, batch_stats=batch_stats,
                         key=dict(state["key"], batch_stats=key_stats),
                         queue=new_queue, queue_ptr=ptr)
        return loss, {"instance_acc": acc}, features, k, new_state

    def loss(self, params, state, batch, rng, step):
        del step
        loss, metrics, features, _, state = self.contrast(params, state, batch, rng)
        return loss, base.LossOutput(state=state, metrics=metrics,
                                     features=jax.lax.stop_gradient(features))

    def after_update(self, params, state, step):
        del step
        key = dict(state["key"], params=ema(state["key"]["params"], params,
                                           self.moco.momentum))
        return dict(state, key=key)


