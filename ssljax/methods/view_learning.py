"""InfoMin's view learning and contrastive training on fixed (or frozen learned) views.

**Our reading of the paper** (Tian et al., NeurIPS 2020, Sec. 4): no official code exists;
METHODS.md gives the reading followed here, and every choice below is a config field.

``infomin_views`` learns the views. A pixel-wise invertible flow ``g``
(:class:`ssljax.models.view_generator.PixelFlow`) maps an RGB image X to ``X_hat``; view 1
is channel 1 of ``X_hat``, view 2 channels 2-3. Two encoders ``f1``, ``f2`` (each a
backbone and a projector) embed the views, and

* unsupervised: ``min_g max_{f1, f2} I_NCE(f1(v1); f2(v2))``. The encoders minimise the
  symmetric InfoNCE loss ``L_NCE`` (in-batch negatives), which maximises the bound
  ``I_NCE = log N - L_NCE``; the generator receives the *reversed* gradient of ``L_NCE``
  (a gradient-reversal layer between ``g`` and the encoders, scaled by
  ``views.adversary_weight``), so one optimizer step is one step of the min-max game;
* semi-supervised (``views.supervised_weight > 0``): two classifiers ``c1``, ``c2`` (small
  CNNs on the views) and ``g`` also minimise ``supervised_weight * (CE(c1(v1), y) +
  CE(c2(v2), y))``, so the views keep label information. The classifiers' gradient reaches
  ``g`` unreversed; the encoders never see labels.

``view_contrast`` trains ``f1``, ``f2`` on frozen views: a fixed colour-space split
(``views.space``: 'rgb' (R | GB), 'ydbdr', 'ycbcr', 'lab'; luma or lightness | chroma) or
the generator of a finished ``infomin_views`` run (``views.space='learned'`` and
``views.generator_dir`` its workdir). Evaluation embeds an image as the concatenation of
both encoders' features, as CMC does.

Inputs: the pipeline's first view (one augmented crop; ``data.num_views = 1``), normalised
with the dataset's mean and std. Learned views are computed from the normalised image;
fixed colour spaces from RGB in [0, 1] (the normalisation undone), then standardised
with fixed per-space constants so each channel is O(1).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssljax import losses
from ssljax.config import ConfigError
from ssljax.methods import base, register
from ssljax.models.view_generator import COLOR_SPACES, PixelFlow, split_views, to_color_space

PyTree = Any


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def reverse_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward; the backward pass multiplies the gradient by ``-scale``.

    >>> float(jax.grad(lambda x: reverse_gradient(x, 2.0) ** 2)(3.0))
    -12.0
    """
    return x


def _rg_fwd(x, scale):
    return x, None


def _rg_bwd(scale, _, g):
    return (jax.tree.map(lambda t: -scale * t, g),)


reverse_gradient.defvjp(_rg_fwd, _rg_bwd)


# Re-exported: the objective's home is ssljax.losses.contrastive.
symmetric_nce = losses.symmetric_nce


class SmallCNN(nn.Module):
    """The per-view classifier of the semi-supervised variant: 2 conv-ReLU, pool, Dense."""
    num_classes: int
    width: int = 16

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = nn.relu(nn.Conv(self.width * (i + 1), (3, 3), strides=2)(x))
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class TwoViewEncoders(nn.Module):
    """``f1`` on view 1 and ``f2`` on view 2: ``((h1, h2), (z1, z2))``."""
    backbone1: nn.Module
    backbone2: nn.Module
    head1: nn.Module
    head2: nn.Module

    def __call__(self, v1, v2, *, train: bool):
        h1, h2 = self.backbone1(v1, train=train), self.backbone2(v2, train=train)
        return (h1, h2), (self.head1(h1, train=train), self.head2(h2, train=train))


# Per-space standardisation of fixed views: (offset, scale) per channel, so that view
# channels are roughly zero-mean, unit-scale for images in [0, 1].
_SPACE_NORM = {
    "rgb": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "ydbdr": ((0.5, 0.0, 0.0), (0.25, 0.25, 0.25)),
    "ycbcr": ((125.0, 128.0, 128.0), (55.0, 15.0, 15.0)),
    "lab": ((50.0, 0.0, 0.0), (25.0, 20.0, 20.0)),
}


