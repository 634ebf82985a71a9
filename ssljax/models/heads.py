"""Projector / predictor MLPs and the linear classifier used by probes.

Linear layers use PyTorch's default initialisation (weights and biases uniform in
``+-1/sqrt(fan_in)``), as the reference implementations do. Outputs are float32 (float64
for a float64 compute dtype).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "LinearClassifier", "torch_dense", "ACTIVATIONS"]

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}

# kaiming_uniform_(a=sqrt(5)) in PyTorch's nn.Linear: bound = 1/sqrt(fan_in).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    bound = 1.0 / fan_in**0.5 if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(
    features: int, fan_in: int, *, use_bias: bool = True, dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
    """``nn.Dense`` initialised like PyTorch's ``nn.Linear(fan_in, features)``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=_torch_kernel_init,
        bias_init=_torch_bias_init(fan_in),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class MLP(nn.Module):
    """Projector / predictor head: ``[Linear (-> BN) -> act] * len(hidden_dims) -> Linear (-> BN)``.

    Examples, as the reference code builds them::

        MLP((2048,), 128)                                   # SimCLR projector
        MLP((4096,), 256)                                   # BYOL projector and predictor
        MLP((2048, 2048), 2048, last_bn=True, last_bn_affine=False)   # Barlow Twins
        # (the official Barlow Twins code also sets use_bias_hidden=False)
        MLP((2048, 2048), 2048, last_bn=True)               # MetaMask Barlow Twins head
        MLP((2048,), 256, last_bn=True)                     # MetaMask SimCLR head
        MLP((2048, 2048), 64, use_bn=False, use_bias_last=False)      # CorInfoMax CIFAR
        MLP((2048,), 128, use_bn=False)                     # MoCo v2 / InfoMin head

    >>> import jax, jax.numpy as jnp
    >>> head = MLP((16,), 8)
    >>> variables = head.init(jax.random.key(0), jnp.zeros((4, 32)), train=False)
    >>> head.apply(variables, jnp.ones((4, 32)), train=False).shape
    (4, 8)

    Attributes:
      hidden_dims: widths of the hidden layers (may be empty: a single Linear).
      out_dim: output width.
      use_bn: BatchNorm after each hidden Linear (before the activation).
      last_bn: BatchNorm after the last Linear.
      last_bn_affine: whether that last BatchNorm has scale and bias.
      use_bias_hidden: bias in the hidden Linears (Barlow Twins' official code has none;
        it is redundant before a BatchNorm).
      use_bias_last: bias in the last Linear.
      activation: one of ``ACTIVATIONS``.
      bn_momentum: Flax convention (PyTorch's 0.1 is 0.9 here).
      bn_eps: BatchNorm epsilon.
      dtype: compute dtype; parameters stay float32.
    """

    hidden_dims: Sequence[int]
    out_dim: int
    use_bn: bool = True
    last_bn: bool = False
    last_bn_affine: bool = True
    use_bias_hidden: bool = True
    use_bias_last: bool = True
    activation: str = "relu"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    def _bn(self, train: bool, affine: bool, name: str) -> nn.BatchNorm:
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_eps,
            use_scale=affine,
            use_bias=affine,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; use one of {sorted(ACTIVATIONS)}."
            )
        act = ACTIVATIONS[self.activation]
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate(self.hidden_dims):
            x = torch_dense(
                width, x.shape[-1], use_bias=self.use_bias_hidden, dtype=self.dtype,
                name=f"dense{i}",
            )(x)
            if self.use_bn:
                x = self._bn(train, True, f"bn{i}")(x)
            x = act(x)
        i = len(self.hidden_dims)
        x = torch_dense(
            self.out_dim, x.shape[-1], use_bias=self.use_bias_last, dtype=self.dtype,
            name=f"dense{i}",
        )(x)
        if self.last_bn:
            x = self._bn(train, self.last_bn_affine, f"bn{i}")(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


class LinearClassifier(nn.Module):
    """A Linear layer on (frozen) features, optionally after a BatchNorm without affine.

    ``input_bn=True`` is MAE's linear probe (``BatchNorm1d(affine=False, eps=1e-6)`` before
    the Linear); it standardises features whose scale varies during pre-training, which
    helps the online probe. The caller applies ``jax.lax.stop_gradient`` to the features.

    >>> import jax, jax.numpy as jnp
    >>> clf = LinearClassifier(10, input_bn=True)
    >>> variables = clf.init(jax.random.key(0), jnp.zeros((4, 32)), train=False)
    >>> logits, _ = clf.apply(variables, jnp.ones((4, 32)), train=True, mutable=['batch_stats'])
    >>> logits.shape
    (4, 10)
    """

    num_classes: int
    input_bn: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = jnp.asarray(x, self.dtype)
        if self.input_bn:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_eps,
                use_scale=False,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name="bn",
            )(x)
        x = torch_dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="head")(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))
