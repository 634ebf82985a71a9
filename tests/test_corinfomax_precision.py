"""CorInfoMax's running state and log-determinant in float64 (``corinfomax.state_dtype``).

The official code keeps the running means / covariances and takes the log-determinant in
float64. ssljax does the same without a global ``jax_enable_x64``: the state is created and
updated under a local x64 scope (see ``ssljax.losses.information``). These tests chain 50
steps of the method's loss on fixed embeddings against a NumPy float64 reference written
here from METHODS.md's formulas, measure the float32 path against it, and run the real
trainer (jitted, donated, sharded step; orbax checkpoint) to see the state stay float64.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import checkpoint, methods, sharding, train
from ssljax.config import ConfigError
from ssljax.losses._common import l2_normalize
from ssljax.methods import barlow_twins

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import load_config, tiny_config  # noqa: E402

D, N, STEPS = 64, 256, 50
HP = dict(sim_weight=250.0, la_R=0.01, la_mu=0.01, eps=1e-8)
F64 = np.dtype("float64")


# ----------------------------------------------------------------------------- reference


def reference_chain(zs):
    """METHODS.md, in NumPy float64: per step and branch b,
    mu_b = la_mu mu_b + (1 - la_mu) mean(z_b); zc = z_b - mu_b (the new mean);
    R_b = la_R R_b + (1 - la_R) zc^T zc / N; cov = -(logdet(R_1 + eps I) + logdet(R_2 + eps I)) / D;
    sim = mean((z1 - z2)^2); loss = alpha sim + cov. z is L2-normalised first; R = I, mu = 0 at
    the start. Returns per-step (loss, sim, cov) and the per-step states (R1, R2, mu1, mu2)."""
    la_r, la_mu, eps, alpha = HP["la_R"], HP["la_mu"], HP["eps"], HP["sim_weight"]
    r = [np.eye(D), np.eye(D)]
    mu = [np.zeros(D), np.zeros(D)]
    terms, states = [], []
    for z1, z2 in zs:
        z = [np.asarray(x, np.float64) for x in (z1, z2)]
        z = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in z]
        logdets = []
        for b in range(2):
            mu[b] = la_mu * mu[b] + (1 - la_mu) * z[b].mean(0)
            zc = z[b] - mu[b]
            r[b] = la_r * r[b] + (1 - la_r) * (zc.T @ zc) / z[b].shape[0]
            sign, logdet = np.linalg.slogdet(r[b] + eps * np.eye(D))
            assert sign > 0
            logdets.append(logdet)
        cov = -(logdets[0] + logdets[1]) / D
        sim = np.mean((z[0] - z[1]) ** 2)
        terms.append((alpha * sim + cov, sim, cov))
        states.append((r[0].copy(), r[1].copy(), mu[0].copy(), mu[1].copy()))
    return terms, states


def embeddings(num_steps=STEPS, seed=0):
    """Fixed float32 projector outputs: two correlated views, an anisotropic spectrum (as a
    trained projector's) so the covariance's eigenvalues span a few decades."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1.0, 0.02, D)
    out = []
    for _ in range(num_steps):
        base = rng.normal(size=(N, D)) * scale + 0.3 * rng.normal(size=D) * scale
        z1 = base + 0.2 * rng.normal(size=(N, D)) * scale
        z2 = base + 0.2 * rng.normal(size=(N, D)) * scale
        out.append((z1.astype(np.float32), z2.astype(np.float32)))
    return out


# ----------------------------------------------------------------------------- the method's path


def embedding_method(monkeypatch, state_dtype):
    """The CorInfoMax method of a config with D=64 and the hyper-parameters above, whose
    network is replaced by fixed embeddings: ``views`` [2, N, D] are the two projector
    outputs. Its own ``__init__`` (config), ``init_model`` (state), ``project`` (the
    L2-normalisation) and ``loss`` run unchanged."""
    monkeypatch.setattr(barlow_twins.TwoViewMethod, "init_model",
                        lambda self, rng, batch: ({}, {"batch_stats": {}}))
    monkeypatch.setattr(barlow_twins.TwoViewMethod, "project",
                        lambda self, params, state, views: (views, [views[0], views[1]], state))
    cfg = tiny_config("corinfomax", **{"projector.out_dim": D,
                                       "corinfomax.state_dtype": state_dtype,
                                       **{f"loss.{k}": v for k, v in HP.items()}})
    return methods.get_method("corinfomax")(cfg, num_classes=10)


def run_chain(method, zs):
    """Chains the method's loss (with its gradient, as the train step takes it) over ``zs``."""
    _, state = method.init_model(None, None)

    @jax.jit
    def step(state, views):
        def loss_fn(v):
            return method.loss({}, state, {"views": v}, jax.random.key(0), jnp.int32(0))
        (loss, out), grad = jax.value_and_grad(loss_fn, has_aux=True)(views)
        return loss, out.metrics, out.state, grad

    states, losses, parts, grads = [state["corinfomax"]], [], [], []
    for z1, z2 in zs:
        loss, metrics, state, grad = step(state, jnp.stack([z1, z2]))
        losses.append(loss)
        parts.append(metrics)
        grads.append(grad)
        states.append(state["corinfomax"])
    return jax.device_get((losses, parts, states, grads))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def chain_data():
    zs = embeddings()
    # The method's projector output is L2-normalised in float32 (as the official projector's
    # F.normalize) before the loss; the reference starts from those float32 values. (Starting
    # from the raw embeddings instead, sim = mean((z1 - z2)^2) of close views differs by
    # ~2e-9 relative: the float32 normalisation, not the loss.)
    normalize = jax.jit(l2_normalize)
    normalized = [tuple(np.asarray(normalize(z)) for z in pair) for pair in zs]
    return zs, reference_chain(normalized)


def test_float64_state_matches_numpy_float64_over_50_steps(monkeypatch, chain_data):
    assert not jax.config.jax_enable_x64  # the point: no global x64
    zs, (ref_terms, ref_states) = chain_data
    method = embedding_method(monkeypatch, "float64")
    losses, parts, states, grads = run_chain(method, zs)
    assert {x.dtype for s in states for x in s} == {F64}
    for k in range(STEPS):
        loss_ref, sim_ref, cov_ref = ref_terms[k]
        # The logged parts are float64; the loss the gradient flows from is float32, rounded
        # once from its float64 value.
        assert parts[k]["sim"].dtype == F64 and parts[k]["cov"].dtype == F64
        np.testing.assert_allclose(parts[k]["sim"], sim_ref, rtol=1e-10, err_msg=f"sim {k}")
        np.testing.assert_allclose(parts[k]["cov"], cov_ref, rtol=1e-10, err_msg=f"cov {k}")
        np.testing.assert_allclose(HP["sim_weight"] * parts[k]["sim"] + parts[k]["cov"], loss_ref,
                                   rtol=1e-10, err_msg=f"loss {k}")
        assert losses[k].dtype == np.float32 and grads[k].dtype == np.float32
        np.testing.assert_allclose(losses[k], loss_ref, rtol=2 ** -24)
        for name, got, want in zip(("R1", "R2", "mu1", "mu2"), states[k + 1], ref_states[k]):
            assert _rel(got, want) < 1e-10, (k, name, _rel(got, want))
    # The state moved (the comparison is not vacuous) and the loss has a gradient.
    assert np.abs(states[-1][0] - np.eye(D)).max() > 0.5
    assert all(np.all(np.isfinite(g)) and np.abs(g).max() > 0 for g in grads)


def test_float32_state_against_the_same_reference(monkeypatch, chain_data, capsys):
    zs, (ref_terms, ref_states) = chain_data
    method = embedding_method(monkeypatch, "float32")
    losses, parts, states, _ = run_chain(method, zs)
    assert {x.dtype for s in states for x in s} == {np.dtype("float32")}
    loss_err = max(_rel(losses[k], ref_terms[k][0]) for k in range(STEPS))
    cov_err = max(_rel(parts[k]["cov"], ref_terms[k][2]) for k in range(STEPS))
    state_err = max(_rel(got, want) for got, want in zip(states[-1], ref_states[-1]))
    r_abs = max(float(np.abs(np.asarray(got, np.float64) - want).max())
                for got, want in zip(states[-1][:2], ref_states[-1][:2]))
    with capsys.disabled():
        print(f"\nfloat32 CorInfoMax vs NumPy float64 over {STEPS} steps (D={D}, N={N}): "
              f"loss max rel {loss_err:.2e}, cov term max rel {cov_err:.2e}, final state max "
              f"rel {state_err:.2e} (R max abs {r_abs:.2e})")
    # float32 is close, but measurably further than float64 (1e-10 above).
    assert loss_err < 1e-5 and state_err < 1e-5
    assert max(loss_err, cov_err, state_err) > 1e-8


def test_local_x64_gradient_equals_global_x64_gradient(monkeypatch):
    """The custom_vjp backward pass (local x64 scope) is the plain float64 gradient."""
    from ssljax import losses as L
    z1, z2 = embeddings(1, seed=3)[0]
    state = L.corinfomax_init(D, dtype="float64")

    def loss(a, b):
        return L.corinfomax(a, b, state, **HP)[0]

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(z1, z2)
    with jax.enable_x64(True):
        want = jax.grad(lambda a, b: loss(a.astype(jnp.float64), b.astype(jnp.float64)),
                        argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, np.asarray(w).astype(np.float32), rtol=1e-6, atol=1e-9)


def test_state_dtype_is_validated():
    cfg = tiny_config("corinfomax", **{"corinfomax.state_dtype": "bfloat16"})
    with pytest.raises(ConfigError, match=r"corinfomax.state_dtype='bfloat16' is not valid"):
        methods.get_method("corinfomax")(cfg, num_classes=10)
    for variant in ("fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet100",
                    "imagenet"):
        assert load_config("corinfomax", variant).corinfomax.state_dtype == "float64"


# ----------------------------------------------------------------------------- the trainer


def _replicated_8(x):
    return x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The real trainer pieces on 8 devices: a width-4 ResNet-18 config (16x16 images, batch
    16), two jitted, sharded steps (the state donated), a checkpoint of the state after them,
    and the live next step from it. Records the state's dtypes and shardings on the way."""
    cfg = tiny_config("corinfomax")
    assert cfg.corinfomax.state_dtype == "float64" and cfg.model.width == 4
    method = methods.get_method("corinfomax")(cfg, num_classes=10)
    mesh = sharding.make_mesh(8)
    steps = train.build_step(cfg, method, mesh, total_steps=6, steps_per_epoch=16)
    put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
    rng = np.random.default_rng(0)
    batches = [put({"views": rng.normal(size=(16, 2, 16, 16, 1)).astype(np.float32),
                    "label": rng.integers(0, 10, size=16).astype(np.int32)}) for _ in range(3)]
    abstract_state, state_sharding = steps.abstract_state(batches[0])
    # As train.train_and_evaluate builds the restore target.
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state, state_sharding)
    seen = {"abstract": {x.dtype for x in abstract.state["corinfomax"]}, "steps": []}

    def record(ts, metrics=None):
        cim = ts.state["corinfomax"]
        seen["steps"].append(dict(
            state={x.dtype for x in cim}, replicated=all(_replicated_8(x) for x in cim),
            params=ts.params["head"]["dense0"]["kernel"].dtype,
            loss=None if metrics is None else metrics["loss"].dtype,
            cov=None if metrics is None else metrics["cov"].dtype))

    ts = steps.init(train.init_key(0), batches[0])
    record(ts)
    for batch in batches[:2]:
        ts, metrics = steps.train_step(ts, batch, jax.random.key(1))
        record(ts, metrics)
    saved = jax.device_get(ts)
    directory = str(tmp_path_factory.mktemp("cim_ckpt"))
    ckpt = checkpoint.Checkpointer(directory)
    ckpt.save(2, ts, {"method": "corinfomax"})
    ckpt.close()
    live_next, live_metrics = steps.train_step(ts, batches[2], jax.random.key(1))  # donates ts
    return dict(steps=steps, batches=batches, abstract=abstract, seen=seen, saved=saved,
                directory=directory, live_next=jax.device_get(live_next),
                live_loss=float(live_metrics["loss"]))


