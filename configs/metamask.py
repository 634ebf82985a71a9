"""MetaMask (Li et al., NeurIPS 2022): Barlow Twins + 10 x SimCLR on meta-masked features.

Run:
  python -m ssljax.main --config=configs/metamask.py:fashion_mnist --workdir=runs/metamask_fmnist
Variants: fashion_mnist (CPU, the default), cifar10, cifar100 (the official recipe of
jiangmengli/MetaMask ``meta-mask.py``: batch 512, 800 epochs, kNN k = 5, T = 1).
``--config.metamask.meta_grad`` picks the mask's meta-gradient: 'exact' (second order,
``jax.grad`` through the virtual step), 'first_order', 'finite_difference' (the official
DARTS approximation) or 'none' (no mask: the official ``--disable-meta``).
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    dataset, _ = presets.parse_variant(variant, "metamask",
                                       ("fashion_mnist", "cifar10", "cifar100"))
    c = base_config()
    c.method = "metamask"

    # The official backbone (lightly's ResNetGenerator) has no ReLU after the stem BN.
    c.model.stem_relu = False
    # Barlow Twins head: Linear-BN-ReLU x 2, Linear-BN; SimCLR head: Linear-BN-ReLU, Linear-BN.
    c.bt_projector = ml_collections.ConfigDict(dict(hidden_dims=(2048, 2048), out_dim=2048,
                                                    use_bn=True, last_bn=True))
    c.cl_projector = ml_collections.ConfigDict(dict(hidden_dims=(2048,), out_dim=256,
                                                    use_bn=True, last_bn=True))
    c.metamask = ml_collections.ConfigDict(dict(
        weight_bt=1.0,
        weight_cl=10.0,
        temperature=0.07,  # NT-Xent of the SimCLR head
        bt_lambd=5e-3,  # MetaMask's Barlow Twins: unbiased std, no eps, plain sum
        meta_grad="exact",  # 'exact' | 'first_order' | 'finite_difference' | 'none'
        fd_r=0.01,  # finite difference: R = fd_r / ||v||, as the official code
        # The mask's own PyTorch SGD (coupled weight decay), annealed like the model's lr.
        mask_lr=1e-3,
        mask_momentum=0.9,
        mask_weight_decay=5e-4,
        mask_lr_follows_schedule=True,
    ))

    # Official optimizer: SGD lr 1e-3 (not scaled by batch), momentum 0.9, wd 5e-4 on every
    # parameter, CosineAnnealingLR(T_max=epochs) stepped once per epoch, no warm-up.
    c.optimizer.name = "sgd"
    c.optimizer.lr = 1e-3
    c.optimizer.lr_scaling = "none"
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.exclude_bias_and_norm = False
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.step_per_epoch = True
    # SimCLR augmentation without blur (lightly's SimCLRCollateFunction, gaussian_blur=0).
    c.data.augment.blur_p = 0.0
    # The paper's kNN monitor on L2-normalised masked features.
    c.eval.knn_k = 5
    c.eval.knn_temperature = 1.0

    presets.apply_dataset(c, dataset)
    if dataset == "fashion_mnist":
        # CPU-sized: the preset's narrow ResNet-18 on 28x28 grayscale, smaller heads.
        c.bt_projector.hidden_dims = (512, 512)
        c.bt_projector.out_dim = 512
        c.cl_projector.hidden_dims = (512,)
        c.cl_projector.out_dim = 128
        c.num_epochs = 4
    else:  # cifar10, cifar100
        c.batch_size = 512
        c.num_epochs = 800
    return c
