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

from ssljax.config import base_config


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
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

    c.data.augment.crop_scale = (0.08, 1.0)
    c.data.augment.brightness = 0.4
    c.data.augment.contrast = 0.4
    c.data.augment.saturation = 0.2
    c.data.augment.hue = 0.1
    c.data.augment.blur_p = 1.0
    c.data.augment2 = ml_collections.ConfigDict(dict(blur_p=0.1, solarize_p=0.2))

    c.optimizer.name = "lars"
    c.optimizer.lr = 0.2
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1.5e-6
    c.optimizer.exclude_bias_and_norm = True
    c.optimizer.warmup_epochs = 10.0

    if variant == "fashion_mnist":
        # CPU-sized: narrow ResNet-18 (stride-2 stem) on 28x28 grayscale images, 512-wide
        # heads, a faster target (0.99) for a short run; no blur at 28x28.
        c.data.name = "fashion_mnist"
        c.data.image_size = 28
        c.data.augment.crop_scale = (0.2, 1.0)
        c.data.augment.blur_p = 0.0
        c.data.augment2 = ml_collections.ConfigDict(dict(solarize_p=0.2))
        c.model.width = 16
        c.model.stem_stride = 2
        c.projector.hidden_dims = (512,)
        c.projector.out_dim = 128
        c.predictor.hidden_dims = (512,)
        c.predictor.out_dim = 128
        c.byol.base_momentum = 0.99
        c.batch_size = 256
        c.optimizer.lr = 1.0
        c.optimizer.weight_decay = 1e-5
        c.optimizer.warmup_epochs = 0.5
        c.num_epochs = 3
        c.log_every = 20
        c.checkpoint_every = 200
        c.eval.linear_epochs = 30
        c.eval.linear_lr = 1e-2  # the benchmark's probe (ssljax/benchmark.py): converged
    elif variant in ("cifar10", "cifar100"):
        # The common CIFAR recipe (solo-learn): ResNet-18 (CIFAR stem), LARS lr 1.0 x B/256,
        # wd 1e-5, batch 256, momentum 0.99 -> 1, 1000 epochs; no blur at 32x32.
        c.data.name = variant
        c.data.image_size = 32
        c.data.augment.blur_p = 0.0
        c.data.augment2 = ml_collections.ConfigDict(dict(solarize_p=0.2))
        c.byol.base_momentum = 0.99
        c.batch_size = 256
        c.optimizer.lr = 1.0
        c.optimizer.weight_decay = 1e-5
        c.num_epochs = 1000
        c.checkpoint_every = 5000
    elif variant == "imagenet":
        c.data.name = "imagenet2012"
        c.data.image_size = 224
        c.model.name = "resnet50"
        c.model.stem = "imagenet"
        # Haiku's BlockV1: the last BN scale of each bottleneck block starts at zero.
        c.model.zero_init_residual = True
        c.model.dtype = "bfloat16"
        c.batch_size = 4096
        c.num_epochs = 1000
        c.checkpoint_every = 5000
        c.eval.batch_size = 2048
    else:
        raise ValueError(f"Unknown variant {variant!r} of configs/byol.py; use fashion_mnist, "
                         "cifar10, cifar100 or imagenet.")
    return c
