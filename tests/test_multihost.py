"""Multi-host on one machine: 2 processes x 4 fake CPU devices (gloo collectives) train as
1 process x 8 devices does, and the checkpoint they write together restores in one process.

The two processes run ``python -m ssljax.main`` with explicit ``--coordinator_address``,
``--num_processes`` and ``--process_id``: each reads its half of every global batch, the
train step's collectives cross the process boundary, orbax saves from both.
"""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import config_flags, read_metrics, tiny_config
from ssljax import checkpoint, sharding, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 8


def config(method, **overrides):
    # 8 planned steps; the 2-process run stops after 4, the 1-process ones after 6, so no run
    # pays for the final evaluation.
    return tiny_config(method, **{"total_steps": TOTAL, "stop_after_step": 6, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(method: str, workdir: str) -> list[subprocess.CompletedProcess]:
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
               SSLJAX_XLA_CACHE=os.path.join(REPO, ".pytest_cache", "xla"))
    flags = config_flags(method, config(method, stop_after_step=4))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "ssljax.main", f"--config=configs/{method}.py:fashion_mnist",
         f"--workdir={workdir}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        finally:
            p.kill()
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return outs


@pytest.fixture(scope="module", params=["simclr", "corinfomax"])
def runs(request, tmp_path_factory):
    method = request.param
    two = str(tmp_path_factory.mktemp(f"{method}_2proc"))
    outs = run_two_processes(method, two)
    for i, out in enumerate(outs):
        assert out.returncode == 0, f"process {i}:\n{out.stderr[-3000:]}"
    one = str(tmp_path_factory.mktemp(f"{method}_1proc"))
    train.train_and_evaluate(config(method), one, mesh=sharding.make_mesh(8))
    return method, two, outs, one


def test_two_processes_train_as_one(runs):
    method, two, outs, one = runs
    l2 = {s: r["loss"] for s, r in read_metrics(two).items()}
    l1 = {s: r["loss"] for s, r in read_metrics(one).items()}
    # Only process 0 writes metrics: each step once.
    with open(os.path.join(two, "metrics.jsonl")) as f:
        assert sum('"loss"' in line for line in f) == 4
    assert sorted(l2) == [1, 2, 3, 4]
    # Same global batch, same global objective: a per-process batch, per-process BatchNorm
    # statistics or a per-process covariance would move step 1 by percents.
    np.testing.assert_allclose([l2[s] for s in (1, 2, 3, 4)], [l1[s] for s in (1, 2, 3, 4)],
                               rtol=1e-5, err_msg=method)
    # Process 0 logs; process 1 stays quiet.
    assert "step 4/4" in outs[0].stderr
    assert not re.search(r"step \d+/\d+ \|", outs[1].stderr)


def test_two_process_checkpoint_restores_in_one_process(runs):
    method, two, _, one = runs
    assert checkpoint.Checkpointer(os.path.join(two, "checkpoints")).all_steps() == [4]
    train.train_and_evaluate(config(method), two, mesh=sharding.make_mesh(8))
    l2 = {s: r["loss"] for s, r in read_metrics(two).items()}
    l1 = {s: r["loss"] for s, r in read_metrics(one).items()}
    assert sorted(l2) == [1, 2, 3, 4, 5, 6]  # resumed at step 5, did not start again
    # Loosely, as in test_train: tiny nets magnify summation-order differences with steps.
    np.testing.assert_allclose([l2[s] for s in (5, 6)], [l1[s] for s in (5, 6)], rtol=1e-3)
