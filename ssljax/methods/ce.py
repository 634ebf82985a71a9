"""Cross-entropy (1-stage) baseline: a ResNet and a linear classifier trained together.

The linear probe of the evaluation is then trained on the frozen backbone features, as for
the contrastive methods; ``train_top1`` logs the classifier's own training accuracy.

Reference: raymin0223/self-contrastive-learning ``main_ce.py`` (``--method ce``),
``networks/resnet_big.py`` (``CEResNet``).
"""

from __future__ import annotations

from ssljax.losses.classification import cross_entropy  # noqa: F401 (re-exported)
from ssljax.methods import register
from ssljax.methods.multi_exit import ClassifierMethod


@register
class CrossEntropy(ClassifierMethod):
    """The backbone's classifier alone (no sub-network, whatever ``config.model.exits``)."""

    name = "ce"
    default_exits = ()