@dataclasses.dataclass(frozen=True)
class ViewSettings:
    """The view methods' settings (``config.views``)."""
    temperature: float = 0.1
    flow_layers: int = 4
    flow_hidden: int = 32
    volume_preserving: bool = False
    adversary_weight: float = 1.0  # scale of the reversed gradient that reaches g
    supervised_weight: float = 0.0  # > 0: the semi-supervised variant
    space: str = "learned"  # view_contrast: a colour space or 'learned'
    generator_dir: str = ""  # view_contrast with space='learned': an infomin_views workdir

    def __post_init__(self):
        base.check(self.temperature > 0, f"views.temperature={self.temperature} must be > 0; "
                   "set --config.views.temperature (CMC: 0.07 to 0.1).")
        for name in ("adversary_weight", "supervised_weight"):
            value = getattr(self, name)
            base.check(value >= 0, f"views.{name}={value} must be >= 0; set "
                       f"--config.views.{name}.")


class _TwoViewBase(base.Method):
    """Two encoders on a 1-channel and a 2-channel view; subclasses make the views."""

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.settings = base.from_section(ViewSettings, config.views)
        self.dataset = config.data.name  # whose mean and std normalised the images
        dtype = base.compute_dtype(config.model.dtype)
        self.encoders = TwoViewEncoders(backbone1=base.build_backbone(config.model),
                                        backbone2=base.build_backbone(config.model),
                                        head1=base.build_head(config.projector, dtype),
                                        head2=base.build_head(config.projector, dtype))

    @functools.cached_property
    def _mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from ssljax.data.specs import dataset_info  # TensorFlow-free
        info = dataset_info(self.dataset)
        return info.mean, info.std

    def unnormalise(self, x):
        mean, std = self._mean_std
        return x * jnp.asarray(std) + jnp.asarray(mean)

    def encode(self, params, batch_stats, v1, v2, *, train: bool):
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            return self.encoders.apply(variables, v1, v2, train=True, mutable=["batch_stats"])
        return self.encoders.apply(variables, v1, v2, train=False), None

    def nce_metrics(self, loss, n):
        return {"nce_loss": loss, "i_nce": math.log(n) - loss}


@register
class ViewLearning(_TwoViewBase):
    name = "infomin_views"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        vc = self.settings
        self.generator = PixelFlow(channels=3, num_layers=vc.flow_layers, hidden=vc.flow_hidden,
                                   volume_preserving=vc.volume_preserving)
        self.supervised = vc.supervised_weight > 0
        self.classifier = SmallCNN(num_classes=num_classes)

    @property
    def input_spec(self) -> base.InputSpec:
        """One view; the labels too in the semi-supervised variant."""
        return base.InputSpec(min_views=self.min_views, labels=self.supervised)

    def init_model(self, rng, batch):
        x = batch["views"][:, 0]
        if x.shape[-1] != 3:
            raise ConfigError("infomin_views learns views of colour images; use an RGB dataset "
                              "(e.g. --config.data.name=coloured_fashion_mnist).")
        r_g, r_e, r_c1, r_c2 = jax.random.split(rng, 4)
        gen = self.generator.init(r_g, x)["params"]
        v1, v2 = split_views(x)
        enc = self.encoders.init(r_e, v1, v2, train=False)
        params = {"generator": gen, "encoders": enc["params"]}
        if self.supervised:
            params["c1"] = self.classifier.init(r_c1, v1)["params"]
            params["c2"] = self.classifier.init(r_c2, v2)["params"]
        return params, {"batch_stats": enc["batch_stats"]}

    def views(self, generator_params, x):
        x_hat, logdet = self.generator.apply({"params": generator_params}, x)
        return x_hat, logdet

    def loss(self, params, state, batch, rng, step):
        del rng, step
        vc = self.settings
        x = batch["views"][:, 0]
        x_hat, logdet = self.views(params["generator"], x)
        # The encoders see the views through a gradient-reversal layer: their step lowers
        # L_NCE (raises I_NCE), the generator's raises it.
        v1, v2 = split_views(reverse_gradient(x_hat, vc.adversary_weight))
        ((h1, h2), (z1, z2)), updates = self.encode(params["encoders"], state["batch_stats"],
                                                    v1, v2, train=True)
        nce = symmetric_nce(z1, z2, vc.temperature)
        loss = nce
        metrics = dict(self.nce_metrics(nce, x.shape[0]),
                       logdet_per_pixel=jnp.mean(logdet) / (x.shape[1] * x.shape[2]))
        if self.supervised:
            c1, c2 = split_views(x_hat)  # no reversal: g helps the classifiers
            labels = jnp.maximum(batch["label"], 0)
            ce1 = optax.softmax_cross_entropy_with_integer_labels(
                self.classifier.apply({"params": params["c1"]}, c1), labels).mean()
            ce2 = optax.softmax_cross_entropy_with_integer_labels(
                self.classifier.apply({"params": params["c2"]}, c2), labels).mean()
            loss = loss + vc.supervised_weight * (ce1 + ce2)
            metrics.update(ce_view1=ce1, ce_view2=ce2)
        features = jnp.concatenate([h1, h2], axis=-1)
        return loss, base.LossOutput(state=dict(state, batch_stats=updates["batch_stats"]),
                                     metrics=metrics, features=jax.lax.stop_gradient(features))

    def embed(self, params, state, images):
        x_hat, _ = self.views(params["generator"], images)
        (h1, h2), _ = self.encode(params["encoders"], state["batch_stats"], *split_views(x_hat),
                                  train=False)[0]
        return jnp.concatenate([h1, h2], axis=-1)


