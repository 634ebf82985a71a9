"""The evaluators of a run: a small registry selected from ``config.eval``.

As big_vision's evaluators, each one is a named function that scores the encoder and
returns ``{metric: value}``; the trainer only calls :func:`run_evaluators`: at the end of
training (what they return goes to ``results.json``) and, with ``eval.every > 0``, every
that many steps (the evaluators of the trained state only, into ``metrics.jsonl`` as
``eval/<metric>``). Which evaluators run follows the config:

==================  =====================================================================
``encoder``         the trained encoder: linear probe and kNN top-1 (%), effective rank;
                    a multi-exit network's named features (backbone, sub-networks) are
                    each probed, and their linear probes ensembled (mean of the logits);
                    at the end of training, a t-SNE map of the test features
                    (``WORKDIR/embedding.png``, ``eval.embedding_plot``)
``random_encoder``  the same probes on a random initialisation (``eval.baselines``)
``raw_pixels``      the same probes on the normalised pixels (``eval.baselines``;
                    in-memory datasets only)
``segmentation``    the dense probe of ``ssljax.evaluate.segmentation``
                    (``eval.segmentation``; Fashion-MNIST)
``paper_protocol``  a paper's own linear protocol (``eval.paper_protocol``: selfcon,
                    corinfomax; metamask's kNN), ``ssljax.evaluate.paper_linear``;
                    off by default, in-memory datasets
==================  =====================================================================

A new evaluator is a function ``(ctx: EvalContext, ts) -> dict`` decorated with
:func:`register`, with a predicate on the config that says when it runs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ssljax import data, sharding
from ssljax.config import ConfigError
from ssljax.data.specs import DatasetInfo

logger = logging.getLogger("ssljax")

__all__ = ["EVALUATORS", "EvalContext", "baseline_scores", "evaluate_encoder", "register",
           "run_evaluators", "selected"]

# Training examples the probes read from a streamed dataset when eval.train_examples <= 0.
STREAM_TRAIN_EXAMPLES = 100_000


def _probes():
    """The ``ssljax.evaluate`` package, looked up when a probe runs (not at import), so that
    a test or a notebook can substitute a probe there (``ssljax.evaluate.linear_probe``)."""
    import ssljax.evaluate as probes
    return probes


# ----------------------------------------------------------------------------- context

@dataclasses.dataclass
class EvalContext:
    """What every evaluator shares: the run, and the images the probes see.

    In-memory datasets are loaded once (``train_images`` ... ``test_labels``, the training
    split cut to ``eval.train_examples``); streamed ones (ImageNet) are read through tf.data
    each time features are extracted, the training split capped at ``stream_train_examples``.
    """

    config: ml_collections.ConfigDict
    method: Any
    mesh: Mesh
    info: DatasetInfo
    eval_size: int | None
    image_shape: tuple[int, int, int]
    train_split: str
    test_split: str
    train_images: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    stream_train_examples: int = 0
    # The run's workdir at the final evaluation: the ``encoder`` evaluator draws
    # ``embedding.png`` there (``eval.embedding_plot``). None: no pictures.
    workdir: str | None = None

    @classmethod
    def create(cls, config: ml_collections.ConfigDict, method: Any, mesh: Mesh,
               info: DatasetInfo) -> EvalContext:
        """Loads the evaluation data of ``config`` (in-memory datasets) or plans its stream."""
        ec = config.eval
        eval_size = ec.get("image_size", 0) or None
        train_split = config.data.train_split or info.train_split
        test_split = config.data.test_split or info.test_split
        if info.in_memory:
            train_images, train_labels = data.load_arrays(config.data.name, train_split,
                                                          data_dir=config.data.data_dir)
            test_images, test_labels = data.load_arrays(config.data.name, test_split,
                                                        data_dir=config.data.data_dir)
            if ec.train_examples > 0:
                train_images, train_labels = (train_images[:ec.train_examples],
                                              train_labels[:ec.train_examples])
            image_shape = train_images.shape[1:]
            if eval_size:
                image_shape = (eval_size, eval_size, image_shape[-1])
            return cls(config, method, mesh, info, eval_size, tuple(image_shape), train_split,
                       test_split, train_images, train_labels, test_images, test_labels)
        stream_train_examples = (ec.train_examples if ec.train_examples > 0
                                 else STREAM_TRAIN_EXAMPLES)
        logger.info("Streaming %s for evaluation: %d training examples for the probes, every "
                    "%s example scored.", config.data.name, stream_train_examples, test_split)
        eval_size = eval_size or config.data.image_size
        image_shape = (eval_size, eval_size, info.image_shape[-1])
        return cls(config, method, mesh, info, eval_size, image_shape, train_split, test_split,
                   stream_train_examples=stream_train_examples)

    def features(self, params: Any, state: Any) -> tuple[tuple[dict, np.ndarray],
                                                         tuple[dict, np.ndarray]]:
        """``((train features, labels), (test features, labels))`` of the encoder
        ``(params, state)``; features are the method's named feature sets
        (``method.embed_named``: ``{'': [N, D]}``, or one entry per exit)."""
        ec, info = self.config.eval, self.info
        embed = lambda x: self.method.embed_named(params, state, x)  # noqa: E731
        batch_size = ec.batch_size - ec.batch_size % self.mesh.devices.size
        probes = _probes()
        if info.in_memory:
            kw = dict(mesh=self.mesh, batch_size=batch_size, mean=info.mean, std=info.std,
                      image_size=self.eval_size)
            return (probes.extract_features(embed, self.train_images, self.train_labels, **kw),
                    probes.extract_features(embed, self.test_images, self.test_labels, **kw))

        def stream(split, max_examples):
            return data.make_tfds_eval_stream(
                self.config.data.name, split, batch_size=batch_size, image_size=self.eval_size,
                mean=info.mean, std=info.std, data_dir=self.config.data.data_dir,
                max_examples=max_examples)

        return (probes.features_of_batches(
                    embed, stream(self.train_split, self.stream_train_examples), mesh=self.mesh),
                probes.features_of_batches(embed, stream(self.test_split, 0), mesh=self.mesh))

    def score(self, prefix: str, train_x, train_y, test_x, test_y,
              logits: list | None = None) -> dict[str, float]:
        """kNN and linear-probe top-1 (%) of one feature set, keys ``<prefix>knn_top1`` and
        ``<prefix>linear_probe_top1``; ``logits`` collects the probe's test logits."""
        ec, info = self.config.eval, self.info
        probes = _probes()
        t0 = time.time()
        knn = probes.knn_top1(train_x, train_y, test_x, test_y, k=ec.knn_k,
                              temperature=ec.knn_temperature, num_classes=info.num_classes)
        lin = probes.linear_probe(train_x, train_y, test_x, test_y,
                                  num_classes=info.num_classes, epochs=ec.linear_epochs,
                                  lr=ec.linear_lr, weight_decay=ec.linear_weight_decay,
                                  batch_size=ec.linear_batch_size, seed=self.config.seed,
                                  optimizer=ec.get("linear_optimizer", "adamw"),
                                  final_lr_ratio=ec.get("linear_final_lr_ratio", 0.0),
                                  schedule=ec.get("linear_schedule", "cosine"),
                                  decay_epochs=tuple(ec.get("linear_decay_epochs", ())),
                                  decay_rate=ec.get("linear_decay_rate", 0.1),
                                  return_logits=logits is not None)
        if logits is not None:
            logits.append(lin["test_logits"])
        logger.info("%s: linear probe %.2f%%, kNN %.2f%% (%.0fs)", prefix or "pre-trained",
                    100 * lin["top1"], 100 * knn, time.time() - t0)
        return {f"{prefix}linear_probe_top1": round(100 * lin["top1"], 2),
                f"{prefix}knn_top1": round(100 * knn, 2)}

    def score_named(self, prefix: str, train_x: dict, train_y, test_x: dict,
                    test_y) -> dict[str, float]:
        """One feature set (the usual case), or several (multi-exit networks: backbone,
        sub-networks, and the ensemble of their linear probes, by the mean of the logits)."""
        if list(train_x) == [""]:
            return self.score(prefix, train_x[""], train_y, test_x[""], test_y)
        out, logits = {}, []
        for name in train_x:
            sub = prefix if name == "backbone" else f"{prefix}{name}_"
            out.update(self.score(sub, train_x[name], train_y, test_x[name], test_y, logits))
        ensemble = np.mean(np.argmax(np.mean(logits, axis=0), -1) == np.asarray(test_y))
        out[f"{prefix}ensemble_linear_probe_top1"] = round(100 * float(ensemble), 2)
        logger.info("%sensemble of %d linear probes: %.2f%%", prefix, len(logits),
                    100 * ensemble)
        return out


