"""Update = gradient, per method (issue 21, item 1).

For each method of the benchmark, ONE step of the trainer's compiled step
(``train.build_step(...).train_step``: the method's ``train_step``, the optimizer of
``config.optimizer``, jitted with the state's shardings) with plain SGD (no momentum, no
weight decay, no warm-up, constant learning rate ``LR``) must move the parameters by
``-LR * grad(reference_loss)(params_before)``, where ``reference_loss`` is written here in plain
JAX from the formulas of METHODS.md. The method's Flax modules are called only for the network
outputs (``model.apply``); the view routing (per-view or joint BatchNorm passes, BatchNorm
groups, key permutations), the stop-gradients (targets, keys, queues, CorInfoMax's old state)
and the objectives are the test's own. The new BatchNorm statistics and method state (EMA
targets, queues, CorInfoMax's means and covariances) are checked too.

Criterion, per parameter leaf: ``||delta - (-LR g)||_2 <= RTOL * ||LR g||_2`` with
``delta = params_after - params_before`` and RTOL = 1e-4. Leaves whose gradient is zero in
exact arithmetic (a Dense bias right before a BatchNorm) have a reference gradient of float32
noise, ~1e-7 of the largest leaf's; a leaf whose ``||LR g||`` is under ZERO = 1e-4 of the
largest leaf's is such a leaf, and there the step must not move it either
(``||delta|| <= ZERO * max_leaf ||LR g||``). ``LR`` is large (one step only, so stability does
not matter) so that the float32 rounding of ``params_after`` (half an ulp of each parameter)
sits far below RTOL: the measured mismatch is 1e-7 to 1e-6.

Each family has a CONTROL: the same check against a deliberately wrong reference (views
mis-paired, per-view and joint BatchNorm swapped, the queue enqueued before the loss, the
CorInfoMax log-determinant of the state before the batch, a stop-gradient where the method
has none, ...) must be far from the update (relative mismatch > 100 x RTOL over all leaves,
and on some leaf), so the check can fail.

The tiny backbones and batches are the other step-level tests' (tests/test_methods_redundancy.py,
test_momentum.py, test_infomin.py, test_selfcon.py, test_mrcl.py).
"""

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import methods, models, sharding, train
from ssljax.methods.infomin import InfoMinNet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import set_fields, tiny_config  # noqa: E402
from test_methods_redundancy import TinyBackbone  # noqa: E402
from test_methods_redundancy import make_batch as two_view_batch  # noqa: E402
from test_methods_redundancy import make_method as redundancy_method  # noqa: E402
from test_momentum import make_method as momentum_method  # noqa: E402
from test_infomin import OVERRIDES as INFOMIN  # noqa: E402
from test_infomin import make_batch as infomin_batch  # noqa: E402
from test_selfcon import make_batch as supervised_batch  # noqa: E402
from test_selfcon import small_method as supervised_method  # noqa: E402
from test_mrcl import make_batch as mrcl_batch  # noqa: E402
from test_mrcl import make_method as mrcl_method  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LR = 2.0
RTOL = 1e-4
ZERO = 1e-4
CONTROL_MIN = 100 * RTOL
TOTAL_STEPS = 10
STEP_RNG = 5
# Plain SGD at a constant learning rate: the update is -LR * gradient, nothing else.
PLAIN_SGD = {"optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.nesterov": False,
             "optimizer.weight_decay": 0.0, "optimizer.warmup_epochs": 0.0,
             "optimizer.warmup_init": 0.0, "optimizer.final_lr_ratio": 1.0,
             "optimizer.lr_scaling": "none", "optimizer.step_per_epoch": False,
             "optimizer.lr": LR}


# ---- The step and the comparison ---------------------------------------------------------------

