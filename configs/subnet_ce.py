"""Sub-network cross-entropy: CE on the backbone + alpha * CE on the sub-network exit
(after stage 2, kind fc, as configs/selfcon.py), one view.

Run:
  python -m ssljax.main --config=configs/subnet_ce.py:fashion_mnist --workdir=runs/subnet_ce
Variants: fashion_mnist (CPU, the default), cifar10, cifar100 (configs/ce.py's recipe:
raymin0223/self-contrastive-learning main_ce.py --method subnet_ce, alpha 1).
"""

import ml_collections

from ssljax import presets


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    return presets.sibling(__file__, "ce").cross_entropy_config("subnet_ce", variant)