# ----------------------------------------------------------------------------- registry

Evaluator = Callable[[EvalContext, Any], dict]


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: Evaluator
    when: Callable[[ml_collections.ConfigDict, DatasetInfo], bool]
    needs_trained: bool


# In the order they run (and their keys appear in results.json).
EVALUATORS: dict[str, _Entry] = {}


def register(name: str, *, when: Callable[[ml_collections.ConfigDict, DatasetInfo], bool],
             needs_trained: bool = True) -> Callable[[Evaluator], Evaluator]:
    """Adds an evaluator ``fn(ctx, ts) -> {metric: value}`` that runs when
    ``when(config, info)``; ``needs_trained``: it scores the trained state ``ts`` (skipped
    when there is none, as for :func:`baseline_scores`)."""
    def add(fn: Evaluator) -> Evaluator:
        if name in EVALUATORS:
            raise ValueError(f"An evaluator named {name!r} is already registered; pick "
                             "another name.")
        EVALUATORS[name] = _Entry(fn, when, needs_trained)
        return fn
    return add


def selected(config: ml_collections.ConfigDict, info: DatasetInfo, *,
             trained: bool = True) -> list[str]:
    """Names of the evaluators ``config`` runs, in order (``trained`` False: only those
    that need no trained state)."""
    return [name for name, e in EVALUATORS.items()
            if e.when(config, info) and (trained or not e.needs_trained)]


