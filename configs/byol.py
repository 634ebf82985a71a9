"""BYOL (Grill et al., NeurIPS 2020): online predictor, EMA target with a cosine momentum.

Run:
  python -m ssljax.main --config=configs/byol.py:fashion_mnist --workdir=runs/byol_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100, imagenet.

The official ImageNet recipe (deepmind-research ``byol/configs/byol.py``): ResNet-50,
projector and predictor MLP(4096 -> 256) with BatchNorm, target momentum 0.996 -> 1
(cosine), LARS lr 0.2 x B/256 (biases and BN excluded), wd 1.5e-6, batch 4096, 10 warm-up
epochs, 1000 epochs; asymmetric augmentation (blur 1.0 / 0.1, solarisation 0 / 0.2).

Network details of the official code (``byol/utils/networks.py``, ``byol_experiment.py``):
the MLPs' hidden Linear has a bias, their last Linear none (``use_bias_last=False``); the
target network has its own random init (``byol.target_init='independent'``; 'copy' starts
it as a copy of the online network); Haiku's ResNet v1 zero-initialises the last BatchNorm
scale of every *bottleneck* block only, so ``model.zero_init_residual`` is True for
ResNet-50 (imagenet) and False for the ResNet-18 variants (basic blocks start at one). Set
it to match if you change ``model.name``.
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    dataset, _ = presets.parse_variant(variant, "byol",
                                       ("fashion_mnist", "cifar10", "cifar100", "imagenet"))
    c = base_config()
    c.method = "byol"
    # networks.MLP: Linear (bias) -> BN (scale, offset) -> ReLU -> Linear (no bias).
    c.projector = ml_collections.ConfigDict(dict(hidden_dims=(4096,), out_dim=256, use_bn=True,
                                                 last_bn=False, use_bias_hidden=True,
                                                 use_bias_last=False))
    c.predictor = ml_collections.ConfigDict(dict(hidden_dims=(4096,), out_dim=256, use_bn=True,
                                                 last_bn=False, use_bias_hidden=True,
                                                 use_bias_last=False))
    # target_init: 'independent' (its own random init, the reference) or 'copy'.
    c.byol = ml_collections.ConfigDict(dict(base_momentum=0.996, target_init="independent"))

    c.data.augment.saturation = 0.2
    c.data.augment.blur_p = 1.0
    c.data.augment2 = ml_collections.ConfigDict(dict(blur_p=0.1, solarize_p=0.2))

    c.optimizer.lr = 0.2
    c.optimizer.weight_decay = 1.5e-6
    presets.apply_dataset(c, dataset)

    if dataset == "fashion_mnist":
        # CPU-sized (the preset's narrow ResNet-18), 512-wide heads, a faster target (0.99)
        # for a short run; no blur at 28x28.
        c.data.augment.blur_p = 0.0
        c.data.augment2 = ml_collections.ConfigDict(dict(solarize_p=0.2))
        c.projector.hidden_dims = (512,)
        c.projector.out_dim = 128
        c.predictor.hidden_dims = (512,)
        c.predictor.out_dim = 128
        c.byol.base_momentum = 0.99
        c.optimizer.lr = 1.0
        c.optimizer.weight_decay = 1e-5
        c.optimizer.warmup_epochs = 0.5
        c.num_epochs = 3
    elif dataset in ("cifar10", "cifar100"):
        # The common CIFAR recipe (solo-learn): ResNet-18 (CIFAR stem), LARS lr 1.0 x B/256,
        # wd 1e-5, batch 256, momentum 0.99 -> 1, 1000 epochs; no blur at 32x32.
        c.data.augment.blur_p = 0.0
        c.data.augment2 = ml_collections.ConfigDict(dict(solarize_p=0.2))
        c.byol.base_momentum = 0.99
        c.optimizer.lr = 1.0
        c.optimizer.weight_decay = 1e-5
        c.num_epochs = 1000
    else:  # imagenet
        # Haiku's BlockV1: the last BN scale of each bottleneck block starts at zero.
        c.model.zero_init_residual = True
        c.batch_size = 4096
        c.num_epochs = 1000
    return c
