"""ssljax: information-theoretic self-supervised learning in JAX/Flax.

Where things live:
  ssljax.losses    pure objectives (import these into your own JAX code)
  ssljax.models    Flax modules: ResNets, projector heads
  ssljax.methods   one file per method: views -> model -> objective, extra state
  ssljax.data      tf.data sources, augmentations, multi-view batches
  ssljax.train     the generic, jit-sharded training loop
  ssljax.evaluate  online probe, kNN and linear probes
"""

__version__ = "0.1.0"