def take_step(cfg, method, batch):
    """One step of the trainer's compiled step on one device: (before, after) host copies."""
    set_fields(cfg, PLAIN_SGD)
    mesh = sharding.make_mesh(1)
    steps = train.build_step(cfg, method, mesh, total_steps=TOTAL_STEPS,
                             steps_per_epoch=TOTAL_STEPS)
    assert [float(steps.schedule(s)) for s in (0, 5)] == [LR, LR]
    _, state_sharding = steps.abstract_state(batch)
    ts = jax.jit(steps._init, out_shardings=state_sharding, compiler_options=FAST_COMPILE)(
        train.init_key(0), batch)
    before = jax.device_get(ts)
    rng = jax.random.key(STEP_RNG)
    step = steps.train_step.lower(ts, batch, rng).compile(compiler_options=FAST_COMPILE)
    after, metrics = step(ts, batch, rng)
    return before, jax.device_get(after), jax.device_get(metrics)


def step_key():
    """The key the method's loss receives at step 0 (``Method.train_step`` folds in the step)."""
    return jax.random.fold_in(jax.random.key(STEP_RNG), 0)


def reference_grad(ref_loss, params):
    """``(grad, aux)`` of ``ref_loss(params) -> (loss, aux)``, compiled cheaply."""
    return jax.device_get(jax.jit(jax.grad(ref_loss, has_aux=True),
                                  compiler_options=FAST_COMPILE)(params))


