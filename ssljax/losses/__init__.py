"""Pure self-supervised objectives: import these into your own JAX code.

Every function takes the *global* batch as plain arrays, computes in float32 (or
float64 for float64 inputs) and returns float32 scalars. Under `jax.jit` with the
batch sharded over a mesh axis, negatives, covariances and standardisation span all
devices by construction: the compiler inserts the collectives.

    contrastive    nt_xent (SimCLR), infonce (MoCo), supcon (SupCon), selfcon_loss (SelfCon),
                   symmetric_nce (CMC, InfoMin's view learning), per_image
    classification cross_entropy (the supervised baselines)
    redundancy     barlow_twins, vicreg
    information    corinfomax_init, corinfomax, CorInfoMaxState, psd_logdet
    regression     byol
    reconstruction masked_reconstruction, patchify, unpatchify (MRCL)
    tiled          tiled_logsumexp, gram_logsumexp: the memory-efficient core of the
                   contrastive losses (2-D tiles, low precision, a ring over devices)
"""
from ssljax.losses.classification import cross_entropy
from ssljax.losses.contrastive import (infonce, nt_xent, per_image, selfcon_loss, supcon,
                                       symmetric_nce)
from ssljax.losses.information import CorInfoMaxState, corinfomax, corinfomax_init, psd_logdet
from ssljax.losses.reconstruction import masked_reconstruction, patchify, unpatchify
from ssljax.losses.redundancy import barlow_twins, vicreg
from ssljax.losses.regression import byol
from ssljax.losses.tiled import gram_logsumexp, tiled_logsumexp

__all__ = [
    "CorInfoMaxState",
    "barlow_twins",
    "byol",
    "corinfomax",
    "corinfomax_init",
    "cross_entropy",
    "gram_logsumexp",
    "infonce",
    "masked_reconstruction",
    "nt_xent",
    "patchify",
    "per_image",
    "psd_logdet",
    "selfcon_loss",
    "supcon",
    "symmetric_nce",
    "tiled_logsumexp",
    "unpatchify",
    "vicreg",
]
