"""MRCL: masks from tf.data, the ViT's token dropping, the reconstruction term, the step under
sharding, the segmentation probe and the CLI.

Step-level tests use a one-stage ResNet or a one-block ViT in place of the configured
backbones (the method, the decoder, the objective and the trainer's step are the real ones),
compiled without XLA's expensive passes: compilation dominates these tests.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from ssljax import data, methods, models, sharding, train
from ssljax.config import ConfigError
from ssljax.data import masking
from ssljax.evaluate import segmentation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import REPO, load_config, set_fields, tiny_config  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ---- Masks ----------------------------------------------------------------------------------

def _masks(seed, cfg, batch=32, views=2, size=28):
    return masking.sample_masks(tf.constant([seed, 7], tf.int64), batch, views, size, cfg).numpy()


def _connected(grid: np.ndarray) -> bool:
    """Whether the True cells of a 2-D grid form one 4-connected region (flood fill)."""
    cells = set(zip(*np.nonzero(grid)))
    todo, seen = [next(iter(cells))], set()
    while todo:
        c = todo.pop()
        if c in seen or c not in cells:
            continue
        seen.add(c)
        todo += [(c[0] + 1, c[1]), (c[0] - 1, c[1]), (c[0], c[1] + 1), (c[0], c[1] - 1)]
    return seen == cells


@pytest.mark.parametrize("kind", ["random", "block"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_masks_have_the_ratio_and_are_deterministic(kind, ratio):
    cfg = masking.MaskConfig(ratio=ratio, patch_size=4, views=(1,), kind=kind)
    m = _masks(0, cfg)
    assert m.shape == (32, 2, 7, 7) and m.dtype == bool
    want = int(round(ratio * 49))
    np.testing.assert_array_equal(m[:, 1].sum(axis=(1, 2)), want)  # every image, exactly
    assert not m[:, 0].any()  # view 0 is not in cfg.views
    np.testing.assert_array_equal(_masks(0, cfg), m)  # same seed, same masks
    other = _masks(1, cfg)
    assert (other != m).mean() > 0.1  # another seed (step), other masks
    assert len({row.tobytes() for row in m[:, 1]}) > 16  # images differ within a batch
    if kind == "block":  # one block: a single connected region
        assert all(_connected(g) for g in m[:, 1])
    else:  # every patch is masked at about the ratio over the batch
        freq = _masks(2, cfg, batch=512)[:, 1].mean(0)
        assert np.abs(freq - want / 49).max() < 0.1


def test_pipeline_emits_masks_for_the_global_batch_sharded_with_it():
    images = np.random.default_rng(0).integers(0, 255, (64, 16, 16, 1), dtype=np.uint8)
    labels = np.arange(64) % 10
    kw = dict(global_batch_size=16, num_views=2, augment=data.AugmentConfig(), seed=3,
              image_size=16, mean=[0.5], std=[0.5])
    cfg = masking.MaskConfig(ratio=0.5, patch_size=4)
    whole = next(iter(data.make_pretrain_dataset(images, labels, mask=cfg, **kw)))
    assert whole["masks"].shape == (16, 2, 4, 4)
    np.testing.assert_array_equal(whole["masks"].numpy().sum(axis=(2, 3)), 8)
    # Two processes each read half of the same global masks.
    halves = [next(iter(data.make_pretrain_dataset(images, labels, mask=cfg, process_index=i,
                                                   process_count=2, **kw)))["masks"].numpy()
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), whole["masks"].numpy())
    # Masking off: the batch of every other method, unchanged.
    plain = next(iter(data.make_pretrain_dataset(images, labels, **kw)))
    assert set(plain) == {"views", "label"}
    np.testing.assert_array_equal(plain["views"].numpy(), whole["views"].numpy())
    # On the mesh the masks are split over `data` like the views.
    mesh = sharding.make_mesh(8)
    batch = data.to_global(jax.tree.map(np.asarray, whole), sharding.batch_sharding(mesh))
    assert batch["masks"].sharding == batch["views"].sharding == sharding.batch_sharding(mesh)
    assert batch["masks"].addressable_shards[0].data.shape == (2, 2, 4, 4)
    assert data.mask_config_from({"enabled": False, "ratio": 0.5}) is None
    with pytest.raises(ValueError, match="must divide the image size"):
        data.make_pretrain_dataset(images, labels, mask=masking.MaskConfig(patch_size=5), **kw)


# ---- ViT --------------------------------------------------------------------------------------

def test_vit_drops_exactly_the_masked_tokens():
    vit = models.ViT(dim=16, depth=2, heads=2, patch_size=4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 16, 16, 1)), jnp.float32)
    mask = np.zeros(16, bool)
    mask[[0, 3, 5, 6, 9, 15]] = True
    keep = models.keep_indices(jnp.asarray(mask[None]), 6)
    np.testing.assert_array_equal(keep[0], np.nonzero(~mask)[0])
    params = vit.init(jax.random.key(0), x, train=False)
    pooled, tokens = vit.apply(params, x, train=False, keep=keep, return_tokens=True)
    assert tokens.shape == (1, 10, 16)
    # Perturb one patch at a time: the output moves if and only if the patch is visible.
    bumps = np.zeros((16, 16, 16, 1), np.float32)
    for i in range(16):
        r, c = divmod(i, 4)
        bumps[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 3.0
    moved = jax.vmap(lambda b: vit.apply(params, x + b[None], train=False, keep=keep))(
        jnp.asarray(bumps))
    change = np.abs(np.asarray(moved)[:, 0] - np.asarray(pooled)[0]).max(axis=1)
    np.testing.assert_array_equal(change[mask], 0.0)
    assert change[~mask].min() > 1e-4
    # The class token and mean pooling both give [B, dim] features.
    mean_vit = models.ViT(dim=16, depth=1, heads=2, patch_size=4, pool="mean")
    p2 = mean_vit.init(jax.random.key(0), x, train=False)
    assert "cls_token" not in p2["params"] and mean_vit.apply(p2, x, train=False).shape == (1, 16)
    assert {k: models.vit(k).feature_dim for k in models.VIT_CONFIGS} == {
        "vit_tiny": 192, "vit_small": 384, "vit_base": 768}


# One method of each family in the default run; every other registered method with the
# end-to-end checks (make test-integration).
VIT_DEFAULT_RUN = ("simclr", "mrcl", "moco", "metamask", "corinfomax", "selfcon")


# Learned / colour-space views are defined on colour images, not patches: no ViT for these.
NO_VIT = ("infomin_views", "view_contrast")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in VIT_DEFAULT_RUN else pytest.mark.integration)
    for n in methods.available() if n not in NO_VIT])
def test_every_method_builds_with_a_vit_backbone(name):
    cfg = load_config(name)  # every registered method has configs/<name>.py
    cfg.model.name = "vit_tiny"
    cfg.model.patch_size = 4
    if "mask" in cfg.data:
        cfg.data.mask.patch_size = 4
    example = {"views": jnp.zeros((4, 2, 28, 28, 1)), "label": jnp.zeros((4,), jnp.int32)}
    if name in ("selfcon", "supcon", "ce", "subnet_ce"):
        # The multi-exit network is a ResNet by construction: a clear error, not a crash.
        with pytest.raises(ConfigError, match="model.name=resnet18"):
            jax.eval_shape(methods.get_method(name)(cfg, num_classes=10).init_model,
                           train.init_key(0), example)
        return
    method = methods.get_method(name)(cfg, num_classes=10)
    params, state = jax.eval_shape(method.init_model, train.init_key(0), example)
    assert jax.eval_shape(method.embed, params, state, example["views"][:, 0]).shape == (4, 192)
    maps = jax.eval_shape(method.feature_maps, params, state, example["views"][:, 0])
    assert [m.shape for m in maps] == [(4, 7, 7, 192)]


# ---- The method -------------------------------------------------------------------------------

def small_backbone(encoder):
    if encoder == "vit":
        return models.ViT(dim=16, depth=1, heads=2, patch_size=4)
    return models.ResNet(stage_sizes=(1,), block="basic", width=4)


def make_method(encoder="resnet", variant="", **overrides):
    """A tiny mrcl config; the configured backbone replaced by a small one of the same kind."""
    over = {"decoder.stage": "stage1", "decoder.channels": (8,), "decoder.dim": 16,
            "decoder.depth": 1, "decoder.heads": 2, "mrcl.queue_size": 64, **overrides}
    cfg = tiny_config("mrcl")
    base = load_config("mrcl", "fashion_mnist" + variant + (",vit" if encoder == "vit" else ""))
    cfg.model.name, cfg.model.patch_size = base.model.name, 4
    cfg.mrcl.contrast, cfg.mrcl.lambda_rec = base.mrcl.contrast, base.mrcl.lambda_rec
    cfg.mrcl.rec_on, cfg.data.mask.ratio = base.mrcl.rec_on, base.data.mask.ratio
    set_fields(cfg, over)
    method = methods.get_method("mrcl")(cfg, num_classes=10)
    method.model = method.model.clone(backbone=small_backbone(encoder))
    return cfg, method


def make_batch(seed, cfg, batch_size=16, size=16):
    rng = np.random.default_rng(seed)
    mask_cfg = data.mask_config_from(cfg.data.mask)
    return {"views": rng.normal(size=(batch_size, 2, size, size, 1)).astype(np.float32),
            "masks": _masks(seed, mask_cfg, batch=batch_size, size=size),
            "label": rng.integers(0, 10, batch_size).astype(np.int32)}


def numpy_masked_mse(pred_tokens, images, weights, p, eps=1e-6):
    """Independent transcription: per-patch normalised target, MSE, mean over weighted patches."""
    b, h, w, c = images.shape
    t = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1,
                                                                                       p * p * c)
    t = t.astype(np.float64)
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + eps)
    per_patch = ((np.asarray(pred_tokens, np.float64) - t) ** 2).mean(-1)
    weights = weights.reshape(b, -1).astype(np.float64)
    return (per_patch * weights).sum() / weights.sum()


def as_tokens(pred, p):
    pred = np.asarray(pred)
    if pred.ndim == 3:
        return pred
    b, h, w, c = pred.shape
    return pred.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1,
                                                                                        p * p * c)


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_reconstruction_term_is_on_masked_patches_of_the_unmasked_views(encoder):
    cfg, method = make_method(encoder)
    batch = make_batch(0, cfg)
    params, state = method.init_model(train.init_key(0), batch)
    loss_fn = jax.jit(lambda p, s, b: method.loss(p, s, b, jax.random.key(0), 0),
                      compiler_options=FAST_COMPILE)
    loss, out = loss_fn(params, state, batch)
    (_, _, recon), _ = jax.jit(method.forward, compiler_options=FAST_COMPILE)(
        params, state, batch)
    assert len(recon) == 2
    views, masks = batch["views"], batch["masks"]
    want = np.mean([numpy_masked_mse(as_tokens(recon[v], 4), views[:, v], masks[:, v], 4)
                    for v in range(2)])
    np.testing.assert_allclose(out.metrics["reconstruction"], want, rtol=2e-5)
    np.testing.assert_allclose(loss, out.metrics["contrastive"] + 1.0 * want, rtol=2e-5)
    # Not the visible patches, and not the masked input as the target.
    visible = np.mean([numpy_masked_mse(as_tokens(recon[v], 4), views[:, v], ~masks[:, v], 4)
                       for v in range(2)])
    assert not np.isclose(visible, want, rtol=1e-3)
    if encoder == "resnet":
        zeroed = np.where(masks.repeat(4, 2).repeat(4, 3)[..., None], 0.0, views)
        wrong = np.mean([numpy_masked_mse(as_tokens(recon[v], 4), zeroed[:, v], masks[:, v], 4)
                         for v in range(2)])
        assert not np.isclose(wrong, want, rtol=1e-3)
        # The encoder saw the masked patches as zeros: the same features as zeroed views.
        (f_masked, _, _), _ = method.forward(params, state, batch)
        (f_zeroed, _, _), _ = method.forward(params, state, {"views": zeroed.astype(np.float32)})
        np.testing.assert_allclose(f_masked, f_zeroed, rtol=1e-5, atol=1e-6)


def test_a_learned_mask_token_fills_the_masked_pixels():
    # The 'token' variant: masked pixels take a learned per-channel value (zeros at init).
    cfg, method = make_method("resnet", **{"mrcl.mask_token": True})
    assert method.model.mask_token
    batch = make_batch(0, cfg)
    params, state = method.init_model(train.init_key(0), batch)
    assert params["mask_token"].shape == (1,) and not params["mask_token"].any()
    params = dict(params, mask_token=jnp.full((1,), 0.7))
    (f_token, _, _), _ = method.forward(params, state, batch)
    pixels = batch["masks"].repeat(4, 2).repeat(4, 3)[..., None]
    filled = np.where(pixels, np.float32(0.7), batch["views"]).astype(np.float32)
    (f_filled, _, _), _ = method.forward(params, state, {"views": filled})
    np.testing.assert_allclose(f_token, f_filled, rtol=1e-5, atol=1e-6)
    (f_zero, _, _), _ = method.forward(params, state, {
        "views": np.where(pixels, 0.0, batch["views"]).astype(np.float32)})
    assert not np.allclose(f_token, f_zero, atol=1e-4)


def test_reconstruction_only_ablation_reconstructs_every_patch():
    cfg, method = make_method("resnet", ",reconstruction_only")
    batch = make_batch(0, cfg)
    assert not batch["masks"].any()
    params, state = method.init_model(train.init_key(0), batch)
    _, out = method.loss(params, state, batch, jax.random.key(0), 0)
    (_, _, recon), _ = method.forward(params, state, batch)
    ones = np.ones(batch["masks"].shape[:1] + batch["masks"].shape[2:], bool)
    want = np.mean([numpy_masked_mse(as_tokens(recon[v], 4), batch["views"][:, v], ones, 4)
                    for v in range(2)])
    np.testing.assert_allclose(out.metrics["reconstruction"], want, rtol=2e-5)


def test_neither_ablation_is_simclr(monkeypatch):
    from ssljax.methods import base
    monkeypatch.setattr(base, "build_backbone", lambda cfg: small_backbone("resnet"))
    simclr_cfg = tiny_config("simclr")
    cfg = tiny_config("mrcl", **{"mrcl.temperature": simclr_cfg.loss.temperature})
    cfg.data.mask.ratio, cfg.mrcl.rec_on, cfg.mrcl.lambda_rec = 0.0, "all", 0.0
    mrcl = methods.get_method("mrcl")(cfg, num_classes=10)
    simclr = methods.get_method("simclr")(simclr_cfg, num_classes=10)
    batch = make_batch(1, cfg)
    params, state = mrcl.init_model(train.init_key(0), batch)
    s_params, _ = simclr.init_model(train.init_key(0), batch)
    assert jax.tree.structure(params) == jax.tree.structure(s_params)

    def both(p):
        lm, om = mrcl.loss(p, state, batch, jax.random.key(0), 0)
        ls, os_ = simclr.loss(p, state, {"views": batch["views"], "label": batch["label"]},
                              jax.random.key(0), 0)
        return lm, ls, om.state, os_.state

    lm, ls, sm, ss = jax.jit(both, compiler_options=FAST_COMPILE)(params)
    np.testing.assert_allclose(lm, ls, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), sm, ss)


def test_config_errors_are_one_sentence():
    with pytest.raises(ConfigError, match="rec_on=all"):
        make_method("resnet", **{"mrcl.rec_on": "masked", "data.mask.ratio": 0.0,
                                 "mrcl.lambda_rec": 1.0})
    with pytest.raises(ConfigError, match="mask.patch_size=4"):
        make_method("vit", **{"data.mask.patch_size": 2})
    with pytest.raises(ConfigError, match="queue_size"):
        make_method("resnet", ",infonce", **{"mrcl.queue_size": 24})


def test_configs():
    for dataset in ("fashion_mnist", "cifar10", "cifar100", "imagenet"):
        for mods in ("", ",vit", ",masking_only", ",reconstruction_only", ",simclr", ",infonce"):
            c = load_config("mrcl", dataset + mods)
            assert c.method == "mrcl"
            data.augment_configs(c.data)
            mask = data.mask_config_from(c.data.mask)
            mask.grid(c.data.image_size)
            if mods == ",vit":
                assert c.model.name.startswith("vit") and c.model.patch_size == mask.patch_size
    fm = load_config("mrcl")
    assert (fm.data.mask.ratio, fm.mrcl.lambda_rec, fm.eval.segmentation) == (0.25, 1.0, True)
    assert load_config("mrcl", "cifar10").data.mask.ratio == 0.5
    ablation = {m: load_config("mrcl", "fashion_mnist," + m) for m in
                ("masking_only", "reconstruction_only", "simclr")}
    assert (ablation["masking_only"].data.mask.ratio, ablation["masking_only"].mrcl.lambda_rec) \
        == (0.25, 0.0)
    assert (ablation["reconstruction_only"].data.mask.ratio,
            ablation["reconstruction_only"].mrcl.rec_on) == (0.0, "all")
    assert (ablation["simclr"].data.mask.ratio, ablation["simclr"].mrcl.lambda_rec) == (0.0, 0.0)
    with pytest.raises(ValueError, match="Unknown variant"):
        load_config("mrcl", "fashion_mnist,nope")
    assert methods.mrcl.num_masked(0.5, 49) == data.num_masked(0.5, 49)


# ---- Train steps under sharding ---------------------------------------------------------------

NUM_STEPS = 4
CASES = {"resnet": ("resnet", ""), "vit": ("vit", ""), "resnet_infonce": ("resnet", ",infonce")}


def run_steps(case, num_devices, initial=None):
    cfg, method = make_method(*CASES[case])
    mesh = sharding.make_mesh(num_devices)
    steps = train.build_step(cfg, method, mesh, total_steps=6, steps_per_epoch=16)
    put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
    batches = [make_batch(100 + i, cfg) for i in range(NUM_STEPS)]
    _, state_sharding = steps.abstract_state(put(batches[0]))
    if initial is None:
        initial = jax.device_get(jax.jit(steps._init, compiler_options=FAST_COMPILE)(
            train.init_key(0), batches[0]))
    ts = jax.device_put(initial, state_sharding)
    rng = jax.random.key(7)
    step = steps.train_step.lower(ts, put(batches[0]), rng).compile(
        compiler_options=FAST_COMPILE)
    metrics = []
    for batch in batches:
        ts, m = step(ts, put(batch), rng)
        metrics.append(jax.device_get(m))
    return {"initial": initial, "metrics": metrics, "final": jax.device_get(ts)}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "vit" else c
                                  for c in CASES])  # vit: about 25 s
def test_eight_devices_equal_one_device(case):
    one = run_steps(case, 1)
    eight = run_steps(case, 8, initial=one["initial"])
    keys = ("loss", "contrastive") + (("reconstruction",) if "reconstruction" in
                                      one["metrics"][0] else ())
    assert "reconstruction" in keys
    # With the queue, steps after the first take their negatives from keys that agree only to
    # float32 summation-order noise (atol 2e-4, checked below), and the loss inherits it: the
    # CI's AMD EPYC read a relative difference of 1.07e-5 at step 2. Keys of one shard in the
    # queue (planted once) move the later steps' losses by 0.6-3.6%.
    rtol = 1e-4 if case == "resnet_infonce" else 1e-5
    for key in keys:
        np.testing.assert_allclose([m[key] for m in eight["metrics"]],
                                   [m[key] for m in one["metrics"]], rtol=rtol, atol=1e-7,
                                   err_msg=key)
    # The steps did update the network (fails with lr 0 or zero gradients; the update itself
    # is checked in tests/test_update_is_gradient.py).
    moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(one["final"].params),
                                                   jax.tree.leaves(one["initial"].params))]
    assert max(moved) > 1e-3, max(moved)
    if case == "resnet_infonce":
        st1, st8 = one["final"].state, eight["final"].state
        assert int(st1["queue_ptr"]) == (NUM_STEPS * 16) % 64
        # Normalised keys agree to float32 summation-order noise; a sharding bug (keys of one
        # shard, or out of order) moves entries by ~0.1.
        np.testing.assert_allclose(st8["queue"], st1["queue"], atol=2e-4)
        np.testing.assert_allclose(np.linalg.norm(st1["queue"][:NUM_STEPS * 16], axis=1), 1.0,
                                   rtol=1e-5)
        # The key encoder is the EMA of the online one: it moved, but less.
        t0 = jax.tree.leaves(one["initial"].state["target"]["params"])
        t1 = jax.tree.leaves(st1["target"]["params"])
        p1 = jax.tree.leaves(one["final"].params)
        moved_t = sum(float(np.abs(a - b).sum()) for a, b in zip(t1, t0))
        moved_p = sum(float(np.abs(a - b).sum()) for a, b in zip(p1, t0))
        assert 0 < moved_t < 0.2 * moved_p


# ---- The segmentation probe -------------------------------------------------------------------

def test_mean_iou_equals_a_numpy_reference():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (5, 6, 6))
    target = rng.integers(0, 4, (5, 6, 6))
    target[target == 3] = 2  # class 3 only in the prediction: its IoU is 0, still counted
    pred[pred == 1] = 0
    target[target == 1] = 0  # class 1 nowhere: left out of the mean
    ious = []
    for c in range(5):
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        if union:
            ious.append(inter / union)
    miou, per_class = segmentation.mean_iou(pred, target, 5)
    np.testing.assert_allclose(miou, np.mean(ious), rtol=1e-12)
    assert np.isnan(per_class[1]) and np.isnan(per_class[4]) and per_class[3] == 0.0
    assert segmentation.mean_iou(target, target, 5)[0] == 1.0


def test_segmentation_targets_and_a_separable_probe():
    images = np.zeros((2, 4, 4, 1), np.uint8)
    images[0, :2, :2] = 200
    images[1, 3, 3] = 26  # just above 0.1 * 255
    images[1, 0, 0] = 25  # not above
    t = segmentation.fashion_mnist_segmentation(images, np.array([3, 7]))
    assert t[0].tolist() == [[4, 4, 0, 0], [4, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert t[1].sum() == 8 and t[1, 3, 3] == 8
    # Feature maps at full resolution that one-hot encode the target: a linear head fits them.
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, (64, 4, 4))
    maps = np.eye(3, dtype=np.float32)[targets] + 0.01 * rng.normal(size=(64, 4, 4, 3))
    out = segmentation.segmentation_probe([maps], targets, [maps], targets, num_classes=3,
                                          epochs=20, lr=0.1, batch_size=16)
    assert out["miou"] == 1.0 and out["pixel_acc"] == 1.0


# ---- The command line -------------------------------------------------------------------------

def _cli(tmp_path, variant, *extra):
    env = dict(os.environ, SSLJAX_XLA_CACHE=os.path.join(REPO, ".pytest_cache", "xla"),
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    tiny = ["--config.data.train_split=train[:256]", "--config.data.test_split=test[:64]",
            "--config.batch_size=16", "--config.total_steps=2", "--config.eval.linear_epochs=1",
            "--config.eval.knn_k=5", "--config.eval.baselines=False",
            "--config.eval.segmentation_epochs=1", "--config.eval.segmentation_train_examples=64",
            "--config.projector.hidden_dims=(16,)", "--config.projector.out_dim=8"]
    proc = subprocess.run(
        [sys.executable, "-m", "ssljax.main", f"--config=configs/mrcl.py:{variant}",
         f"--workdir={tmp_path}", *tiny, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    with open(tmp_path / "results.json") as f:
        return json.load(f)


@pytest.mark.integration
def test_cli_smoke_resnet(tmp_path):
    results = _cli(tmp_path, "fashion_mnist", "--config.model.width=4",
                   "--config.decoder.channels=(8,)")
    assert results["method"] == "mrcl" and "segmentation_miou" in results


@pytest.mark.slow
def test_cli_smoke_vit(tmp_path):
    results = _cli(tmp_path, "fashion_mnist,vit", "--config.decoder.dim=16",
                   "--config.decoder.depth=1", "--config.decoder.heads=2")
    assert results["method"] == "mrcl" and "segmentation_miou" in results
