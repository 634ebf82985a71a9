"""Contrastive training on fixed views: colour-space splits or frozen learned views.

Run:
  python -m ssljax.main --config=configs/view_contrast.py:lab --workdir=runs/vc_lab
  python -m ssljax.main --config=configs/view_contrast.py:learned \
      --config.views.generator_dir=runs/views_unsup --workdir=runs/vc_learned
Variants (on Coloured Fashion-MNIST): rgb (R | GB), ydbdr, ycbcr, lab, learned; append
``_stl10`` (e.g. ``lab_stl10``) for the paper's dataset.

Two encoders, one on the 1-channel view (R, Y or L) and one on the 2-channel view, trained
with the symmetric InfoNCE loss (CMC); evaluation concatenates both encoders' features.
See ``ssljax/methods/view_learning.py``.
"""

import ml_collections

from ssljax import presets

SPACES = ("rgb", "ydbdr", "ycbcr", "lab", "learned")
VARIANTS = SPACES + tuple(f"{space}_stl10" for space in SPACES)


def get_config(variant: str = "lab") -> ml_collections.ConfigDict:
    variant, _ = presets.parse_variant(variant, "view_contrast", VARIANTS)
    space, _, dataset = variant.partition("_")
    c = presets.sibling(__file__, "infomin_views").get_config(dataset or "fashion_mnist")
    c.method = "view_contrast"
    c.views.space = space
    return c
