"""The papers' own linear protocols: a linear classifier trained on augmented images.

Our probe (:mod:`ssljax.evaluate.linear`) trains on precomputed features of un-augmented
images, the same for every method. The papers train the classifier on augmented images
(random resized crop and horizontal flip) passed through the frozen backbone in inference
mode (BatchNorm running statistics, no update), with their own optimizer and schedule,
and score the test split after every epoch. ``eval.paper_protocol`` selects one:

==============  ===========================================================================
``selfcon``     SelfCon's ``main_linear.py`` and ``scripts/selfcon_represent.sh``: batch
                512, SGD momentum 0.9, lr 3, wd 0, 100 epochs, x0.1 at epochs 60 and 80;
                crop scale (0.2, 1) and flip; test images as they are. The paper reports
                the best epoch (``best_acc``); a multi-exit network's sub-network exits
                and the ensemble (mean of logits) are scored too.
``corinfomax``  CorInfoMax's ``linear_base.py`` / ``parsing_file.py`` and METHODS.md:
                batch 256, SGD momentum 0.9, lr 0.2 cosine to 2e-3 (stepped per epoch),
                wd 0, 100 epochs; crop scale (0.08, 1) and flip; test images resized by
                36/32 and centre-cropped (``Resize(36) + CenterCrop(32)`` at 32 px).
``metamask``    MetaMask's official code has no linear protocol: it scores kNN (k 5,
                temperature 1.0) on the L2-normalised masked features, and reports the
                best pre-training epoch. Here: that kNN on the checkpoint evaluated.
==============  ===========================================================================

Every protocol reports the last epoch (``paper_<name>_linear_top1``) and, labelled as
such, the best epoch that some papers report (``paper_<name>_linear_best_top1`` and its
``_best_epoch``; chosen on the test split, as those papers choose it). ``eval.paper_epochs
> 0`` shortens a protocol (the schedule is scaled to the new length); the default 0 runs
the paper's. Our own code, after the papers' descriptions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

logger = logging.getLogger("ssljax")

__all__ = ["PROTOCOLS", "PaperProtocol", "augmented_linear_probe", "epoch_lr", "eval_view"]


@dataclasses.dataclass(frozen=True)
class PaperProtocol:
    """One paper's linear evaluation (see the module docstring for the sources)."""
    paper: str
    kind: str = "linear"  # or 'knn'
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # or 'piecewise'
    final_lr: float = 0.0  # cosine's floor (PyTorch CosineAnnealingLR's eta_min)
    decay_epochs: tuple[int, ...] = ()
    decay_rate: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    test_resize: float = 1.0  # resize the test images by this, then centre-crop back
    reports: str = "last"  # what the paper reports: 'last' or 'best'
    knn_k: int = 5
    knn_temperature: float = 1.0


PROTOCOLS: dict[str, PaperProtocol] = {
    "selfcon": PaperProtocol(
        paper="SelfCon (Bae et al., AAAI 2023)", epochs=100, batch_size=512, lr=3.0,
        schedule="piecewise", decay_epochs=(60, 80), decay_rate=0.1, crop_scale=(0.2, 1.0),
        reports="best"),
    "corinfomax": PaperProtocol(
        paper="CorInfoMax (Ozsoy et al., NeurIPS 2022)", epochs=100, batch_size=256, lr=0.2,
        schedule="cosine", final_lr=2e-3, crop_scale=(0.08, 1.0), test_resize=36 / 32,
        reports="last"),
    "metamask": PaperProtocol(
        paper="MetaMask (Li et al., NeurIPS 2022)", kind="knn", knn_k=5, knn_temperature=1.0,
        reports="best"),
}


