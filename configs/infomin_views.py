"""InfoMin view learning (our reading of the paper; no official code exists).

Run:
  python -m ssljax.main --config=configs/infomin_views.py:fashion_mnist --workdir=runs/views_unsup
  python -m ssljax.main --config=configs/infomin_views.py:fashion_mnist_semi --workdir=runs/views_semi
Variants: fashion_mnist (Coloured Fashion-MNIST, unsupervised, the default),
fashion_mnist_semi (semi-supervised), stl10, stl10_semi (the paper's dataset).

An invertible pixel-wise flow ``g`` maps RGB to a 1-channel and a 2-channel view; two
encoders maximise InfoNCE between the views while ``g`` minimises it (gradient reversal);
the semi-supervised variant adds a classifier on each view, trained with ``g``. See
``ssljax/methods/view_learning.py``. Then train encoders on the frozen learned views with
configs/view_contrast.py (``views.space=learned``, ``views.generator_dir=<this workdir>``).
"""

import ml_collections

from ssljax import presets
from ssljax.config import base_config


def views_base(method: str) -> ml_collections.ConfigDict:
    """Shared by configs/view_contrast.py: data, encoders and view fields."""
    c = base_config()
    c.method = method
    c.data.num_views = 1  # one crop, split by colour into two views
    a = c.data.augment
    # Crops and flips only: colour augmentation would change the colour views themselves.
    a.crop_scale = (0.2, 1.0)
    a.jitter_p = 0.0
    a.grayscale_p = 0.0
    c.projector = ml_collections.ConfigDict(dict(hidden_dims=(256,), out_dim=64, use_bn=True,
                                                 last_bn=False))
    c.views = ml_collections.ConfigDict(dict(
        temperature=0.1,
        flow_layers=4, flow_hidden=32, volume_preserving=False,
        adversary_weight=1.0,  # scale of the reversed gradient that reaches g
        supervised_weight=0.0,  # > 0: the semi-supervised variant
        space="learned",  # view_contrast: 'rgb', 'ydbdr', 'ycbcr', 'lab' or 'learned'
        generator_dir=""))  # view_contrast with space='learned': an infomin_views workdir
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.lr_scaling = "none"
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    return c


def get_config(variant: str = "fashion_mnist") -> ml_collections.ConfigDict:
    variant, _ = presets.parse_variant(
        variant, "infomin_views", ("fashion_mnist", "fashion_mnist_semi", "stl10", "stl10_semi"))
    c = views_base("infomin_views")
    semi = variant.endswith("_semi")
    dataset = variant[:-len("_semi")] if semi else variant
    if semi:
        c.views.supervised_weight = 1.0
    if dataset == "fashion_mnist":
        # Coloured Fashion-MNIST (ssljax.data.coloured), CPU-sized encoders.
        c.data.name = "coloured_fashion_mnist"
        c.data.image_size = 28
        c.model.width = 8
        c.model.stem_stride = 2
        c.batch_size = 256
        c.num_epochs = 1
        c.log_every = 20
        c.checkpoint_every = 200
        c.eval.linear_epochs = 30
    else:  # stl10
        # The paper's view-learning dataset: STL-10 (unlabelled + train), 64x64 crops.
        presets.stl10(c, image_size=64)
        c.model.width = 32
        c.num_epochs = 100
    return c
