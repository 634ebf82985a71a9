"""SimSiam, the method added in one file on the shared parts (issue 22's proof of the house):
its objective against a NumPy reference, and its steps through the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config, run_steps, set_fields, synthetic_batch
from ssljax import losses, methods


def tiny(**overrides):
    c = load_config("simsiam")
    set_fields(c, {"data.image_size": 16, "model.width": 4, "model.stem_stride": 1,
                   "projector.hidden_dims": (32,), "projector.out_dim": 16,
                   "predictor.hidden_dims": (8,), "predictor.out_dim": 16, "batch_size": 16,
                   "total_steps": 6})
    return set_fields(c, overrides)


def neg_cos(p, z):
    p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
    return -np.mean(np.sum(p * z, -1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(z, axis=-1))


@pytest.mark.slow  # about 25 s idle
def test_loss_is_the_symmetric_negative_cosine_of_its_own_outputs():
    cfg = tiny()
    method = methods.get_method("simsiam")(cfg, num_classes=10)
    batch = jax.tree.map(jnp.asarray, synthetic_batch(0))
    params, state = method.init_model(jax.random.key(0), batch)
    loss, out = method.loss(params, state, batch, jax.random.key(1), 0)
    outs, stats = [], state["batch_stats"]
    for v in range(2):
        o, upd = method.model.apply({"params": params, "batch_stats": stats},
                                    batch["views"][:, v], train=True, mutable=["batch_stats"])
        stats = upd["batch_stats"]
        outs.append(o)
    (_, z1, p1), (_, z2, p2) = outs
    expected = (neg_cos(p1, z2) + neg_cos(p2, z1)) / 2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["d12"]), neg_cos(p1, z2), rtol=1e-5)
    # The projections are stop-gradient targets; the predictions carry the gradient.
    d = lambda p, z: losses.byol(p, z) / 2 - 1  # noqa: E731 (the method's D)
    assert float(jnp.abs(jax.grad(d, argnums=1)(p1, z2)).sum()) == 0.0
    assert float(jnp.abs(jax.grad(d, argnums=0)(p1, z2)).sum()) > 0.0


def test_three_steps_through_the_trainer():
    cfg = tiny()
    method = methods.get_method("simsiam")(cfg, num_classes=10)
    run = run_steps(cfg, method, 1, [synthetic_batch(0)] * 3)
    values = [float(m["loss"]) for m in run["metrics"]]
    assert all(-1.0 <= x <= 1.0 for x in values), values
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), run["params"][0],
                         run["params"][-1])
    assert max(jax.tree.leaves(moved)) > 0, "the step did not move the parameters"
