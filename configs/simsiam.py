"""SimSiam (Chen & He, CVPR 2021): a stop-gradient predictor, no negatives, no momentum encoder.

Run:
  python -m ssljax.main --config=configs/simsiam.py:fashion_mnist --workdir=runs/simsiam_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100.

The official recipe (facebookresearch/simsiam): projector 3 x (Linear-BN), ReLU between,
the last BN without affine; predictor Linear-BN-ReLU-Linear with a 4x bottleneck; SGD lr
0.05 x B/256, momentum 0.9, wd 1e-4, cosine; the CIFAR demo uses a 2-layer projector.
"""

import ml_collections

from ssljax.config import base_config


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base_config()
    c.method = "simsiam"
    c.projector = ml_collections.ConfigDict(dict(
        hidden_dims=(2048, 2048), out_dim=2048, use_bn=True, last_bn=True,
        last_bn_affine=False, use_bias_hidden=False, use_bias_last=False))
    c.predictor = ml_collections.ConfigDict(dict(hidden_dims=(512,), out_dim=2048, use_bn=True,
                                                 last_bn=False, use_bias_hidden=False,
                                                 use_bias_last=True))
    c.data.augment.crop_scale = (0.2, 1.0)
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.05
    c.optimizer.lr_scaling = "linear"
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.exclude_bias_and_norm = False
    c.optimizer.warmup_epochs = 0.0

    if variant == "fashion_mnist":
        # CPU-sized, as configs/byol.py's fashion_mnist: narrow ResNet-18, stride-2 stem.
        c.data.name = "fashion_mnist"
        c.data.image_size = 28
        c.model.width = 16
        c.model.stem_stride = 2
        c.projector.hidden_dims = (512,)
        c.projector.out_dim = 512
        c.predictor.hidden_dims = (128,)
        c.predictor.out_dim = 512
        c.batch_size = 256
        c.num_epochs = 3
        c.log_every = 20
        c.checkpoint_every = 200
        c.eval.linear_epochs = 30
        c.eval.linear_lr = 1e-2  # the benchmark's probe (ssljax/benchmark.py): converged
    elif variant in ("cifar10", "cifar100"):
        c.data.name = variant
        c.data.image_size = 32
        c.projector.hidden_dims = (2048,)
        c.batch_size = 512
        c.optimizer.lr = 0.06
        c.num_epochs = 800
        c.checkpoint_every = 5000
    else:
        raise ValueError(f"Unknown variant {variant!r} of configs/simsiam.py; use fashion_mnist, "
                         "cifar10 or cifar100.")
    return c
