"""TensorFlow, as the input pipeline uses it: kept off accelerators.

Every module of ``ssljax.data`` that builds tf.data graphs imports ``tf`` from here, so the
first of them to load hides the GPUs from TensorFlow before it initialises, and tf.data
never reserves accelerator memory that JAX needs. The TensorFlow-free modules
(``specs``, ``sources``, ``transfer``) never import it.
"""

from ssljax import _extras

tf = _extras.require("tensorflow", part="ssljax's input pipeline (ssljax.data, ssljax.train)")

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised by the caller
    pass

__all__ = ["tf"]
