"""Cross-entropy (1-stage) baseline: a ResNet and a linear classifier trained together.

The linear probe of the evaluation is then trained on the frozen backbone features, as for
the contrastive methods; ``train_top1`` logs the classifier's own training accuracy.

Reference: raymin0223/self-contrastive-learning ``main_ce.py`` (``--method ce``),
``networks/resnet_big.py`` (``CEResNet``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ssljax import models
from ssljax.methods import base, register
from ssljax.methods.multi_exit import MultiExitMethod, build_network, check_num_views


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and top-1 accuracy (float32) of ``[N, C]`` logits."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce, jnp.mean(jnp.argmax(logits, -1) == labels)


@register
class CrossEntropy(MultiExitMethod):
    name = "ce"
    default_exits: tuple[int, ...] | None = ()  # None: config.model.exits

    def __init__(self, config, *, num_classes):
        super().__init__(config, num_classes=num_classes)
        check_num_views(config, 1, f"{self.name}")
        self.model = models.MultiExitClassifier(
            build_network(config.model, exits=self.default_exits), num_classes=num_classes)

    def objective(self, logits: models.MultiExitFeatures, labels: jax.Array):
        loss, acc = cross_entropy(logits.backbone, labels)
        return loss, {"train_top1": acc}

    def loss(self, params, state, batch, rng, step):
        features, logits, state = self.forward(params, state, batch["views"])
        loss, metrics = self.objective(logits, batch["label"])
        return loss, base.LossOutput(state=state, metrics=metrics,
                                     features=jax.lax.stop_gradient(features.backbone))
