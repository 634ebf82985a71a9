"""MoCo v2 (Chen et al., 2020): momentum key encoder, queue of negatives, shuffled BN.

Run:
  python -m ssljax.main --config=configs/moco.py:fashion_mnist --workdir=runs/moco_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100, imagenet; each optionally
followed by ``,infomin_aug``: the same MoCo v2 with InfoMin Aug (configs/infomin.py's
augmentation for that dataset, no jigsaw branch), InfoMin's claim against MoCo v2's own
augmentation (the benchmark's ``moco_infomin_aug``).

The official ImageNet recipe (facebookresearch/moco, ``--mlp --moco-t 0.2 --aug-plus
--cos``): ResNet-50, head Linear(2048, 2048)-ReLU-Linear(2048, 128), queue 65,536, momentum
0.999, T 0.2, SGD lr 0.03 x B/256 (momentum 0.9, wd 1e-4 on every parameter), batch 256,
cosine, 200 epochs; BatchNorm per GPU with shuffled keys (here: ``moco.bn_groups`` groups,
``moco.shuffle_bn``; see ``ssljax/methods/moco.py``). The CIFAR variants follow the
official CIFAR-10 demo (facebookresearch/moco ``colab/moco_cifar10_demo.ipynb``).
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config


def infomin_augment(dataset: str) -> ml_collections.ConfigDict:
    """configs/infomin.py's InfoMin Aug for ``dataset`` (its ``data.augment`` section)."""
    return presets.sibling(__file__, "infomin").get_config(dataset).data.augment


def moco_base(method: str = "moco") -> ml_collections.ConfigDict:
    """The MoCo v2 ImageNet recipe; InfoMin's config starts from it."""
    c = base_config()
    c.method = method
    # Linear-ReLU-Linear, no BatchNorm; the hidden width is the backbone's feature width.
    c.projector = ml_collections.ConfigDict(dict(hidden_dims=(2048,), out_dim=128,
                                                 use_bn=False, last_bn=False))
    c.moco = ml_collections.ConfigDict(dict(
        temperature=0.2, queue_size=65536, momentum=0.999,
        bn_groups=8,  # BatchNorm groups: the official 8 GPUs, each with its own statistics
        shuffle_bn=True))
    # MoCo v2's augmentation ("aug-plus"): crops of 20-100%, jitter p=0.8, blur p=0.5.
    c.data.augment.crop_scale = (0.2, 1.0)
    c.data.augment.brightness = 0.4
    c.data.augment.contrast = 0.4
    c.data.augment.saturation = 0.4
    c.data.augment.hue = 0.1
    c.data.augment.blur_p = 0.5
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.03
    c.optimizer.lr_scaling = "linear"
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.exclude_bias_and_norm = False  # PyTorch SGD decays every parameter
    c.optimizer.warmup_epochs = 0.0
    return c


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    dataset, modifiers = presets.parse_variant(
        variant, "moco", ("fashion_mnist", "cifar10", "cifar100", "imagenet"), ("infomin_aug",))
    c = moco_base()
    presets.apply_dataset(c, dataset)
    if dataset == "fashion_mnist":
        # CPU-sized: the preset's narrow ResNet-18 (128 features); a queue of 16 batches and a
        # faster-moving key encoder for a short run.
        c.data.augment.blur_p = 0.0
        c.projector.hidden_dims = (128,)
        c.moco.queue_size = 4096
        c.moco.momentum = 0.99
        c.optimizer.lr = 0.06
        c.optimizer.weight_decay = 5e-4
        c.num_epochs = 3
    elif dataset in ("cifar10", "cifar100"):
        # The official CIFAR-10 demo: ResNet-18 (CIFAR stem), batch 512, lr 0.06 (x B/256),
        # wd 5e-4, queue 4096, momentum 0.99, T 0.1, 8 BN groups, 800 epochs; no blur.
        c.data.augment.blur_p = 0.0
        c.projector.hidden_dims = (512,)
        c.moco.queue_size = 4096
        c.moco.momentum = 0.99
        c.moco.temperature = 0.1
        c.batch_size = 512
        c.optimizer.lr = 0.06
        c.optimizer.lr_scaling = "none"
        c.optimizer.weight_decay = 5e-4
        c.num_epochs = 800
    else:  # imagenet
        c.num_epochs = 200
    if "infomin_aug" in modifiers:
        c.data.augment = infomin_augment(dataset)
    return c
