"""The TPU-pod launcher and the SLURM script: what they would run, without a cloud."""

import os
import shlex
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "experiments", "launch_tpu_pod.sh")
ARGS = ["--name", "ssl-v4", "--zone", "us-central2-b", "--type", "v4-32", "--bucket",
        "gs://bkt/", "--", "--config=configs/simclr.py:imagenet", "--config.num_epochs=100"]


@pytest.fixture
def fake_gcloud(tmp_path):
    """A ``gcloud`` on PATH that logs its arguments; ``describe`` prints $FAKE_STATE (or fails
    when unset); the training ssh exits with the next status listed in $FAKE_TRAIN_RC."""
    log = tmp_path / "gcloud.log"
    script = tmp_path / "bin" / "gcloud"
    script.parent.mkdir()
    script.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "$*" >> {log}
if [[ "$*" == *" describe "* ]]; then
  [[ -n "${{FAKE_STATE:-}}" ]] && echo "$FAKE_STATE" && exit 0
  exit 1
fi
if [[ "$*" == *ssljax.main* ]]; then
  left={tmp_path}/rc_left
  [[ -f $left ]] || echo "$FAKE_TRAIN_RC" > $left
  read -r rc rest < $left; echo "$rest" > $left
  exit "$rc"
fi
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{script.parent}:{os.environ['PATH']}")
    return env, log, tmp_path


def launch(args, env):
    return subprocess.run(["bash", LAUNCH, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60)


def commands(stdout):
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_dry_run_prints_every_command_and_runs_none(fake_gcloud):
    env, log, _ = fake_gcloud
    out = launch(["--dry-run", "--spot", *ARGS], env)
    assert out.returncode == 0, out.stderr
    assert not log.exists()  # gcloud was never called
    cmds = commands(out.stdout)
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert [c[:5] for c in cmds] == [tpu + ["describe"], tpu + ["create"], ["git", "-C", REPO,
                                     "archive", "--format=tar.gz"], tpu + ["scp"], tpu + ["ssh"],
                                     tpu + ["ssh"]]
    create, scp, install, train = cmds[1], cmds[3], cmds[4], cmds[5]
    assert {"ssl-v4", "--zone=us-central2-b", "--accelerator-type=v4-32", "--spot"} <= set(create)
    for c in (scp, install, train):
        assert "--worker=all" in c
    assert "jax[tpu]" in install[install.index("--command") + 1]
    run = train[train.index("--command") + 1]
    assert run == ("cd ~/ssljax && TFDS_DATA_DIR=gs://bkt/tensorflow_datasets python3 -m "
                   "ssljax.main --config=configs/simclr.py:imagenet --config.num_epochs=100 "
                   "--workdir=gs://bkt/runs/ssl-v4 "
                   "--config.data.data_dir=gs://bkt/tensorflow_datasets")


def test_reuses_a_ready_slice_and_resumes_after_preemption(fake_gcloud):
    env, log, tmp = fake_gcloud
    # The first training run is preempted (exit 75), the second finishes.
    out = launch(ARGS, dict(env, FAKE_STATE="READY", FAKE_TRAIN_RC="75 0"))
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert not any(" create " in c for c in calls)  # reused, twice
    assert sum("ssljax.main" in c for c in calls) == 2
    assert "exit 75" in out.stdout and "reusing TPU VM slice ssl-v4 (READY)" in out.stdout


def test_recreates_a_preempted_spot_slice(fake_gcloud):
    env, log, _ = fake_gcloud
    out = launch(["--spot", *ARGS], dict(env, FAKE_STATE="PREEMPTED", FAKE_TRAIN_RC="0"))
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    delete = next(i for i, c in enumerate(calls) if " delete ssl-v4" in c)
    create = next(i for i, c in enumerate(calls) if " create ssl-v4" in c)
    assert delete < create


def test_gives_up_after_the_retries(fake_gcloud):
    env, _, _ = fake_gcloud
    out = launch(["--retries", "1", *ARGS], dict(env, FAKE_STATE="READY", FAKE_TRAIN_RC="1 1"))
    assert out.returncode == 1
    assert "training failed 2 times" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--type", "v4-8", "--bucket", "gs://b"], "--name is required"),
    (["--name", "n", "--zone", "z", "--type", "v4-8", "--bucket", "/tmp/b"], "must be a gs://"),
    (["--nmae", "n"], "unknown option --nmae"),
])
def test_bad_arguments_are_one_sentence(fake_gcloud, args, message):
    env, log, _ = fake_gcloud
    out = launch(["--dry-run", *args], env)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_slurm_script_parses_and_requeues_on_75(tmp_path):
    script = os.path.join(REPO, "experiments", "slurm_train.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    # Fake srun (exits 75 as a preempted ssljax.main would) and scontrol.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'echo "srun $*" >> "$LOG"; exit 75'),
                       ("scontrol", 'echo "scontrol $*" >> "$LOG"')):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log),
               SLURM_JOB_ID="123", WORKDIR="/shared/run")
    out = subprocess.run(["bash", script, "--config=configs/simclr.py:imagenet"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 75
    assert log.read_text().splitlines() == [
        "srun --kill-on-bad-exit=1 python3 -m ssljax.main --config=configs/simclr.py:imagenet "
        "--workdir=/shared/run", "scontrol requeue 123"]
