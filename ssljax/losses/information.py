"""CorInfoMax: correlative information maximisation with running covariance state.

The official code keeps the running means and covariances, and takes the log-determinant,
in float64. Here the state's dtype decides the precision: with a float64 state (see
`corinfomax_init(dtype=...)`) the update and the log-determinant run in float64 even when
`jax_enable_x64` is off globally. JAX (>= 0.10) keeps float64 arrays that were made under
`jax.enable_x64(True)` as float64 through `jit`, donation and sharding (host-to-device
copies with x64 off, orbax's restore among them, do canonicalise them to float32); inside
`corinfomax` the computation is traced under that context (which only affects the ops
traced inside it), and the backward pass, which JAX would otherwise transpose after the
context has closed (creating float32 zeros next to float64 values), runs in a `custom_vjp`
whose backward function re-enters the context. The loss is returned in the embeddings'
dtype (float32), so the gradient and the rest of the step stay float32; the new state and
the logged parts (detached) stay float64.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssljax.losses._common import compute_dtype, l2_normalize

__all__ = ["CorInfoMaxState", "corinfomax_init", "corinfomax", "psd_logdet"]


class CorInfoMaxState(NamedTuple):
    """Running statistics of the two branches: covariances `R1, R2` `[D, D]`, means `mu1, mu2`."""

    R1: jax.Array
    R2: jax.Array
    mu1: jax.Array
    mu2: jax.Array


def _state_dtype() -> jnp.dtype:
    # The official state is float64; keep it wherever JAX allows float64.
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def _x64_scope(dtype) -> contextlib.AbstractContextManager:
    """`jax.enable_x64(True)` where `dtype` is float64 and x64 is off, else a no-op."""
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def corinfomax_init(dim: int, *, r_init: float = 1.0, dtype=None) -> CorInfoMaxState:
    """Initial CorInfoMax state: `R = r_init * I`, `mu = 0`.

    Args:
        dim: projector output dimension D.
        r_init: initial covariance scale (the official `R_ini`, 1.0).
        dtype: state dtype; default float64 when `jax_enable_x64` is on (as the official
            code), else float32. An explicit float64 is float64 whether or not x64 is on
            (the arrays are made under `jax.enable_x64`), and makes `corinfomax` compute
            the update and the log-determinant in float64.

    Returns:
        A `CorInfoMaxState`.

    References:
        serdarozsoy/corinfomax-ssl `cifars-tiny/loss.py` (`CovarianceLoss.__init__`).

    Example:
        >>> from ssljax.losses import corinfomax_init
        >>> state = corinfomax_init(3)
        >>> state.R1.shape, state.mu2.shape
        ((3, 3), (3,))
    """
    dtype = _state_dtype() if dtype is None else jnp.dtype(dtype)
    with _x64_scope(dtype):
        eye = r_init * jnp.eye(dim, dtype=dtype)
        zeros = jnp.zeros((dim,), dtype)
    return CorInfoMaxState(R1=eye, R2=eye, mu1=zeros, mu2=zeros)


def _cholesky_logdet(a: jax.Array) -> jax.Array:
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(a))))


def _eig_floor(w: jax.Array) -> jax.Array:
    # Eigenvalues below the matrix's numerical-rank tolerance carry only rounding noise.
    finfo = jnp.finfo(w.dtype)
    return jnp.maximum(w.shape[-1] * finfo.eps * jnp.max(jnp.abs(w)), finfo.tiny)


@jax.custom_jvp
def _clamped_eig_logdet(a: jax.Array) -> jax.Array:
    w = jnp.linalg.eigvalsh(a)
    return jnp.sum(jnp.log(jnp.maximum(w, _eig_floor(w))))


@_clamped_eig_logdet.defjvp
def _clamped_eig_logdet_jvp(primals, tangents):
    # d logdet = tr(A^-1 dA) on the kept eigenspace. Written from the eigenvalues
    # alone: differentiating eigh itself divides by eigenvalue gaps, which are 0 for
    # the repeated (clamped) eigenvalues of a rank-deficient matrix.
    (a,), (da,) = primals, tangents
    w, v = jnp.linalg.eigh(a)
    floor = _eig_floor(w)
    inv = jnp.where(w > floor, 1.0 / jnp.maximum(w, floor), 0.0)
    value = jnp.sum(jnp.log(jnp.maximum(w, floor)))
    return value, jnp.sum(inv * jnp.einsum("ji,jk,ki->i", v, da, v))


def psd_logdet(a: jax.Array) -> jax.Array:
    """`log det` of a symmetric positive (semi-)definite matrix, finite and differentiable.

    Uses `2 * sum(log(diag(cholesky(A))))` of the symmetrised matrix; if the Cholesky
    factorisation fails (a covariance that is singular at this precision), falls back
    to the sum of the log eigenvalues clamped at the numerical-rank tolerance
    `D * eps * max|w|`, whose gradient is the pseudo-inverse on the kept eigenspace.
    Only the chosen branch runs and is differentiated (`lax.cond`; under `vmap` both
    run, and the Cholesky branch then factors the identity), so a failed
    factorisation never leaks NaN into the value or the gradient.

    Args:
        a: `[D, D]` symmetric matrix.

    Returns:
        Scalar log-determinant in `a`'s (at least float32) dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses.information import psd_logdet
        >>> print(f"{psd_logdet(jnp.diag(jnp.array([1.0, 2.0, 4.0]))):.4f}")
        2.0794
        >>> bool(jnp.isfinite(psd_logdet(jnp.ones((3, 3)))))
        True
    """
    a = a.astype(compute_dtype(a))
    a = (a + a.T) / 2
    diag = jnp.diagonal(jnp.linalg.cholesky(jax.lax.stop_gradient(a)))
    ok = jnp.all(jnp.isfinite(diag) & (diag > 0))

    def cholesky_branch(a):
        # Under vmap, cond becomes select and both branches run (and are differentiated):
        # factor the identity where the factorisation failed, so this branch is NaN-free.
        return _cholesky_logdet(jnp.where(ok, a, jnp.eye(a.shape[0], dtype=a.dtype)))

    return jax.lax.cond(ok, cholesky_branch, _clamped_eig_logdet, a)


def corinfomax(
    z1: jax.Array,
    z2: jax.Array,
    state: CorInfoMaxState,
    *,
    sim_weight: float,
    la_R: float,
    la_mu: float,
    eps: float = 1e-8,
    normalize: bool = True,
    return_parts: bool = False,
) -> tuple[jax.Array, CorInfoMaxState] | tuple[jax.Array, CorInfoMaxState, dict[str, jax.Array]]:
    """CorInfoMax: maximise the log-determinant mutual information of the two views.

    In the official order, per branch b with this batch's embeddings z_b:
    `mu_b = la_mu * mu_b_old + (1 - la_mu) * mean(z_b)` (gradient flows through the
    batch mean); `zc = z_b - mu_b` (the new mean);
    `R_b = la_R * R_b_old + (1 - la_R) * zc.T @ zc / N`;
    `cov = -(logdet(R_1 + eps I) + logdet(R_2 + eps I)) / D`;
    `sim = mean((z1 - z2)^2)`; `loss = sim_weight * sim + cov`.
    The old state is a constant; the returned state is the new `(R, mu)` under
    `stop_gradient`, to be passed to the next step.

    Args:
        z1: `[N, D]` projector outputs of the first views (global batch).
        z2: `[N, D]` projector outputs of the second views.
        state: the previous `CorInfoMaxState` (see `corinfomax_init`).
        sim_weight: alpha, the weight of the invariance term (CIFAR-10: 250).
        la_R: forgetting factor of the covariance (CIFAR: 0.01).
        la_mu: forgetting factor of the mean (CIFAR: 0.01).
        eps: diagonal added before the log-determinant (official `R_eps_weight`, 1e-8).
        normalize: L2-normalise z1, z2 first, as the official projector does (a no-op
            for already normalised inputs). False gives the bare `loss.py` formula.
        return_parts: also return `{'sim', 'cov'}` (unweighted sim, the logdet term).

    Returns:
        `(loss, new_state)`, or `(loss, new_state, parts)`. Computed in the state's dtype,
        at least float32: a float64 state (as the official code) gives a float64 update
        and log-determinant whether or not x64 is on globally. With x64 off, the new
        state and the parts (detached) come back in float64 and the loss, which the
        gradient flows from, in the embeddings' dtype (float32, rounded once); on that
        path the hyper-parameters must be Python numbers (they stay exact, weakly typed,
        in float64). The log-determinant uses Cholesky with a safe eigenvalue
        fallback (`psd_logdet`).

    References:
        Ozsoy et al., "Self-Supervised Learning with an Information Maximization
        Criterion", NeurIPS 2022; serdarozsoy/corinfomax-ssl `cifars-tiny/loss.py`.

    Example:
        >>> import jax.numpy as jnp
        >>> from ssljax.losses import corinfomax, corinfomax_init
        >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> z2 = jnp.array([[1.0, 0.2], [0.1, 1.0], [1.0, 0.9]])
        >>> state = corinfomax_init(2)
        >>> loss, state = corinfomax(z1, z2, state, sim_weight=250.0, la_R=0.01, la_mu=0.01)
        >>> print(f"{loss:.3f}")
        7.168
        >>> state.R1.shape
        (2, 2)
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"corinfomax needs two [N, D] arrays of the same shape; got {z1.shape} and {z2.shape}.")
    dim = z1.shape[1]
    if state.R1.shape != (dim, dim):
        raise ValueError(
            f"corinfomax state is for D={state.R1.shape[0]} but z has D={dim}; "
            f"create it with corinfomax_init({dim}).")
    hp = dict(sim_weight=sim_weight, la_R=la_R, la_mu=la_mu, eps=eps, normalize=normalize)

    def detach(new_state):
        return jax.tree.map(lambda new, ref: jax.lax.stop_gradient(new).astype(ref.dtype),
                            new_state, state)

    if jnp.dtype(state.R1.dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        # float64 state, x64 off: the new state and the parts (no gradient), and the loss
        # (custom_vjp), each in a local x64 scope; the loss comes back in float32.
        with jax.enable_x64(True):
            _, sim, cov, new_state = _corinfomax_update(
                jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2), state,
                dtype=jnp.float64, **hp)
            new_state = detach(new_state)
        loss = _corinfomax_x64(z1, z2, state, out_dtype=compute_dtype(z1, z2), **hp)
    else:
        dtype = compute_dtype(z1, z2, state.R1)
        loss, sim, cov, new_state = _corinfomax_update(z1, z2, state, dtype=dtype, **hp)
        new_state = detach(new_state)
    if return_parts:
        return loss, new_state, {"sim": sim, "cov": cov}
    return loss, new_state


