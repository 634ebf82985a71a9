"""Sub-network cross-entropy: cross-entropy on the backbone's classifier plus ``alpha``
times cross-entropy on each sub-network exit's classifier (SelfCon's 1-stage baseline with
the same multi-exit network, ``config.model.exits`` / ``exit_kind``).

Reference: raymin0223/self-contrastive-learning ``main_ce.py`` (``--method subnet_ce``:
``alpha = 1``).
"""

from __future__ import annotations

from ssljax import losses
from ssljax.methods import base, register
from ssljax.methods.multi_exit import ClassifierMethod


@register
class SubnetCrossEntropy(ClassifierMethod):
    name = "subnet_ce"
    default_exits = None

    def __init__(self, config, *, num_classes, run=None):
        super().__init__(config, num_classes=num_classes, run=run)
        self.alpha = config.loss.alpha  # weight of each sub-network's cross-entropy
        base.check(self.alpha >= 0, f"loss.alpha={self.alpha} must be >= 0; set "
                   "--config.loss.alpha (sub-network CE: 1.0).")
        if not self.model.network.exits:
            raise ValueError("subnet_ce needs a sub-network; set --config.model.exits='(2,)'.")

    def objective(self, logits, labels):
        loss, acc = losses.cross_entropy(logits.backbone, labels)
        metrics = {"train_top1": acc}
        for k, sub in zip(self.model.network.exits, logits.exits):
            sub_loss, sub_acc = losses.cross_entropy(sub, labels)
            loss = loss + self.alpha * sub_loss
            metrics[f"subnet{k}_loss"] = sub_loss
            metrics[f"subnet{k}_train_top1"] = sub_acc
        return loss, metrics
