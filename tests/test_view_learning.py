"""View learning: the adversarial gradients, the semi-supervised term, frozen views, and
Coloured Fashion-MNIST."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssljax import methods
from ssljax.data import coloured
from ssljax.methods import base
from ssljax.methods.view_learning import symmetric_nce
from ssljax.models.view_generator import split_views, to_color_space

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import load_config  # noqa: E402
from test_momentum import TinyBackbone  # noqa: E402


def make(variant, monkeypatch, **views):
    monkeypatch.setattr(base, "build_backbone", lambda cfg: TinyBackbone())
    c = load_config("infomin_views", variant)
    c.projector.hidden_dims = (16,)
    c.projector.out_dim = 8
    c.views.flow_layers = 2
    c.views.flow_hidden = 8
    c.views.update(views)
    return c, methods.get_method("infomin_views")(c, num_classes=10)


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return {"views": rng.normal(size=(n, 1, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 10, size=(n,)).astype(np.int32)}


def grads_of(method, params, state, b):
    # jitted: op by op, the flow generator's many small primitives took ~40 s per test
    return jax.jit(jax.grad(lambda p: method.loss(p, state, b, jax.random.key(0), 0)[0]))(params)


def nce_of(method, params, state, b):
    """L_NCE without the gradient-reversal layer (an independent forward pass)."""
    x_hat, _ = method.generator.apply({"params": params["generator"]}, b["views"][:, 0])
    v1, v2 = split_views(x_hat)
    (_, (z1, z2)), _ = method.encoders.apply(
        {"params": params["encoders"], "batch_stats": state["batch_stats"]}, v1, v2, train=True,
        mutable=["batch_stats"])
    return symmetric_nce(z1, z2, method.config.views.temperature)


@pytest.mark.parametrize("weight", [1.0, 0.5])  # 12 s and 3 s jitted (43 s each op by op)
def test_generator_ascends_and_encoders_descend_the_nce_loss(monkeypatch, weight):
    _, method = make("fashion_mnist", monkeypatch, adversary_weight=weight)
    b = batch()
    params, state = method.init_model(jax.random.key(0), b)
    got = grads_of(method, params, state, b)
    want = jax.jit(jax.grad(lambda p: nce_of(method, p, state, b)))(params)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6),
                 got["encoders"], want["encoders"])
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, -weight * w, rtol=1e-4, atol=1e-6),
                 got["generator"], want["generator"])
    assert max(np.abs(x).max() for x in jax.tree.leaves(want["generator"])) > 1e-4


def test_semi_supervised_classifiers_pull_the_generator_the_other_way(monkeypatch):
    _, method = make("fashion_mnist_semi", monkeypatch)
    b = batch(1)
    params, state = method.init_model(jax.random.key(0), b)
    assert set(params) == {"generator", "encoders", "c1", "c2"}
    got = grads_of(method, params, state, b)

    def ce(p):
        x_hat, _ = method.generator.apply({"params": p["generator"]}, b["views"][:, 0])
        v1, v2 = split_views(x_hat)
        out = 0.0
        for name, v in (("c1", v1), ("c2", v2)):
            logits = method.classifier.apply({"params": p[name]}, v)
            out += optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()
        return out

    g_nce = jax.jit(jax.grad(lambda p: nce_of(method, p, state, b)))(params)
    g_ce = jax.jit(jax.grad(ce))(params)
    jax.tree.map(lambda g, n, c: np.testing.assert_allclose(g, -n + c, rtol=1e-4, atol=1e-6),
                 got["generator"], g_nce["generator"], g_ce["generator"])
    jax.tree.map(lambda g, c: np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-6),
                 got["c1"], g_ce["c1"])  # the classifiers see the labels, the encoders do not
    jax.tree.map(lambda g, n: np.testing.assert_allclose(g, n, rtol=1e-4, atol=1e-6),
                 got["encoders"], g_nce["encoders"])


def test_fixed_views_are_the_colour_space_channels(monkeypatch):
    monkeypatch.setattr(base, "build_backbone", lambda cfg: TinyBackbone())
    c = load_config("view_contrast", "lab")
    method = methods.get_method("view_contrast")(c, num_classes=10)
    rgb = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype(np.float32)
    mean, std = 0.1974, 0.2813
    v1, v2 = method.make_views(jnp.asarray((rgb - mean) / std))
    lab = np.asarray(to_color_space(jnp.asarray(rgb), "lab"))
    np.testing.assert_allclose(v1[..., 0], (lab[..., 0] - 50.0) / 25.0, atol=1e-3)
    np.testing.assert_allclose(v2, lab[..., 1:] / 20.0, atol=1e-3)
    with pytest.raises(ValueError, match="views.space"):
        c.views.space = "hsv"
        methods.get_method("view_contrast")(c, num_classes=10)


def test_coloured_fashion_mnist_tints_without_changing_the_garment():
    gray = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6, 1)).astype(np.uint8)
    colours = coloured.tint_colours("train", 5)
    np.testing.assert_array_equal(colours, coloured.tint_colours("train", 7)[:5])
    assert not np.allclose(colours, coloured.tint_colours("test", 5))
    rgb = coloured.tint(gray, colours)
    assert rgb.shape == (5, 6, 6, 3)
    # The strongest channel of each tint is 1: it carries the grayscale image unchanged.
    strongest = colours.argmax(axis=1)
    for i in range(5):
        np.testing.assert_array_equal(rgb[i, ..., strongest[i]], gray[i, ..., 0])
    np.testing.assert_allclose(rgb[..., :].astype(float),
                               np.round(gray * colours[:, None, None, :]), atol=0)