def mismatch(before, after, grads):
    """``(relative, zero_moves, total)``: per leaf ``||delta + LR g|| / ||LR g||`` (keyed by
    path); for the zero-gradient leaves instead ``||delta|| / max_leaf ||LR g||``; and
    ``||delta + LR g|| / ||LR g||`` over all leaves together."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    errs, scales, moves = {}, {}, {}
    for (path, g), p0, p1 in zip(flat, jax.tree.leaves(before), jax.tree.leaves(after)):
        delta = np.asarray(p1, np.float64) - np.asarray(p0, np.float64)
        want = -LR * np.asarray(g, np.float64)
        key = jax.tree_util.keystr(path)
        errs[key], scales[key] = np.linalg.norm(delta - want), np.linalg.norm(want)
        moves[key] = np.linalg.norm(delta)
    top = max(scales.values())
    assert top > 0
    relative = {k: errs[k] / scales[k] for k in errs if scales[k] >= ZERO * top}
    zero_moves = {k: moves[k] / top for k in errs if scales[k] < ZERO * top}
    total = math.sqrt(sum(e ** 2 for e in errs.values()) / sum(s ** 2 for s in scales.values()))
    return relative, zero_moves, total


def assert_update_is_gradient(before, after, grads):
    assert jax.tree.structure(grads) == jax.tree.structure(before)
    relative, zero_moves, _ = mismatch(before, after, grads)
    worst = max(relative, key=relative.get)
    assert relative[worst] < RTOL, (worst, relative[worst])
    # Only biases that feed a BatchNorm may have a zero gradient.
    assert all(k.endswith("['bias']") for k in zero_moves), sorted(zero_moves)
    assert len(zero_moves) <= 2, sorted(zero_moves)
    assert all(m < ZERO for m in zero_moves.values()), zero_moves


def assert_control_fails(before, after, grads):
    relative, _, total = mismatch(before, after, grads)
    assert total > CONTROL_MIN, total
    # And the check itself, leaf by leaf, rejects it.
    assert max(relative.values()) > CONTROL_MIN


def assert_tree_close(got, want, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=rtol, atol=atol)


# ---- Objectives, written out from METHODS.md -------------------------------------------------

def unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def nt_xent(z1, z2, t):
    """2N anchors; each: its pair is the positive, the 2N - 2 others the negatives (self out)."""
    n = z1.shape[0]
    z = unit(jnp.concatenate([z1, z2]))
    logits = z @ z.T / t
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    pair = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    positive = logits[jnp.arange(2 * n), pair]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def infonce(q, k, queue, t):
    """``CE([q.k, q @ queue.T] / T, 0)``; k and the queue are constants."""
    q, k, queue = unit(q), unit(jax.lax.stop_gradient(k)), unit(jax.lax.stop_gradient(queue))
    logits = jnp.concatenate([jnp.sum(q * k, 1, keepdims=True), q @ queue.T], axis=1) / t
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def supcon(z, ids, t, base_t):
    """SupCon over the embeddings ``z`` [M, D] (every one an anchor) with identities ``ids``:
    positives share the id, self excluded; ``-(T / base_T) * mean over positives of log_prob``,
    mean over anchors that have a positive."""
    m = z.shape[0]
    z = unit(z)
    logits = z @ z.T / t
    self_ = jnp.eye(m, dtype=bool)
    log_prob = logits - jax.nn.logsumexp(jnp.where(self_, -jnp.inf, logits), axis=1,
                                         keepdims=True)
    pos = (ids[:, None] == ids[None, :]) & ~self_
    count = pos.sum(1)
    per_anchor = jnp.sum(jnp.where(pos, log_prob, 0.0), 1) / jnp.maximum(count, 1)
    has = count > 0
    return jnp.sum(jnp.where(has, -(t / base_t) * per_anchor, 0.0)) / has.sum()


def byol(p, z):
    return jnp.mean(2.0 - 2.0 * jnp.sum(unit(p) * unit(jax.lax.stop_gradient(z)), axis=-1))


def standardise(z, eps):
    """BatchNorm without affine: biased variance over the batch, eps."""
    return (z - z.mean(0)) / jnp.sqrt(z.var(0) + eps)


def barlow_twins(z1, z2, lambd, eps):
    n = z1.shape[0]
    c = standardise(z1, eps).T @ standardise(z2, eps) / n
    off = c - jnp.diag(jnp.diag(c))
    return jnp.sum((1.0 - jnp.diag(c)) ** 2) + lambd * jnp.sum(off ** 2)


def vicreg(z1, z2, sim, std, cov):
    n, d = z1.shape

    def std_term(z):
        return jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(z.var(0, ddof=1) + 1e-4)))

    def cov_term(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (n - 1)
        return jnp.sum((c - jnp.diag(jnp.diag(c))) ** 2) / d

    return (sim * jnp.mean((z1 - z2) ** 2) + std * (std_term(z1) + std_term(z2)) / 2
            + cov * (cov_term(z1) + cov_term(z2)))


# ---- Forward passes (the method's modules for the network outputs only) ------------------------

def apply_train(module, params, batch_stats, x, **kwargs):
    """One train-mode pass: ``(outputs, new batch_stats)``."""
    out, upd = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                            mutable=["batch_stats"], **kwargs)
    return out, upd.get("batch_stats", batch_stats)


def per_view(module, params, batch_stats, views):
    """Each view its own pass; the running statistics updated view after view."""
    outs = []
    for v in range(views.shape[1]):
        out, batch_stats = apply_train(module, params, batch_stats, views[:, v])
        outs.append(out)
    return outs, batch_stats


def joint(module, params, batch_stats, views):
    """One pass over the 2B images, view 0's B first."""
    x = jnp.concatenate([views[:, v] for v in range(views.shape[1])])
    return apply_train(module, params, batch_stats, x)


def mean_tree(trees):
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def grouped(module, params, batch_stats, x, groups, order=None):
    """BatchNorm over groups of rows (``order``'s consecutive rows; the batch order without
    one), each group in its own pass, outputs written back to their rows; the running
    statistics averaged over the groups."""
    b = x.shape[0]
    order = np.arange(b) if order is None else np.asarray(order)
    n = b // groups
    pieces, stats = [], []
    for g in range(groups):
        rows = order[g * n:(g + 1) * n]
        out, s = apply_train(module, params, batch_stats, x[rows])
        pieces.append((rows, out))
        stats.append(s)
    inverse = np.argsort(np.concatenate([rows for rows, _ in pieces]))
    out = jax.tree.map(lambda *o: jnp.concatenate(o)[inverse], *[o for _, o in pieces])
    return out, mean_tree(stats)