def _corinfomax_update(z1, z2, state, *, dtype, sim_weight, la_R, la_mu, eps, normalize):
    """`(loss, sim, cov, new_state)` in `dtype`, the official formulas (new state not detached)."""
    dim = z1.shape[1]
    old = jax.tree.map(lambda x: jax.lax.stop_gradient(x.astype(dtype)), state)
    z1, z2 = z1.astype(dtype), z2.astype(dtype)
    if normalize:
        z1, z2 = l2_normalize(z1), l2_normalize(z2)
    eye = jnp.eye(dim, dtype=dtype)

    def update(z, r_old, mu_old):
        mu = la_mu * mu_old + (1 - la_mu) * jnp.mean(z, axis=0)
        zc = z - mu
        r = la_R * r_old + (1 - la_R) * (zc.T @ zc) / z.shape[0]
        return r, mu

    r1, mu1 = update(z1, old.R1, old.mu1)
    r2, mu2 = update(z2, old.R2, old.mu2)
    cov = -(psd_logdet(r1 + eps * eye) + psd_logdet(r2 + eps * eye)) / dim
    sim = jnp.mean(jnp.square(z1 - z2))
    loss = sim_weight * sim + cov
    return loss, sim, cov, CorInfoMaxState(R1=r1, R2=r2, mu1=mu1, mu2=mu2)


def _corinfomax_x64(z1, z2, state, *, out_dtype, **hp):
    """The loss computed in float64 under a local x64 scope, returned in `out_dtype`.

    A `custom_vjp` so that the backward pass is also traced inside the scope: transposed
    outside it, JAX makes float32 zeros for float64 cotangents (e.g. of a gather) and fails.
    The backward pass recomputes the forward one (a few [D, D] products and two
    factorisations, small next to the network).
    """
    def terms(z1, z2, state):
        return _corinfomax_update(z1, z2, state, dtype=jnp.float64, **hp)[0].astype(out_dtype)

    @jax.custom_vjp
    def run(z1, z2, state):
        with jax.enable_x64(True):
            return terms(z1, z2, state)

    def fwd(z1, z2, state):
        return run(z1, z2, state), (z1, z2, state)

    def bwd(res, cts):
        with jax.enable_x64(True):
            _, vjp = jax.vjp(terms, *res)
            return vjp(cts)

    run.defvjp(fwd, bwd)
    return run(z1, z2, state)
