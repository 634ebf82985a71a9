"""The run promises through ``python -m ssljax.main`` end to end (integration): a damaged
newest checkpoint is skipped, a changed config is refused before any restore, a second
process is refused, ``keep_checkpoints=0`` deletes nothing, and signals in evaluation and
training end with status 75 and lose nothing.

Every run is the same tiny SimCLR on one device (on-disk XLA cache shared with the other
tests), so each command takes seconds after the first compilation.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import config_flags, read_metrics, tiny_config
from ssljax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
           SSLJAX_XLA_CACHE=os.path.join(REPO, ".pytest_cache", "xla"))


def command(workdir, **overrides):
    cfg = tiny_config("simclr", **{"total_steps": 8, "checkpoint_every": 2, **overrides})
    return [sys.executable, "-m", "ssljax.main", "--config=configs/simclr.py:fashion_mnist",
            f"--workdir={workdir}", *config_flags("simclr", cfg)]


def run(workdir, **overrides):
    return subprocess.run(command(workdir, **overrides), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def stopped_at_6(tmp_path):
    """A run stopped after step 6 with checkpoints at 2, 4, 6."""
    workdir = tmp_path / "run"
    proc = run(workdir, stop_after_step=6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.integration
def test_damaged_newest_checkpoint_is_skipped_and_the_run_finishes(stopped_at_6):
    ckpt_dir = stopped_at_6 / "checkpoints"
    data = max((os.path.join(r, f) for r, _, fs in os.walk(ckpt_dir / "6" / "state")
                for f in fs), key=os.path.getsize)
    os.truncate(data, os.path.getsize(data) // 2)
    proc = run(stopped_at_6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Checkpoint" in proc.stderr and "moved aside as 6.damaged-" in proc.stderr
    assert "Resuming from step 4" in proc.stderr
    assert [n for n in os.listdir(ckpt_dir) if n.startswith("6.damaged-")]
    assert checkpoint.Checkpointer(str(ckpt_dir)).all_steps() == [4, 6, 8]
    steps = [json.loads(line)["step"] for line in open(stopped_at_6 / "metrics.jsonl")
             if '"loss"' in line]
    assert steps == list(range(1, 9))  # steps 5-6 redone, written once


@pytest.mark.integration
@pytest.mark.parametrize("overrides, key", [({"batch_size": 32}, "batch_size"),
                                            ({"model.width": 8}, "model.width")])
def test_changed_identity_is_refused_before_any_restore(stopped_at_6, overrides, key):
    proc = run(stopped_at_6, **overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = last_line(proc)
    assert line.startswith("error: ") and key in line and "fresh --workdir" in line
    assert "Traceback" not in proc.stderr
    assert checkpoint.Checkpointer(str(stopped_at_6 / "checkpoints")).all_steps() == [2, 4, 6]
    # A free key (a lower learning rate) resumes, and is recorded.
    proc = run(stopped_at_6, **{"optimizer.lr": 0.01})
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = (stopped_at_6 / "config_history.jsonl").read_text()
    assert '"optimizer.lr"' in history


@pytest.mark.integration
def test_keep_checkpoints_zero_is_refused_and_deletes_nothing(stopped_at_6):
    proc = run(stopped_at_6, keep_checkpoints=0)
    assert proc.returncode == 2 and "keep_checkpoints=0" in last_line(proc)
    assert checkpoint.Checkpointer(str(stopped_at_6 / "checkpoints")).all_steps() == [2, 4, 6]


def _start(workdir, **overrides):
    return subprocess.Popen(command(workdir, **overrides), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(workdir, rows, proc, timeout=300):
    metrics, deadline = workdir / "metrics.jsonl", time.time() + timeout
    while not (metrics.exists() and metrics.read_text().count("\n") >= rows):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not start in time"
        time.sleep(0.05)


@pytest.mark.integration
def test_second_process_on_a_workdir_is_refused_naming_the_first(tmp_path):
    workdir = tmp_path / "run"
    first = _start(workdir, total_steps=100_000, checkpoint_every=1000)
    try:
        _wait_for_rows(workdir, 2, first)
        second = run(workdir, total_steps=100_000, checkpoint_every=1000)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"in use by process {first.pid}" in last_line(second)
        first.send_signal(signal.SIGINT)  # SIGINT, once: the step is finished and saved
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 75, stderr[-3000:]
    assert "Interrupted (SIGINT): saved the checkpoint of step" in stderr
    saved = checkpoint.Checkpointer(str(workdir / "checkpoints")).all_steps()
    assert len(saved) == 1 and max(read_metrics(str(workdir))) == saved[0]
    assert not (workdir / ".lock").exists()


@pytest.mark.integration
def test_sigterm_in_evaluation_exits_75_and_the_rerun_evaluates(tmp_path):
    workdir = tmp_path / "run"
    # A long evaluation (many probe epochs), so the signal lands in it.
    proc = _start(workdir, **{"eval.linear_epochs": 2000})
    try:
        deadline, seen = time.time() + 300, []
        while not seen or "Extracted" not in seen[-1]:  # evaluation has started
            seen.append(proc.stderr.readline())
            assert proc.poll() is None and time.time() < deadline, "".join(seen)[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, "".join(seen)[-2000:] + stderr[-3000:]
    assert "Interrupted (SIGTERM) during evaluation" in stderr
    assert "run the same command again to evaluate it" in stderr
    assert not (workdir / "results.json").exists()
    before = read_metrics(str(workdir))
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(str(workdir)) == before  # no step trained again
    assert (workdir / "results.json").exists()


@pytest.mark.integration
def test_sigterm_in_setup_exits_75_with_a_message(tmp_path):
    workdir = tmp_path / "run"
    proc = _start(workdir)
    time.sleep(3)  # importing, loading data or compiling: before the first step
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    assert "Interrupted (SIGTERM) during set-up" in stderr.strip().splitlines()[-1]
    assert not (workdir / ".lock").exists()
