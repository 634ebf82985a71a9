"""BYOL's network details against the reference (deepmind-research ``byol/``).

* ``byol/utils/networks.py`` builds the backbone from Haiku's ``hk.nets.ResNet.BlockV1``,
  which gives the last BatchNorm of each *bottleneck* block ``scale_init=jnp.zeros``
  (``batchnorm_2``) and every other BatchNorm (basic blocks, shortcuts, stem) scale one;
* its ``MLP`` is ``Linear(with_bias=True) -> BatchNorm(scale, offset) -> ReLU ->
  Linear(with_bias=False)``, for the projector and the predictor;
* ``byol_experiment.py``'s ``_make_initial_state`` initialises the target with its own key.

The expected values are computed here with independent code: a freshly built ResNet and
MLP (not the method's modules) for the target's init, Flax's captured intermediates for the
residual blocks.
"""

import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from ssljax import methods, models, sharding, train
from ssljax.config import ConfigError
from ssljax.methods import base
from ssljax.methods.byol import target_init_key
from ssljax.models.resnet import RESNET_CONFIGS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import load_config, read_metrics, tiny_config  # noqa: E402
from test_momentum import TinyBackbone, tiny_backbone  # noqa: E402

HEADS = {"projector.hidden_dims": (32,), "projector.out_dim": 16,
         "predictor.hidden_dims": (24,), "predictor.out_dim": 16}


def small(variant, **overrides):
    """A variant's config, narrowed (width 4, 32-wide heads) but with its architecture."""
    c = load_config("byol", variant)
    c.model.width = 4
    c.model.dtype = "float32"
    for key, value in {**HEADS, **overrides}.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def build(cfg, seed=0, image=32, channels=3):
    method = methods.get_method("byol")(cfg, num_classes=10)
    views = np.random.default_rng(seed).normal(size=(4, 2, image, image, channels))
    batch = {"views": jnp.asarray(views, jnp.float32)}
    params, state = jax.jit(method.init_model)(train.init_key(seed), batch)
    return method, batch, params, state


@functools.lru_cache(maxsize=None)
def imagenet_model():
    return build(small("imagenet"))


def scales(tree):
    return {"/".join(k[:-1]): np.asarray(v) for k, v in flatten_dict(tree).items()
            if k[-1] == "scale"}


# ---- Zero-initialised residual BatchNorm ----------------------------------------------------

def test_configs_zero_init_the_bottleneck_blocks_only():
    for variant in ("fashion_mnist", "cifar10", "cifar100", "imagenet"):
        c = load_config("byol", variant)
        _, block = RESNET_CONFIGS[c.model.name]
        # Haiku's BlockV1: scale_init=zeros on batchnorm_2, which only bottleneck blocks have.
        assert c.model.zero_init_residual == (block == "bottleneck"), variant


def test_last_bn_scale_of_each_bottleneck_block_is_zero_and_all_others_one():
    _, _, params, state = imagenet_model()
    for tree in (params, state["target"]["params"]):
        found = scales(tree)
        zero = {k for k in found if k.startswith("backbone/stage") and k.endswith("/bn3")}
        # ResNet-50: 3 + 4 + 6 + 3 bottleneck blocks, one zero-initialised BN each.
        assert len(zero) == 16
        for name, s in found.items():
            np.testing.assert_array_equal(s, 0.0 if name in zero else 1.0, err_msg=name)
        # The others: stem, bn1/bn2 of each block, the 4 shortcut BNs, and the MLPs' BNs.
        assert len(found) - len(zero) == 1 + 2 * 16 + 4 + (2 if tree is params else 1)


def test_basic_block_variants_start_every_bn_scale_at_one():
    _, _, params, state = build(small("cifar10"))
    for tree in (params, state["target"]["params"]):
        found = scales(tree)
        assert any(k.endswith("block1/bn2") for k in found)
        for name, s in found.items():
            np.testing.assert_array_equal(s, 1.0, err_msg=name)


def block_outputs(method, params, state, x):
    """Captured outputs of every residual block and shortcut BatchNorm, in train mode."""
    _, out = method.model.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                                train=True, capture_intermediates=True,
                                mutable=["batch_stats", "intermediates"])
    return out["intermediates"]["backbone"]