# ---- SimCLR -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simclr():
    cfg = tiny_config("simclr", **{"loss.block_size": 0})
    method = methods.get_method("simclr")(cfg, num_classes=10)
    method.model = method.model.clone(backbone=TinyBackbone())
    batch = two_view_batch(1)
    before, after, _ = take_step(cfg, method, batch)

    def reference(params, *, mispair=False, per_view_bn=False):
        views = jnp.asarray(batch["views"])
        b = views.shape[0]
        if per_view_bn:
            ((_, z1), (_, z2)), stats = per_view(method.model, params,
                                                 before.state["batch_stats"], views)
        else:  # SimCLR: one pass over all 2N images
            (_, z), stats = joint(method.model, params, before.state["batch_stats"], views)
            z1, z2 = z[:b], z[b:]
        if mispair:
            z2 = jnp.roll(z2, 1, axis=0)
        return nt_xent(z1, z2, cfg.loss.temperature), stats

    return before, after, reference


def test_simclr_update_is_the_nt_xent_gradient(simclr):
    before, after, reference = simclr
    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)


@pytest.mark.parametrize("wrong", ["mispair", "per_view_bn"])
def test_simclr_control_wrong_reference_is_rejected(simclr, wrong):
    before, after, reference = simclr
    grads, _ = reference_grad(functools.partial(reference, **{wrong: True}), before.params)
    assert_control_fails(before.params, after.params, grads)


# ---- MRCL (NT-Xent on masked views + masked reconstruction) ------------------------------------

@pytest.fixture(scope="module")
def mrcl():
    cfg, method = mrcl_method("resnet")
    batch = mrcl_batch(3, cfg)
    before, after, _ = take_step(cfg, method, batch)
    patch, stage = method.patch, cfg.decoder.stage
    mask_views = tuple(sorted(set(cfg.data.mask.views)))
    assert mask_views == (0, 1) and cfg.data.mask.ratio > 0 and cfg.mrcl.lambda_rec > 0

    def net(module, x, out_hw, decode, train):
        features, stages = module.backbone(x, train=train, return_stages=True)
        z = module.head(features, train=train)
        fmap = stages[stage]
        n = x.shape[0] // 2
        picked = jnp.concatenate([fmap[v * n:(v + 1) * n] for v in decode])
        return z, jnp.split(module.decoder(picked, out_hw), len(decode))

    def patches(images):
        b, h, w, c = images.shape
        t = images.reshape(b, h // patch, patch, w // patch, patch, c)
        return t.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), -1)

    def masked_mse(pred, target, weights):
        t = patches(target)
        t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
        per_patch = jnp.mean((patches(pred) - t) ** 2, -1)
        w = weights.reshape(weights.shape[0], -1).astype(jnp.float32)
        return jnp.sum(per_patch * w) / jnp.sum(w)

    def reference(params, *, visible=False):
        views, masks = jnp.asarray(batch["views"]), jnp.asarray(batch["masks"])
        b, _, h, w, _ = views.shape
        pixels = masks.repeat(patch, axis=2).repeat(patch, axis=3)[..., None]
        x = jnp.concatenate([jnp.where(pixels[:, v], 0.0, views[:, v]) for v in range(2)])
        (z, recon), stats = apply_train(method.model, params, before.state["batch_stats"], x,
                                        method=functools.partial(net, out_hw=(h, w),
                                                                 decode=mask_views))
        con = nt_xent(z[:b], z[b:], cfg.mrcl.temperature)
        # The unmasked view is the target, scored on its masked patches.
        rec = sum(masked_mse(r, views[:, v], ~masks[:, v] if visible else masks[:, v])
                  for r, v in zip(recon, mask_views)) / len(mask_views)
        return con + cfg.mrcl.lambda_rec * rec, stats

    return before, after, reference


def test_mrcl_update_is_the_gradient_of_nt_xent_plus_masked_reconstruction(mrcl):
    before, after, reference = mrcl
    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)


