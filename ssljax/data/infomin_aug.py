"""InfoMin Aug's RandAugment and the PIRL jigsaw view, under their old import path.

RandAugment lives in ``ssljax.data.randaugment``, the jigsaw view in ``ssljax.data.jigsaw``
and its settings (:class:`JigsawConfig`) in ``ssljax.data.specs``; both modules are built
on the shared ops of ``ssljax.data.ops`` only.
"""

from ssljax.data.jigsaw import jigsaw_patches, sample_jigsaw
from ssljax.data.randaugment import (
    DEFAULT_FILL,
    MAX_LEVEL,
    RA_OPS,
    apply_op,
    apply_randaugment,
    sample_randaugment,
)
from ssljax.data.specs import JigsawConfig

__all__ = [
    "RA_OPS",
    "MAX_LEVEL",
    "DEFAULT_FILL",
    "JigsawConfig",
    "sample_randaugment",
    "apply_randaugment",
    "apply_op",
    "sample_jigsaw",
    "jigsaw_patches",
]
