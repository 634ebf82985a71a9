"""Tests for ssljax.models: shapes, parameter counts (vs torchvision), NumPy references,
global BatchNorm under sharding, heads and mixed precision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssljax.models import MLP, LinearClassifier, ResNet, ResNetStage, feature_dim, resnet
from ssljax.models.resnet import BasicBlock, Bottleneck, ResNetStem


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# Threefry keys compile slowly on CPU (seconds per parameter shape); tests that need a real
# init use the RBG generator, and most tests fill parameters from NumPy instead.
def rbg_key(seed: int = 0):
    return jax.random.key(seed, impl="unsafe_rbg")


def _init_shapes(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def jinit(module, x, **kwargs):
    """The module's real initial variables (jitted ``lazy_init``: no forward pass compiled)."""
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.jit(lambda: module.lazy_init(rbg_key(1), spec, train=False, **kwargs))()


def random_variables(module, x, seed: int = 0, **kwargs):
    """Variables with init's structure, filled from NumPy (no RNG compilation).

    Kernels ~ N(0, 1/fan_in); BN scale ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.2^2); running
    mean ~ N(0, 0.1^2), running var ~ U(0.5, 1.5).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros(x.shape), train=False, **kwargs)
    )

    def fill(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, fan_in**-0.5, leaf.shape).astype(np.float32)
        if "scale" in name:
            return (1 + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)
        if "mean" in name:
            return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        if "var" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.2 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def japply(module, variables, x, *, train, **kwargs):
    """Jitted ``apply``; in train mode returns ``(out, updated_variables)``."""
    if train:
        fn = lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"], **kwargs)
    else:
        fn = lambda v, x: module.apply(v, x, train=False, **kwargs)
    return jax.jit(fn)(variables, x)


# ---------------------------------------------------------------------------
# NumPy references (NHWC / HWIO, PyTorch-style symmetric padding)


def np_conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
            out += patch @ w[i, j]
    return out


def np_bn_train(x, p, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)  # biased variance, as the forward pass uses
    y = (x - mean) / np.sqrt(var + eps)
    if p is not None:
        y = y * p["scale"] + p["bias"]
    return y, mean, var


def np_maxpool3s2p1(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, x[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2, :])
    return out


def relu(x):
    return np.maximum(x, 0)


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def randn(shape, seed=0, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


# ---------------------------------------------------------------------------
# Shapes and feature dims


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_stage_shapes_and_feature_dim(name):
    expansion = 4 if name == "resnet50" else 1
    for stem, width, size, spatial in [
        ("cifar", 4, 32, (32, 32, 16, 8, 4)),
        ("imagenet", 8, 64, (16, 16, 8, 4, 2)),
    ]:
        model = resnet(name, width=width, stem=stem)
        (pooled, stages), _ = jax.eval_shape(
            lambda: model.init_with_output(
                jax.random.key(0), jnp.zeros((2, size, size, 3)), train=True,
                return_stages=True,
            )
        )
        assert pooled.shape == (2, feature_dim(name, width)) == (2, model.feature_dim)
        assert pooled.dtype == jnp.float32
        assert set(stages) == {"stem", "stage1", "stage2", "stage3", "stage4"}
        assert stages["stem"].shape == (2, spatial[0], spatial[0], width)
        for k in range(4):
            s = spatial[k + 1]
            assert stages[f"stage{k + 1}"].shape == (2, s, s, width * 2**k * expansion)


def test_feature_dim_values_and_stem_stride():
    assert feature_dim("resnet18") == 512
    assert feature_dim("resnet34", 16) == 128
    assert feature_dim("resnet50") == 2048
    model = resnet("resnet18", width=4, stem_stride=2)
    (_, stages), _ = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False, return_stages=True
        )
    )
    assert [stages[k].shape[1] for k in ("stem", "stage1", "stage2", "stage3", "stage4")] == [
        14, 14, 7, 4, 2
    ]


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="resnet18"):
        resnet("resnet19")
    with pytest.raises(ValueError, match="resnet50"):
        feature_dim("wide_resnet")
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="bottleneck"):
        ResNet((1, 1, 1, 1), "basicc").init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="imagenet"):
        resnet("resnet18", width=4, stem="tiny").init(jax.random.key(0), x, train=False)


def _basic_resnet18_params(c_in: int, stem: int, widths) -> int:
    """Hand count of a CIFAR-stem ResNet-18 (3x3 convs without bias, BN scale + bias)."""
    n = 9 * c_in * stem + 2 * stem
    prev = stem
    for k, c in enumerate(widths):
        n += 9 * prev * c + 2 * c + 9 * c * c + 2 * c  # block 0
        if k > 0 or prev != c:
            n += prev * c + 2 * c  # 1x1 projection shortcut + BN
        n += 2 * (9 * c * c + 2 * c)  # block 1
        prev = c
    return n


def test_stage_widths_set_each_stage_and_the_feature_dim():
    widths = (4, 8, 12, 20)
    model = resnet("resnet18", width=4, stage_widths=widths, stem_stride=2)
    (pooled, stages), variables = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False, return_stages=True
        )
    )
    assert model.feature_dim == 20 and pooled.shape == (2, 20)
    assert [stages[k].shape[-1] for k in ("stem", "stage1", "stage2", "stage3", "stage4")] == [
        4, 4, 8, 12, 20
    ]
    assert _count(variables["params"]) == _basic_resnet18_params(1, 4, widths)
    # The default, width * 2**k, is the same count as spelling it out.
    default = jax.eval_shape(lambda: resnet("resnet18", width=4).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
    assert _count(default["params"]) == _basic_resnet18_params(1, 4, (4, 8, 16, 32))
    assert resnet("resnet50", width=4, stage_widths=(4, 8, 16, 24)).feature_dim == 96


def test_stage_widths_spelled_out_equal_the_default():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
    a, b = resnet("resnet18", width=4), resnet("resnet18", width=4, stage_widths=(4, 8, 16, 32))
    va = a.init(rbg_key(), x, train=False)
    vb = b.init(rbg_key(), x, train=False)
    assert jax.tree.structure(va) == jax.tree.structure(vb)
    np.testing.assert_array_equal(a.apply(va, x, train=False), b.apply(vb, x, train=False))


def test_stage_widths_of_the_wrong_length_raise():
    model = resnet("resnet18", width=4, stage_widths=(8, 16, 32))
    with pytest.raises(ValueError, match="one width per stage"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


# ---------------------------------------------------------------------------
# Parameter counts vs torchvision (fc removed; BN running stats excluded)


@pytest.mark.parametrize(
    "name,stem,expected",
    [
        ("resnet18", "imagenet", 11_689_512 - 513_000),
        ("resnet34", "imagenet", 21_797_672 - 513_000),
        ("resnet50", "imagenet", 25_557_032 - 2_049_000),
        # CIFAR stem: 3x3x3x64 conv instead of 7x7x3x64.
        ("resnet18", "cifar", 11_689_512 - 513_000 - 64 * 3 * (49 - 9)),
    ],
)
def test_param_counts_match_torchvision(name, stem, expected):
    variables = _init_shapes(resnet(name, stem=stem), (1, 32, 32, 3))
    assert _count(variables["params"]) == expected
    # Every BN has scale+bias in params and mean+var in batch_stats: equal counts.
    n_bn_params = sum(
        int(np.prod(leaf.shape))
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "bn" in jax.tree_util.keystr(path)
    )
    assert _count(variables["batch_stats"]) == n_bn_params


def test_conv_init_is_kaiming_fan_out():
    stem = ResNetStem(width=256)
    kernel = np.asarray(jinit(stem, jnp.zeros((1, 4, 4, 64)))["params"]["conv"]["kernel"])
    fan_out = 3 * 3 * 256
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / fan_out), rtol=0.02)
    assert np.abs(kernel).max() > 3 * np.sqrt(2 / fan_out)  # untruncated, as torch


# ---------------------------------------------------------------------------
# Blocks and stem against NumPy


def test_downsampling_basic_block_matches_numpy_train_mode():
    block = BasicBlock(features=6, strides=2)
    x = randn((3, 7, 7, 4))
    # Random BN affine parameters so that scale/bias placement is checked too.
    variables = random_variables(block, x)
    variables["batch_stats"] = jax.tree.map(np.zeros_like, variables["batch_stats"])
    variables["batch_stats"]["bn1"]["var"] = np.ones(6, np.float32)
    out, updates = japply(block, variables, x, train=True)
    p = f64(variables["params"])
    xd = x.astype(np.float64)
    h, m1, v1 = np_bn_train(np_conv(xd, p["conv1"]["kernel"], 2, 1), p["bn1"])
    h, _, _ = np_bn_train(np_conv(relu(h), p["conv2"]["kernel"], 1, 1), p["bn2"])
    s, _, _ = np_bn_train(np_conv(xd, p["downsample_conv"]["kernel"], 2, 0), p["downsample_bn"])
    expected = relu(h + s)
    assert out.shape == (3, 4, 4, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Running statistics: Flax momentum 0.9 == PyTorch momentum 0.1 (starting at 0 / 1).
    stats = updates["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * m1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * v1, rtol=1e-4, atol=1e-5)


def test_bottleneck_stride_on_3x3_v15():
    block = Bottleneck(features=2, strides=2)
    variables = _init_shapes(block, (1, 8, 8, 4))
    shapes = jax.tree.map(lambda a: a.shape, variables["params"])
    assert shapes["conv1"]["kernel"] == (1, 1, 4, 2)
    assert shapes["conv2"]["kernel"] == (3, 3, 2, 2)
    assert shapes["conv3"]["kernel"] == (1, 1, 2, 8)
    assert shapes["downsample_conv"]["kernel"] == (1, 1, 4, 8)
    x = randn((2, 8, 8, 4))
    variables = random_variables(block, x)
    p = f64(variables["params"])
    xd = x.astype(np.float64)
    h, _, _ = np_bn_train(np_conv(xd, p["conv1"]["kernel"], 1, 0), p["bn1"])
    h, _, _ = np_bn_train(np_conv(relu(h), p["conv2"]["kernel"], 2, 1), p["bn2"])
    h, _, _ = np_bn_train(np_conv(relu(h), p["conv3"]["kernel"], 1, 0), p["bn3"])
    s, _, _ = np_bn_train(np_conv(xd, p["downsample_conv"]["kernel"], 2, 0), p["downsample_bn"])
    out, _ = japply(block, variables, x, train=True)
    np.testing.assert_allclose(out, relu(h + s), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stem_relu", [True, False])
def test_imagenet_stem_matches_numpy(stem_relu):
    stem = ResNetStem(width=3, stem="imagenet", stem_relu=stem_relu)
    x = randn((2, 10, 10, 3))
    variables = random_variables(stem, x)
    out, _ = japply(stem, variables, x, train=True)
    p = f64(variables["params"])
    h, _, _ = np_bn_train(np_conv(x.astype(np.float64), p["conv"]["kernel"], 2, 3), p["bn"])
    if stem_relu:
        h = relu(h)
    else:
        assert (np.asarray(out) < 0).any()  # max-pool padding must not act like a zero
    np.testing.assert_allclose(out, np_maxpool3s2p1(h), rtol=1e-4, atol=1e-4)


def test_cifar_stem_relu_flag_and_stride():
    x = randn((4, 8, 8, 3))
    for flag in (True, False):
        stem = ResNetStem(width=4, stem_relu=flag)
        out, _ = japply(stem, random_variables(stem, x), x, train=True)
        assert out.shape == (4, 8, 8, 4)
        assert bool((out < 0).any()) == (not flag)
    stem = ResNetStem(width=4, stem_stride=2, stem_relu=False)
    variables = random_variables(stem, x)
    out, _ = japply(stem, variables, x, train=True)
    p = f64(variables["params"])
    expected, _, _ = np_bn_train(np_conv(np.asarray(x, np.float64), p["conv"]["kernel"], 2, 1),
                                 p["bn"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# zero_init_residual


@pytest.mark.parametrize("block_cls,features", [(BasicBlock, 5), (Bottleneck, 2)])
def test_zero_init_residual_identity_block_is_relu(block_cls, features):
    x = randn((3, 6, 6, features * block_cls.expansion))
    block = block_cls(features=features, zero_init_residual=True)
    variables = jinit(block, x)
    np.testing.assert_allclose(japply(block, variables, x, train=False), jax.nn.relu(x),
                               atol=1e-6)
    out, _ = japply(block, variables, x, train=True)
    np.testing.assert_allclose(out, jax.nn.relu(x), atol=1e-6)
    # Without the flag the residual branch is active.
    plain = random_variables(block_cls(features=features), x)
    assert not np.allclose(japply(block, plain, x, train=False), jax.nn.relu(x), atol=1e-3)
    # A downsampling block keeps its shortcut BN at scale 1.
    down = jinit(block_cls(features=features, strides=2, zero_init_residual=True), x[:, :, :, :1])
    np.testing.assert_array_equal(down["params"]["downsample_bn"]["scale"], 1.0)


@pytest.mark.parametrize("block,stages,last", [("basic", (1, 2), "bn2"),
                                               ("bottleneck", (2,), "bn3")])
def test_zero_init_residual_zeroes_last_bn_scales(block, stages, last):
    # Projection-shortcut and identity blocks; the flag must reach every block through
    # ResNet -> ResNetStage -> block.
    spec = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    models = {flag: ResNet(stages, block, width=2, zero_init_residual=flag) for flag in (1, 0)}
    all_params = jax.jit(lambda: {
        flag: m.lazy_init(rbg_key(), spec, train=False)["params"] for flag, m in models.items()
    })()
    for flag, model in models.items():
        params = all_params[flag]
        n_blocks = 0
        for k in range(1, len(stages) + 1):
            for block_params in params[f"stage{k}"].values():
                n_blocks += 1
                for bn_name, sub in block_params.items():
                    if "bn" not in bn_name:
                        continue
                    want = 0.0 if (flag and bn_name == last) else 1.0
                    np.testing.assert_array_equal(sub["scale"], want)
        assert n_blocks == sum(model.stage_sizes)
        np.testing.assert_array_equal(params["stem"]["bn"]["scale"], 1.0)


def test_stage_module_rebuilds_backbone_stage():
    model = ResNet((1, 2, 2, 1), "basic", width=4)
    x = randn((4, 16, 16, 3))
    variables = random_variables(model, x)
    _, stages = japply(model, variables, x, train=False, return_stages=True)
    stage3 = ResNetStage(**model.stage_kwargs(2))
    sub = {k: variables[k]["stage3"] for k in ("params", "batch_stats")}
    out = japply(stage3, sub, stages["stage2"], train=False)
    np.testing.assert_allclose(out, stages["stage3"], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# BatchNorm over the global batch when the batch is sharded over 8 devices


def test_batchnorm_statistics_are_global_under_sharding():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    model = ResNet((1, 1, 1, 1), "basic", width=4)  # a small ResNet keeps compilation short
    # Shift each shard so that per-device statistics differ a lot from global ones.
    x = randn((16, 16, 16, 3)) + np.repeat(np.arange(8.0, dtype=np.float32), 2)[:, None, None, None]
    variables = random_variables(model, x)

    def forward(v, images):
        return model.apply(v, images, train=True, mutable=["batch_stats"])

    jitted = jax.jit(forward)
    out_1, upd_1 = jitted(variables, x)

    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    v_repl = jax.device_put(variables, NamedSharding(mesh, P()))
    out_8, upd_8 = jitted(v_repl, x_sharded)
    assert len(x_sharded.sharding.device_set) == 8
    assert len(out_8.sharding.device_set) == 8

    np.testing.assert_allclose(out_8, out_1, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        upd_8["batch_stats"], upd_1["batch_stats"],
    )

    # Per-device BatchNorm (what pmap without axis_name would compute) is different.
    outs, upds = zip(*[jitted(variables, x[2 * i : 2 * i + 2]) for i in range(8)])
    per_shard_out = np.concatenate(outs)
    per_shard_mean = np.mean([u["batch_stats"]["stem"]["bn"]["mean"] for u in upds], axis=0)
    assert np.abs(per_shard_out - np.asarray(out_8)).max() > 1e-2
    # Means of per-shard means equal the global mean; the variances are where they differ.
    per_shard_var = np.mean([u["batch_stats"]["stem"]["bn"]["var"] for u in upds], axis=0)
    np.testing.assert_allclose(per_shard_mean, upd_8["batch_stats"]["stem"]["bn"]["mean"],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(per_shard_var - upd_8["batch_stats"]["stem"]["bn"]["var"]).max() > 1e-2


# ---------------------------------------------------------------------------
# Heads


def test_mlp_without_bn_equals_numpy_matmul_chain():
    mlp = MLP((8, 6), 5, use_bn=False, use_bias_last=False)
    x = randn((4, 7))
    variables = random_variables(mlp, x)
    assert "batch_stats" not in variables
    p = f64(variables["params"])
    assert set(p) == {"dense0", "dense1", "dense2"} and "bias" not in p["dense2"]
    h = relu(x @ p["dense0"]["kernel"] + p["dense0"]["bias"])
    h = relu(h @ p["dense1"]["kernel"] + p["dense1"]["bias"])
    expected = h @ p["dense2"]["kernel"]
    out = mlp.apply(variables, x, train=True)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_mlp_with_bn_matches_numpy_and_last_bn_standardises():
    mlp = MLP((8,), 6, last_bn=True, last_bn_affine=False, activation="gelu")
    x = randn((16, 5), loc=3.0, scale=2.0)
    variables = random_variables(mlp, x)
    assert set(variables["params"]) == {"dense0", "bn0", "dense1"}  # last BN has no affine
    assert set(variables["batch_stats"]) == {"bn0", "bn1"}
    out, _ = japply(mlp, variables, x, train=True)
    out = np.asarray(out, np.float64)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(0), 1.0, atol=1e-3)  # biased var; eps=1e-5
    p = f64(variables["params"])
    h, _, _ = np_bn_train(x @ p["dense0"]["kernel"] + p["dense0"]["bias"], p["bn0"])
    h = np.asarray(jax.nn.gelu(h))
    expected, _, _ = np_bn_train(h @ p["dense1"]["kernel"] + p["dense1"]["bias"], None)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_mlp_param_counts_and_torch_init():
    # SimCLR projector on ResNet-50 features: Linear(2048,2048)+BN, Linear(2048,128).
    v = jax.eval_shape(
        lambda: MLP((2048,), 128).init(jax.random.key(0), jnp.zeros((2, 2048)), train=False)
    )
    assert _count(v["params"]) == 2048 * 2048 + 2048 + 2 * 2048 + 2048 * 128 + 128
    # Barlow Twins (no hidden bias, last BN without affine), CorInfoMax (no BN, no last bias).
    v = jax.eval_shape(lambda: MLP(
        (2048, 2048), 2048, use_bias_hidden=False, last_bn=True, last_bn_affine=False
    ).init(jax.random.key(0), jnp.zeros((2, 512)), train=False))
    assert _count(v["params"]) == 512 * 2048 + 2048 * 2048 + 2048 * 2048 + 2048 + 4 * 2048
    v = jax.eval_shape(lambda: MLP((2048, 2048), 64, use_bn=False, use_bias_last=False).init(
        jax.random.key(0), jnp.zeros((2, 512)), train=False))
    assert _count(v["params"]) == 512 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 64
    # PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    p = jinit(MLP((), 256), jnp.zeros((1, 64)))["params"]
    w, b = np.asarray(p["dense0"]["kernel"]), np.asarray(p["dense0"]["bias"])
    bound = 1 / 8
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.03)
    with pytest.raises(ValueError, match="relu"):
        MLP((4,), 2, activation="swish2").init(jax.random.key(0), jnp.zeros((1, 3)), train=False)


def test_linear_classifier_with_and_without_input_bn():
    x = randn((8, 6), loc=5.0)
    plain = LinearClassifier(3)
    v = random_variables(plain, x)
    assert "batch_stats" not in v
    p = f64(v["params"]["head"])
    np.testing.assert_allclose(plain.apply(v, x, train=True), x @ p["kernel"] + p["bias"],
                               rtol=1e-5, atol=1e-5)

    probe = LinearClassifier(3, input_bn=True)
    v = random_variables(probe, x)
    v["batch_stats"]["bn"]["mean"] = np.zeros(6, np.float32)
    assert set(v["params"]) == {"head"}  # the BN has no affine parameters
    out, upd = japply(probe, v, x, train=True)
    p = f64(v["params"]["head"])
    xn, mean, _ = np_bn_train(x.astype(np.float64), None, eps=1e-6)
    np.testing.assert_allclose(out, xn @ p["kernel"] + p["bias"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(upd["batch_stats"]["bn"]["mean"], 0.1 * mean, rtol=1e-5)


# ---------------------------------------------------------------------------
# Mixed precision


def test_bfloat16_compute_float32_params_and_output():
    x = randn((8, 16, 16, 3))
    model32 = ResNet((1, 1), "basic", width=8)
    model16 = ResNet((1, 1), "basic", width=8, dtype=jnp.bfloat16)
    for leaf in jax.tree.leaves(_init_shapes(model16, x.shape)):
        assert leaf.dtype == jnp.float32  # params and BN statistics stay float32
    variables = random_variables(model16, x)
    (out16, stages16), upd16 = japply(model16, variables, x, train=True, return_stages=True)
    out32, _ = japply(model32, variables, x, train=True)
    assert out16.dtype == jnp.float32 and out32.dtype == jnp.float32
    assert stages16["stage2"].dtype == jnp.bfloat16  # the compute really is bfloat16
    for leaf in jax.tree.leaves(upd16):
        assert leaf.dtype == jnp.float32
    rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
    assert 0 < rel < 5e-2

    head = MLP((16,), 8, last_bn=True, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(_init_shapes(head, (2, 64))))
    z, _ = japply(head, random_variables(head, out16), out16, train=True)
    assert z.dtype == jnp.float32


def test_config_stage_widths_reach_the_backbone():
    from ssljax.config import base_config
    from ssljax.methods.base import build_backbone

    c = base_config()
    c.model.width = 4
    assert build_backbone(c.model).feature_dim == 32
    c.model.stage_widths = (4, 8, 16, 40)
    assert build_backbone(c.model).feature_dim == 40
    assert build_backbone(c.model).stem_relu  # absent from the config: the default
    c.model.stem_relu = False  # MetaMask's config sets it; build_backbone must pass it on
    assert not build_backbone(c.model).stem_relu
