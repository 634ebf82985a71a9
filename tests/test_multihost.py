"""Multi-host on one machine: 2 processes x 4 fake CPU devices (gloo collectives) train as
1 process x 8 devices does, and the checkpoint they write together restores in one process.

The two processes run ``python -m ssljax.main`` with explicit ``--coordinator_address``,
``--num_processes`` and ``--process_id``: each reads its half of every global batch, the
train step's collectives cross the process boundary, orbax saves from both.
"""

import json
import os
import re
import shutil
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
    # 8 planned steps; the 2-process run stops after 5, the 1-process ones after 6, so no run
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
    # Checkpoints at steps 4 and 5.
    flags = config_flags(method, config(method, stop_after_step=5, checkpoint_every=4))
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


@pytest.mark.integration
def test_two_processes_train_as_one(runs):
    method, two, outs, one = runs
    l2 = {s: r["loss"] for s, r in read_metrics(two).items()}
    l1 = {s: r["loss"] for s, r in read_metrics(one).items()}
    # Only process 0 writes metrics: each step once.
    with open(os.path.join(two, "metrics.jsonl")) as f:
        assert sum('"loss"' in line for line in f) == 5
    assert sorted(l2) == [1, 2, 3, 4, 5]
    # Same global batch, same global objective: a per-process batch, per-process BatchNorm
    # statistics or a per-process covariance would move step 1 by percents.
    np.testing.assert_allclose([l2[s] for s in (1, 2)], [l1[s] for s in (1, 2)],
                               rtol=1e-5, err_msg=method)
    # Later steps loosely: the cross-process all-reduce sums in another order, and this tiny
    # net magnifies float32 rounding. Measured for SimCLR with the 2x2 convolutions as matrix
    # products (ssljax/models/conv.py): 7e-7 at step 2, 2e-3 at step 3, 1.4e-2 at step 4,
    # 1.9e-2 at step 5; with XLA's convolution there, 3e-6 at step 3 and 1e-3 at step 4.
    np.testing.assert_allclose([l2[s] for s in (3, 4, 5)], [l1[s] for s in (3, 4, 5)],
                               rtol=5e-2, err_msg=method)
    # Process 0 logs; process 1 stays quiet.
    assert "step 5/5" in outs[0].stderr
    assert not re.search(r"step \d+/\d+ \|", outs[1].stderr)


@pytest.mark.integration
def test_two_process_checkpoint_restores_in_one_process(runs):
    method, two, _, _ = runs
    ckpt_dir = os.path.join(two, "checkpoints")
    assert checkpoint.Checkpointer(ckpt_dir).all_steps() == [4, 5]
    step5_two_processes = read_metrics(two)[5]["loss"]
    # Resume from step 4 (drop step 5): one process, 8 devices, must redo step 5 as the two
    # processes did. One step from the same state is not chaotic: a wrong restore (shards of
    # one process missing or misplaced, a fresh init) changes it by percents.
    shutil.rmtree(os.path.join(ckpt_dir, "5"))
    train.train_and_evaluate(config(method), two, mesh=sharding.make_mesh(8))
    # The resume drops the rows after step 4 and writes steps 5 and 6 once.
    rows = [json.loads(line) for line in open(os.path.join(two, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    resumed = {r["step"]: r["loss"] for r in rows[4:] if "loss" in r}
    assert sorted(resumed) == [5, 6]  # resumed at step 5, did not start again
    np.testing.assert_allclose(resumed[5], step5_two_processes, rtol=1e-5, err_msg=method)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """JAX's preemption sync manager: SIGTERM reaches one process; both save the same step."""
    import signal
    import time
    workdir = tmp_path / "run"
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
               SSLJAX_XLA_CACHE=os.path.join(REPO, ".pytest_cache", "xla"))
    flags = config_flags("simclr", config("simclr", total_steps=100_000, stop_after_step=-1))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "ssljax.main", "--config=configs/simclr.py:fashion_mnist",
         f"--workdir={workdir}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    try:
        metrics, deadline = workdir / "metrics.jsonl", time.time() + 900
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.time() < deadline
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [75, 75], [o[1][-2000:] for o in outs]
    saved = checkpoint.Checkpointer(str(workdir / "checkpoints")).all_steps()
    assert len(saved) == 1 and saved[0] >= 2
    for _, stderr in outs:
        assert f"saved the checkpoint of step {saved[0]}" in stderr
