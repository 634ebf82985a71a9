"""What ssljax promises about a run (README, "What ssljax promises about your runs"):
checkpoints are never lost, a workdir keeps its run's identity and one process, every value
is checked before work starts, signals and a full disk stop in order.

Fast checks in-process (no training); the CLI ones fail before any JAX work. The end-to-end
runs are in tests/test_run_safety_cli.py (integration).
"""

import errno
import gzip
import json
import os
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import pytest

from helpers import load_config, tiny_config
from ssljax import checkpoint, main, preemption, train, workdir
from ssljax.config import ConfigError, validate
from ssljax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, key", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"batch_size": -16}, "batch_size=-16"),
    ({"data.num_views": 1}, "data.num_views=1"),  # SimCLR contrasts two views
    ({"checkpoint_every": 0}, "checkpoint_every=0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints=0"),
    ({"log_every": -1}, "log_every=-1"),
    ({"optimizer.lr": -0.1}, "optimizer.lr=-0.1"),
    ({"optimizer.lr": float("nan")}, "optimizer.lr=nan"),
    ({"optimizer.momentum": 1.0}, "optimizer.momentum=1.0"),
    ({"total_steps": -1, "num_epochs": 0}, "num_epochs=0"),
    ({"loss.temperature": 0.0}, "loss.temperature=0.0"),
    ({"data.augment.flip_p": 1.5}, "data.augment.flip_p=1.5"),
    ({"data.image_size": 4}, "data.image_size=4"),  # below the ResNet's 8x downsampling
    ({"optimizer.name": "sgdd"}, "optimizer.name='sgdd'"),
    ({"eval.knn_k": 0}, "eval.knn_k=0"),
    ({"eval.linear_lr": 0.0}, "eval.linear_lr=0.0"),
    ({"eval.linear_epochs": 0}, "eval.linear_epochs=0"),
    ({"eval.knn_temperature": -1.0}, "eval.knn_temperature=-1.0"),
    ({"eval.linear_batch_size": 0}, "eval.linear_batch_size=0"),
])
def test_validate_names_the_key_the_value_and_what_is_allowed(overrides, key):
    with pytest.raises(ConfigError) as info:
        validate(tiny_config("simclr", **overrides))
    message = str(info.value)
    assert message.startswith(key) or key in message, message
    assert "--config." in message and "\n" not in message


@pytest.mark.parametrize("name", ["simclr", "moco", "byol", "barlow_twins", "vicreg",
                                  "corinfomax", "metamask", "mrcl", "infomin", "selfcon",
                                  "supcon", "ce", "subnet_ce", "infomin_views"])
def test_every_shipped_config_is_valid(name):
    validate(load_config(name))