@pytest.mark.slow  # about 30 s idle: builds a ResNet-50
def test_each_bottleneck_block_is_the_identity_on_its_shortcut_at_init():
    method, batch, params, state = imagenet_model()
    x = batch["views"][:, 0]
    inter = block_outputs(method, params, state, x)
    checked = 0
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        blocks = inter[stage]
        n = len([k for k in blocks if k.startswith("block")])
        prev = None
        for i in range(n):
            block = blocks[f"block{i}"]
            out = np.asarray(block["__call__"][0])
            if i == 0:  # projection shortcut: the block is relu(BN(conv(x)))
                shortcut = np.maximum(np.asarray(block["downsample_bn"]["__call__"][0]), 0.0)
            else:  # identity shortcut: the block returns its input (a ReLU output)
                shortcut = prev
            assert np.abs(shortcut).max() > 0
            np.testing.assert_array_equal(out, shortcut, err_msg=f"{stage}/block{i}")
            prev = out
            checked += 1
    assert checked == 16
    # Non-vacuous: with the last scale at one, a block adds its residual branch.
    ones = build(small("imagenet", **{"model.zero_init_residual": False}))
    inter = block_outputs(ones[0], ones[2], ones[3], x)
    assert not np.allclose(inter["stage1"]["block1"]["__call__"][0],
                           inter["stage1"]["block0"]["__call__"][0], atol=1e-3)


# ---- MLP biases ----------------------------------------------------------------------------

def test_last_linear_of_projector_and_predictor_has_no_bias():
    _, _, params, state = imagenet_model()
    heads = {"online projector": params["head"], "predictor": params["predictor"],
             "target projector": state["target"]["params"]["head"]}
    for name, head in heads.items():
        # networks.MLP: Linear (bias) -> BatchNorm (scale and offset) -> ReLU -> Linear (no bias).
        assert set(head) == {"dense0", "bn0", "dense1"}, name
        assert set(head["dense0"]) == {"kernel", "bias"}, name
        assert set(head["bn0"]) == {"scale", "bias"}, name
        assert set(head["dense1"]) == {"kernel"}, name
        assert "bn1" not in head, name
    assert params["head"]["dense0"]["kernel"].shape == (4 * 8 * 4, 32)  # ResNet-50, width 4
    assert params["head"]["dense1"]["kernel"].shape == (32, 16)
    assert params["predictor"]["dense0"]["kernel"].shape == (16, 24)
    assert params["predictor"]["dense1"]["kernel"].shape == (24, 16)
    for variant in ("fashion_mnist", "cifar10", "cifar100", "imagenet"):
        c = load_config("byol", variant)
        for head in (c.projector, c.predictor):
            assert (head.use_bn, head.last_bn, head.use_bias_hidden, head.use_bias_last) == (
                True, False, True, False), variant


# ---- Target initialisation -----------------------------------------------------------------

class FreshTarget(nn.Module):
    """The target's architecture, built here from the config (not the method's modules)."""
    cfg: object

    @nn.compact
    def __call__(self, x, *, train: bool):
        m, p = self.cfg.model, self.cfg.projector
        stage_sizes, block = RESNET_CONFIGS[m.name]
        f = models.ResNet(stage_sizes=stage_sizes, block=block, width=m.width, stem=m.stem,
                          stem_stride=m.stem_stride, zero_init_residual=m.zero_init_residual,
                          name="backbone")(x, train=train)
        return models.MLP(tuple(p.hidden_dims), p.out_dim, use_bias_last=False,
                          name="head")(f, train=train)


