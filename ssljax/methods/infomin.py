"""InfoMin (Tian et al., NeurIPS 2020): MoCo v2 with InfoMin Aug and a PIRL jigsaw branch.

As the official code (HobbitLong/PyContrast, ``--method InfoMin``: ``RGBMultiHeads``,
``RGBMoCo``, ``ContrastTrainer._train_moco``) computes it:

* everything of MoCo v2 (:class:`ssljax.methods.momentum.QueueContrast`: queue, EMA key
  encoder, shuffled BN),
  with InfoMin Aug on both crops (``data.augment.randaugment_n = 2``, see
  ``ssljax/data/infomin_aug.py``);
* a jigsaw branch: the 9 patches of a third view of each image (``batch['jigsaw']``,
  ``[B, 9, P, P, C]``) go through the query backbone (its own forward pass), a per-patch
  head ``fc1`` (the projector's shape), are shuffled within each image, concatenated and
  mapped by ``fc2: Linear(9 D, D)`` to ``q_jig``, contrasted against the key of the other
  crop with the same queue;
* ``loss = (1 - beta) L_instance + beta L_jigsaw``, ``beta = 0.5``.

The key encoder is the EMA of all query parameters (the official ``model_ema`` is a whole
``RGBMultiHeads``, jigsaw head included, which the key pass never uses).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import losses, models
from ssljax.config import ConfigError
from ssljax.methods import base, register
from ssljax.methods.momentum import QueueContrast, contrast_accuracy, group_apply


class JigsawHead(nn.Module):
    """``fc1`` per patch, shuffle the k patches of each image, concatenate, ``fc2``."""
    fc1: nn.Module
    out_dim: int
    k: int = 9

    @nn.compact
    def __call__(self, features, perm, *, train: bool):
        """``features`` ``[B * k, F]`` (patches of an image consecutive), ``perm`` ``[B, k]``."""
        z = self.fc1(features, train=train)
        z = z.reshape((-1, self.k, z.shape[-1]))
        z = jnp.take_along_axis(z, perm[:, :, None], axis=1)
        z = z.reshape((z.shape[0], -1))
        return models.heads.torch_dense(self.out_dim, z.shape[-1], name="fc2")(z).astype(
            jnp.float32)


class InfoMinNet(nn.Module):
    """Backbone, projector (``head``) and jigsaw head; ``__call__`` is the instance branch
    ``(features, z)`` (what the key encoder runs), ``jigsaw`` the patch branch."""
    backbone: nn.Module
    head: nn.Module
    jig_head: nn.Module

    def __call__(self, x, *, train: bool):
        features = self.backbone(x, train=train)
        return features, self.head(features, train=train)

    def jigsaw(self, patches, perm, *, train: bool):
        return self.jig_head(self.backbone(patches, train=train), perm, train=train)

    def init_all(self, x, patches, perm):
        return self(x, train=False), self.jigsaw(patches, perm, train=False)

    def features(self, x):
        return self.backbone(x, train=False)


@dataclasses.dataclass(frozen=True)
class InfoMinSettings:
    """InfoMin's own hyper-parameters (``config.infomin``) and its jigsaw view
    (``config.data.jigsaw``: the pipeline's settings; the model needs the patch side)."""
    beta: float = 0.5  # weight of the jigsaw term
    jigsaw: Mapping[str, Any] | None = None

    def __post_init__(self):
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"infomin.beta={self.beta} must be in [0, 1]; set "
                              "--config.infomin.beta (InfoMin: 0.5).")

    @property
    def patch(self) -> int:
        """The side of a jigsaw patch."""
        if not self.jigsaw:
            raise ConfigError("InfoMin needs the jigsaw view: set config.data.jigsaw (see "
                              "configs/infomin.py).")
        return self.jigsaw["patch"]

    @classmethod
    def from_config(cls, config) -> InfoMinSettings:
        jigsaw = config.data.get("jigsaw")
        return base.from_section(cls, config.infomin,
                                 jigsaw=jigsaw.to_dict() if jigsaw else None)


@register
class InfoMin(QueueContrast):
    name = "infomin"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.infomin = InfoMinSettings.from_config(config)
        fc1 = base.build_head(config.projector, base.compute_dtype(config.model.dtype))
        self.model = InfoMinNet(backbone=self.model.backbone, head=self.model.head,
                                jig_head=JigsawHead(fc1=fc1, out_dim=config.projector.out_dim))

    @property
    def input_spec(self) -> base.InputSpec:
        """Two views and the jigsaw view (``config.data.jigsaw``)."""
        return base.InputSpec(min_views=self.min_views, jigsaw=self.infomin.jigsaw)

    @staticmethod
    def _patches(batch):
        if "jigsaw" not in batch:
            raise ConfigError("InfoMin needs the jigsaw view: set config.data.jigsaw (see "
                              "configs/infomin.py).")
        patches = batch["jigsaw"]
        b, k = patches.shape[:2]
        return patches.reshape((b * k,) + patches.shape[2:]), b, k

    def init_model(self, rng, batch):
        model_rng, queue_rng = jax.random.split(rng)
        example = dict(batch)
        if "jigsaw" not in example:  # evaluation builds a random encoder from views alone
            patch = self.infomin.patch
            example["jigsaw"] = jnp.zeros(batch["views"].shape[:1] + (9, patch, patch)
                                          + batch["views"].shape[-1:])
        patches, b, k = self._patches(example)
        perm = jnp.tile(jnp.arange(k), (b, 1))
        variables = self.model.init(model_rng, example["views"][:, 0], patches, perm,
                                    method=InfoMinNet.init_all)
        return self.init_state(variables, queue_rng)

    def jigsaw_query(self, params, batch_stats, batch, rng):
        """``(q_jig, batch_stats)``: the patches through the query backbone with BN per group of
        images, then the jigsaw head with a random order of each image's patches."""
        patches, b, k = self._patches(batch)
        perm = jax.vmap(lambda r: jax.random.permutation(r, k))(jax.random.split(rng, b))

        def fn(stats, x_and_perm):
            x, pm = x_and_perm
            out, updates = self.model.apply({"params": params, "batch_stats": stats}, x, pm,
                                            train=True, mutable=["batch_stats"],
                                            method=InfoMinNet.jigsaw)
            return out, updates.get("batch_stats", {})

        groups = self.moco.bn_groups
        # Group g holds the patches of the images of group g (k consecutive rows per image).
        patches = patches.reshape((b, k) + patches.shape[1:])
        q_jig, stats = group_apply(
            lambda s, xp: fn(s, (xp[0].reshape((-1,) + xp[0].shape[2:]), xp[1])),
            batch_stats, (patches, perm), groups)
        return q_jig, stats

    def loss(self, params, state, batch, rng, step):
        del step
        shuffle_rng, jig_rng = jax.random.split(rng)
        queue = state["queue"]  # before the enqueue, for the jigsaw logits too
        l_inst, metrics, features, k, state = self.contrast(params, state, batch, shuffle_rng)
        q_jig, batch_stats = self.jigsaw_query(params, state["batch_stats"], batch, jig_rng)
        l_jig = losses.infonce(q_jig, k, temperature=self.moco.temperature, queue=queue)
        beta = self.infomin.beta
        metrics.update(instance_loss=l_inst, jigsaw_loss=l_jig,
                       jigsaw_acc=contrast_accuracy(jax.lax.stop_gradient(q_jig), k, queue))
        return (1 - beta) * l_inst + beta * l_jig, base.LossOutput(
            state=dict(state, batch_stats=batch_stats), metrics=metrics,
            features=jax.lax.stop_gradient(features))
