"""Runs ``train_and_evaluate`` on a tiny config in a fresh process (for the subprocess tests).

  python tests/_tiny_run.py WORKDIR '{"method": "simclr", "overrides": {...},
                                      "devices": 1, "kill_at_step": 4, "kill_when": "commit"}'

``kill_at_step``/``kill_when`` make the process SIGKILL itself while orbax writes the
checkpoint of that step: ``"created"`` right after the temporary directory is created (no
array written yet), ``"commit"`` after every file is written but before the atomic rename
that commits the checkpoint. This is ``kill -9`` at a chosen instant of a save.
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)  # this checkout's ssljax, whatever the environment has installed


def main() -> None:
    workdir, spec = sys.argv[1], json.loads(sys.argv[2])
    jax.config.update("jax_num_cpu_devices", spec.get("devices", 1))
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_compilation_cache_dir", os.path.join(REPO, ".pytest_cache", "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    from helpers import tiny_config  # noqa: E402
    from orbax.checkpoint._src.path import atomicity  # noqa: E402

    from ssljax import sharding, train  # noqa: E402

    kill_step = spec.get("kill_at_step")
    if kill_step is not None:
        step_dir = str(kill_step)
        if spec["kill_when"] == "created":
            original = atomicity.AtomicRenameTemporaryPath.create

            async def create(self, *args, **kwargs):
                path = await original(self, *args, **kwargs)
                if self._final_path.name == step_dir:
                    os.kill(os.getpid(), signal.SIGKILL)
                return path

            atomicity.AtomicRenameTemporaryPath.create = create
        else:
            original = atomicity.AtomicRenameTemporaryPath.finalize

            async def finalize(self, *args, **kwargs):
                if self._final_path.name == step_dir:
                    os.kill(os.getpid(), signal.SIGKILL)
                return await original(self, *args, **kwargs)

            atomicity.AtomicRenameTemporaryPath.finalize = finalize

    config = tiny_config(spec.get("method", "simclr"), **spec.get("overrides", {}))
    train.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(spec.get("devices", 1)))


if __name__ == "__main__":
    main()
