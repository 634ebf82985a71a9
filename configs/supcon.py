"""SupCon (Khosla et al., NeurIPS 2020) with SelfCon's recipe: two views, labels.

Run:
  python -m ssljax.main --config=configs/supcon.py:fashion_mnist --workdir=runs/supcon_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100 (the official CIFAR-100
ResNet-18 recipe of raymin0223/self-contrastive-learning scripts/supcon_represent.sh: batch
1024, lr 0.5, T 0.1, 1000 epochs, 10 warm-up epochs, cosine, wd 1e-4, bfloat16; linear probe
lr 3, 100 epochs, x0.1 at 60 and 80).
SupCon-S (one view): --config.data.num_views=1. Unsupervised: --config.supcon.label=False.
"""

import ml_collections

from ssljax import presets


def _supervised_config(method: str, variant: str) -> ml_collections.ConfigDict:
    return presets.sibling(__file__, "selfcon").supervised_config(method, variant)


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = _supervised_config("supcon", variant)
    c.data.num_views = 2  # 1: SupCon-S
    c.model.exits = ()  # no sub-network
    c.supcon = ml_collections.ConfigDict(dict(label=True))
    return c