def test_mrcl_control_reconstruction_of_the_visible_patches_is_rejected(mrcl):
    before, after, reference = mrcl
    grads, _ = reference_grad(functools.partial(reference, visible=True), before.params)
    assert_control_fails(before.params, after.params, grads)


# ---- MoCo and InfoMin (queue, EMA key encoder, shuffled grouped BatchNorm) --------------------

def moco_instance(method, cfg, params, state, views, perm, *, queue=None):
    """Queries with BN per group in batch order, keys from the EMA encoder with BN per group of
    the permuted batch (``perm``), InfoNCE against ``queue`` (default: the old queue)."""
    groups = cfg.moco.bn_groups
    (features, q), stats = grouped(method.model, params, state["batch_stats"], views[:, 0],
                                   groups)
    (_, k), key_stats = grouped(method.model, state["key"]["params"],
                                state["key"]["batch_stats"], views[:, 1], groups, order=perm)
    k = jax.lax.stop_gradient(k)
    negatives = state["queue"] if queue is None else queue
    return infonce(q, k, negatives, cfg.moco.temperature), k, stats, key_stats


def ring(queue, ptr, k):
    """The ring buffer after enqueueing the normalised keys: row ``(ptr + i) % K`` gets key i."""
    rows = (int(ptr) + np.arange(k.shape[0])) % queue.shape[0]
    return jnp.asarray(queue).at[rows].set(unit(k)), (int(ptr) + k.shape[0]) % queue.shape[0]


def check_moco_state(cfg, before, after, k, stats, key_stats):
    queue, ptr = ring(before.state["queue"], before.state["queue_ptr"], k)
    np.testing.assert_allclose(after.state["queue"], queue, rtol=1e-5, atol=1e-6)
    assert int(after.state["queue_ptr"]) == ptr
    assert_tree_close(after.state["batch_stats"], stats)
    assert_tree_close(after.state["key"]["batch_stats"], key_stats)
    m = cfg.moco.momentum
    ema = jax.tree.map(lambda t, p: m * np.asarray(t, np.float64) + (1 - m) * np.asarray(p),
                       before.state["key"]["params"], after.params)
    assert_tree_close(after.state["key"]["params"], ema)


@pytest.fixture(scope="module")
def moco():
    cfg, method = momentum_method("moco", **{"moco.bn_groups": 2})
    assert cfg.moco.shuffle_bn
    batch = two_view_batch(2)
    before, after, _ = take_step(cfg, method, batch)
    # MoCo permutes the keys before the BN groups with the step's key (shuffle BN).
    perm = np.asarray(jax.random.permutation(step_key(), batch["views"].shape[0]))

    def reference(params, *, enqueue_first=False):
        views = jnp.asarray(batch["views"])
        queue = None
        if enqueue_first:  # the bug: this step's keys already in the negatives
            _, k, _, _ = moco_instance(method, cfg, params, before.state, views, perm)
            queue = ring(before.state["queue"], before.state["queue_ptr"], k)[0]
        loss, k, stats, key_stats = moco_instance(method, cfg, params, before.state, views,
                                                  perm, queue=queue)
        return loss, (k, stats, key_stats)

    return cfg, before, after, reference


def test_moco_update_is_the_infonce_gradient_with_a_constant_queue(moco):
    cfg, before, after, reference = moco
    grads, (k, stats, key_stats) = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    check_moco_state(cfg, before, after, k, stats, key_stats)


def test_moco_control_queue_enqueued_before_the_loss_is_rejected(moco):
    _, before, after, reference = moco
    grads, _ = reference_grad(functools.partial(reference, enqueue_first=True), before.params)
    assert_control_fails(before.params, after.params, grads)