def leaves_equal(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


def leaves_close(a, b):
    """Equal up to the rounding of a differently compiled init (eager vs jit: ~1 ulp)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return jax.tree.all(jax.tree.map(
        lambda x, y: bool(np.allclose(x, y, rtol=1e-6, atol=1e-7)), a, b))


@pytest.fixture(scope="module")
def inits():
    out = {}
    for mode in ("independent", "copy"):
        cfg = tiny_config("byol", **{"byol.target_init": mode, **HEADS})
        out[mode] = cfg, build(cfg, image=16, channels=1)
    return out


def test_independent_target_is_a_fresh_init_with_its_own_key(inits):
    cfg, (_, batch, params, state) = inits["independent"]
    assert load_config("byol").byol.target_init == "independent"  # the default
    target = state["target"]
    online = {k: params[k] for k in ("backbone", "head")}
    # Not the online network: every weight matrix differs (BN scales/offsets start equal).
    for path, t in flatten_dict(target["params"]).items():
        if path[-1] == "kernel":
            o = flatten_dict(online)[path]
            assert not np.allclose(t, o), path
    # A fresh init of the same architecture with the documented key: fold_in(rng, 1).
    rng = train.init_key(0)
    fresh = FreshTarget(cfg).init(jax.random.fold_in(rng, 1), batch["views"][:, 0], train=False)
    assert leaves_close(fresh["params"], target["params"])
    assert leaves_close(fresh["batch_stats"], target["batch_stats"])
    # ... and not with the online network's key.
    same_key = FreshTarget(cfg).init(rng, batch["views"][:, 0], train=False)["params"]
    assert leaves_close(same_key["backbone"], online["backbone"])
    assert not leaves_close(same_key, target["params"])
    np.testing.assert_array_equal(jax.random.key_data(target_init_key(rng)),
                                  jax.random.key_data(jax.random.fold_in(rng, 1)))


def test_copy_target_equals_the_online_network(inits):
    _, (_, _, params, state) = inits["copy"]
    target = state["target"]
    assert leaves_equal(target["params"], {k: params[k] for k in ("backbone", "head")})
    assert leaves_equal(target["batch_stats"],
                        {k: state["batch_stats"][k] for k in ("backbone", "head")})
    # The online network is initialised with the same key in both modes.
    _, (_, _, independent, _) = inits["independent"]
    assert leaves_equal(independent, params)


def test_bad_target_init_is_a_config_error():
    cfg = tiny_config("byol", **{"byol.target_init": "ema"})
    with pytest.raises(ConfigError, match=r"^byol.target_init='ema' is not valid; use "
                                          r"'independent' \(.*\) or 'copy' \(.*\)\.$"):
        methods.get_method("byol")(cfg, num_classes=10)


# ---- Through the trainer: seed, sharding, checkpoints ---------------------------------------

def tiny_method(mode="independent"):
    cfg = tiny_config("byol", **{"byol.target_init": mode, "sharding.fsdp_min_size": 0, **HEADS})
    method = methods.get_method("byol")(cfg, num_classes=10)
    method.model = method.model.clone(backbone=TinyBackbone())
    method.target = method.target.clone(backbone=TinyBackbone())
    return cfg, method


def test_target_init_is_deterministic_from_the_seed_and_sharded_like_the_online_network():
    cfg, method = tiny_method()
    mesh = sharding.make_mesh(8, fsdp=4)
    steps = train.build_step(cfg, method, mesh, total_steps=6, steps_per_epoch=16)
    batch = {"views": np.random.default_rng(0).normal(size=(16, 2, 16, 16, 1)).astype(np.float32),
             "label": np.zeros((16,), np.int32)}
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    a, b, c = (steps.init(train.init_key(seed), batch) for seed in (0, 0, 1))
    assert leaves_equal(jax.device_get(a.state["target"]), jax.device_get(b.state["target"]))
    assert not leaves_equal(jax.device_get(a.state["target"]["params"]),
                            jax.device_get(c.state["target"]["params"]))
    # The trainer's key: Method.init gives init_model the first half of split(init_key(seed)).
    model_rng = jax.random.split(train.init_key(0))[0]
    fresh = method.target.init(jax.random.fold_in(model_rng, 1), np.asarray(batch["views"][:, 0]),
                               train=False)
    assert leaves_close(fresh["params"], jax.device_get(a.state["target"]["params"]))
    # Same shardings as the online backbone and projector, split over `fsdp`.
    target, online = a.state["target"]["params"], {k: a.params[k] for k in ("backbone", "head")}
    kernel = target["backbone"]["conv1"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape) != kernel.shape
    jax.tree.map(lambda t, o: assert_same_sharding(t, o), target, online)


def assert_same_sharding(t, o):
    assert t.sharding.is_equivalent_to(o.sharding, t.ndim), (t.sharding, o.sharding)


def test_independent_target_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "build_backbone", tiny_backbone)
    cfg = lambda **kw: tiny_config("byol", **HEADS, **kw)  # noqa: E731
    mesh = sharding.make_mesh(1)
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(cfg(), straight_dir, mesh=mesh)
    assert train.train_and_evaluate(cfg(stop_after_step=3), resumed_dir, mesh=mesh) == {}
    train.train_and_evaluate(cfg(), resumed_dir, mesh=mesh)
    straight, resumed = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert sorted(resumed) == sorted(straight) == [1, 2, 3, 4, 5, 6]
    # Steps 4-6 use the restored target (EMA of 3 steps from its own init): a re-initialised
    # target would give other losses.
    for key in ("loss", "loss_12", "loss_21"):
        np.testing.assert_allclose([resumed[s][key] for s in (4, 5, 6)],
                                   [straight[s][key] for s in (4, 5, 6)], rtol=1e-6, err_msg=key)