@register("encoder", when=lambda config, info: True)
def encoder(ctx: EvalContext, ts: Any) -> dict:
    """Probes of the trained encoder and the effective rank of its test features."""
    t0 = time.time()
    (tr_f, tr_y), (te_f, te_y) = ctx.features(ts.params, ts.state)
    logger.info("Extracted %d + %d features in %.0fs.", len(tr_y), len(te_y), time.time() - t0)
    out = ctx.score_named("", tr_f, tr_y, te_f, te_y)
    # How many dimensions the test embeddings use (dimensional collapse lowers it); for
    # multi-exit networks, the backbone's (the first feature set).
    out["effective_rank"] = round(_probes().effective_rank(next(iter(te_f.values()))), 2)
    if ctx.workdir is not None and ctx.config.eval.get("embedding_plot", True):
        _embedding_plot(ctx, next(iter(te_f.values())), te_y)
    return out


def _embedding_plot(ctx: EvalContext, features: np.ndarray, labels: np.ndarray) -> None:
    """``WORKDIR/embedding.png`` from the test features just computed (process 0; a picture
    never fails the evaluation: ``ssljax.plot.write_embedding`` logs and goes on)."""
    if jax.process_index() != 0:
        return
    from ssljax import plot
    plot.write_embedding(ctx.workdir, features, labels, class_names=ctx.info.class_names,
                         seed=ctx.config.seed,
                         title=f"{ctx.config.method} on {ctx.config.data.name}: t-SNE of "
                               f"{min(len(labels), plot.EMBEDDING_POINTS)} test features")


@register("random_encoder", when=lambda config, info: config.eval.baselines,
          needs_trained=False)
