"""What a method is: how its views enter the model, its objective, and its extra state.

A method knows nothing about meshes, files or hosts. The trainer gives it *global* batches
(``{'views': [B, V, H, W, C], 'label': [B]}``) and jits :meth:`Method.train_step` with
shardings; because every objective is written on the global batch, negatives, covariances
and BatchNorm statistics span all devices without a hand-written collective.

A method reads its hyper-parameters once, when it is built, into a frozen settings
dataclass validated there (one sentence per bad value; :func:`from_section`, :func:`check`);
its loss reads the settings, never the config. The run's facts (length, peak learning rate,
batch size) come in as :class:`RunFacts`; what its batches must carry (views, masks, a
jigsaw view, labels) goes out as :attr:`Method.input_spec` (:class:`InputSpec`), which the
trainer and the pipeline read.

A new method subclasses :class:`Method` (or :class:`TwoViewMethod`), sets ``self.model``
(a Flax module with a ``features`` method, e.g. :class:`EncoderWithHead` of
:func:`build_backbone` and :func:`build_head`), implements ``loss`` (and ``after_update``
for EMA targets or queues, see :mod:`ssljax.methods.momentum`), and registers itself with
:func:`ssljax.methods.register`. The default ``init_model`` and ``embed`` read
``self.model``. The optimizer step and the online probe belong to :meth:`Method.train_step`;
a method whose update is not "one gradient step on one loss" (MetaMask's bilevel step)
extends the hook :meth:`Method.model_step` instead of copying the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

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


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the run decides, not the method; given to a method when it is built.

    Attributes:
      total_steps: the run's length in steps (schedules inside a method, e.g. BYOL's target
        momentum); 0 when unknown (a method built only to evaluate or to check a config).
      peak_lr: the learning-rate schedule's peak, after batch-size scaling.
      batch_size: the global batch size.
    """
    total_steps: int = 0
    peak_lr: float = 0.0
    batch_size: int = 0

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, *, total_steps: int | None = None) -> RunFacts:
        """The facts of a run of ``config`` lasting ``total_steps`` (default: the config's
        ``total_steps`` when set, else unknown)."""
        from ssljax import optim
        if total_steps is None:
            total_steps = max(config.get("total_steps", -1), 0)
        return cls(total_steps=total_steps,
                   peak_lr=optim.base_learning_rate(config.optimizer, config.batch_size),
                   batch_size=config.batch_size)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a method's batches must carry; the trainer and the pipeline read it.

    Every batch has ``'views'`` ``[B, V, H, W, C]`` and ``'label'`` ``[B]`` (-1: unlabelled).

    Attributes:
      min_views: the fewest views per image the objective needs.
      labels: whether the objective itself reads the labels (beyond the online probe).
      masks: patch masks beside the views (``'masks'`` ``[B, V, g, g]``): the fields of
        ``config.data.mask`` (:func:`ssljax.data.mask_config_from`); None: no masks.
      jigsaw: a jigsaw view (``'jigsaw'`` ``[B, 9, P, P, C]``): the fields of
        ``config.data.jigsaw`` (:class:`ssljax.data.JigsawConfig`); None: none.

    :func:`ssljax.data.batch_extras` turns masks and jigsaw into the pipeline's arguments.
    """
    min_views: int = 1
    labels: bool = False
    masks: Mapping[str, Any] | None = None
    jigsaw: Mapping[str, Any] | None = None


def check(ok: bool, message: str) -> None:
    """Raises :class:`ssljax.config.ConfigError` with ``message`` unless ``ok`` (settings
    validation: one sentence per bad value)."""
    if not ok:
        from ssljax.config import ConfigError
        raise ConfigError(message)


def from_section(cls: type, section: Mapping[str, Any] | None, **values: Any) -> Any:
    """A settings dataclass ``cls`` from a config section: each field from the section's key
    of the same name (or from ``values``), the dataclass default where neither has it.

    >>> @dataclasses.dataclass(frozen=True)
    ... class S:
    ...     temperature: float = 0.5
    ...     block_size: int = 0
    >>> from_section(S, {"temperature": 0.1, "other": 3})
    S(temperature=0.1, block_size=0)
    """
    section = {} if section is None else section
    kw = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section}
    return cls(**dict(kw, **values))


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
                          pool=cfg.get("pool", "cls"), dtype=compute_dtype(cfg.dtype),
                          attention=cfg.get("attention", "auto"), remat=cfg.get("remat", False))
    if cfg.get("remat", False):
        raise ValueError(f"model.remat=True applies to ViT backbones only, not {cfg.name}; set "
                         "--config.model.remat=False.")
    return models.resnet(cfg.name, width=cfg.width, stage_widths=tuple(cfg.get("stage_widths", ())),
                         stem=cfg.stem, stem_stride=cfg.stem_stride,
                         stem_relu=cfg.get("stem_relu", True),
                         zero_init_residual=cfg.zero_init_residual,
                         dtype=compute_dtype(cfg.dtype))


_HEAD_FIELDS = ("use_bn", "last_bn", "last_bn_affine", "use_bias_hidden", "use_bias_last")


def build_head(cfg: ml_collections.ConfigDict, dtype: jnp.dtype, **defaults: bool) -> models.MLP:
    """The MLP of a head section (``config.projector``, ``config.predictor``, ...).

    ``hidden_dims`` and ``out_dim``, and whichever of ``use_bn``, ``last_bn``,
    ``last_bn_affine``, ``use_bias_hidden`` and ``use_bias_last`` the section sets; a field it
    does not set takes ``defaults[field]``, else :class:`ssljax.models.MLP`'s default.

    >>> cfg = ml_collections.ConfigDict(dict(hidden_dims=(16,), out_dim=8, use_bn=True))
    >>> head = build_head(cfg, jnp.float32, use_bias_last=False)
    >>> head.hidden_dims, head.out_dim, head.use_bn, head.use_bias_last
    ((16,), 8, True, False)
    """
    kw = {k: cfg[k] if k in cfg else defaults[k] for k in _HEAD_FIELDS
          if k in cfg or k in defaults}
    return models.MLP(hidden_dims=tuple(cfg.hidden_dims), out_dim=cfg.out_dim, dtype=dtype, **kw)


class EncoderWithHead(nn.Module):
    """A backbone and a projector head; returns ``(features, projections)``."""
    backbone: nn.Module
    head: nn.Module

    def __call__(self, x, *, train: bool):
        features = self.backbone(x, train=train)
        return features, self.head(features, train=train)

    def features(self, x):
        return self.backbone(x, train=False)


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

    def __init__(self, config: ml_collections.ConfigDict, *, num_classes: int,
                 run: RunFacts | None = None):
        """``run``: the run's facts (:class:`RunFacts`); default :meth:`RunFacts.of` the
        config. A method reads its hyper-parameters here, once, into typed settings
        (``self.settings``); its loss reads those, never the config."""
        self.config = config
        self.num_classes = num_classes
        self.run = RunFacts.of(config) if run is None else run
        self.probe = models.LinearClassifier(num_classes=num_classes)

    @property
    def input_spec(self) -> InputSpec:
        """What this method's batches must carry (:class:`InputSpec`); the default: views
        (``min_views`` or more) and labels for the online probe."""
        return InputSpec(min_views=self.min_views)

    # -- to implement -----------------------------------------------------------------
    def init_model(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[PyTree, PyTree]:
        """Returns ``(params, state)`` for an example (global) batch.

        The default initialises ``self.model`` on the first view; the state holds its
        BatchNorm statistics (``{'batch_stats': ...}``, empty without BatchNorm)."""
        variables = self.model.init(rng, batch["views"][:, 0], train=False)
        return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

    def loss(self, params: PyTree, state: PyTree, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, LossOutput]:
        """The training objective on a global batch."""
        raise NotImplementedError

    def embed(self, params: PyTree, state: PyTree, images: jax.Array) -> jax.Array:
        """Frozen-encoder features for evaluation (inference mode), ``[B, D]``.

        The default is ``self.model.features`` (the backbone) with the stored BatchNorm
        statistics."""
        return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                method=type(self.model).features)

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
        """One step of the method (:meth:`model_step`) and one of the online probe."""
        rng = jax.random.fold_in(rng, ts.step)
        params, opt_state, state, features, metrics = self.model_step(ts, batch, rng, tx,
                                                                      schedule)
        probe_params, probe_opt_state, probe_metrics = self.probe_step(
            ts.probe_params, ts.probe_opt_state, features, batch["label"], probe_tx)
        metrics = dict(metrics, **probe_metrics)
        new_ts = TrainState(step=ts.step + 1, params=params, opt_state=opt_state, state=state,
                            probe_params=probe_params, probe_opt_state=probe_opt_state)
        return new_ts, metrics

    # -- hooks of the step ----------------------------------------------------------------
    def model_step(self, ts: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
                   tx: optax.GradientTransformation,
                   schedule: Callable[[jax.Array], jax.Array],
                   ) -> tuple[PyTree, PyTree, PyTree, jax.Array, dict[str, jax.Array]]:
        """One optimizer step on :meth:`loss`, then :meth:`after_update`.

        Returns ``(params, opt_state, state, features, metrics)``: the new parameters,
        optimizer state and method state, the stop-gradient features for the online probe,
        and the metrics (``loss``, ``lr`` and the loss's own). A method with more to do in a
        step (MetaMask's meta step of its mask) extends this hook.
        """
        (loss, out), grads = jax.value_and_grad(self.loss, has_aux=True)(
            ts.params, ts.state, batch, rng, ts.step)
        params, opt_state = self.apply_gradients(tx, grads, ts.params, ts.opt_state)
        state = self.after_update(params, out.state, ts.step)
        metrics = dict(out.metrics, loss=loss, lr=schedule(ts.step))
        return params, opt_state, state, out.features, metrics

    @staticmethod
    def apply_gradients(tx: optax.GradientTransformation, grads: PyTree, params: PyTree,
                        opt_state: PyTree) -> tuple[PyTree, PyTree]:
        """``(params, opt_state)`` after one step of ``tx`` on ``grads``."""
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def probe_step(self, probe_params: PyTree, probe_opt_state: PyTree, features: jax.Array,
                   labels: jax.Array, probe_tx: optax.GradientTransformation,
                   ) -> tuple[PyTree, PyTree, dict[str, jax.Array]]:
        """One step of the online linear probe on stop-gradient ``features``:
        ``(probe_params, probe_opt_state, {'probe_loss', 'probe_top1'})``."""
        (probe_ce, probe_acc), probe_grads = jax.value_and_grad(self.probe_loss, has_aux=True)(
            probe_params, features, labels)
        probe_params, probe_opt_state = self.apply_gradients(probe_tx, probe_grads, probe_params,
                                                             probe_opt_state)
        return probe_params, probe_opt_state, {"probe_loss": probe_ce, "probe_top1": probe_acc}


def apply_per_view(model: nn.Module, params: Any, state: Any, views: jax.Array,
                   ) -> tuple[list[jax.Array], list[jax.Array], Any]:
    """Train-mode forward passes, one per view, as the official codes run ``model(y1)``,
    ``model(y2)``: BatchNorm normalises each view with its own statistics, and the running
    statistics are updated once per view, in order (what two PyTorch calls do).

    Args:
      views: ``[B, V, H, W, C]``.

    Returns:
      ``(features, projections, state)``: per-view lists of ``[B, F]`` and ``[B, D]``
      (float32), and ``state`` with the new ``batch_stats``.
    """
    features, projections = [], []
    batch_stats = state["batch_stats"]
    for v in range(views.shape[1]):
        (f, z), updates = model.apply({"params": params, "batch_stats": batch_stats},
                                      views[:, v], train=True, mutable=["batch_stats"])
        batch_stats = updates.get("batch_stats", batch_stats)  # none without BatchNorm (a ViT)
        features.append(f)
        projections.append(z.astype(jnp.promote_types(z.dtype, jnp.float32)))
    return features, projections, dict(state, batch_stats=batch_stats)


class TwoViewMethod(Method):
    """A backbone and a projector (``config.projector``), one forward pass per view (Barlow
    Twins, VICReg, CorInfoMax); subclasses define the loss."""

    min_views = 2

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.model = EncoderWithHead(backbone=build_backbone(config.model),
                                     head=build_head(config.projector,
                                                     compute_dtype(config.model.dtype)))

    def project(self, params, state, views):
        """Per-view features and projections (the method's view of the model output)."""
        return apply_per_view(self.model, params, state, views)
