"""MRCL (Liu et al., 2022): contrastive learning on masked views plus masked reconstruction.

The paper (abstract): contrastive learning, seen through the Information Bottleneck, overfits
"discriminative information"; masking the input is a stronger augmentation that removes
redundant information (compression), and a reconstruction task keeps the representation
general (expression). No code was released; everything below that the abstract does not fix
is **our reading** (METHODS.md), and each choice is a config field:

* views: the pipeline's two augmented views; the views in ``data.mask.views`` are masked
  (random or block patch masks of ratio ``data.mask.ratio``, drawn by tf.data and carried
  in the batch as ``'masks'`` ``[B, V, g, g]``);
* encoder: a ResNet sees the masked patches replaced by zeros (the normalised mean colour)
  or, with ``mrcl.mask_token``, by a learned pixel value; a ViT drops the masked tokens (MAE);
* contrastive term: NT-Xent over the global batch (``mrcl.contrast='nt_xent'``, default) or
  MoCo-style InfoNCE with an EMA key encoder and a queue (``'infonce'``), on the projections
  of the masked views;
* reconstruction term: a light decoder (:class:`ssljax.models.ConvDecoder` on a ResNet stage,
  :class:`ssljax.models.TransformerDecoder` on the ViT tokens) predicts the **unmasked** view;
  :func:`ssljax.losses.masked_reconstruction` scores the masked patches (``mrcl.rec_on=
  'masked'``) or every patch (``'all'``, the autoencoder of the "mask ratio 0" ablation),
  with per-patch normalised targets (``mrcl.norm_pix``), averaged over the masked views;
* ``loss = L_con + lambda * L_rec`` (``mrcl.lambda_rec``). With ``lambda_rec = 0`` no decoder
  is built; with ratio 0 as well, the method is SimCLR exactly (same parameters, same loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax import losses, models
from ssljax.config import ConfigError
from ssljax.data.specs import dataset_info
from ssljax.methods import base, momentum, register


def num_masked(ratio: float, num_patches: int) -> int:
    """Masked patches per masked view; the same rule as ``ssljax.data.masking.num_masked``
    (kept here so that ``ssljax.methods`` does not import TensorFlow)."""
    return int(round(ratio * num_patches))


class MRCLModel(nn.Module):
    """Encoder (ResNet or ViT), projector and optional decoder, over all views of a batch.

    ``__call__(views, masks, *, num_masked, decode_views, train)``: ``views`` ``[B, V, H, W, C]``,
    ``masks`` bool ``[B, V, g, g]`` or None, ``num_masked`` the static masked count of each
    view, ``decode_views`` the views to reconstruct. Returns ``(features [V*B, F],
    projections [V*B, D], reconstructions)`` (view-major rows; one prediction per decoded
    view: images ``[B, H, W, C]`` from the ResNet decoder, patch tokens ``[B, L, p*p*C]``
    from the ViT decoder).
    """

    backbone: nn.Module
    head: nn.Module
    decoder: nn.Module | None = None
    mask_patch: int = 4
    mask_token: bool = False
    decode_stage: str = "stage4"

    @property
    def is_vit(self) -> bool:
        return isinstance(self.backbone, models.ViT)

    @nn.compact
    def __call__(self, views, masks, *, num_masked: tuple[int, ...],
                 decode_views: tuple[int, ...], train: bool):
        if self.is_vit:
            features, recon = self._vit(views, masks, num_masked, decode_views, train)
        else:
            features, recon = self._resnet(views, masks, num_masked, decode_views, train)
        return features, self.head(features, train=train), recon

    def _resnet(self, views, masks, num_masked, decode_views, train):
        b, v, h, w, c = views.shape
        x = views
        if masks is not None and any(num_masked):
            pixels = masks.repeat(self.mask_patch, axis=2).repeat(self.mask_patch, axis=3)
            fill = (self.param("mask_token", nn.initializers.zeros, (c,)) if self.mask_token
                    else jnp.zeros((c,), views.dtype))
            x = jnp.where(pixels[..., None], fill.astype(views.dtype), views)
        features, stages = self.backbone(base.flatten_views(x), train=train, return_stages=True)
        recon = ()
        if self.decoder is not None and decode_views:
            fmap = stages[self.decode_stage].reshape((v, b) + stages[self.decode_stage].shape[1:])
            picked = jnp.concatenate([fmap[i] for i in decode_views])
            recon = tuple(jnp.split(self.decoder(picked, (h, w)), len(decode_views)))
        return features, recon

    def _vit(self, views, masks, num_masked, decode_views, train):
        b, v, h, w, _ = views.shape
        grid = (h // self.backbone.patch_size, w // self.backbone.patch_size)
        # Views with the same masked count share one encoder pass (one token count).
        pooled, tokens, keeps = [None] * v, [None] * v, [None] * v
        for count in sorted(set(num_masked)):
            group = [i for i in range(v) if num_masked[i] == count]
            x = jnp.concatenate([views[:, i] for i in group])
            keep = None
            if count:
                keep = models.keep_indices(
                    jnp.concatenate([masks[:, i] for i in group]), count)
            p, t = self.backbone(x, train=train, keep=keep, return_tokens=True)
            for j, i in enumerate(group):
                pooled[i], tokens[i] = p[j * b:(j + 1) * b], t[j * b:(j + 1) * b]
                keeps[i] = None if keep is None else keep[j * b:(j + 1) * b]
        recon = ()
        if self.decoder is not None and decode_views:
            recon = tuple(self.decoder(tokens[i], keeps[i], grid) for i in decode_views)
        return jnp.concatenate(pooled), recon

    def features(self, x):
        return self.backbone(x, train=False)


def build_decoder(config: ml_collections.ConfigDict, backbone: nn.Module, channels: int,
                  dtype) -> nn.Module:
    dc = config.decoder
    if isinstance(backbone, models.ViT):
        return models.TransformerDecoder(dim=dc.dim, depth=dc.depth, heads=dc.heads,
                                         patch_size=backbone.patch_size, out_channels=channels,
                                         dtype=dtype)
    return models.ConvDecoder(channels=tuple(dc.channels), out_channels=channels, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class MRCLSettings:
    """MRCL's hyper-parameters (``config.mrcl``), its masks (``config.data.mask``, None when
    off: the pipeline draws them) and the facts of the run they must fit."""
    num_views: int
    batch_size: int
    dim: int  # the projection width (``config.projector.out_dim``): the queue's keys
    channels: int  # image channels the decoder reconstructs
    mask: Mapping[str, Any] | None = None
    lambda_rec: float = 1.0
    contrast: str = "nt_xent"
    temperature: float = 0.5
    block_size: int = 0
    norm_pix: bool = True
    rec_on: str = "masked"
    rec_patch_size: int = 4
    mask_token: bool = False
    queue_size: int = 4096
    moco_momentum: float = 0.99

    def __post_init__(self):
        if self.contrast not in ("nt_xent", "infonce"):
            raise ConfigError(f"mrcl.contrast={self.contrast!r} is not known; set "
                              "--config.mrcl.contrast to 'nt_xent' or 'infonce'.")
        if self.rec_on not in ("masked", "all"):
            raise ConfigError(f"mrcl.rec_on={self.rec_on!r} is not known; set "
                              "--config.mrcl.rec_on to 'masked' or 'all'.")
        if (self.lambda_rec > 0 and self.rec_on == "masked"
                and (self.mask is None or self.mask["ratio"] == 0)):
            raise ConfigError("Reconstructing masked patches with nothing masked gives a zero "
                              "loss; set --config.mrcl.rec_on=all or a data.mask.ratio above 0.")
        if self.num_views < 2:
            raise ConfigError("mrcl contrasts two views; set --config.data.num_views=2.")
        if self.contrast == "infonce" and self.queue_size % self.batch_size:
            # The queue is a ring of whole batches.
            raise ConfigError(f"mrcl.queue_size={self.queue_size} must be a multiple of "
                              f"batch_size={self.batch_size}; set --config.mrcl.queue_size.")
        base.check(self.temperature > 0, f"mrcl.temperature={self.temperature} must be > 0; "
                   "set --config.mrcl.temperature.")

    @property
    def patch(self) -> int:
        """The side of a mask (and reconstruction) patch."""
        return self.mask["patch_size"] if self.mask is not None else self.rec_patch_size

    @classmethod
    def from_config(cls, config, run: base.RunFacts) -> MRCLSettings:
        mask = config.data.get("mask")
        if mask is not None and not mask.get("enabled", True):
            mask = None
        channels = dataset_info(config.data.name).image_shape[-1]
        return base.from_section(cls, config.mrcl, num_views=config.data.num_views,
                                 batch_size=run.batch_size, dim=config.projector.out_dim,
                                 channels=channels,
                                 mask=None if mask is None else mask.to_dict())


@register
class MRCL(base.Method):
    name = "mrcl"
    min_views = 2

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = mc = MRCLSettings.from_config(config, self.run)
        self.mask = mc.mask
        dtype = base.compute_dtype(config.model.dtype)
        backbone = base.build_backbone(config.model)
        self.patch = mc.patch
        if isinstance(backbone, models.ViT) and self.patch != backbone.patch_size:
            raise ConfigError(f"With a ViT the mask patches are its tokens: set "
                              f"--config.data.mask.patch_size={backbone.patch_size} (now "
                              f"{self.patch}) or change model.patch_size.")
        decoder = (build_decoder(config, backbone, mc.channels, dtype) if mc.lambda_rec > 0
                   else None)
        self.model = MRCLModel(backbone=backbone, head=base.build_head(config.projector, dtype),
                               decoder=decoder, mask_patch=self.patch,
                               mask_token=mc.mask_token,
                               decode_stage=config.decoder.get("stage", "stage4"))

    @property
    def input_spec(self) -> base.InputSpec:
        """Two views and, when ``data.mask`` is on, their patch masks."""
        return base.InputSpec(min_views=self.min_views, masks=self.mask)

    # -- static facts of a batch ----------------------------------------------------------
    def _masked_counts(self, views, masks) -> tuple[int, ...]:
        v, size = views.shape[1], views.shape[2]
        if masks is None or self.mask is None:
            return (0,) * v
        grid = size // self.patch
        if masks.shape[1:] != (v, grid, grid):
            raise ValueError(f"masks {masks.shape} do not match views {views.shape} with "
                             f"{self.patch}-pixel patches; expected [B, {v}, {grid}, {grid}].")
        count = num_masked(self.mask["ratio"], grid * grid)
        return tuple(count if i in tuple(self.mask["views"]) else 0 for i in range(v))

    def _decode_views(self, num_views: int) -> tuple[int, ...]:
        if self.model.decoder is None:
            return ()
        if self.mask is not None:
            return tuple(sorted(set(self.mask["views"])))
        return tuple(range(num_views))

    # -- the method contract --------------------------------------------------------------
    def init_model(self, rng, batch):
        views = batch["views"]
        if views.shape[1] < 2:  # an evaluation example of one view: the model takes two
            views = jnp.concatenate([views, views], axis=1)
        views = views[:, :2]
        masks = batch.get("masks")
        masks = None if masks is None else masks[:, :2]
        model_rng, queue_rng = jax.random.split(rng)
        variables = self.model.init(model_rng, views, masks,
                                    num_masked=self._masked_counts(views, masks),
                                    decode_views=self._decode_views(2), train=False)
        params = variables["params"]
        state = {"batch_stats": variables.get("batch_stats", {})}
        mc = self.settings
        if mc.contrast == "infonce":
            dim = mc.dim
            queue = jax.random.normal(queue_rng, (mc.queue_size, dim), jnp.float32)
            state.update(
                target=momentum.copy_encoder(params, state["batch_stats"]),
                queue=queue / jnp.linalg.norm(queue, axis=1, keepdims=True),
                queue_ptr=jnp.zeros((), jnp.int32))
        return params, state

    def forward(self, params, state, batch, *, train: bool = True):
        """The model over a batch's views: ``((features, z, recon), new_batch_stats)``."""
        views, masks = batch["views"], batch.get("masks")
        out, updates = self.model.apply(
            {"params": params, "batch_stats": state["batch_stats"]}, views, masks,
            num_masked=self._masked_counts(views, masks),
            decode_views=self._decode_views(views.shape[1]), train=train,
            mutable=["batch_stats"])
        return out, updates.get("batch_stats", state["batch_stats"])

    def reconstruction_loss(self, recon, batch) -> jax.Array:
        """Mean over the decoded views of the masked (or all-patch) reconstruction loss."""
        views, masks = batch["views"], batch.get("masks")
        decode_views = self._decode_views(views.shape[1])
        b, _, size = views.shape[:3]
        grid = size // self.patch
        if masks is None and self.settings.rec_on == "masked":
            raise ValueError("The batch has no 'masks': build the pipeline with data.mask "
                             "(ssljax.data.mask_config_from(config.data.mask)).")
        terms = []
        for pred, v in zip(recon, decode_views):
            if self.settings.rec_on == "all":
                weights = jnp.ones((b, grid, grid), jnp.float32)
            else:
                weights = masks[:, v]
            terms.append(losses.masked_reconstruction(
                pred, views[:, v], weights, norm_pix=self.settings.norm_pix,
                patch_size=self.patch))
        return sum(terms) / len(terms)

    def loss(self, params, state, batch, rng, step):
        del rng, step
        mc = self.settings
        views = batch["views"]
        (features, z, recon), batch_stats = self.forward(params, state, batch)
        zs = jnp.split(z.astype(jnp.promote_types(z.dtype, jnp.float32)), views.shape[1])
        new_state = dict(state, batch_stats=batch_stats)
        if mc.contrast == "nt_xent":
            con = losses.nt_xent(zs[0], zs[1], temperature=mc.temperature,
                                 block_size=mc.block_size or None)
        else:
            # MoCo: keys of view 2 from the EMA encoder (train-mode BN on its own statistics),
            # negatives the queue before this step's keys are enqueued.
            key_batch = {"views": views[:, 1:2]}
            if "masks" in batch:
                key_batch["masks"] = batch["masks"][:, 1:2]
            key_counts = self._masked_counts(views, batch.get("masks"))[1:2]
            (_, k, _), target_updates = self.model.apply(
                {"params": state["target"]["params"],
                 "batch_stats": state["target"]["batch_stats"]},
                key_batch["views"], key_batch.get("masks"), num_masked=key_counts,
                decode_views=(), train=True, mutable=["batch_stats"])
            k = jax.lax.stop_gradient(k.astype(jnp.promote_types(k.dtype, jnp.float32)))
            con = losses.infonce(zs[0], k, temperature=mc.temperature, queue=state["queue"],
                                 block_size=mc.block_size or None)
            k = k / jnp.linalg.norm(k, axis=1, keepdims=True)
            queue, ptr = momentum.enqueue(state["queue"], state["queue_ptr"], k)
            new_state.update(
                target=dict(state["target"],
                            batch_stats=target_updates.get("batch_stats",
                                                           state["target"]["batch_stats"])),
                queue=queue, queue_ptr=ptr)
        metrics = {"contrastive": con}
        loss = con
        if recon:
            rec = self.reconstruction_loss(recon, batch)
            metrics["reconstruction"] = rec
            loss = con + mc.lambda_rec * rec
        first = jnp.split(features, views.shape[1])[0]
        return loss, base.LossOutput(state=new_state, metrics=metrics,
                                     features=jax.lax.stop_gradient(first))

    def after_update(self, params, state, step):
        if self.settings.contrast != "infonce":
            return state
        target = momentum.ema(state["target"]["params"], params, self.settings.moco_momentum)
        return dict(state, target=dict(state["target"], params=target))
