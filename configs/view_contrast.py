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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from infomin_views import get_config as views_config  # noqa: E402

SPACES = ("rgb", "ydbdr", "ycbcr", "lab", "learned")


def get_config(variant: str = "lab"):
    space, _, dataset = variant.partition("_")
    if space not in SPACES or dataset not in ("", "stl10"):
        raise ValueError(f"Unknown variant {variant!r} of configs/view_contrast.py; use one of "
                         f"{', '.join(SPACES)}, optionally with the suffix _stl10.")
    c = views_config(dataset or "fashion_mnist")
    c.method = "view_contrast"
    c.views.space = space
    return c