def _restore(trained):
    ckpt = checkpoint.Checkpointer(trained["directory"])
    try:
        return ckpt.restore(2, trained["abstract"])[0]
    finally:
        ckpt.close()


def test_float64_state_survives_the_sharded_donated_step(trained):
    seen = trained["seen"]
    assert seen["abstract"] == {F64}
    for k, rec in enumerate(seen["steps"]):
        assert rec["state"] == {F64} and rec["replicated"], (k, rec)
        assert rec["params"] == np.float32  # only the CorInfoMax state is float64
        if k:
            assert rec["loss"] == np.float32 and rec["cov"] == F64, (k, rec)
    r1 = trained["saved"].state["corinfomax"].R1
    assert np.abs(r1 - np.eye(r1.shape[0])).max() > 0.1  # the state moved
    # Bits below float32's precision: the state really is float64, not widened float32.
    assert np.any(r1 != r1.astype(np.float32).astype(np.float64))


def _assert_round_trip(trained, restored):
    cim = restored.state["corinfomax"]
    assert {x.dtype for x in cim} == {F64} and all(_replicated_8(x) for x in cim)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(trained["saved"])):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)
    nxt, metrics = trained["steps"].train_step(restored, trained["batches"][2], jax.random.key(1))
    assert float(metrics["loss"]) == trained["live_loss"]
    for got, want in zip(nxt.state["corinfomax"], trained["live_next"].state["corinfomax"]):
        assert got.dtype == F64
        np.testing.assert_array_equal(np.asarray(got), want)


def test_checkpoint_round_trip_keeps_float64(trained):
    """ssljax.checkpoint restores under a local x64 scope: bit-exact for every leaf (the others
    keep their float32 / int32 targets), and the run steps on exactly as the live state."""
    _assert_round_trip(trained, _restore(trained))


def test_float32_restored_state_goes_back_to_float64(trained):
    """A float32 state (a checkpoint of a float32 run, or a restore without the x64 scope)
    is taken back to float64, so the run goes on in float64 after one float32 rounding."""
    restored = _restore(trained)
    restored = restored.replace(state=dict(restored.state, corinfomax=jax.tree.map(
        lambda x: x.astype(np.float32), restored.state["corinfomax"])))
    nxt, metrics = trained["steps"].train_step(restored, trained["batches"][2], jax.random.key(1))
    live = trained["live_next"].state["corinfomax"]
    for got, want in zip(nxt.state["corinfomax"], live):
        assert got.dtype == F64
        assert _rel(got, want) < 1e-7
    np.testing.assert_allclose(float(metrics["loss"]), trained["live_loss"], rtol=1e-6)
