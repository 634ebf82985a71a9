"""Cross-entropy (1-stage) baseline: ResNet + linear classifier, one view.

Run:
  python -m ssljax.main --config=configs/ce.py:fashion_mnist --workdir=runs/ce_fmnist
Variants: fashion_mnist (CPU, the default; the same network, optimizer and budget as
configs/selfcon.py), cifar10, cifar100 (raymin0223/self-contrastive-learning
scripts/1stage_train.sh: batch 1024, SGD lr 0.8, 500 epochs, cosine, wd 1e-4, crop + flip
only; linear probe on the frozen backbone as for the contrastive methods).
"""

import ml_collections

from ssljax import presets


def _supervised_config(method: str, variant: str) -> ml_collections.ConfigDict:
    return presets.sibling(__file__, "selfcon").supervised_config(method, variant)


def cross_entropy_config(method: str, variant: str) -> ml_collections.ConfigDict:
    c = _supervised_config(method, variant)
    c.data.num_views = 1
    # main_ce.py augments with random resized crop (0.2, 1) and flip only.
    c.data.augment.jitter_p = 0.0
    c.data.augment.grayscale_p = 0.0
    c.loss = ml_collections.ConfigDict(dict(alpha=1.0))  # sub-network CE weight (subnet_ce)
    if variant != "fashion_mnist":
        c.optimizer.lr = 0.8
        c.optimizer.warmup_epochs = 0.0
        c.optimizer.warmup_init = 0.0
        c.num_epochs = 500
    return c


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = cross_entropy_config("ce", variant)
    c.model.exits = ()
    return c
