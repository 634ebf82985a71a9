"""MoCo v2 (Chen et al., 2020): a momentum key encoder, a queue of negatives, shuffled BN.

As the official codes compute it (facebookresearch/moco ``moco/builder.py``,
HobbitLong/PyContrast ``learning/contrast_trainer.py`` and ``memory/mem_moco.py``):

* the query encoder (backbone + head ``Linear-ReLU-Linear``, no BatchNorm in the head)
  embeds view 1, the key encoder embeds view 2; the key carries no gradient;
* ``loss = CE([q.k, q @ queue.T] / T, 0)``, the negatives being the queue *before* this
  step's keys are enqueued (:func:`ssljax.losses.infonce`);
* after the loss the keys of the whole global batch are enqueued, in batch order, into a
  ring buffer of K keys (``queue[(ptr + i) % K] = k_i``, ``ptr += B``);
* after the optimizer step the key encoder's parameters follow the query encoder's:
  ``p_k = m p_k + (1 - m) p_q`` (parameters only; the key encoder's BatchNorm running
  statistics come from its own forward passes), one ``jax.tree.map`` in the jitted step.

Queue, pointer and key encoder are method state (``TrainState.state``), so they are
sharded, donated and checkpointed with the rest of the train state.

**Shuffling BN, for a jit-sharded batch.** In the official code BatchNorm statistics are
per GPU (no SyncBN). A query and its key computed on the same GPU would share the
statistics of the same sub-batch, which the network can use to find the positive without
learning anything (the reason for MoCo's shuffle BN). Here the trainer sees one global
batch and a plain BatchNorm would normalise over all of it. Instead the encoders normalise
over ``moco.bn_groups`` groups of the batch, each a stand-in for one GPU (:func:`group_apply`,
a ``jax.vmap`` over the groups: with as many groups as devices, each device normalises its
own rows with no communication, exactly the per-GPU BN of the official code), and
the key batch is permuted before the grouping and un-permuted after it
(``moco.shuffle_bn``), so the key of example i is normalised with the statistics of a
random group of examples, not those of its query's group. The permutation comes from the
step's key, so the result does not depend on the number of devices. The running
statistics of the G groups are averaged (the update is linear in the batch statistics).

References:
  He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR
  2020; Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020.
"""

from __future__ import annotations

from ssljax.methods import register
# Re-exported: their home is ssljax.methods.momentum.
from ssljax.methods.momentum import (QueueContrast, contrast_accuracy, ema, enqueue,  # noqa: F401
                                     group_apply, key_permutation)


@register
class MoCo(QueueContrast):
    """MoCo v2: the query/key encoders, queue and shuffled BN of
    :class:`ssljax.methods.momentum.QueueContrast`, trained on their InfoNCE loss."""

    name = "moco"
