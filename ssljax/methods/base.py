"""What a method is: how its views enter the model, its objective, and its extra state.

A method knows nothing about meshes, files or hosts. The trainer gives it *global* batches
(``{'views': [B, V, H, W, C], 'label': [B]}``) and jits :meth:`Method.train_step` with
shardings; because every objective is written on the global batch, negatives, covariances
and BatchNorm statistics span all devices without a hand-written collective.

A new method subclasses :class:`Method`, implements ``init_model`` and ``loss`` (and
``after_update`` for EMA targets or queues), and registers itself with
:func:`ssljax.methods.register`. A method whose update is not "one gradient step on one
loss" (MetaMask's bilevel step) overrides :meth:`Method.train_step`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssljax import models

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; checkpointed and sharded as one pytree."""
    step: jax.Array
    params: PyTree  # trainable parameters of the method's model
    opt_state: PyTree
    state: PyTree  # non-trainable: BatchNorm statistics and method state (EMA, queue, ...)
    probe_params: PyTree  # online linear probe on stop-gradient features
    probe_opt_state: PyTree


class LossOutput(NamedTuple):
    """Auxiliary outputs of :meth:`Method.loss`."""
    state: PyTree  # the new non-trainable state
    metrics: dict[str, jax.Array]  # scalars to log (each loss term, statistics)
    features: jax.Array  # stop-gradient backbone features of one view, for the online probe


