"""InfoMin's view generator (our reading of the paper) and fixed colour-space view splits.

No official code exists for InfoMin's view learning; this module follows "our reading" in
METHODS.md. The generator ``g`` is an invertible flow applied to every pixel's colour
vector on its own (a stack of invertible 1 x 1 convolutions and affine couplings whose nets
are 1 x 1 convolutions, i.e. Dense layers on the channel axis). ``X_hat = g(X)`` is split
into view 1 (channel 1) and view 2 (channels 2-3) by :func:`split_views`.

* ``volume_preserving=True`` (VP): 1 x 1 convolutions ``W = P (L + I)(U + I)`` (LU form with
  a unit diagonal, so ``det W = +-1``) and additive couplings ``y_b = x_b + t(x_a)``; the
  log-determinant is exactly 0.
* ``volume_preserving=False`` (NVP): ``W = P (L + I)(U + diag(exp(s)))`` and affine couplings
  ``y_b = x_b exp(tanh(h(x_a))) + t(x_a)``; ``log|det dg/dX|`` is returned per image.

The fixed colour spaces that InfoMin (and CMC) compare against, as scikit-image defines them
(input RGB in [0, 1]): ``rgb`` (R | GB), ``ydbdr``, ``ycbcr``, ``lab`` (luma or lightness |
chroma).

References: Tian et al., "What Makes for Good Views for Contrastive Learning?", NeurIPS
2020 (Sec. 4); Kingma & Dhariwal, "Glow", 2018 (invertible 1 x 1 convolutions, LU form);
Dinh et al., "Density estimation using Real NVP", 2017.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Invertible1x1", "Coupling", "PixelFlow", "split_views", "COLOR_SPACES",
           "to_color_space"]


class Invertible1x1(nn.Module):
    """``y = x W^T`` on the channel axis, ``W = P (L + I)(U + D)`` (Glow's LU form).

    ``P`` is the fixed channel reversal, ``L``/``U`` strictly lower/upper triangular and
    ``D = diag(exp(s))`` (``D = I`` when ``volume_preserving``). Returns ``(y, logdet per
    pixel)``.
    """
    channels: int
    volume_preserving: bool = False

    def setup(self):
        c = self.channels
        init = nn.initializers.normal(0.3)
        self.lower = self.param("lower", init, (c, c))
        self.upper = self.param("upper", init, (c, c))
        if not self.volume_preserving:
            self.log_scale = self.param("log_scale", nn.initializers.normal(0.1), (c,))

    def weight(self) -> tuple[jax.Array, jax.Array]:
        c = self.channels
        eye = jnp.eye(c)
        lower = jnp.tril(self.lower, -1) + eye
        if self.volume_preserving:
            upper, logdet = jnp.triu(self.upper, 1) + eye, jnp.zeros(())
        else:
            upper = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_scale))
            logdet = jnp.sum(self.log_scale)
        perm = eye[::-1]
        return perm @ lower @ upper, logdet

    def __call__(self, x):
        w, logdet = self.weight()
        return x @ w.T, logdet

    def inverse(self, y):
        w, _ = self.weight()
        return y @ jnp.linalg.inv(w).T


class Coupling(nn.Module):
    """Affine (NVP) or additive (VP) coupling with a pixel-wise net (1 x 1 convolutions).

    The first ``split`` channels (the last ones when ``flip``) condition the others.
    """
    channels: int
    split: int = 1
    flip: bool = False
    hidden: int = 32
    volume_preserving: bool = False

    def setup(self):
        n_out = self.channels - self.split if not self.flip else self.split
        self.net = [nn.Dense(self.hidden), nn.Dense(self.hidden),
                    nn.Dense(n_out * (1 if self.volume_preserving else 2),
                             kernel_init=nn.initializers.normal(0.1))]

    def _parts(self, x):
        if self.flip:
            return x[..., self.split:], x[..., :self.split]
        return x[..., :self.split], x[..., self.split:]

    def _join(self, a, b):
        return jnp.concatenate([b, a] if self.flip else [a, b], axis=-1)

    def _shift_scale(self, a):
        h = nn.relu(self.net[0](a))
        h = nn.relu(self.net[1](h))
        h = self.net[2](h)
        if self.volume_preserving:
            return h, jnp.zeros_like(h)
        t, s = jnp.split(h, 2, axis=-1)
        return t, jnp.tanh(s)  # bounded log-scales keep the flow well conditioned

    def __call__(self, x):
        a, b = self._parts(x)
        t, s = self._shift_scale(a)
        return self._join(a, b * jnp.exp(s) + t), jnp.sum(s, axis=-1)

    def inverse(self, y):
        a, b = self._parts(y)
        t, s = self._shift_scale(a)
        return self._join(a, (b - t) * jnp.exp(-s))


class PixelFlow(nn.Module):
    """The view generator: ``num_layers`` x (invertible 1 x 1 conv, coupling), per pixel.

    ``__call__(x) -> (y, logdet)`` with ``logdet`` ``[B]`` (``log|det dy/dx|`` of the whole
    image, 0 for the VP variant); ``inverse(y) -> x``.

    >>> import jax, jax.numpy as jnp
    >>> g = PixelFlow(num_layers=2, hidden=8)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> v = g.init(jax.random.key(1), x)
    >>> y, logdet = g.apply(v, x)
    >>> bool(jnp.abs(g.apply(v, y, method=PixelFlow.inverse) - x).max() < 1e-5)
    True
    """
    channels: int = 3
    num_layers: int = 4
    hidden: int = 32
    volume_preserving: bool = False

    def setup(self):
        self.convs = [Invertible1x1(self.channels, self.volume_preserving)
                      for _ in range(self.num_layers)]
        self.couplings = [Coupling(self.channels, split=1, flip=bool(i % 2), hidden=self.hidden,
                                   volume_preserving=self.volume_preserving)
                          for i in range(self.num_layers)]

    def __call__(self, x):
        pixels = x.shape[1] * x.shape[2]
        logdet = jnp.zeros(x.shape[:1])
        for conv, coupling in zip(self.convs, self.couplings):
            x, ld = conv(x)
            logdet = logdet + pixels * ld
            x, ld = coupling(x)
            logdet = logdet + jnp.sum(ld, axis=(1, 2))
        return x, logdet

    def inverse(self, y):
        for conv, coupling in zip(reversed(self.convs), reversed(self.couplings)):
            y = conv.inverse(coupling.inverse(y))
        return y


def split_views(x: jax.Array, sizes: Sequence[int] = (1,)) -> tuple[jax.Array, jax.Array]:
    """``X_hat -> (view 1, view 2)``: channel 1 and channels 2-3 (InfoMin's split)."""
    return x[..., :sizes[0]], x[..., sizes[0]:]


# ---- fixed colour spaces (scikit-image's definitions) ----------------------------------------
# NumPy constants: a jnp array made at import time would start the XLA backend before
# jax.distributed.initialize can run (tests/test_imports.py).

_YDBDR = np.array([[0.299, 0.587, 0.114], [-0.45, -0.883, 1.333], [-1.333, 1.116, 0.217]])
_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0],
                    [112.0, -93.786, -18.214]])
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])
_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                  [0.019334, 0.119193, 0.950227]])
_D65 = np.array([0.95047, 1.0, 1.08883])


def _lab(rgb):
    linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _XYZ.T / _D65
    f = jnp.where(xyz > 0.008856, jnp.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


COLOR_SPACES = ("rgb", "ydbdr", "ycbcr", "lab")


def to_color_space(rgb: jax.Array, space: str) -> jax.Array:
    """RGB in [0, 1] (``[..., 3]``) to ``space``, scikit-image's conventions
    (``rgb2ydbdr``, ``rgb2ycbcr``: Y in [16, 235], ``rgb2lab``: D65, L in [0, 100]).

    >>> lab_white = to_color_space(jnp.ones(3), "lab")  # L = 100, no chroma
    >>> bool(jnp.allclose(lab_white, jnp.array([100.0, 0.0, 0.0]), atol=0.01))
    True
    """
    if space == "rgb":
        return rgb
    if space == "ydbdr":
        return rgb @ _YDBDR.T
    if space == "ycbcr":
        return rgb @ _YCBCR.T + _YCBCR_OFFSET
    if space == "lab":
        return _lab(rgb)
    raise ValueError(f"Unknown colour space {space!r}; use one of {', '.join(COLOR_SPACES)}.")
