"""Redundancy-reduction objectives: Barlow Twins and VICReg.

Both standardise or centre over the batch dimension. Written on the global batch, so
under a sharded `jax.jit` the batch statistics and the D x D cross-/auto-covariances
are all-reduced over devices by the compiler (what SyncBatchNorm and the official
`FullGatherLayer` do by hand).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssljax.losses._common import compute_dtype

__all__ = ["barlow_twins", "vicreg"]


def _check_pair(z1: jax.Array, z2: jax.Array, name: str, min_batch: int) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name} needs two [N, D] arrays of the same shape; got {z1.shape} and {z2.shape}.")
    if z1.shape[0] < min_batch:
        raise ValueError(f"{name} needs a batch of at least {min_batch}; got {z1.shape[0]}.")


def _off_diagonal(m: jax.Array) -> jax.Array:
    return jnp.where(jnp.eye(m.shape[0], dtype=bool), 0.0, m)


def barlow_twins(
    z1: jax.Array,
    z2: jax.Array,
    *,
    lambd: float = 0.0051,
    ddof: int = 0,
    eps: float = 1e-5,
    return_parts: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Barlow Twins: push the cross-correlation of the two views towards the identity.

    Each projection is standardised per dimension over the batch,
    `zn = (z - mean) / sqrt(var_ddof + eps)`; then `c = z1n.T @ z2n / N` and
    `loss = sum((1 - diag c)^2) + lambd * sum(offdiag(c)^2)`.

    The defaults are the official form (BatchNorm1d without affine: biased variance,
    eps 1e-5, lambd 0.0051). MetaMask's form (lightly `BarlowTwinsLoss`: unbiased std,
    no eps) is `barlow_twins(z1, z2, lambd=5e-3, ddof=1, eps=0.0)`.

    Args:
        z1: `[N, D]` projections of the first views.
        z2: `[N, D]` projections of the second views.
        lambd: weight of the off-diagonal (redundancy) term.
        ddof: 0 for the biased variance (official), 1 for the unbiased one (MetaMask).
        eps: added to the variance before the square root. With `eps=0`, a dimension
            of zero variance is standardised to 0 (the official code would give NaN).
        return_parts: also return `{'on_diag', 'off_diag'}` (unweighted), with
            `loss = on_diag + lambd * off_diag`.

    Returns:
        Scalar float32 loss (float64 for float64 inputs), or `(loss, parts)`.

    References:
        Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy
        Reduction", ICML 2021; facebookresearch/barlowtwins `main.py`;
        MetaMask (Li et al., NeurIPS 2022) via lightly `BarlowTwinsLoss`.

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import barlow_twins
        >>> z = jnp.array([[1.0, 2.0], [-1.0, 0.0], [0.0, -2.0]])
        >>> print(f"{barlow_twins(z, z):.4f}")
        0.0025
        >>> loss, parts = barlow_twins(z, z, lambd=5e-3, ddof=1, eps=0.0, return_parts=True)
        >>> print(f"{parts['on_diag']:.4f} {parts['off_diag']:.4f}")
        0.2222 0.2222
    """
    _check_pair(z1, z2, "barlow_twins", min_batch=1 + ddof)
    dtype = compute_dtype(z1, z2)
    n = z1.shape[0]

    def standardise(z):
        z = z - jnp.mean(z.astype(dtype), axis=0)
        var = jnp.sum(jnp.square(z), axis=0) / (n - ddof) + eps
        # With eps = 0 a constant (dead) dimension would give 0 / 0; it is centred to
        # exactly 0, so keep it 0, with a zero (not NaN) gradient.
        dead = var <= 0
        return jnp.where(dead, 0.0, z / jnp.sqrt(jnp.where(dead, 1.0, var)))

    c = standardise(z1).T @ standardise(z2) / n
    on_diag = jnp.sum(jnp.square(jnp.diagonal(c) - 1.0))
    off_diag = jnp.sum(jnp.square(_off_diagonal(c)))
    loss = on_diag + lambd * off_diag
    if return_parts:
        return loss, {"on_diag": on_diag, "off_diag": off_diag}
    return loss


def vicreg(
    z1: jax.Array,
    z2: jax.Array,
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    return_parts: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """VICReg: variance-invariance-covariance regularisation.

    `loss = sim_coeff * mse(z1, z2)
                  + std_coeff * (mean(relu(1 - s1)) + mean(relu(1 - s2))) / 2
                  + cov_coeff * (sum offdiag(C1)^2 + sum offdiag(C2)^2) / D`,
    with `s = sqrt(var + 1e-4)` per dimension and C the covariance of the centred batch,
    both with N - 1 (the official code).

    Args:
        z1: `[N, D]` expander outputs of the first views (N >= 2).
        z2: `[N, D]` expander outputs of the second views.
        sim_coeff: weight of the invariance (MSE) term.
        std_coeff: weight of the variance (hinge on the std) term.
        cov_coeff: weight of the covariance term.
        return_parts: also return the unweighted terms
            `{'invariance', 'variance', 'covariance'}`.

    Returns:
        Scalar float32 loss (float64 for float64 inputs), or `(loss, parts)`.

    References:
        Bardes et al., "VICReg: Variance-Invariance-Covariance Regularization for
        Self-Supervised Learning", ICLR 2022; facebookresearch/vicreg `main_vicreg.py`.

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import vicreg
        >>> z1 = jnp.array([[1.0, 2.0], [-1.0, 0.0], [0.0, -2.0]])
        >>> print(f"{vicreg(z1, z1 + 0.1):.4f}")
        2.2500
        >>> _, parts = vicreg(z1, z1 + 0.1, return_parts=True)
        >>> print({k: round(float(v), 4) for k, v in parts.items()})
        {'invariance': 0.01, 'variance': 0.0, 'covariance': 2.0}
    """
    _check_pair(z1, z2, "vicreg", min_batch=2)
    dtype = compute_dtype(z1, z2)
    z1, z2 = z1.astype(dtype), z2.astype(dtype)
    n, dim = z1.shape
    invariance = jnp.mean(jnp.square(z1 - z2))

    def std_and_cov(z):
        z = z - jnp.mean(z, axis=0)
        std = jnp.sqrt(jnp.sum(jnp.square(z), axis=0) / (n - 1) + 1e-4)
        cov = z.T @ z / (n - 1)
        return jnp.mean(jax.nn.relu(1.0 - std)), jnp.sum(jnp.square(_off_diagonal(cov))) / dim

    std1, cov1 = std_and_cov(z1)
    std2, cov2 = std_and_cov(z2)
    variance = (std1 + std2) / 2
    covariance = cov1 + cov2
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    if return_parts:
        return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}
    return loss
