"""Reference parity: value and gradient against float64 NumPy transcriptions of the
official code (tests/losses_refs.py), in float64 (1e-10) and float32 (1e-4).

float64 at 1e-10: the values agree to ~1e-16 and the gradients, against losses_refs's
sixth-order finite difference, to ~3e-11 at worst; a tolerance of 1e-5 (before) passed a
Barlow Twins BatchNorm with eps 0 instead of 1e-5, a change of ~3e-6
(test_float64_tolerance_catches_a_changed_batchnorm_eps)."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssljax.losses as L
from losses_refs import (barlow_twins_lightly_ref, barlow_twins_ref, byol_ref, conloss_ref,
                              corinfomax_ref, infonce_batch_ref, infonce_moco_ref, mae_loss_ref,
                              mae_patchify_nchw, nt_xent_metamask_ref, nt_xent_ref, numeric_grad,
                              vicreg_ref)

# Numerical checks do not need optimised machine code: compiling without LLVM's
# expensive passes is ~3x faster on CPU and the tests are compile-bound.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)

RTOL = {np.float64: 1e-10, np.float32: 1e-4}


def _rng(seed):
    return np.random.default_rng(seed)


def _assert_close(actual, expected, rtol, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    # Relative to the array's scale: entries of a gradient that are ~0 carry no information.
    scale = max(np.max(np.abs(expected)), 1e-12)
    err = np.max(np.abs(actual - expected)) / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def _check(jax_fn, ref_fn, inputs, dtype, argnums=(0,)):
    """Value and gradients of jax_fn(*inputs) vs ref_fn(*inputs) (float64 NumPy)."""
    rtol = RTOL[dtype]
    expected = ref_fn(*inputs)
    with jax.enable_x64(dtype == np.float64):
        args = [jnp.asarray(x, dtype) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
                for x in inputs]
        value, grads = fast_jit(jax.value_and_grad(jax_fn, argnums=argnums))(*args)
        assert value.dtype == (jnp.float64 if dtype == np.float64 else jnp.float32)
    _assert_close(value, expected, rtol, "value")
    for argnum, g in zip(argnums, grads):
        _assert_close(g, numeric_grad(ref_fn, *inputs, argnum=argnum), rtol, f"grad[{argnum}]")


SHAPES = [(2, 3), (8, 5), (13, 16)]
DTYPES = [np.float64, np.float32]
F64, F32 = np.float64, np.float32


def _matrix(fast, *axes):
    """Every combination of the axes; those not listed in `fast` are marked slow.

    Compiling is what costs on CPU, so the default run covers each dtype, path and
    shape at least once, and `-m slow` runs the full product.
    """
    return [pytest.param(*combo, marks=() if combo in fast else (pytest.mark.slow,))
            for combo in itertools.product(*axes)]


@pytest.mark.parametrize("shape,dtype,block_size", _matrix(
    [((13, 16), F64, None), ((8, 5), F32, 3)], SHAPES, DTYPES, [None, 3]))
def test_nt_xent_matches_lightly(shape, dtype, block_size):
    r = _rng(sum(shape))
    z1, z2 = r.normal(size=shape), r.normal(size=shape)
    _check(lambda a, b: L.nt_xent(a, b, temperature=0.3, block_size=block_size),
           lambda a, b: nt_xent_ref(a, b, 0.3), [z1, z2], dtype, argnums=(0, 1))


def test_nt_xent_matches_metamask_form():
    r = _rng(1)
    z1, z2 = r.normal(size=(6, 4)), r.normal(size=(6, 4))
    _check(lambda a, b: L.nt_xent(a, b, temperature=0.07),
           lambda a, b: nt_xent_metamask_ref(a, b, 0.07), [z1, z2], np.float64, argnums=(0, 1))


@pytest.mark.parametrize("shape,dtype,block_size", _matrix(
    [((2, 3), F64, None), ((13, 16), F32, 4)],
    SHAPES, DTYPES, [None, 4]))
def test_infonce_with_queue_matches_pycontrast(shape, dtype, block_size):
    r = _rng(10 + sum(shape))
    q, k, queue = r.normal(size=shape), r.normal(size=shape), r.normal(size=(11, shape[1]))
    _check(lambda a, b, c: L.infonce(a, b, temperature=0.15, queue=c, block_size=block_size),
           lambda a, b, c: infonce_moco_ref(a, b, c, 0.15), [q, k, queue], dtype)


@pytest.mark.parametrize("dtype,block_size", _matrix([(F64, None), (F32, 3)], DTYPES, [None, 3]))
def test_infonce_in_batch(dtype, block_size):
    r = _rng(3)
    q, k = r.normal(size=(7, 5)), r.normal(size=(7, 5))
    _check(lambda a, b: L.infonce(a, b, temperature=0.2, block_size=block_size),
           lambda a, b: infonce_batch_ref(a, b, 0.2), [q, k], dtype)
    # Two-sided form: the key gets the gradient of the same formula.
    _check(lambda a, b: L.infonce(a, b, temperature=0.2, block_size=block_size,
                                  stop_gradient_key=False),
           lambda a, b: infonce_batch_ref(a, b, 0.2), [q, k], dtype, argnums=(0, 1))


def test_infonce_key_and_queue_get_no_gradient():
    r = _rng(4)
    q, k, queue = (jnp.asarray(r.normal(size=s), jnp.float32) for s in [(4, 3), (4, 3), (5, 3)])
    gk, gqueue = fast_jit(jax.grad(lambda b, c: L.infonce(q, b, temperature=0.1, queue=c),
                                   argnums=(0, 1)))(k, queue)
    assert not np.any(gk) and not np.any(gqueue)


# (batch, views, dim, labels or None, kwargs for ssljax, kwargs for the reference,
#  view order the reference needs)
SUPCON_CASES = {
    "supcon": ((6, 2, 5), [0, 1, 0, 2, 1, 7], {}, {}),
    "simclr_form_no_labels": ((5, 2, 4), None, {}, {}),
    "contrast_mode_one": ((6, 2, 5), [0, 1, 0, 2, 1, 7], {"anchors": "one"},
                          {"contrast_mode": "one"}),
    "supcon_s_single_view_labels_once": ((9, 1, 4), [0, 1, 0, 2, 1, 3, 3, 4, 0], {},
                                         {"supcon_s": True}),
    "selfcon_s": ((7, 2, 6), [1, 1, 0, 2, 0, 5, 2], {}, {}),
    "selfcon_s_star": ((7, 3, 6), [1, 1, 0, 2, 0, 5, 2], {"anchors": (0, 1)},
                       {"selfcon_s_FG": True}),
    "selfcon_m_unsupervised": ((4, 4, 3), None, {}, {}),
    "base_temperature": ((5, 2, 3), [2, 2, 2, 1, 1], {"base_temperature": 0.5},
                         {"base_temperature": 0.5}),
}


@pytest.mark.parametrize("case,dtype,block_size", _matrix(
    [(c, F64, None) for c in ("supcon", "contrast_mode_one", "supcon_s_single_view_labels_once",
                              "selfcon_s_star", "selfcon_m_unsupervised")]
    + [("supcon_s_single_view_labels_once", F32, 4)],
    sorted(SUPCON_CASES), DTYPES, [None, 4]))
def test_supcon_matches_selfcon_conloss(case, dtype, block_size):
    shape, labels, kwargs, ref_kwargs = SUPCON_CASES[case]
    feats = _rng(len(case)).normal(size=shape)
    labels = None if labels is None else np.asarray(labels)
    _check(lambda f: L.supcon(f, labels, temperature=0.1, block_size=block_size, **kwargs),
           lambda f: conloss_ref(f, labels, temperature=0.1, **ref_kwargs), [feats], dtype)


@pytest.mark.parametrize("block_size", [pytest.param(None, marks=pytest.mark.slow), 5])
def test_supcon_selfcon_m_star_matches_conloss(block_size):
    """SelfCon-M*: the reference stacks the two views along the batch, [2B, exits, D];
    ssljax takes [B, exits x views, D] and anchors from the sub-network entries."""
    b, exits, d = 5, 2, 4
    labels = np.array([0, 1, 1, 0, 3])
    ref_feats = _rng(7).normal(size=(2 * b, exits, d))  # rows: view 1 batch, then view 2 batch
    ours = np.concatenate([ref_feats[:b], ref_feats[b:]], axis=1)  # [B, (exit, bb) x 2 views, D]
    value, grad = fast_jit(jax.value_and_grad(lambda f: L.supcon(
        f, labels, temperature=0.1, anchors=(0, 2), block_size=block_size)))(jnp.asarray(ours))
    expected = conloss_ref(ref_feats, labels, temperature=0.1, selfcon_m_FG=True)
    _assert_close(value, expected, 1e-4, "value")
    ref_grad = numeric_grad(
        lambda f: conloss_ref(f, labels, temperature=0.1, selfcon_m_FG=True), ref_feats)
    ref_grad = np.concatenate([ref_grad[:b], ref_grad[b:]], axis=1)
    _assert_close(grad, ref_grad, 1e-4, "grad")


def test_supcon_without_any_positive_is_zero_not_nan():
    f = jnp.asarray(_rng(8).normal(size=(4, 1, 3)), jnp.float32)
    value, grad = fast_jit(jax.value_and_grad(
        lambda x: L.supcon(x, jnp.arange(4), temperature=0.1, block_size=2)))(f)
    assert value == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("shape,dtype", _matrix([((8, 5), F64)], SHAPES[1:], DTYPES))
def test_barlow_twins_matches_official(shape, dtype):
    r = _rng(20 + sum(shape))
    z1, z2 = r.normal(size=shape) * 3 + 1, r.normal(size=shape)
    _check(lambda a, b: L.barlow_twins(a, b), lambda a, b: barlow_twins_ref(a, b), [z1, z2], dtype,
           argnums=(0, 1))


def test_float64_tolerance_catches_a_changed_batchnorm_eps():
    # Control: Barlow Twins standardised with eps 0 instead of the official 1e-5 (MetaMask's
    # setting in the official form) must fail the float64 check; the change is ~1e-6
    # relative here, which the former 1e-5 tolerance let through.
    r = _rng(28)
    z1, z2 = r.normal(size=(8, 5)) * 3 + 1, r.normal(size=(8, 5))
    with pytest.raises(AssertionError, match="relative error"):
        _check(lambda a, b: L.barlow_twins(a, b, eps=0.0), barlow_twins_ref, [z1, z2], F64,
               argnums=(0, 1))
    with jax.enable_x64(True):
        changed = float(L.barlow_twins(jnp.asarray(z1), jnp.asarray(z2), eps=0.0))
    expected = barlow_twins_ref(z1, z2)
    assert 1e-10 < abs(changed - expected) / abs(expected) < 1e-5
    # The same inputs with the official eps pass.
    _check(lambda a, b: L.barlow_twins(a, b), barlow_twins_ref, [z1, z2], F64, argnums=(0, 1))


@pytest.mark.parametrize("dtype", _matrix([(F64,)], DTYPES))
def test_barlow_twins_matches_metamask_lightly_form(dtype):
    r = _rng(21)
    z1, z2 = r.normal(size=(9, 6)), r.normal(size=(9, 6))
    _check(lambda a, b: L.barlow_twins(a, b, lambd=5e-3, ddof=1, eps=0.0),
           lambda a, b: barlow_twins_lightly_ref(a, b), [z1, z2], dtype, argnums=(0, 1))


@pytest.mark.parametrize("shape,dtype", _matrix([((13, 16), F64)], SHAPES[1:], DTYPES))
def test_vicreg_matches_official(shape, dtype):
    r = _rng(30 + sum(shape))
    # Half of the dimensions below std 1 so the hinge is active on some and not others.
    scale = np.where(np.arange(shape[1]) % 2 == 0, 0.3, 2.0)
    z1, z2 = r.normal(size=shape) * scale, r.normal(size=shape) * scale
    _check(lambda a, b: L.vicreg(a, b), vicreg_ref, [z1, z2], dtype, argnums=(0, 1))


def test_parts_add_up_to_the_loss():
    r = _rng(31)
    z1, z2 = r.normal(size=(8, 4)), r.normal(size=(8, 4))
    loss, parts = fast_jit(lambda a, b: L.vicreg(
        a, b, sim_coeff=2.0, std_coeff=3.0, cov_coeff=5.0, return_parts=True))(
            jnp.asarray(z1), jnp.asarray(z2))
    _, ref_parts = vicreg_ref(z1, z2, parts=True)
    for k in ref_parts:
        _assert_close(parts[k], ref_parts[k], 1e-4, k)
    weighted = 2 * parts["invariance"] + 3 * parts["variance"] + 5 * parts["covariance"]
    _assert_close(loss, weighted, 1e-6)
    loss, parts = fast_jit(lambda a, b: L.barlow_twins(a, b, lambd=0.1, return_parts=True))(
        jnp.asarray(z1), jnp.asarray(z2))
    _assert_close(loss, parts["on_diag"] + 0.1 * parts["off_diag"], 1e-6)


@pytest.mark.parametrize("shape,dtype", _matrix([((13, 16), F32)], SHAPES, DTYPES))
def test_byol_matches_deepmind(shape, dtype):
    r = _rng(40 + sum(shape))
    p, z = r.normal(size=shape), r.normal(size=shape)
    _check(lambda a, b: L.byol(a, b), byol_ref, [p, z], dtype)
    assert not np.any(fast_jit(jax.grad(L.byol, argnums=1))(jnp.asarray(p), jnp.asarray(z)))


@pytest.mark.parametrize("shape,normalize,dtype", _matrix(
    [((8, 4), True, F64)],
    [(8, 4), (16, 6), (7, 5)], [True, False], DTYPES))
def test_corinfomax_matches_official(shape, normalize, dtype):
    r = _rng(50 + sum(shape))
    n, d = shape
    z1, z2 = r.normal(size=shape), r.normal(size=shape)
    # A non-trivial previous state: a PD covariance and a non-zero mean per branch.
    a1, a2 = r.normal(size=(d, d)), r.normal(size=(d, d))
    state = (a1 @ a1.T / d + 0.1 * np.eye(d), a2 @ a2.T / d + 0.1 * np.eye(d),
             0.1 * r.normal(size=d), 0.1 * r.normal(size=d))
    hp = dict(sim_weight=250.0, la_R=0.1, la_mu=0.2, eps=1e-8)

    def ref(a, b):
        return corinfomax_ref(a, b, state, normalise=normalize, **hp)[0]

    def ours(a, b):
        st = L.CorInfoMaxState(*(jnp.asarray(x, a.dtype) for x in state))
        return L.corinfomax(a, b, st, normalize=normalize, **hp)[0]

    _check(ours, ref, [z1, z2], dtype, argnums=(0, 1))
    with jax.enable_x64(dtype == np.float64):
        st = L.CorInfoMaxState(*(jnp.asarray(x, dtype) for x in state))
        _, new_state, parts = fast_jit(lambda a, b, s: L.corinfomax(
            a, b, s, normalize=normalize, return_parts=True, **hp))(
                jnp.asarray(z1, dtype), jnp.asarray(z2, dtype), st)
    _, ref_state, ref_parts = corinfomax_ref(z1, z2, state, normalise=normalize, **hp)
    for name, new, expected in zip(L.CorInfoMaxState._fields, new_state, ref_state):
        assert new.dtype == dtype
        _assert_close(new, expected, RTOL[dtype], name)
    for k in ref_parts:
        _assert_close(parts[k], ref_parts[k], RTOL[dtype], k)


def test_corinfomax_state_is_float64_under_x64_and_constant():
    with jax.enable_x64(True):
        state = L.corinfomax_init(3)
        assert state.R1.dtype == jnp.float64 and state.mu1.dtype == jnp.float64
        z = jnp.asarray(_rng(51).normal(size=(4, 3)), jnp.float32)
        # The new state carries no gradient: differentiating through it gives zero.
        def new_r1(a):
            return L.corinfomax(a, a[::-1], state, sim_weight=1.0, la_R=0.5, la_mu=0.5)[1].R1

        g = fast_jit(jax.grad(lambda a: jnp.sum(new_r1(a))))(z)
        assert not np.any(g)
    assert L.corinfomax_init(3).R1.dtype == jnp.float32


@pytest.mark.parametrize("norm_pix,layout,dtype", _matrix(
    [(True, "pred_tokens", F64), (False, "pred_image", F32)],
    [True, False], ["pred_tokens", "pred_image"], DTYPES))
def test_masked_reconstruction_matches_mae(norm_pix, layout, dtype):
    r = _rng(60)
    b, hh, ww, c, p = 3, 8, 12, 3, 4
    imgs = r.normal(size=(b, hh, ww, c))
    length = (hh // p) * (ww // p)
    pred_tokens = r.normal(size=(b, length, p * p * c))
    mask = (r.random((b, length)) < 0.5).astype(np.float64)
    mask[0, 0] = 1.0
    ref = lambda pt: mae_loss_ref(imgs.transpose(0, 3, 1, 2), pt, mask, p, norm_pix)  # noqa: E731
    if layout == "pred_tokens":
        ours = lambda pt: L.masked_reconstruction(  # noqa: E731
            pt, jnp.asarray(imgs, pt.dtype), mask, norm_pix=norm_pix, patch_size=p)
        _check(ours, ref, [pred_tokens], dtype)
    else:
        # A ResNet decoder predicts an image; its patches are the same tokens.
        grid_mask = mask.reshape(b, hh // p, ww // p)
        pred_image = np.asarray(L.unpatchify(jnp.asarray(pred_tokens), p, grid=(hh // p, ww // p)))
        ours = lambda pi: L.masked_reconstruction(  # noqa: E731
            pi, jnp.asarray(imgs, pi.dtype), grid_mask, norm_pix=norm_pix, patch_size=p)
        ref_img = lambda pi: ref(mae_patchify_nchw(pi.transpose(0, 3, 1, 2), p))  # noqa: E731
        _check(ours, ref_img, [pred_image], dtype)