@pytest.fixture(scope="module")
def infomin():
    cfg = tiny_config("infomin", **INFOMIN)
    method = methods.get_method("infomin")(cfg, num_classes=10)
    method.model = method.model.clone(backbone=TinyBackbone())
    batch = infomin_batch(4)
    before, after, _ = take_step(cfg, method, batch)
    # The step's key splits into the key permutation's and the patch shuffles' keys.
    shuffle_rng, jig_rng = jax.random.split(step_key())
    b, k9 = batch["jigsaw"].shape[:2]
    key_perm = np.asarray(jax.random.permutation(shuffle_rng, b))
    jig_perm = np.asarray(jax.vmap(lambda r: jax.random.permutation(r, k9))(
        jax.random.split(jig_rng, b)))

    def reference(params, *, beta=None):
        beta = cfg.infomin.beta if beta is None else beta
        views, jig = jnp.asarray(batch["views"]), jnp.asarray(batch["jigsaw"])
        l_inst, k, stats, key_stats = moco_instance(method, cfg, params, before.state, views,
                                                    key_perm)
        # Jigsaw: the 9 patches of each image through the query backbone (BN per group of
        # images, continuing from the instance pass's statistics), shuffled within the image.
        groups, n = cfg.moco.bn_groups, b // cfg.moco.bn_groups
        q_jig, jig_stats = [], []
        for g in range(groups):
            rows = slice(g * n, (g + 1) * n)
            x = jig[rows].reshape((-1,) + jig.shape[2:])
            out, s = apply_train(method.model, params, stats, x, perm=jig_perm[rows],
                                 method=InfoMinNet.jigsaw)
            q_jig.append(out)
            jig_stats.append(s)
        l_jig = infonce(jnp.concatenate(q_jig), k, before.state["queue"], cfg.moco.temperature)
        return (1 - beta) * l_inst + beta * l_jig, (k, mean_tree(jig_stats), key_stats)

    return cfg, before, after, reference


def test_infomin_update_is_the_gradient_of_half_instance_half_jigsaw(infomin):
    cfg, before, after, reference = infomin
    assert cfg.infomin.beta == 0.5
    grads, (k, stats, key_stats) = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    check_moco_state(cfg, before, after, k, stats, key_stats)


def test_infomin_control_without_the_jigsaw_term_is_rejected(infomin):
    _, before, after, reference = infomin
    grads, _ = reference_grad(functools.partial(reference, beta=0.0), before.params)
    # The jigsaw head gets no gradient at all without its term: compare the shared leaves.
    assert_control_fails(before.params, after.params, grads)


# ---- BYOL (EMA target under stop-gradient, per-view passes) ------------------------------------

@pytest.fixture(scope="module")
def byol_step():
    cfg, method = momentum_method("byol")
    batch = two_view_batch(5)
    before, after, _ = take_step(cfg, method, batch)

    def reference(params, *, mispair=False):
        views = jnp.asarray(batch["views"])
        target = before.state["target"]
        outs, stats = per_view(method.model, params, before.state["batch_stats"], views)
        targets, target_stats = per_view(method.target, target["params"],
                                         target["batch_stats"], views)
        (_, _, p1), (_, _, p2) = outs
        (_, z1), (_, z2) = targets
        if mispair:
            z1, z2 = z2, z1
        return byol(p1, z2) + byol(p2, z1), (stats, target_stats)

    return cfg, before, after, reference


def test_byol_update_is_the_gradient_of_the_symmetrised_regression(byol_step):
    cfg, before, after, reference = byol_step
    grads, (stats, target_stats) = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    assert_tree_close(after.state["target"]["batch_stats"], target_stats)
    # The target follows the new online parameters with tau(0) = base momentum.
    tau = 1 - (1 - cfg.byol.base_momentum) * (math.cos(0.0) + 1) / 2
    online = {k: after.params[k] for k in ("backbone", "head")}
    ema = jax.tree.map(lambda t, p: tau * np.asarray(t, np.float64) + (1 - tau) * np.asarray(p),
                       before.state["target"]["params"], online)
    assert_tree_close(after.state["target"]["params"], ema)


def test_byol_control_mispaired_views_are_rejected(byol_step):
    _, before, after, reference = byol_step
    grads, _ = reference_grad(functools.partial(reference, mispair=True), before.params)
    assert_control_fails(before.params, after.params, grads)


