"""The ring over devices of two processes (2 x 4 fake CPU devices, gloo collectives): the
NT-Xent, InfoNCE and labelled SupCon values and gradients equal the single-process ones."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssljax.losses as L

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, D, BLOCK = 64, 8, 3

WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import ssljax.losses as L

n, d, block = {n}, {d}, {block}
rng = np.random.default_rng(0)
z1, z2 = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
sharding = NamedSharding(mesh, P("data"))
a = jax.make_array_from_callback((n, d), sharding, lambda idx: z1[idx])
b = jax.make_array_from_callback((n, d), sharding, lambda idx: z2[idx])
labels_np = (np.arange(n) * 7 % 5).astype(np.int32)
labels = jax.make_array_from_callback((n,), sharding, lambda idx: labels_np[idx])
out = {{}}
for name, loss in [
        ("nt_xent", lambda a, b, y: L.nt_xent(a, b, temperature=0.1, block_size=block,
                                           ring_axis="data", mesh=mesh)),
        ("infonce", lambda a, b, y: L.infonce(a, b, temperature=0.1, block_size=block,
                                           stop_gradient_key=False, ring_axis="data",
                                           mesh=mesh)),
        ("supcon", lambda a, b, y: L.supcon(jax.numpy.stack([a, b], 1), y, temperature=0.1,
                                         block_size=block, ring_axis="data", mesh=mesh))]:
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(a, b, labels)
    grads = [np.asarray(multihost_utils.process_allgather(g, tiled=True)).tolist()
             for g in grads]
    out[name] = dict(value=float(value), grads=grads)
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_ring_over_two_processes_equals_one_process(tmp_path):
    address = f"localhost:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
    script = WORKER.format(n=N, d=D, block=BLOCK)
    # Output to files, not pipes: a worker blocked on a full pipe would stall the other in
    # a collective while this process waits on the first.
    logs = [(open(tmp_path / f"out{i}", "w+"), open(tmp_path / f"err{i}", "w+"))
            for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, address, str(i)], cwd=REPO,
                              env=env, stdout=out, stderr=err, text=True)
             for i, (out, err) in enumerate(logs)]
    outs = []
    for p, (out, err) in zip(procs, logs):
        try:
            p.wait(timeout=300)
        finally:
            p.kill()
        out.seek(0), err.seek(0)
        assert p.returncode == 0, err.read()[-3000:]
        outs.append(json.loads(out.read().strip().splitlines()[-1]))

    rng = np.random.default_rng(0)
    z1 = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32))
    z2 = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32))
    single = {
        "nt_xent": lambda a, b: L.nt_xent(a, b, temperature=0.1),
        "infonce": lambda a, b: L.infonce(a, b, temperature=0.1, stop_gradient_key=False),
        "supcon": lambda a, b: L.supcon(jnp.stack([a, b], 1),
                                        jnp.asarray(np.arange(N) * 7 % 5, jnp.int32),
                                        temperature=0.1),
    }
    for name, fn in single.items():
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(z1, z2)
        for out in outs:  # both processes see the same global result
            np.testing.assert_allclose(out[name]["value"], float(value), rtol=2e-6)
            for got, want in zip(out[name]["grads"], grads):
                scale = float(jnp.max(jnp.abs(want)))
                assert np.max(np.abs(np.asarray(got) - np.asarray(want))) <= 2e-5 * scale
