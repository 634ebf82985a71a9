"""The ViT's attention implementations and block rematerialisation (issue 27).

'reference' is the attention the ViT had before issue 27 (Flax's ``dot_product_attention``);
'xla' / 'auto' (``jax.nn.dot_product_attention``) must give the same outputs and gradients:
float32 to 1e-5 of the largest entry, bfloat16 to 4e-2 (bf16 keeps 8 significant bits; the
new path's logits and softmax are float32, the reference's bfloat16, so they round apart). Measured on the cases
below: float32 at most 6e-7, bfloat16 at most 1.8e-2 (gradients, with dropped tokens).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.models.vit import attention_fn
from ssljax.models import ViT, keep_indices

F32_TOL = 1e-5  # relative to the largest |value|
BF16_TOL = 4e-2


def numpy_attention(q, k, v):
    """Softmax attention ``[B, T, N, H]`` in float64 NumPy: the independent reference."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", w, v)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def tree_rel_err(a, b) -> float:
    """The largest leaf error, each relative to its leaf's largest |value| but at least 1% of
    the tree's (some gradients are zero in exact arithmetic: the keys' bias, which softmax
    ignores, has gradients of rounding noise in both paths)."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    floor = 1e-2 * max(float(np.abs(np.asarray(y, np.float64)).max()) for y in b)
    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
               / max(float(np.abs(np.asarray(y, np.float64)).max()), floor)
               for x, y in zip(a, b))


@pytest.mark.parametrize("impl", ["reference", "xla", "auto"])
def test_attention_fn_matches_numpy(impl):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    shape = (2, 5, 3, 8)  # B, T, N, H
    q, k, v = (2 * jax.random.normal(key, shape) for key in (kq, kk, kv))
    out = attention_fn(impl)(q, k, v)
    assert out.shape == shape
    assert rel_err(out, numpy_attention(q, k, v)) < F32_TOL


def test_unknown_attention_is_one_clear_error():
    with pytest.raises(ValueError, match="Unknown attention 'flash'"):
        attention_fn("flash")


def _vit_outputs(attention, dtype, x, keep=None, remat=False, depth=2):
    model = ViT(dim=32, depth=depth, heads=4, patch_size=4, dtype=dtype, attention=attention,
                remat=remat)
    params = model.init(jax.random.key(1), x, train=False)

    def loss(p):
        pooled, tokens = model.apply(p, x, train=False, keep=keep, return_tokens=True)
        return jnp.sum(pooled ** 2) + jnp.sum(jnp.sin(tokens)), (pooled, tokens)

    (value, (pooled, tokens)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return params, value, pooled, tokens, grads


def _keep(b=3, grid=4, masked=8, seed=2):
    mask = jax.random.uniform(jax.random.key(seed), (b, grid * grid)).argsort(-1).argsort(-1) < masked
    return keep_indices(mask, masked)


@pytest.mark.parametrize("attention", ["xla", "auto"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)])
def test_vit_values_and_gradients_equal_the_reference(attention, masked, dtype, tol):
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    keep = _keep() if masked else None
    ref = _vit_outputs("reference", dtype, x, keep)
    new = _vit_outputs(attention, dtype, x, keep)
    assert jax.tree.structure(ref[0]) == jax.tree.structure(new[0])  # same parameters
    for r, n in zip(ref[1:4], new[1:4]):
        assert rel_err(n, r) < tol
    assert tree_rel_err(new[4], ref[4]) < tol
    if masked:
        assert new[3].shape == (3, 8, 32)


def test_dropped_tokens_do_not_reach_the_encoder():
    """With ``keep``, changing the pixels of dropped patches changes nothing (MRCL's token
    dropping still happens before the first block on the new attention path)."""
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    keep = _keep()
    visible = np.zeros((3, 16), bool)
    np.put_along_axis(visible, np.asarray(keep), True, axis=1)
    pixel_visible = np.repeat(np.repeat(visible.reshape(3, 4, 4), 4, 1), 4, 2)[..., None]
    x2 = jnp.where(pixel_visible, x, 10.0 * jax.random.normal(jax.random.key(5), x.shape))
    model = ViT(dim=32, depth=2, heads=4, patch_size=4, attention="auto")
    params = model.init(jax.random.key(1), x, train=False)
    a = model.apply(params, x, train=False, keep=keep)
    b = model.apply(params, x2, train=False, keep=keep)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert rel_err(model.apply(params, x2, train=False), a) > 1e-3  # without keep it changes


def test_auto_picks_cudnn_on_a_gpu_in_half_precision(monkeypatch):
    """On a GPU, 'auto' hands bfloat16 attention to cuDNN's fused kernel; float32, CPU and
    TPU, or an unsuitable head dim go to XLA. (The cuDNN kernel itself runs on a GPU only:
    experiments/bench_gpu_step.sh.)"""
    seen = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, *, implementation=None):
        seen.append(implementation)
        return real(q, k, v, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    q = jnp.ones((1, 3, 2, 8), jnp.bfloat16)
    for backend, dtype, head_dim, want in [("gpu", jnp.bfloat16, 8, "cudnn"),
                                           ("gpu", jnp.float16, 64, "cudnn"),
                                           ("gpu", jnp.float32, 8, "xla"),
                                           ("gpu", jnp.bfloat16, 12, "xla"),
                                           ("gpu", jnp.bfloat16, 256, "xla"),
                                           ("cpu", jnp.bfloat16, 8, "xla"),
                                           ("tpu", jnp.bfloat16, 8, "xla")]:
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        seen.clear()
        q = jnp.ones((1, 3, 2, head_dim), dtype)
        out = attention_fn("auto")(q, q, q)
        assert seen == [want], (backend, dtype, head_dim)
        assert out.dtype == dtype
    seen.clear()
    attention_fn("cudnn")(q, q, q)
    assert seen == ["cudnn"]


@pytest.mark.parametrize("masked", [False, True])
def test_remat_gives_the_same_loss_and_gradients(masked):
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    keep = _keep() if masked else None
    plain = _vit_outputs("auto", jnp.float32, x, keep, remat=False)
    remat = _vit_outputs("auto", jnp.float32, x, keep, remat=True)
    assert jax.tree.structure(plain[0]) == jax.tree.structure(remat[0])  # checkpoints unchanged
    assert rel_err(remat[1], plain[1]) < F32_TOL
    assert tree_rel_err(remat[4], plain[4]) < F32_TOL


def _stored_activation_bytes(remat: bool) -> int:
    """Bytes the forward pass keeps for the backward pass (the residuals of ``jax.vjp``)."""
    x = jnp.zeros((64, 32, 32, 3))
    model = ViT(dim=32, depth=4, heads=2, patch_size=4, remat=remat)
    params = model.init(jax.random.key(0), x[:1], train=False)
    _, vjp = jax.vjp(lambda p: model.apply(p, x, train=False), params)
    return sum(leaf.nbytes for leaf in jax.tree.leaves(vjp))


def test_remat_stores_only_the_blocks_inputs():
    """Batch 64 of 65 tokens, 4 blocks, float32: without remat the backward pass keeps every
    block's activations (29.9 MiB), with it the blocks' inputs (3.5 MiB).

    The residuals, not the CPU's ``memory_analysis()``: XLA's CPU compiler gives the same
    temporaries with and without rematerialisation (also for a plain ``jax.checkpoint`` of
    a matrix-product stack, measured with jax 0.10.2); on a GPU the benchmark's temp_gib
    shows the drop.
    """
    plain, remat = _stored_activation_bytes(False), _stored_activation_bytes(True)
    assert remat < 0.2 * plain, (plain, remat)


def _residuals(attention: str, dtype=jnp.bfloat16):
    """(dtype, shape) of what the forward pass of a 2-block ViT keeps for the backward pass,
    the parameters excluded; and the shapes (B, T, D), (B, N, T, T)."""
    x = jnp.zeros((4, 16, 16, 3))
    model = ViT(dim=32, depth=2, heads=4, patch_size=4, dtype=dtype, attention=attention)
    params = model.init(jax.random.key(0), x[:1], train=False)
    _, vjp = jax.vjp(lambda p: model.apply(p, x, train=False), params)
    param_shapes = {leaf.shape for leaf in jax.tree.leaves(params)}
    kept = [(leaf.dtype, leaf.shape) for leaf in jax.tree.leaves(vjp)
            if leaf.shape not in param_shapes]
    return kept, (4, 17, 32), (4, 4, 17, 17)


@pytest.mark.parametrize("attention", [pytest.param("reference", marks=pytest.mark.slow), "auto"])
def test_bfloat16_vit_keeps_no_float32_activations(attention):
    """The LayerNorms compute in float32 but are recomputed in the backward pass: no float32
    copy of a [B, T, D] activation is stored (before issue 27: 3 per norm)."""
    kept, btd, _ = _residuals(attention)
    big = [(d, s) for d, s in kept if d == jnp.float32 and np.prod(s) >= np.prod(btd)]
    assert not big, big
    assert any(d == jnp.bfloat16 and s == btd for d, s in kept)  # the blocks' inputs are


def test_xla_attention_stores_no_score_matrix():
    """The XLA path keeps q, k, v and recomputes the [B, N, T, T] scores in the backward pass;
    the reference stores them (so the check can fail)."""
    def scores(attention):
        kept, _, bntt = _residuals(attention)
        return [s for _, s in kept if np.prod(s) >= np.prod(bntt) and s[-2:] == bntt[-2:]]
    assert not scores("auto")
    assert scores("reference")


def test_config_checks_the_new_keys():
    from helpers import load_config
    from ssljax.config import ConfigError, validate
    from ssljax.methods import base
    c = load_config("mrcl", "fashion_mnist,vit")
    assert (c.model.attention, c.model.remat) == ("auto", False)
    backbone = base.build_backbone(c.model)
    assert (backbone.attention, backbone.remat) == ("auto", False)
    c.model.attention, c.model.remat = "reference", True
    backbone = base.build_backbone(c.model)
    assert (backbone.attention, backbone.remat) == ("reference", True)
    c.model.attention = "flash"
    with pytest.raises(ConfigError, match="model.attention='flash' is not one of"):
        validate(c)
    c = load_config("simclr")
    c.model.remat = True
    with pytest.raises(ConfigError, match="model.remat=True applies to ViT backbones only"):
        validate(c)


def test_auto_falls_back_to_xla_when_cudnn_says_no(monkeypatch, caplog):
    seen = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, *, implementation=None):
        seen.append(implementation)
        if implementation == "cudnn":
            raise NotImplementedError("cuDNN 8 is too old")
        return real(q, k, v, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (2, 5, 3, 8), jnp.bfloat16) for key in (kq, kk, kv))
    out = attention_fn("auto")(q, k, v)
    assert seen == ["cudnn", "xla"] and "cuDNN attention is unavailable" in caplog.text
    assert rel_err(out, numpy_attention(q, k, v)) < BF16_TOL


def test_the_mlp_keeps_one_hidden_array_per_block():
    """GELU and the second MLP layer are recomputed in the backward pass: per block, only
    the first layer's [B, T, 4D] output is kept (before: four such arrays)."""
    kept, (b, t, d), _ = _residuals("auto")
    hidden = [s for _, s in kept if s == (b, t, 4 * d)]
    assert len(hidden) == 2, hidden  # two blocks
