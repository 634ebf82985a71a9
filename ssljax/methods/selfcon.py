"""SelfCon (Bae et al., AAAI 2023): contrast a network's backbone with its own sub-network.

One view per image is enough (SelfCon-S): the sub-network's projection and the backbone's
projection of the same image are two "views" for the supervised contrastive loss, so the
step costs one forward pass instead of SupCon's two. Settings (``config.selfcon``):

- ``multiview``: SelfCon-M, two augmented views (``data.num_views=2``);
- ``label``: False for the unsupervised -U variants (positives: the same image only);
- ``anchors``: ``'all'`` (SelfCon-S/-M) or ``'subnet'`` (the starred variants S*/M*:
  only sub-network projections anchor, ``alpha`` weighs that term, and a SupCon term on the
  backbone projections alone is added).

The sub-network (``config.model.exits``, ``config.model.exit_kind``) and the heads are
:class:`ssljax.models.MultiExitContrastive`.

References: raymin0223/self-contrastive-learning ``main_represent.py`` (``_train``),
``losses/losses.py`` (``ConLoss``), ``networks/resnet_big.py``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from ssljax import losses, models
from ssljax.methods import base, register
from ssljax.methods.multi_exit import (MultiExitMethod, build_network, check_num_views,
                                       per_image)

ANCHORS = ("all", "subnet")


def selfcon_loss(z: jax.Array, z_exits: Sequence[jax.Array], labels: jax.Array | None, *,
                 num_views: int, temperature: float, base_temperature: float = 0.07,
                 anchors: str = "all", alpha: float = 1.0,
                 block_size: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SelfCon objective on projections of ``V`` views, as the official code stacks them.

    Args:
      z: ``[V*B, D]`` backbone projections, view-major (view 0's B images first).
      z_exits: one ``[V*B, D]`` array of sub-network projections per exit.
      labels: ``[B]`` class labels, or None for the unsupervised -U variants.
      num_views: V (1: SelfCon-S, 2: SelfCon-M).
      temperature, base_temperature, block_size: as for :func:`ssljax.losses.supcon`.
      anchors: ``'all'``: one SupCon loss over ``[V*B, E+1, D]`` = (exits..., backbone) of
        each image-view, with the labels repeated per view (for -MU, the positive of an
        embedding is the other exit of the same view, as in the official code);
        ``'subnet'`` (starred): ``supcon(backbone [B, V, D]) + alpha * supcon([B, V*(E+1), D],
        anchors = the sub-network entries)``.
      alpha: weight of the sub-network-anchored term of the starred variants.

    Returns:
      ``(loss, terms)``; ``terms`` has ``backbone_term`` and ``subnet_term`` for the starred
      variants, nothing otherwise.

    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0]]); sub = jnp.array([[0.8, 0.6], [0.6, 0.8]])
    >>> loss, _ = selfcon_loss(z, [sub], jnp.array([0, 1]), num_views=1, temperature=0.1)
    >>> print(f"{loss:.4f}")
    1.3811
    """
    if anchors not in ANCHORS:
        raise ValueError(f"selfcon anchors must be one of {ANCHORS}; got {anchors!r}.")
    kw = dict(temperature=temperature, base_temperature=base_temperature, block_size=block_size)
    if anchors == "all":
        stacked = jnp.stack([*z_exits, z], axis=1)  # [V*B, E+1, D]
        ids = None if labels is None else jnp.tile(labels, num_views)
        return losses.supcon(stacked, ids, **kw), {}
    backbone = per_image(z, num_views)  # [B, V, D]
    subs = [per_image(s, num_views) for s in z_exits]
    everything = jnp.concatenate([*subs, backbone], axis=1)  # [B, V*(E+1), D]
    backbone_term = losses.supcon(backbone, labels, **kw)
    subnet_term = losses.supcon(everything, labels, anchors=tuple(range(len(subs) * num_views)),
                                **kw)
    return backbone_term + alpha * subnet_term, {"backbone_term": backbone_term,
                                                 "subnet_term": subnet_term}


@register
class SelfCon(MultiExitMethod):
    name = "selfcon"

    def __init__(self, config, *, num_classes):
        super().__init__(config, num_classes=num_classes)
        sc = config.selfcon
        if sc.anchors not in ANCHORS:
            raise ValueError(f"selfcon.anchors={sc.anchors!r} is not known; use 'all' "
                             "(SelfCon-S/-M) or 'subnet' (the starred variants).")
        check_num_views(config, 2 if sc.multiview else 1,
                        "SelfCon-M (selfcon.multiview=True)" if sc.multiview else
                        "SelfCon-S (selfcon.multiview=False)")
        if not tuple(config.model.exits):
            raise ValueError("SelfCon needs a sub-network; set --config.model.exits='(2,)'.")
        self.model = models.MultiExitContrastive(build_network(config.model),
                                                 hidden_dim=config.projector.hidden_dim,
                                                 out_dim=config.projector.out_dim)

    def loss(self, params, state, batch, rng, step):
        views = batch["views"]
        num_views, b = views.shape[1], views.shape[0]
        sc, lc = self.config.selfcon, self.config.loss
        features, z, state = self.forward(params, state, views)
        loss, terms = selfcon_loss(
            z.backbone, z.exits, batch["label"] if sc.label else None, num_views=num_views,
            temperature=lc.temperature, base_temperature=lc.base_temperature,
            anchors=sc.anchors, alpha=sc.alpha, block_size=lc.block_size or None)
        return loss, base.LossOutput(state=state, metrics=terms,
                                     features=jax.lax.stop_gradient(features.backbone[:b]))
