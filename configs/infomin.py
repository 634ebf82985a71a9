"""InfoMin (Tian et al., NeurIPS 2020): MoCo v2 + InfoMin Aug + a PIRL jigsaw branch.

Run:
  python -m ssljax.main --config=configs/infomin.py:fashion_mnist --workdir=runs/infomin_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100, imagenet.

The official ImageNet recipe (HobbitLong/PyContrast ``--method InfoMin --cosine``):
ResNet-50, head Linear(2048, 2048)-ReLU-Linear(2048, 128) and L2, queue 65,536, T 0.15,
EMA 0.999, SGD lr 0.03 (batch 256, wd 1e-4, momentum 0.9), cosine, 200 epochs (100 / 800
in the paper's table); InfoMin Aug on both crops (crop 0.2-1, flip, jitter (0.8, 0.8, 0.8,
0.2) p 0.8, blur p 0.5, RandAugment n 2 m 10 mstd 0.5, grayscale p 0.2); jigsaw view: crop
scale 0.6-1 resized to 255, 3 x 3 cells of 85 pixels, a 64-pixel patch in each;
``0.5 L_instance + 0.5 L_jigsaw``.
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    dataset, _ = presets.parse_variant(variant, "infomin",
                                       ("fashion_mnist", "cifar10", "cifar100", "imagenet"))
    c = base_config()
    c.method = "infomin"
    c.projector = ml_collections.ConfigDict(dict(hidden_dims=(2048,), out_dim=128,
                                                 use_bn=False, last_bn=False))
    c.moco = ml_collections.ConfigDict(dict(temperature=0.15, queue_size=65536, momentum=0.999,
                                            bn_groups=8, shuffle_bn=True))
    c.infomin = ml_collections.ConfigDict(dict(beta=0.5))

    # InfoMin Aug (PyContrast aug 'D'), in this order: crop, flip, jitter, blur,
    # RandAugment, grayscale.
    a = c.data.augment
    a.crop_scale = (0.2, 1.0)
    a.brightness, a.contrast, a.saturation, a.hue = 0.8, 0.8, 0.8, 0.2
    a.blur_p = 0.5
    a.randaugment_n = 2
    a.randaugment_m = 10.0
    a.randaugment_mstd = 0.5
    a.randaugment_p = 0.5
    a.randaugment_fill = (124.0, 116.0, 104.0)  # the ImageNet mean, in 8-bit levels
    c.data.jigsaw = ml_collections.ConfigDict(dict(size=255, patch=64, crop_scale=(0.6, 1.0),
                                                   flip_p=0.5))

    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.03
    c.optimizer.weight_decay = 1e-4
    c.optimizer.exclude_bias_and_norm = False
    c.optimizer.warmup_epochs = 0.0
    presets.apply_dataset(c, dataset)

    if dataset == "fashion_mnist":
        # CPU-sized, as configs/moco.py's fashion_mnist; 8-pixel jigsaw patches in cells of
        # 10 (the official 64 / 85), RandAugment's fill the dataset mean; no blur at 28x28.
        a.blur_p = 0.0
        a.randaugment_fill = (73.0,)
        c.data.jigsaw.size = 30
        c.data.jigsaw.patch = 8
        c.projector.hidden_dims = (128,)
        c.moco.queue_size = 4096
        c.moco.momentum = 0.99
        c.optimizer.lr = 0.06
        c.optimizer.weight_decay = 5e-4
        c.num_epochs = 3
    elif dataset in ("cifar10", "cifar100"):
        # configs/moco.py's CIFAR recipe with InfoMin's T, InfoMin Aug (no blur at 32x32) and
        # 8-pixel jigsaw patches in cells of 11.
        a.blur_p = 0.0
        c.data.jigsaw.size = 33
        c.data.jigsaw.patch = 8
        c.projector.hidden_dims = (512,)
        c.moco.queue_size = 4096
        c.moco.momentum = 0.99
        c.batch_size = 512
        c.optimizer.lr = 0.06
        c.optimizer.lr_scaling = "none"
        c.optimizer.weight_decay = 5e-4
        c.num_epochs = 800
    else:  # imagenet
        c.num_epochs = 200
    return c