def epoch_lr(protocol: PaperProtocol, epoch: int, epochs: int | None = None) -> float:
    """The learning rate of (0-based) ``epoch``, stepped once per epoch as the papers do:
    PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=final_lr)``, or SupCon/SelfCon's
    ``lr * rate ** (number of decay epochs passed)``. With ``epochs`` other than the
    protocol's, the decay epochs scale with it.

    >>> p = PROTOCOLS["selfcon"]
    >>> [round(epoch_lr(p, e), 6) for e in (0, 59, 60, 79, 80, 99)]
    [3.0, 3.0, 0.3, 0.3, 0.03, 0.03]
    """
    total = epochs or protocol.epochs
    if protocol.schedule == "piecewise":
        scale = total / protocol.epochs
        passed = sum(epoch >= round(m * scale) for m in protocol.decay_epochs)
        return protocol.lr * protocol.decay_rate ** passed
    return protocol.final_lr + (protocol.lr - protocol.final_lr) * (
        1 + math.cos(math.pi * epoch / total)) / 2


def eval_view(images: np.ndarray, protocol: PaperProtocol) -> np.ndarray:
    """Test images in [0, 1] as the protocol shows them: as they are, or resized by
    ``test_resize`` (bilinear, antialiased) and centre-cropped back to their size."""
    x = images.astype(np.float32) / 255.0
    if protocol.test_resize == 1.0:
        return x
    from ssljax.data._tf import tf
    size = x.shape[1]
    big = int(round(size * protocol.test_resize))
    x = tf.image.resize(x, [big, big], method="bilinear", antialias=True).numpy()
    top = (big - size) // 2
    return x[:, top:top + size, top:top + size]