def load_generator(workdir: str) -> PyTree:
    """The generator parameters of the last checkpoint of an ``infomin_views`` run."""
    from ssljax import checkpoint
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    found = checkpoint.restore_latest_state_on_host(directory)
    if found is None:
        raise ConfigError(f"No checkpoint of an infomin_views run in {directory}; train one "
                          "with configs/infomin_views.py first, or pick a fixed views.space.")
    return jax.tree.map(np.asarray, found[1]["params"]["generator"])


@register
class ViewContrast(_TwoViewBase):
    name = "view_contrast"

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        vc = self.settings
        self.space = vc.space
        if self.space not in COLOR_SPACES + ("learned",):
            raise ConfigError(f"views.space={self.space!r} is not known; use one of "
                              f"{', '.join(COLOR_SPACES + ('learned',))}.")
        if self.space == "learned":
            self.generator = PixelFlow(channels=3, num_layers=vc.flow_layers,
                                       hidden=vc.flow_hidden,
                                       volume_preserving=vc.volume_preserving)
            self.generator_params = load_generator(vc.generator_dir)

    def make_views(self, x):
        if self.space == "learned":  # frozen: constants, no gradient
            x_hat, _ = self.generator.apply({"params": self.generator_params}, x)
            return split_views(jax.lax.stop_gradient(x_hat))
        offset, scale = _SPACE_NORM[self.space]
        y = (to_color_space(self.unnormalise(x), self.space) - jnp.asarray(offset)) / jnp.asarray(
            scale)
        return split_views(y)

    def init_model(self, rng, batch):
        v1, v2 = self.make_views(batch["views"][:, 0])
        enc = self.encoders.init(rng, v1, v2, train=False)
        return enc["params"], {"batch_stats": enc["batch_stats"]}

    def loss(self, params, state, batch, rng, step):
        del rng, step
        x = batch["views"][:, 0]
        v1, v2 = self.make_views(x)
        ((h1, h2), (z1, z2)), updates = self.encode(params, state["batch_stats"], v1, v2,
                                                    train=True)
        nce = symmetric_nce(z1, z2, self.settings.temperature)
        return nce, base.LossOutput(state=dict(state, batch_stats=updates["batch_stats"]),
                                    metrics=self.nce_metrics(nce, x.shape[0]),
                                    features=jax.lax.stop_gradient(
                                        jnp.concatenate([h1, h2], axis=-1)))

    def embed(self, params, state, images):
        (h1, h2), _ = self.encode(params, state["batch_stats"], *self.make_views(images),
                                  train=False)[0]
        return jnp.concatenate([h1, h2], axis=-1)
