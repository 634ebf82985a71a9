"""Barlow Twins (Zbontar et al., 2021).

Run:
  python -m ssljax.main --config=configs/barlow_twins.py:fashion_mnist --workdir=runs/bt_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100, imagenet.

The official recipe (facebookresearch/barlowtwins): projector 8192-8192-8192
(Linear-BN-ReLU, no biases, last Linear without BN: the loss standardises), lambd 0.0051,
LARS (biases and BN excluded) lr 0.2 x B/256, wd 1.5e-6, batch 2048, 1000 epochs, 10
warm-up epochs, cosine to 0.001 x lr. The official code gives biases and BN parameters
their own lr (0.0048); ssljax has one lr for all parameters.
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    dataset, _ = presets.parse_variant(variant, "barlow_twins",
                                       ("fashion_mnist", "cifar10", "cifar100", "imagenet"))
    c = base_config()
    c.method = "barlow_twins"

    c.projector = ml_collections.ConfigDict(dict(
        hidden_dims=(8192, 8192), out_dim=8192, use_bn=True, last_bn=False,
        use_bias_hidden=False, use_bias_last=False))
    # ddof=1, eps=0.0, lambd=5e-3 is MetaMask's variant.
    c.loss = ml_collections.ConfigDict(dict(lambd=0.0051, ddof=0, eps=1e-5))

    # BYOL/Barlow Twins asymmetric augmentation: blur always on view 1, rarely on view 2,
    # solarisation on view 2 only.
    c.data.augment.saturation = 0.2
    c.data.augment.blur_p = 1.0
    c.data.augment2 = ml_collections.ConfigDict(dict(blur_p=0.1, solarize_p=0.2))

    c.optimizer.lr = 0.2
    c.optimizer.weight_decay = 1.5e-6
    c.optimizer.final_lr_ratio = 0.001
    presets.apply_dataset(c, dataset)

    if dataset == "fashion_mnist":
        # CPU-sized (the preset's narrow ResNet-18), a 512-wide projector. Grayscale: saturation,
        # hue, grayscale and solarisation do little; no blur at 28x28.
        c.data.augment.blur_p = 0.0
        c.data.augment2 = ml_collections.ConfigDict()
        c.projector.hidden_dims = (512, 512)
        c.projector.out_dim = 512
        c.optimizer.lr = 0.5
        c.optimizer.weight_decay = 1e-5
        c.optimizer.warmup_epochs = 0.5
        c.num_epochs = 4
    elif dataset in ("cifar10", "cifar100"):
        # The common CIFAR recipe (e.g. solo-learn): ResNet-18 CIFAR stem, 2048-2048-2048
        # projector, LARS lr 0.3 x B/256, wd 1e-4, batch 256, 1000 epochs; no blur at 32x32.
        c.data.augment.blur_p = 0.0
        c.data.augment2 = ml_collections.ConfigDict(dict(solarize_p=0.2))
        c.projector.hidden_dims = (2048, 2048)
        c.projector.out_dim = 2048
        c.optimizer.lr = 0.3
        c.optimizer.weight_decay = 1e-4
        c.num_epochs = 1000
    else:  # imagenet
        c.model.zero_init_residual = True  # torchvision's resnet50(zero_init_residual=True)
        c.batch_size = 2048
        c.num_epochs = 1000
    return c