def _augment(protocol: PaperProtocol, size: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """``(uint8 images, seed) -> [0, 1] float`` crops and flips, stateless per seed
    (``ssljax.data.augment``, with every other op off)."""
    from ssljax.data._tf import tf
    from ssljax.data.augment import augment_batch
    from ssljax.data.specs import AugmentConfig
    cfg = AugmentConfig(crop_scale=protocol.crop_scale, flip_p=protocol.flip_p, jitter_p=0.0,
                        grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)

    def augment(images: np.ndarray, seed: int) -> np.ndarray:
        x = tf.convert_to_tensor(images.astype(np.float32) / 255.0)
        return augment_batch(x, tf.constant([seed, 0], tf.int64), cfg, size).numpy()

    return augment


def _init_linear(rng: np.random.Generator, d: int, num_classes: int) -> dict:
    """PyTorch ``nn.Linear``'s default initialisation: U(-1/sqrt(d), 1/sqrt(d))."""
    bound = 1.0 / math.sqrt(d)
    return {"w": rng.uniform(-bound, bound, (d, num_classes)).astype(np.float32),
            "b": rng.uniform(-bound, bound, (num_classes,)).astype(np.float32)}


def augmented_linear_probe(
    embed: Callable[[jax.Array], dict[str, jax.Array]],
    train_images: np.ndarray, train_labels: np.ndarray,
    test_images: np.ndarray, test_labels: np.ndarray, *,
    num_classes: int, protocol: PaperProtocol, mean, std, seed: int = 0,
    epochs: int | None = None,
    augment: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """A linear classifier per named feature set, trained on augmented images through the
    frozen ``embed`` (inference mode) with ``protocol``'s SGD and schedule.

    Args:
      embed: normalised images ``[B, S, S, C]`` -> ``{name: features [B, D]}`` (the
        method's ``embed_named``, frozen).
      train_images, test_images: uint8 ``[N, S, S, C]``.
      protocol: a :class:`PaperProtocol` (``PROTOCOLS[name]``).
      mean, std: the normalisation the encoder expects.
      epochs: fewer epochs than the paper's (None: the paper's).
      augment: ``(uint8 images, seed) -> [0, 1] images``; default: the protocol's crop and
        flip.

    Returns:
      ``{'top1': {name: [accuracy per epoch]}, 'ensemble': [...] (several feature sets),
      'lr': [lr per epoch], 'params': {name: {'w', 'b'}}}``; accuracies in [0, 1].
    """
    epochs = epochs or protocol.epochs
    size = train_images.shape[1]
    augment = augment or _augment(protocol, size)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    embed = jax.jit(embed)

    test_x = (eval_view(test_images, protocol) - mean) / std
    test_f = {}
    for first in range(0, len(test_x), protocol.batch_size):
        out = jax.device_get(embed(jnp.asarray(test_x[first:first + protocol.batch_size])))
        for k, v in out.items():
            test_f.setdefault(k, []).append(np.asarray(v, np.float32))
    test_f = {k: np.concatenate(v) for k, v in test_f.items()}
    test_y = np.asarray(test_labels)

    rng = np.random.default_rng(seed)
    params = {k: _init_linear(rng, v.shape[1], num_classes) for k, v in test_f.items()}
    momentum = jax.tree.map(np.zeros_like, params)

    @jax.jit
    def step(params, momentum, x, y, lr):
        feats = jax.lax.stop_gradient(embed(x))

        def loss(p):
            return sum(optax.softmax_cross_entropy_with_integer_labels(
                feats[k] @ p[k]["w"] + p[k]["b"], y).mean() for k in p)

        grads = jax.grad(loss)(params)
        # PyTorch SGD: buf = mu * buf + (g + wd * p); p -= lr * buf (first step: buf = g).
        grads = jax.tree.map(lambda g, p: g + protocol.weight_decay * p, grads, params)
        momentum = jax.tree.map(lambda b, g: protocol.momentum * b + g, momentum, grads)
        params = jax.tree.map(lambda p, b: p - lr * b, params, momentum)
        return params, momentum

    n = len(train_images)
    labels = np.asarray(train_labels, np.int32)
    history = {"top1": {k: [] for k in params}, "ensemble": [], "lr": []}
    for epoch in range(epochs):
        lr = epoch_lr(protocol, epoch, epochs)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for b, first in enumerate(range(0, n, protocol.batch_size)):  # last batch kept
            idx = order[first:first + protocol.batch_size]
            x = (augment(train_images[idx], seed * 1_000_003 + epoch * 10_007 + b) - mean) / std
            params, momentum = step(params, momentum, jnp.asarray(x), jnp.asarray(labels[idx]),
                                    jnp.float32(lr))
        host = jax.device_get(params)
        logits = {k: test_f[k] @ host[k]["w"] + host[k]["b"] for k in host}
        for k in host:
            history["top1"][k].append(float(np.mean(np.argmax(logits[k], -1) == test_y)))
        if len(host) > 1:
            mean_logits = np.mean([logits[k] for k in host], axis=0)
            history["ensemble"].append(float(np.mean(np.argmax(mean_logits, -1) == test_y)))
        history["lr"].append(lr)
        logger.info("%s linear protocol, epoch %d/%d: lr %.4g, test top-1 %s", protocol.paper,
                    epoch + 1, epochs, lr, ", ".join(
                        f"{k or 'encoder'} {100 * v[-1]:.2f}%" for k, v in history["top1"].items()))
    history["params"] = jax.device_get(params)
    return history


def scores(name: str, protocol: PaperProtocol, history: dict) -> dict[str, float]:
    """``results.json`` entries of a probe's ``history``: last epoch, and the best epoch
    (labelled ``_best``), in %, for each feature set (and the ensemble)."""
    out = {}
    curves = dict(history["top1"])
    if history.get("ensemble"):
        curves["ensemble"] = history["ensemble"]
    for k, curve in curves.items():
        tag = "" if k in ("", "backbone") else f"{k}_"
        best = int(np.argmax(curve))
        out[f"paper_{name}_{tag}linear_top1"] = round(100 * curve[-1], 2)
        out[f"paper_{name}_{tag}linear_best_top1"] = round(100 * curve[best], 2)
        out[f"paper_{name}_{tag}linear_best_epoch"] = best + 1
    return out