def test_train_and_evaluate_validates_for_library_users(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=0"):
        train.train_and_evaluate(tiny_config("simclr", batch_size=0), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing was started


def _cli(*args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "ssljax.main",
                           "--config=configs/simclr.py:fashion_mnist", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _one_sentence(proc, status=2):
    """The run's one sentence: the last line of stderr, the only one of ours. (TensorFlow's
    C++ start-up lines, printed on import before ssljax can silence them, may precede it.)"""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-2000:]
    assert lines[-1].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and sum(l.startswith("error") for l in lines) == 1
    return lines[-1]


def test_cli_bad_value_is_one_sentence_before_any_work(tmp_path):
    line = _one_sentence(_cli(f"--workdir={tmp_path / 'run'}", "--config.batch_size=0"))
    assert "batch_size=0" in line
    assert not (tmp_path / "run").exists()


def test_cli_value_of_the_wrong_type_is_one_sentence(tmp_path):
    line = _one_sentence(_cli(f"--workdir={tmp_path}", "--config.batch_size=abc"))
    assert "batch_size" in line and "abc" in line


@pytest.mark.parametrize("kind", ["empty", "file"])
def test_cli_refuses_an_empty_workdir_and_a_file(tmp_path, kind):
    path = ""
    if kind == "file":
        path = str(tmp_path / "notes.txt")
        open(path, "w").write("mine")
    line = _one_sentence(_cli(f"--workdir={path}"))
    assert ("is empty" if kind == "empty" else "is a file") in line
    assert os.listdir(tmp_path) == ([] if kind == "empty" else ["notes.txt"])


# ----------------------------------------------------------------------------- data files

def _write_idx(directory, name, payload: bytes, *, compress=True):
    path = os.path.join(directory, name)
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)
    return path


def _idx(shape, *, magic=b"\x00\x00\x08"):
    header = magic + bytes([len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    return header + bytes(int(__import__("numpy").prod(shape)))


@pytest.mark.parametrize("damage", ["truncated", "not_gzip", "wrong_magic", "short_gzip"])
def test_damaged_dataset_file_names_the_file_and_the_reinstall_command(tmp_path, damage):
    d = str(tmp_path)
    _write_idx(d, "train-labels-idx1-ubyte.gz", _idx((4,)))
    _write_idx(d, "t10k-images-idx3-ubyte.gz", _idx((4, 28, 28)))
    _write_idx(d, "t10k-labels-idx1-ubyte.gz", _idx((4,)))
    images = "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        bad = _write_idx(d, images, _idx((4, 28, 28))[:-100])
    elif damage == "not_gzip":
        bad = _write_idx(d, images, _idx((4, 28, 28)), compress=False)
    elif damage == "wrong_magic":
        bad = _write_idx(d, images, _idx((4, 28, 28), magic=b"\x1f\x8b\x08"))
    else:  # a gzip stream cut off mid-way
        bad = _write_idx(d, images, _idx((4, 28, 28)))
        data = open(bad, "rb").read()
        open(bad, "wb").write(data[: len(data) // 2])
    sources._load_idx_split.cache_clear()
    with pytest.raises(sources.DatasetCorruptError) as info:
        sources.load_arrays("fashion_mnist", "train", data_dir=d)
    message = str(info.value)
    assert bad in message and "apt-get install --reinstall dataset-fashion-mnist" in message
    assert isinstance(info.value, sources.DatasetNotFoundError)  # main: status 2


# ----------------------------------------------------------------------------- lock

def test_second_process_is_refused_naming_the_holder(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(
            {"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}))
        with pytest.raises(workdir.WorkdirError, match=f"in use by process {sleeper.pid} on"):
            workdir.Lock(str(tmp_path)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process is gone: the lock is stale and taken over, then released on exit.
    with workdir.Lock(str(tmp_path)):
        holder = json.loads((tmp_path / workdir.LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(workdir.WorkdirError, match=f"process {os.getpid()}"):
            workdir.Lock(str(tmp_path)).acquire()
    assert not (tmp_path / workdir.LOCK_NAME).exists()


def test_unreadable_lock_is_stale(tmp_path):
    (tmp_path / workdir.LOCK_NAME).write_text("")  # a process killed between create and write
    with workdir.Lock(str(tmp_path)):
        pass
    assert not (tmp_path / workdir.LOCK_NAME).exists()


def test_train_and_evaluate_releases_the_lock_on_error(tmp_path):
    cfg = tiny_config("simclr", **{"data.name": "cifar10", "data.data_dir": str(tmp_path)})
    with pytest.raises(Exception):
        train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / workdir.LOCK_NAME).exists()


# ----------------------------------------------------------------------------- identity

def test_identity_is_recorded_and_a_different_run_is_refused(tmp_path):
    wd = str(tmp_path)
    first = tiny_config("simclr")
    workdir.check_identity(first, wd)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["batch_size"] == 16 and (tmp_path / "config.json").exists()
    for overrides in ({"batch_size": 32}, {"seed": 1}, {"loss.temperature": 0.3},
                      {"model.width": 8}, {"method": "moco"}, {"data.num_views": 3},
                      {"data.name": "cifar10"}):
        with pytest.raises(workdir.WorkdirError) as info:
            workdir.check_identity(tiny_config("simclr", **overrides), wd)
        key = next(iter(overrides))
        message = str(info.value)
        assert key in message and "fresh --workdir" in message, message
        if key == "batch_size":
            assert "--config.batch_size=16" in message  # the original value, as a flag
    assert not (tmp_path / workdir.HISTORY).exists()  # refused starts leave no history
    # Free keys: allowed, and recorded.
    workdir.check_identity(tiny_config("simclr", **{"optimizer.lr": 0.01, "total_steps": 9,
                                                    "eval.knn_k": 3, "log_every": 5}), wd)
    history = [json.loads(line) for line in open(tmp_path / workdir.HISTORY)]
    assert history[-1]["changes"]["optimizer.lr"] == {"first": 0.05, "now": 0.01}
    assert set(history[-1]["changes"]) == {"optimizer.lr", "total_steps", "eval.knn_k",
                                           "log_every"}
    assert json.loads((tmp_path / "run.json").read_text()) == record  # never rewritten


def test_legacy_workdir_is_adopted(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # an older ssljax: config.json, no run.json
    (tmp_path / "checkpoints").mkdir()
    workdir.check_identity(tiny_config("simclr"), str(tmp_path))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["adopted"] and record["config"]["batch_size"] == 16
    assert (tmp_path / "config.json").read_text() == "{}"


# ----------------------------------------------------------------------------- checkpoints

STATE = {"w": jnp.arange(4096.0), "b": jnp.ones((3,))}


def _three_checkpoints(directory):
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
    for step in (2, 4, 6):
        ckpt.save(step, {"w": STATE["w"] + step, "b": STATE["b"]}, {"method": "simclr"})
    ckpt.close()


def _largest_file(path):
    files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    return max(files, key=os.path.getsize)


def _damage(step_dir, kind):
    if kind == "truncated_data":
        data = _largest_file(os.path.join(step_dir, "state"))
        os.truncate(data, os.path.getsize(data) // 2)
    elif kind == "missing_metadata":
        os.remove(os.path.join(step_dir, "_CHECKPOINT_METADATA"))
    elif kind == "missing_array_metadata":
        os.remove(os.path.join(step_dir, "state", "_METADATA"))
    elif kind == "garbage_meta":
        open(os.path.join(step_dir, "meta", "metadata"), "w").write("\x00garbage{")
    elif kind == "partial_copy":  # cp -r cut off: the array data never arrived
        import shutil
        shutil.rmtree(os.path.join(step_dir, "state", "ocdbt.process_0"))
    elif kind == "no_commit_marker":
        os.remove(os.path.join(step_dir, "commit_success.txt"))


@pytest.mark.parametrize("kind", ["truncated_data", "missing_metadata",
                                  "missing_array_metadata", "garbage_meta", "partial_copy",
                                  "no_commit_marker"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_used(
        tmp_path, kind, caplog):
    directory = str(tmp_path / "checkpoints")
    _three_checkpoints(directory)
    _damage(os.path.join(directory, "6"), kind)
    ckpt = checkpoint.Checkpointer(directory)
    with caplog.at_level("WARNING", logger="ssljax"):
        step, state, meta = ckpt.restore_latest(STATE)
    assert step == 4 and float(state["w"][0]) == 4.0 and meta == {"method": "simclr"}
    aside = [n for n in os.listdir(directory) if n.startswith("6.damaged-")]
    assert len(aside) == 1  # renamed, never deleted
    assert ckpt.all_steps() == [2, 4]
    moved = [r.getMessage() for r in caplog.records
             if r.name == "ssljax" and "moved aside" in r.getMessage()]
    assert len(moved) == 1 and aside[0] in moved[0] and "checkpoints/6" in moved[0]
    assert any("Resuming from step 4" in r.getMessage() for r in caplog.records)


def test_all_checkpoints_damaged_is_one_sentence_not_a_silent_restart(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _three_checkpoints(directory)
    for step in (2, 4, 6):
        _damage(os.path.join(directory, str(step)), "garbage_meta")
    with pytest.raises(checkpoint.CheckpointsDamagedError, match="Every checkpoint"):
        checkpoint.Checkpointer(directory).restore_latest(STATE)
    # The next start says the same, though nothing is listed any more.
    with pytest.raises(checkpoint.CheckpointsDamagedError, match="6.damaged-"):
        checkpoint.Checkpointer(directory).restore_latest(STATE)


def test_other_shapes_are_a_config_mismatch_not_damage(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _three_checkpoints(directory)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="fresh --workdir"):
        checkpoint.Checkpointer(directory).restore_latest({"w": jnp.zeros(8), "b": jnp.ones(3)})
    assert sorted(os.listdir(directory)) == ["2", "4", "6"]  # nothing moved


def test_retention_below_one_is_refused_and_one_keeps_the_newest(tmp_path):
    with pytest.raises(ConfigError, match="keep_checkpoints=0"):
        checkpoint.Checkpointer(str(tmp_path / "a"), max_to_keep=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "b"), max_to_keep=1)
    for step in (1, 2, 3):
        ckpt.save(step, STATE, {})
    assert ckpt.all_steps() == [3]


def test_full_disk_keeps_the_previous_checkpoint_and_no_partial_one(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity
    directory = str(tmp_path / "checkpoints")
    ckpt = checkpoint.Checkpointer(directory)
    ckpt.save(2, STATE, {})
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def full(self, *args, **kwargs):
        if self._final_path.name == "4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full)
    with pytest.raises(workdir.DiskFullError) as info:
        ckpt.save(4, STATE, {})
    message = str(info.value)
    assert f"{directory}/4" in message and "KiB" not in message and "bytes" in message
    assert "step 2 is intact" in message
    assert sorted(os.listdir(directory)) == ["2"]  # no partial checkpoint left
    assert checkpoint.Checkpointer(directory).all_steps() == [2]
    status, line = main.exit_status(info.value)
    assert status == main.EXIT_BAD_INPUT and line.startswith("error: No space left")


# ----------------------------------------------------------------------------- metrics

def test_resumed_metrics_never_repeat_a_step(tmp_path):
    rows = [{"step": s, "loss": float(s)} for s in range(1, 7)] + [{"step": 6, "knn_top1": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                            + '{"step": 7, "lo')  # cut off by kill -9
    writer = train.MetricsWriter(str(tmp_path), start_step=4)
    writer.write(5, {"loss": 55.0})
    writer.close()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- signals

def test_signal_in_setup_or_evaluation_interrupts_at_once():
    # What the process inherited (SIGINT is ignored in a job started in the background by a
    # shell without job control): the watcher must hand back exactly that.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatcher({"setup": "nothing was lost"}) as watcher:
        with pytest.raises(preemption.Interrupted, match=r"Interrupted \(SIGTERM\) during set-up"):
            os.kill(os.getpid(), signal.SIGTERM)
    with preemption.PreemptionWatcher({"eval": "run the same command again to evaluate it"}) as w:
        w.phase = "eval"
        with pytest.raises(preemption.Interrupted, match="evaluation: run the same command"):
            os.kill(os.getpid(), signal.SIGINT)
    with preemption.PreemptionWatcher() as watcher:
        watcher.phase = "train"
        os.kill(os.getpid(), signal.SIGINT)  # training: finish the step, then save
        assert watcher.reached(1) and watcher.signame == "SIGINT"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_second_sigint_ends_at_once_with_75():
    script = ("import os, signal, time\n"
              "from ssljax import preemption\n"
              "with preemption.PreemptionWatcher() as w:\n"
              "    w.phase = 'train'\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 75, proc.stderr
    assert "Second interrupt (SIGINT): stopped at once" in proc.stderr


def test_every_failure_class_has_its_status():
    from ssljax.data import DatasetNotFoundError
    assert main.exit_status(train.NonFiniteLossError("x"))[0] == 3
    assert main.exit_status(train.Preempted(4, "d"))[0] == 75
    assert main.exit_status(preemption.Interrupted("x"))[0] == 75
    assert main.exit_status(ConfigError("x"))[0] == 2
    assert main.exit_status(DatasetNotFoundError("x"))[0] == 2
    assert main.exit_status(OSError(errno.ENOSPC, "No space left on device"))[0] == 2
    assert main.exit_status(RuntimeError("a bug")) is None  # bugs keep their traceback


def test_a_record_from_before_augment_on_resumes_where_the_path_is_unchanged(tmp_path):
    """Runs recorded before data.augment_on existed augmented on the host: 'auto' resumes them
    on the CPU (where it means host); 'device' would mix two input streams and is refused."""
    wd = str(tmp_path)
    first = tiny_config("simclr")
    del first.data["augment_on"]
    workdir.check_identity(first, wd)
    assert "augment_on" not in json.loads((tmp_path / "run.json").read_text())["config"]["data"]
    workdir.check_identity(tiny_config("simclr", **{"data.augment_on": "auto"}), wd)
    workdir.check_identity(tiny_config("simclr", **{"data.augment_on": "host"}), wd)
    with pytest.raises(workdir.WorkdirError, match="data.augment_on"):
        workdir.check_identity(tiny_config("simclr", **{"data.augment_on": "device"}), wd)


def test_a_record_from_before_attention_and_remat_resumes(tmp_path):
    """model.attention and model.remat compute the same function another way (issue 27):
    free keys, so runs recorded before they existed, or under another choice, resume."""
    wd = str(tmp_path)
    first = tiny_config("simclr")
    del first.model["attention"], first.model["remat"]
    workdir.check_identity(first, wd)
    workdir.check_identity(tiny_config("simclr"), wd)
    workdir.check_identity(tiny_config("simclr", **{"model.attention": "reference",
                                                    "model.remat": True}), wd)
    with pytest.raises(workdir.WorkdirError, match="model.width"):  # still an identity key
        workdir.check_identity(tiny_config("simclr", **{"model.width": 8}), wd)