def compute_dtype(name: str) -> jnp.dtype:
    """'float32', 'bfloat16' (mixed precision: float32 params, bfloat16 compute) or 'float64'
    (numerical checks: under ``jax.enable_x64`` with a float64 state, nothing rounds to float32)."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
    if name not in dtypes:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(dtypes)}.")
    return dtypes[name]


def build_backbone(cfg: ml_collections.ConfigDict) -> nn.Module:
    """The ResNet or ViT named by ``config.model`` (``name``: ``resnet*`` or ``vit_*``)."""
    if cfg.name.startswith("vit"):
        return models.vit(cfg.name, patch_size=cfg.get("patch_size", 16),
                          pool=cfg.get("pool", "cls"), dtype=compute_dtype(cfg.dtype))
    return models.resnet(cfg.name, width=cfg.width, stage_widths=tuple(cfg.get("stage_widths", ())),
                         stem=cfg.stem, stem_stride=cfg.stem_stride,
                         stem_relu=cfg.get("stem_relu", True),
                         zero_init_residual=cfg.zero_init_residual,
                         dtype=compute_dtype(cfg.dtype))


def flatten_views(views: jax.Array) -> jax.Array:
    """``[B, V, H, W, C] -> [V*B, H, W, C]``, view-major, so ``split`` recovers each view."""
    b, v = views.shape[:2]
    return jnp.swapaxes(views, 0, 1).reshape((v * b,) + views.shape[2:])


class Method:
    """Base class: a model, an objective and the generic one-loss training step."""

    name: str = ""
    # The fewest views per image (``data.num_views``) the objective needs; checked by
    # ``ssljax.config.validate`` before any work starts.
    min_views: int = 1
    # The run's length in steps, set by ``ssljax.train.build_step`` (schedules inside a
    # method, e.g. BYOL's target momentum, need it); 0 until then.
    total_steps: int = 0

    def __init__(self, config: ml_collections.ConfigDict, *, num_classes: int):
        self.config = config
        self.num_classes = num_classes
        self.probe = models.LinearClassifier(num_classes=num_classes)

    # -- to implement -----------------------------------------------------------------
    def init_model(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[PyTree, PyTree]:
        """Returns ``(params, state)`` for an example (global) batch."""
        raise NotImplementedError

    def loss(self, params: PyTree, state: PyTree, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, LossOutput]:
        """The training objective on a global batch."""
        raise NotImplementedError

    def embed(self, params: PyTree, state: PyTree, images: jax.Array) -> jax.Array:
        """Frozen-encoder features for evaluation (inference mode), ``[B, D]``."""
        raise NotImplementedError

    def embed_named(self, params: PyTree, state: PyTree,
                    images: jax.Array) -> dict[str, jax.Array]:
        """Named features for evaluation, each ``[B, D_name]``.

        Methods with several feature extractors (multi-exit networks: ``'backbone'`` and
        ``'subnet'``) return one entry per extractor, and the offline evaluation scores each
        and the ensemble of their linear probes. The default, one unnamed entry, is
        :meth:`embed` alone.
        """
        return {"": self.embed(params, state, images)}

    def feature_maps(self, params: PyTree, state: PyTree,
                     images: jax.Array) -> tuple[jax.Array, ...]:
        """Frozen-encoder feature maps ``[B, h, w, D]`` for dense probes (inference mode).

        The default reads ``self.model.backbone``: the ResNet stages named by
        ``config.eval.segmentation_stages``, or a ViT's patch tokens on their grid.
        """
        backbone = getattr(getattr(self, "model", None), "backbone", None)
        if backbone is None:
            raise NotImplementedError(f"Method {self.name!r} has no `model.backbone`; it must "
                                      "define feature_maps() for the segmentation probe.")
        stages = tuple(self.config.eval.get("segmentation_stages", ("stage4",)))

        def maps(module, x):
            if isinstance(module.backbone, models.ViT):
                _, tokens = module.backbone(x, train=False, return_tokens=True)
                g = x.shape[1] // module.backbone.patch_size
                return (tokens.reshape(x.shape[0], g, -1, tokens.shape[-1]),)
            _, out = module.backbone(x, train=False, return_stages=True)
            return tuple(out[s].astype(jnp.promote_types(out[s].dtype, jnp.float32))
                         for s in stages)

        return self.model.apply({"params": params, "batch_stats": state.get("batch_stats", {})},
                                images, method=maps)

    def after_update(self, params: PyTree, state: PyTree, step: jax.Array) -> PyTree:
        """State updates that need the new parameters (EMA targets); identity by default."""
        del params, step
        return state

    # -- provided ---------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array], tx: optax.GradientTransformation,
             probe_tx: optax.GradientTransformation) -> TrainState:
        model_rng, probe_rng = jax.random.split(rng)
        params, state = self.init_model(model_rng, batch)
        feature_dim = jax.eval_shape(lambda p, s, x: self.embed(p, s, x), params, state,
                                     batch["views"][:, 0]).shape[-1]
        probe_params = self.probe.init(probe_rng, jnp.zeros((1, feature_dim)), train=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), state=state,
                          probe_params=probe_params, probe_opt_state=probe_tx.init(probe_params))

    def probe_loss(self, probe_params: PyTree, features: jax.Array,
                   labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-entropy and accuracy of the online linear probe on stop-gradient features."""
        logits = self.probe.apply({"params": probe_params}, jax.lax.stop_gradient(features),
                                  train=False)
        # Unlabelled examples (label -1, e.g. STL-10's unlabelled split) do not train the probe.
        labelled = labels >= 0
        count = jnp.maximum(labelled.sum(), 1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
        ce = jnp.sum(jnp.where(labelled, ce, 0.0)) / count
        acc = jnp.sum(labelled & (jnp.argmax(logits, -1) == labels)) / count
        return ce, acc

    def train_step(self, ts: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
                   tx: optax.GradientTransformation, probe_tx: optax.GradientTransformation,
                   schedule: Callable[[jax.Array], jax.Array]) -> tuple[TrainState, dict]:
        """One optimizer step on ``loss`` (and one on the online probe)."""
        rng = jax.random.fold_in(rng, ts.step)

        (loss, out), grads = jax.value_and_grad(self.loss, has_aux=True)(
            ts.params, ts.state, batch, rng, ts.step)
        updates, opt_state = tx.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        state = self.after_update(params, out.state, ts.step)

        (probe_ce, probe_acc), probe_grads = jax.value_and_grad(self.probe_loss, has_aux=True)(
            ts.probe_params, out.features, batch["label"])
        probe_updates, probe_opt_state = probe_tx.update(probe_grads, ts.probe_opt_state,
                                                         ts.probe_params)
        probe_params = optax.apply_updates(ts.probe_params, probe_updates)

        metrics = dict(out.metrics, loss=loss, lr=schedule(ts.step), probe_loss=probe_ce,
                       probe_top1=probe_acc)
        new_ts = TrainState(step=ts.step + 1, params=params, opt_state=opt_state, state=state,
                            probe_params=probe_params, probe_opt_state=probe_opt_state)
        return new_ts, metrics