def random_encoder(ctx: EvalContext, ts: Any) -> dict:
    """The same probes on the method's encoder at a random initialisation (seed + 1)."""
    example = {"views": jnp.zeros((1, 1) + tuple(ctx.image_shape), jnp.float32)}
    # The trainer's init key (ssljax.train.init_key): RBG, fast to compile.
    key = jax.random.key(ctx.config.seed + 1, impl="rbg")
    params, state = jax.jit(ctx.method.init_model)(key, example)
    (tr_f, tr_y), (te_f, te_y) = ctx.features(params, state)
    out = ctx.score_named("random_encoder_", tr_f, tr_y, te_f, te_y)
    out["random_encoder_effective_rank"] = round(
        _probes().effective_rank(next(iter(te_f.values()))), 2)
    return out


@register("raw_pixels", when=lambda config, info: config.eval.baselines and info.in_memory,
          needs_trained=False)
def raw_pixels(ctx: EvalContext, ts: Any) -> dict:
    """The same probes on the normalised pixels, flattened (in-memory datasets only)."""
    info = ctx.info
    mean, std = np.asarray(info.mean), np.asarray(info.std)
    norm = lambda x: (x.astype(np.float32) / 255.0 - mean) / std  # noqa: E731
    train_x = norm(ctx.train_images).reshape(len(ctx.train_images), -1)
    test_x = norm(ctx.test_images).reshape(len(ctx.test_images), -1)
    out = ctx.score("raw_pixels_", train_x, np.asarray(ctx.train_labels), test_x,
                    np.asarray(ctx.test_labels))
    out["raw_pixels_effective_rank"] = round(_probes().effective_rank(test_x), 2)
    return out


@register("segmentation", when=lambda config, info: config.eval.get("segmentation", False))
def segmentation(ctx: EvalContext, ts: Any) -> dict:
    """The dense probe (``eval.segmentation``): Fashion-MNIST segmentation mIoU (%)."""
    from ssljax.evaluate import segmentation as seg
    config, info = ctx.config, ctx.info
    if config.data.name != "fashion_mnist":
        raise ConfigError(f"The segmentation probe is built from Fashion-MNIST, not "
                          f"{config.data.name}; set --config.eval.segmentation=False.")
    ec = config.eval
    t0 = time.time()
    out = seg.evaluate_segmentation(
        lambda x: ctx.method.feature_maps(ts.params, ts.state, x), ctx.train_images,
        ctx.train_labels, ctx.test_images, ctx.test_labels, mesh=ctx.mesh,
        batch_size=ec.batch_size, mean=info.mean, std=info.std, num_classes=info.num_classes,
        threshold=ec.segmentation_threshold, epochs=ec.segmentation_epochs,
        lr=ec.segmentation_lr, train_examples=ec.segmentation_train_examples, seed=config.seed)
    logger.info("Segmentation probe: mIoU %.2f%%, pixel accuracy %.2f%% (%.0fs)",
                out["segmentation_miou"], out["segmentation_pixel_acc"], time.time() - t0)
    return out


@register("paper_protocol", when=lambda config, info: bool(config.eval.get("paper_protocol", "")))
def paper_protocol(ctx: EvalContext, ts: Any) -> dict:
    """A paper's linear protocol on augmented images through the frozen encoder (last and,
    labelled ``_best``, best epoch), or MetaMask's kNN (``eval.paper_protocol``)."""
    from ssljax.evaluate import paper_linear
    config, info = ctx.config, ctx.info
    name = config.eval.paper_protocol
    protocol = paper_linear.PROTOCOLS[name]
    t0 = time.time()
    if protocol.kind == "knn":
        (tr_f, tr_y), (te_f, te_y) = ctx.features(ts.params, ts.state)
        key = "" if "" in te_f else "backbone"
        knn = _probes().knn_top1(tr_f[key], tr_y, te_f[key], te_y, k=protocol.knn_k,
                                 temperature=protocol.knn_temperature,
                                 num_classes=info.num_classes)
        logger.info("%s protocol: kNN (k %d, T %.1f) %.2f%%", protocol.paper, protocol.knn_k,
                    protocol.knn_temperature, 100 * knn)
        return {f"paper_{name}_knn_top1": round(100 * knn, 2)}
    if not info.in_memory or (ctx.eval_size and ctx.eval_size != ctx.train_images.shape[1]):
        raise ConfigError(f"The {name} linear protocol augments in-memory images at their own "
                          f"size; {config.data.name} with eval.image_size={ctx.eval_size} is "
                          "not supported; unset --config.eval.paper_protocol (or "
                          "eval.image_size).")
    if jax.process_count() > 1:
        raise ConfigError(f"The {name} linear protocol runs in one process; re-evaluate the "
                          "checkpoint with `python -m ssljax.evaluate` on one host.")
    history = paper_linear.augmented_linear_probe(
        lambda x: ctx.method.embed_named(ts.params, ts.state, x), ctx.train_images,
        ctx.train_labels, ctx.test_images, ctx.test_labels, num_classes=info.num_classes,
        protocol=protocol, mean=info.mean, std=info.std, seed=config.seed,
        epochs=config.eval.get("paper_epochs", 0) or None)
    out = paper_linear.scores(name, protocol, history)
    logger.info("%s linear protocol (%d epochs): last %.2f%%, best %.2f%% (%.0fs)",
                protocol.paper, len(history["lr"]),
                out[f"paper_{name}_linear_top1"], out[f"paper_{name}_linear_best_top1"],
                time.time() - t0)
    return out


