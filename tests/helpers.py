"""Shared pieces of the trainer-level tests: tiny configs of any method, metrics readers."""

import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str = "fashion_mnist"):
    """``configs/<name>.py``'s ``get_config(variant)``."""
    spec = importlib.util.spec_from_file_location(f"_configs_{name}",
                                                  os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def set_fields(c, overrides: dict):
    """``{'optimizer.lr': 0.1}`` -> ``c.optimizer.lr = 0.1``."""
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def tiny_config(name: str, **overrides):
    """A method's Fashion-MNIST config shrunk to seconds: width 4, 16x16 images, batch 16,
    6 steps of SGD (see tests/test_train.py's ``tiny_config`` for why stride-1 stem and SGD)."""
    c = load_config(name)
    c.data.train_split = "train[:256]"
    c.data.test_split = "test[:128]"
    c.data.image_size = 16
    c.model.width = 4
    c.model.stem_stride = 1
    c.projector.hidden_dims = (32,)
    c.projector.out_dim = 16
    c.batch_size = 16
    c.total_steps = 6
    c.log_every = 1
    c.checkpoint_every = 1000
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.05
    c.optimizer.lr_scaling = "linear"
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_init = 0.0
    c.optimizer.step_per_epoch = False
    c.eval.baselines = False
    c.eval.linear_epochs = 2
    c.eval.knn_k = 5
    c.eval.embedding_plot = False  # the t-SNE map is seconds; tests/test_eval_every.py draws it
    return set_fields(c, overrides)


def read_metrics(workdir: str) -> dict[int, dict]:
    """``metrics.jsonl`` rows that carry a training loss, by step."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if "loss" in r}


def config_flags(name: str, config) -> list[str]:
    """``config`` as ``--config.<key>=<value>`` overrides of ``configs/<name>.py:fashion_mnist``,
    for running it through ``python -m ssljax.main`` in a subprocess."""
    from ssljax.config import flatten_keys
    base = load_config(name)
    flags = []
    for key in flatten_keys(config):
        node_b, node_t = base, config
        for part in key.split("."):
            node_b, node_t = node_b[part], node_t[part]
        if not hasattr(node_t, "items") and node_b != node_t:
            flags.append(f"--config.{key}={node_t}")
    return flags


def synthetic_batch(seed: int, *, batch_size: int = 16, views: int = 2, image_size: int = 16,
                    num_classes: int = 10, brighter_second_view: bool = True) -> dict:
    """Random normal views ``[B, V, S, S, 1]`` and labels. With ``brighter_second_view`` the
    second view is brighter and of higher contrast, as after a strong augmentation: per-view
    BatchNorm removes that, BatchNorm over both views together does not."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, views, image_size, image_size, 1))
    if brighter_second_view and views > 1:
        x[:, 1] = 2.0 * x[:, 1] + 1.0
    return {"views": x.astype(np.float32),
            "label": rng.integers(0, num_classes, size=(batch_size,)).astype(np.int32)}


def run_steps(cfg, method, num_devices: int, batches: list[dict], *, initial=None,
              rng_seed: int = 7, total_steps: int = 6, steps_per_epoch: int = 16) -> dict:
    """The trainer's compiled step (``train.build_step``) over ``batches``, from ``initial``
    (a host copy of a train state, replicated onto this mesh; saves compiling init again) or
    a fresh init. Returns host copies: ``params[k]`` and ``states[k]`` before step ``k``
    (index ``len(batches)``: after the last step), ``metrics[k]`` of step ``k``, ``initial``
    the whole initial train state, and the ``steps``/``put`` used."""
    import functools

    import jax

    from ssljax import sharding, train
    mesh = sharding.make_mesh(num_devices)
    steps = train.build_step(cfg, method, mesh, total_steps=total_steps,
                             steps_per_epoch=steps_per_epoch)
    put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
    if initial is None:
        ts = steps.init(train.init_key(0), put(batches[0]))
    else:
        ts = jax.device_put(initial, steps.abstract_state(put(batches[0]))[1])
    run = {"cfg": cfg, "method": method, "steps": steps, "put": put, "batches": batches,
           "initial": jax.device_get(ts), "params": [jax.device_get(ts.params)],
           "states": [jax.device_get(ts.state)], "metrics": []}
    for batch in batches:
        ts, metrics = steps.train_step(ts, put(batch), jax.random.key(rng_seed))
        run["metrics"].append(jax.device_get(metrics))
        run["params"].append(jax.device_get(ts.params))
        run["states"].append(jax.device_get(ts.state))
    return run
