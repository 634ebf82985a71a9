"""SelfCon (Bae et al., AAAI 2023): SelfCon-S by default; SelfCon-M, -U and starred variants
by overrides.

Run:
  python -m ssljax.main --config=configs/selfcon.py:fashion_mnist --workdir=runs/selfcon_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100 (the official CIFAR-100
ResNet-18 recipe: batch 1024, SGD lr 0.5, T 0.1, 1000 epochs, 10 warm-up epochs, cosine,
wd 1e-4, bfloat16 compute; linear probe lr 3, 100 epochs, x0.1 at 60 and 80).
Other SelfCon variants:
  SelfCon-M:   --config.selfcon.multiview=True --config.data.num_views=2
  SelfCon-SU:  --config.selfcon.label=False         (-MU: with the two above)
  SelfCon-S*:  --config.selfcon.anchors=subnet      (-M*: with the multiview overrides)
  exit / kind: --config.model.exits='(1,)' --config.model.exit_kind=same   (fc, same, small)

This file also holds the recipe the supervised family shares (``supervised_config``):
configs/supcon.py, configs/ce.py and configs/subnet_ce.py start from it.
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config

VARIANTS = ("fashion_mnist", "cifar10", "cifar100")


def supervised_config(method: str, variant: str) -> ml_collections.ConfigDict:
    """The recipe SelfCon, SupCon, CE and sub-network CE share, for ``variant``."""
    variant, _ = presets.parse_variant(variant, method, VARIANTS)
    c = base_config()
    c.method = method
    c.data.num_views = 1
    c.model.exits = (2,)  # sub-network exits: after which stages (1-based); () for none
    c.model.exit_kind = "fc"  # 'fc', 'same' (copy of the remaining stages) or 'small'
    # Heads Linear(d, d) - ReLU - Linear(d, 128), L2-normalised (hidden_dim 0 means d).
    c.projector = ml_collections.ConfigDict(dict(hidden_dim=0, out_dim=128))
    c.loss = ml_collections.ConfigDict(dict(temperature=0.1, base_temperature=0.07,
                                            block_size=0))
    # Official: SGD momentum 0.9, coupled weight decay on every parameter, no lr scaling.
    o = c.optimizer
    o.name = "sgd"
    o.lr_scaling = "none"
    o.momentum = 0.9
    o.weight_decay = 1e-4
    o.exclude_bias_and_norm = False

    presets.apply_dataset(c, variant)
    if variant == "fashion_mnist":
        # CPU-sized: the SimCLR main job's narrow ResNet-18 (the preset) on 28x28 grayscale
        # images; colour jitter reduces to brightness and contrast.
        c.batch_size = 128
        o.lr = 0.2
        o.warmup_epochs = 0.1
        o.final_lr_ratio = 1e-3
        c.total_steps = 700  # ~1.5 epochs: the experiment's budget (about 5 min on 2 cores)
        c.log_every = 50
        c.checkpoint_every = 700
    else:
        # raymin0223/self-contrastive-learning scripts/selfcon_represent.sh (CIFAR-100,
        # ResNet-18): batch 1024, lr 0.5, T 0.1, 1000 epochs, cosine to lr * 0.1**3, warm-up
        # for 10 epochs from 0.01 (per iteration; we also step the cosine per iteration),
        # wd 1e-4, mixed precision.
        c.data.augment.crop_scale = (0.2, 1.0)
        c.model.dtype = "bfloat16"
        c.batch_size = 1024
        o.lr = 0.5
        o.warmup_epochs = 10.0
        o.warmup_init = 0.01 / 0.5
        o.final_lr_ratio = 1e-3
        c.num_epochs = 1000
        # main_linear.py: SGD lr 3, momentum 0.9, wd 0, batch 512, 100 epochs, x0.1 at 60/80.
        # (Official: random crop + flip on the probe's images and the best epoch; we probe
        # frozen features of the un-augmented images and report the last epoch.)
        e = c.eval
        e.linear_optimizer = "sgd"
        e.linear_lr = 3.0
        e.linear_weight_decay = 0.0
        e.linear_batch_size = 512
        e.linear_epochs = 100
        e.linear_schedule = "piecewise"
        e.linear_decay_epochs = (60, 80)
        e.linear_decay_rate = 0.1
    return c


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = supervised_config("selfcon", variant)
    c.selfcon = ml_collections.ConfigDict(dict(
        multiview=False,  # SelfCon-M: True, with data.num_views=2
        label=True,  # False: the unsupervised -U variants
        anchors="all",  # 'subnet': the starred variants (sub-network anchors only)
        alpha=1.0,  # weight of the sub-network-anchored term of the starred variants
    ))
    return c