# ---- Barlow Twins, VICReg, CorInfoMax (per-view passes) ----------------------------------------

@pytest.fixture(scope="module")
def redundancy():
    cache = {}

    def get(name):
        if name not in cache:
            # CorInfoMax: alpha 1 (configs: 250 or more), so that the log-determinant term
            # carries a good part of the gradient, not ~0.3%.
            cfg, method = redundancy_method(name, **({"loss.sim_weight": 1.0}
                                                     if name == "corinfomax" else {}))
            batch = two_view_batch(6)
            cache[name] = (cfg, method, batch) + take_step(cfg, method, batch)[:2]
        return cache[name]

    return get


def projections(method, params, state, views, *, joint_bn):
    if joint_bn:
        (_, z), stats = joint(method.model, params, state["batch_stats"], views)
        b = views.shape[0]
        return z[:b], z[b:], stats
    ((_, z1), (_, z2)), stats = per_view(method.model, params, state["batch_stats"], views)
    return z1, z2, stats


def test_barlow_twins_update_is_the_gradient(redundancy):
    cfg, method, batch, before, after = redundancy("barlow_twins")
    lc = cfg.loss
    assert (lc.ddof, lc.eps) == (0, 1e-5)

    def reference(params, joint_bn=False):
        z1, z2, stats = projections(method, params, before.state, jnp.asarray(batch["views"]),
                                    joint_bn=joint_bn)
        return barlow_twins(z1, z2, lc.lambd, lc.eps), stats

    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    # Control: both views in one BatchNorm pass (SimCLR's routing) is not Barlow Twins.
    grads, _ = reference_grad(functools.partial(reference, joint_bn=True), before.params)
    assert_control_fails(before.params, after.params, grads)


def test_vicreg_update_is_the_gradient(redundancy):
    cfg, method, batch, before, after = redundancy("vicreg")
    lc = cfg.loss

    def reference(params, mispair=False):
        z1, z2, stats = projections(method, params, before.state, jnp.asarray(batch["views"]),
                                    joint_bn=False)
        if mispair:
            z2 = jnp.roll(z2, 1, axis=0)
        return vicreg(z1, z2, lc.sim_coeff, lc.std_coeff, lc.cov_coeff), stats

    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    grads, _ = reference_grad(functools.partial(reference, mispair=True), before.params)
    assert_control_fails(before.params, after.params, grads)


def test_corinfomax_update_is_the_gradient_with_the_old_state_constant(redundancy):
    cfg, method, batch, before, after = redundancy("corinfomax")
    lc = cfg.loss
    old = before.state["corinfomax"]
    assert old.R1.dtype == np.float64 and lc.la_R == lc.la_mu == 0.5

    def reference(params, old_state=False):
        z1, z2, stats = projections(method, params, before.state, jnp.asarray(batch["views"]),
                                    joint_bn=False)
        with jax.enable_x64(True):  # the official state and log-determinant are float64
            z1, z2 = unit(z1.astype(jnp.float64)), unit(z2.astype(jnp.float64))
            n, d = z1.shape
            new, cov = {}, 0.0
            for b, z, mu_old, r_old in ((1, z1, old.mu1, old.R1), (2, z2, old.mu2, old.R2)):
                mu = lc.la_mu * mu_old + (1 - lc.la_mu) * z.mean(0)
                zc = z - mu  # centred with the NEW mean
                r = lc.la_R * r_old + (1 - lc.la_R) * zc.T @ zc / n
                # The control's bug: the log-determinant of the state before this batch.
                logdet_of = jnp.asarray(r_old) if old_state else r
                cov = cov - jnp.linalg.slogdet(logdet_of + lc.eps * jnp.eye(d))[1] / d
                new[f"mu{b}"], new[f"R{b}"] = jax.lax.stop_gradient(mu), jax.lax.stop_gradient(r)
            loss = lc.sim_weight * jnp.mean((z1 - z2) ** 2) + cov
        return loss, (stats, new)

    with jax.enable_x64(True):
        grads, (stats, new) = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    got = after.state["corinfomax"]
    for key, want in new.items():
        assert getattr(got, key).dtype == np.float64
        np.testing.assert_allclose(getattr(got, key), want, rtol=1e-5, atol=1e-7, err_msg=key)
    with jax.enable_x64(True):
        grads, _ = reference_grad(functools.partial(reference, old_state=True), before.params)
    assert_control_fails(before.params, after.params, grads)


