"""A dense-prediction probe cheap enough for a CPU: linear segmentation of Fashion-MNIST.

The task (ours, for MRCL's claim that reconstruction keeps the representation general):
each Fashion-MNIST image's garment is its foreground (pixels brighter than ``threshold``,
a fraction of 255), and every foreground pixel's class is the garment's class, so a pixel
has one of ``num_classes + 1`` labels (0 = background, ``1 + label`` = garment). The
probe is a linear 1x1 convolution on frozen feature maps, upsampled bilinearly to the image
(with several maps, e.g. two ResNet stages, the sum of one 1x1 head per map: still a linear
head on the upsampled, concatenated maps), trained with per-pixel cross-entropy (Adam,
cosine schedule) and scored with the mean intersection-over-union over the test set.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ssljax import data, sharding

__all__ = ["fashion_mnist_segmentation", "mean_iou", "segmentation_probe", "extract_feature_maps",
           "evaluate_segmentation"]


def fashion_mnist_segmentation(images: np.ndarray, labels: np.ndarray, *,
                               threshold: float = 0.1) -> np.ndarray:
    """Per-pixel targets ``int32 [N, H, W]``: 0 where ``pixel <= threshold * 255``, else ``1 + label``.

    >>> img = np.array([[[[0], [200]], [[30], [10]]]], np.uint8)
    >>> fashion_mnist_segmentation(img, np.array([4]), threshold=0.1)[0].tolist()
    [[0, 5], [5, 0]]
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"The segmentation task is built from grayscale images [N, H, W, 1]; "
                         f"got {images.shape}.")
    foreground = images[..., 0].astype(np.float32) > threshold * 255.0
    return np.where(foreground, 1 + np.asarray(labels, np.int32)[:, None, None], 0).astype(np.int32)


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """Mean IoU over the classes present (in the prediction or the target) in the whole set.

    Per class c, over every pixel of every image: ``IoU_c = TP / (TP + FP + FN)``; classes
    with an empty union are left out of the mean (their IoU is NaN in the returned array).

    Returns:
      ``(mean IoU in [0, 1], per-class IoU [num_classes])``.

    >>> miou, per_class = mean_iou(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]), 3)
    >>> round(miou, 4), per_class[:2].tolist()
    (0.5833, [0.5, 0.6666666666666666])
    """
    pred = np.asarray(pred, np.int64).reshape(-1)
    target = np.asarray(target, np.int64).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.size} vs {target.size}.")
    confusion = np.bincount(target * num_classes + pred, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes).astype(np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return float(np.nanmean(iou)), iou


def _logits(params, maps, out_hw):
    """Sum over maps of the bilinearly upsampled 1x1 head, plus the bias: ``[B, H, W, K]``."""
    total = params["b"]
    for w, x in zip(params["w"], maps):
        y = jnp.einsum("bhwd,dk->bhwk", x, w)
        total = total + jax.image.resize(y, (y.shape[0], *out_hw, y.shape[-1]), "bilinear")
    return total


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "out_hw"))
def _fit(maps, targets, key, *, num_classes, epochs, batch_size, lr, out_hw):
    n = targets.shape[0]
    steps_per_epoch = max(n // batch_size, 1)
    tx = optax.adam(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch))
    params = {"w": tuple(jnp.zeros((x.shape[-1], num_classes)) for x in maps),
              "b": jnp.zeros((num_classes,))}

    def loss_fn(p, idx):
        logits = _logits(p, tuple(x[idx] for x in maps), out_hw)
        # One-hot targets: the integer-label form's gradient is a scatter XLA constant-folds slowly.
        onehot = jax.nn.one_hot(targets[idx], num_classes, dtype=logits.dtype)
        return optax.softmax_cross_entropy(logits, onehot).mean()

    def epoch(carry, epoch_key):
        perm = jax.random.permutation(epoch_key, n)[: steps_per_epoch * batch_size]

        def step(carry, idx):
            p, opt_state = carry
            updates, opt_state = tx.update(jax.grad(loss_fn)(p, idx), opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        return jax.lax.scan(step, carry, perm.reshape(steps_per_epoch, -1))[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
    return params


@functools.partial(jax.jit, static_argnames=("out_hw",))
def _predict(params, maps, out_hw):
    return jnp.argmax(_logits(params, maps, out_hw), axis=-1)


def segmentation_probe(train_maps: Sequence[np.ndarray], train_targets: np.ndarray,
                       test_maps: Sequence[np.ndarray], test_targets: np.ndarray, *,
                       num_classes: int, epochs: int = 10, lr: float = 1e-2,
                       batch_size: int = 256, seed: int = 0,
                       chunk_size: int = 1000) -> dict[str, float]:
    """Train a linear 1x1 segmentation head on frozen feature maps and score it.

    Args:
      train_maps, test_maps: one or more feature maps ``[N, h, w, D]`` per example
        (standardised here per channel with the training set's statistics).
      train_targets, test_targets: ``int [N, H, W]`` per-pixel classes.
      num_classes: classes per pixel (background included).
      epochs, lr, batch_size, seed: Adam with a cosine schedule, minibatches of images.

    Returns:
      ``{'miou': test mean IoU, 'pixel_acc': test pixel accuracy}``, fractions in [0, 1].
    """
    out_hw = tuple(int(s) for s in np.shape(train_targets)[1:3])
    stats = []
    for x in train_maps:
        x = np.asarray(x, np.float32)
        stats.append((x.mean((0, 1, 2)), x.std((0, 1, 2)) + 1e-6))
    norm = lambda maps: tuple(jnp.asarray((np.asarray(x, np.float32) - m) / s)  # noqa: E731
                              for x, (m, s) in zip(maps, stats))
    train_x = norm(train_maps)
    batch_size = min(batch_size, len(train_targets))
    params = _fit(train_x, jnp.asarray(train_targets, jnp.int32), jax.random.key(seed),
                  num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                  out_hw=out_hw)
    del train_x
    test_x = norm(test_maps)
    preds = [np.asarray(_predict(params, tuple(x[i:i + chunk_size] for x in test_x), out_hw))
             for i in range(0, len(test_targets), chunk_size)]
    pred = np.concatenate(preds)
    miou, _ = mean_iou(pred, test_targets, num_classes)
    return {"miou": miou, "pixel_acc": float(np.mean(pred == np.asarray(test_targets)))}


def extract_feature_maps(maps_fn: Callable[[jax.Array], tuple[jax.Array, ...]],
                         images: np.ndarray, labels: np.ndarray, *, mesh: Mesh,
                         batch_size: int, mean, std) -> tuple[np.ndarray, ...]:
    """``maps_fn`` over every image once, sharded over ``mesh``; returns host arrays ``[N, h, w, D]``."""
    batch_sharding = sharding.batch_sharding(mesh)
    fn = jax.jit(lambda b: (maps_fn(b["image"]), b["mask"]),
                 out_shardings=sharding.replicated(mesh))
    batch_size -= batch_size % mesh.devices.size
    out = None
    for batch in data.make_eval_batches(images, labels, batch_size=batch_size, mean=mean, std=std,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count()):
        maps, mask = jax.device_get(fn(data.to_global(batch, batch_sharding)))
        keep = mask > 0
        out = [[] for _ in maps] if out is None else out
        for acc, m in zip(out, maps):
            acc.append(np.asarray(m, np.float32)[keep])
    return tuple(np.concatenate(acc) for acc in out)


def evaluate_segmentation(maps_fn, train_images, train_labels, test_images, test_labels, *,
                          mesh: Mesh, batch_size: int, mean, std, num_classes: int,
                          threshold: float = 0.1, epochs: int = 10, lr: float = 1e-2,
                          train_examples: int = 10000, seed: int = 0) -> dict[str, float]:
    """The Fashion-MNIST segmentation probe of an encoder's ``maps_fn`` (see the module doc).

    Returns ``{'segmentation_miou': ..., 'segmentation_pixel_acc': ...}`` in percent.
    """
    if train_examples > 0:
        train_images, train_labels = train_images[:train_examples], train_labels[:train_examples]
    kw = dict(mesh=mesh, batch_size=batch_size, mean=mean, std=std)
    train_maps = extract_feature_maps(maps_fn, train_images, train_labels, **kw)
    test_maps = extract_feature_maps(maps_fn, test_images, test_labels, **kw)
    scores = segmentation_probe(
        train_maps, fashion_mnist_segmentation(train_images, train_labels, threshold=threshold),
        test_maps, fashion_mnist_segmentation(test_images, test_labels, threshold=threshold),
        num_classes=num_classes + 1, epochs=epochs, lr=lr, seed=seed)
    return {"segmentation_miou": round(100 * scores["miou"], 2),
            "segmentation_pixel_acc": round(100 * scores["pixel_acc"], 2)}
