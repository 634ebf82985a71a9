"""ssljax: information-theoretic self-supervised learning in JAX/Flax.

Where things live:
  ssljax.losses    pure objectives (import these into your own JAX code)
  ssljax.models    Flax modules: ResNets, projector heads
  ssljax.methods   one file per method: views -> model -> objective, extra state
  ssljax.data      settings (specs, no TensorFlow), tf.data sources, augmentations, batches
  ssljax.train     the generic, jit-sharded training loop
  ssljax.evaluate  kNN, linear and dense probes; the evaluators a config selects
  ssljax.presets   dataset presets and the variant parser of configs/*.py
  ssljax.encoder   load_encoder: a trained run (or an exported file) as features; export
  ssljax.plot      curves.png and embedding.png of a run; `python -m ssljax.plot` overlays runs

`pip install ssljax` is the core (losses, models, methods: no TensorFlow); the trainer needs
`ssljax[train]`, the pictures `ssljax[plot]`.
"""

from ssljax.xla_flags import apply_cpu_defaults as _apply_cpu_defaults

# Faster CPU kernels for the train step; must precede JAX's backend start-up (see xla_flags).
_apply_cpu_defaults()

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``ssljax.load_encoder`` without importing JAX-heavy modules on ``import ssljax``.
    if name in ("load_encoder", "export_encoder", "Encoder"):
        from ssljax import encoder
        return getattr(encoder, name)
    raise AttributeError(f"module 'ssljax' has no attribute {name!r}")