# ---- SupCon, SelfCon, CE (one joint pass over all views of the multi-exit network) ------------

@pytest.fixture(scope="module")
def supervised():
    cache = {}

    def get(name):
        if name not in cache:
            # A two-stage ResNet (faster to compile), SelfCon's exit after stage 1.
            cfg, method = supervised_method(name, **({"model.exits": (1,)}
                                                     if name == "selfcon" else {}))
            small = models.ResNet(stage_sizes=(1, 1), block="basic", width=4)
            method.model = method.model.clone(
                network=method.model.network.clone(backbone=small))
            batch = supervised_batch(7, cfg.data.num_views)
            cache[name] = (cfg, method, batch) + take_step(cfg, method, batch)[:2]
        return cache[name]

    return get


def test_supcon_update_is_the_gradient(supervised):
    cfg, method, batch, before, after = supervised("supcon")
    lc = cfg.loss
    assert cfg.data.num_views == 2 and cfg.supcon.label

    def reference(params, image_major=False):
        (_, z), stats = joint(method.model, params, before.state["batch_stats"],
                              jnp.asarray(batch["views"]))
        labels = jnp.asarray(batch["label"])
        # Rows are view-major (view 0's B images, then view 1's): labels tiled, not repeated.
        ids = jnp.repeat(labels, 2) if image_major else jnp.tile(labels, 2)
        return supcon(z.backbone, ids, lc.temperature, lc.base_temperature), stats

    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    # Control: the rows read image-major (the views of an image mis-paired with its label).
    grads, _ = reference_grad(functools.partial(reference, image_major=True), before.params)
    assert_control_fails(before.params, after.params, grads)


def test_selfcon_update_is_the_gradient(supervised):
    cfg, method, batch, before, after = supervised("selfcon")
    lc = cfg.loss
    assert cfg.data.num_views == 1 and cfg.selfcon.label and cfg.selfcon.anchors == "all"

    def reference(params, detach_subnet=False):
        (_, z), stats = joint(method.model, params, before.state["batch_stats"],
                              jnp.asarray(batch["views"]))
        sub = z.exits[0]
        if detach_subnet:  # the bug: SelfCon has no stop-gradient on either exit
            sub = jax.lax.stop_gradient(sub)
        labels = jnp.asarray(batch["label"])
        e = jnp.concatenate([sub, z.backbone])
        return supcon(e, jnp.tile(labels, 2), lc.temperature, lc.base_temperature), stats

    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    grads, _ = reference_grad(functools.partial(reference, detach_subnet=True), before.params)
    assert_control_fails(before.params, after.params, grads)


def test_ce_update_is_the_cross_entropy_gradient(supervised):
    _, method, batch, before, after = supervised("ce")

    def reference(params, shifted=False):
        (_, logits), stats = joint(method.model, params, before.state["batch_stats"],
                                   jnp.asarray(batch["views"]))
        labels = jnp.asarray(batch["label"])
        if shifted:
            labels = jnp.roll(labels, 1)
        logp = jax.nn.log_softmax(logits.backbone)
        return -jnp.mean(logp[jnp.arange(labels.shape[0]), labels]), stats

    grads, stats = reference_grad(reference, before.params)
    assert_update_is_gradient(before.params, after.params, grads)
    assert_tree_close(after.state["batch_stats"], stats)
    grads, _ = reference_grad(functools.partial(reference, shifted=True), before.params)
    assert_control_fails(before.params, after.params, grads)