# ----------------------------------------------------------------------------- running

def run_evaluators(config: ml_collections.ConfigDict, method: Any, ts: Any, mesh: Mesh,
                   info: DatasetInfo, *, baselines: bool = True,
                   context: EvalContext | None = None,
                   workdir: str | None = None) -> dict[str, float]:
    """Every evaluator :func:`selected` by ``config``, in order; their metrics in one dict.

    Args:
      config: the run's config (``config.eval`` sets the probes).
      method: the run's method (``init_model``, ``embed_named``, ``feature_maps``).
      ts: the trained state (``.params``, ``.state``); None scores only the evaluators that
        need none (the baselines).
      mesh: the devices the features are computed on.
      info: the dataset's facts.
      baselines: False skips the evaluators that do not read ``ts`` (the baselines do not
        change during training: the evaluations every ``eval.every`` steps skip them).
      context: the evaluation data from an earlier call (:meth:`EvalContext.create`), to
        load it once for several evaluations.
      workdir: where the evaluators may draw their pictures (the ``encoder`` evaluator's
        ``embedding.png``, with ``eval.embedding_plot``); None draws none.

    Returns:
      ``{metric: value}``, as ``results.json`` holds them (percentages rounded to 2 places).
    """
    names = [name for name in selected(config, info, trained=ts is not None)
             if baselines or EVALUATORS[name].needs_trained]
    ctx = context or EvalContext.create(config, method, mesh, info)
    if workdir is not None:
        ctx = dataclasses.replace(ctx, workdir=workdir)
    results = {}
    for name in names:
        results.update(EVALUATORS[name].fn(ctx, ts))
    return results


def evaluate_encoder(config, method, ts, mesh, info) -> dict:
    """kNN and linear-probe top-1 (%) of the trained encoder, a random one and raw pixels
    (and the other evaluators ``config`` selects): :func:`run_evaluators`.

    ``ts`` None scores only the baselines (``eval.baselines``). Datasets held in memory are
    scored whole (or the first ``eval.train_examples`` training examples); streamed datasets
    (ImageNet) are read once through tf.data, the training split capped at
    ``eval.train_examples`` (default 100,000) so the features fit in host memory, and have
    no raw-pixel baseline (224 x 224 x 3 pixels are not a useful linear probe).
    """
    return run_evaluators(config, method, ts, mesh, info)


def baseline_scores(config: ml_collections.ConfigDict) -> dict:
    """Raw pixels and the untrained encoder (``random_encoder_*``, ``raw_pixels_*``), scored by
    the probes of ``config.eval`` exactly as :func:`run_evaluators` scores a trained run."""
    from ssljax import methods
    config = copy.deepcopy(config)
    with config.unlocked():
        config.eval.baselines = True
    info = data.dataset_info(config.data.name)
    method = methods.get_method(config.method)(config, num_classes=info.num_classes)
    return run_evaluators(config, method, None, sharding.make_mesh(), info)
