"""Sub-network cross-entropy: CE on the backbone + alpha * CE on the sub-network exit
(after stage 2, kind fc, as configs/selfcon.py), one view.

Run:
  python -m ssljax.main --config=configs/subnet_ce.py:fashion_mnist --workdir=runs/subnet_ce
Variants: fashion_mnist (CPU, the default), cifar10, cifar100 (configs/ce.py's recipe:
raymin0223/self-contrastive-learning main_ce.py --method subnet_ce, alpha 1).
"""

import importlib.util
import os

import ml_collections


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ce.py")
    spec = importlib.util.spec_from_file_location("_ssljax_configs_ce", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cross_entropy_config("subnet_ce", variant)
