"""``pip install ssljax`` is the core (losses, models, methods); ``ssljax[train]`` adds the
trainer's packages (issue 23, item 5). Without them the core imports and computes a loss,
and a part that needs them says, in one sentence, which extra to install."""

import os
import shutil
import subprocess
import sys
import time
import venv

import pytest

from helpers import REPO

# What ssljax[train] (and [plot]) bring, hidden as if not installed: the finder raises what
# Python raises for a missing module.
HIDE = ("tensorflow", "tensorflow_datasets", "orbax", "tensorboardX", "matplotlib", "sklearn")
_HIDE_EXTRAS = f'''
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''

# The core's promise: the three packages import, and a loss matches a hand-computed value
# (NT-Xent of 4 orthonormal pairs at temperature 0.5: the positive's logit is 2, the six
# negatives' 0, so each anchor's loss is log(e^2 + 6) - 2).
CORE_SNIPPET = '''
import math, sys
import jax.numpy as jnp
import ssljax.losses, ssljax.models, ssljax.methods
z = jnp.eye(4, 8)
loss = float(ssljax.losses.nt_xent(z, z, temperature=0.5))
assert abs(loss - (math.log(math.exp(2) + 6) - 2)) < 1e-5, loss
assert {"simclr", "corinfomax", "mrcl"} <= set(ssljax.methods.available())
for top in ("tensorflow", "tensorflow_datasets", "tensorboardX", "matplotlib", "sklearn"):
    assert top not in sys.modules, top + " was imported by the core"
print("core ok", round(loss, 6))
'''

TRAIN_MESSAGE = ("ssljax.train needs orbax-checkpoint; install it with pip install "
                 "'ssljax[train]'.")


def _run(code: str, python: str = sys.executable, cwd: str = REPO, timeout: int = 300):
    return subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_core_imports_and_computes_a_loss_without_the_train_extra():
    proc = _run(_HIDE_EXTRAS + CORE_SNIPPET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "core ok" in proc.stdout


def _import_error(module: str) -> str:
    """The message of the ImportError that importing ``module`` raises with the extras
    hidden."""
    code = _HIDE_EXTRAS + (
        "try:\n"
        f"    import {module}\n"
        "except ImportError as e:\n"
        "    print('MESSAGE:' + str(e))\n"
        "else:\n"
        "    print('MESSAGE:none')\n")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split("MESSAGE:", 1)[1].strip()


def test_importing_the_trainer_without_the_train_extra_names_the_extra():
    assert _import_error("ssljax.train") == TRAIN_MESSAGE


def test_the_cli_without_the_train_extra_is_one_sentence():
    """``python -m ssljax.main`` imports the trainer after checking the config: status 2 and
    the sentence on stderr, no traceback."""
    code = _HIDE_EXTRAS + (
        "import runpy\n"
        "sys.argv = ['ssljax.main', '--config=configs/simclr.py:fashion_mnist',\n"
        "            '--workdir=/nonexistent/never_written']\n"
        "runpy.run_module('ssljax.main', run_name='__main__')\n")
    proc = _run(code)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == "error: " + TRAIN_MESSAGE


PIPELINE_MESSAGE = ("ssljax's input pipeline (ssljax.data, ssljax.train) needs TensorFlow; "
                    "install it with pip install 'ssljax[train]'.")


@pytest.mark.parametrize("module, message", [
    ("ssljax.checkpoint",
     "ssljax.checkpoint needs orbax-checkpoint; install it with pip install 'ssljax[train]'."),
    ("ssljax.data.augment", PIPELINE_MESSAGE),
])
def test_other_parts_name_their_extra(module, message):
    assert _import_error(module) == message


def test_the_message_is_one_sentence_and_chains_the_cause(monkeypatch):
    import importlib
    from ssljax import _extras

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ImportError) as info:
        _extras.require("sklearn.manifold", part="The embedding plot")
    assert str(info.value) == ("The embedding plot needs scikit-learn; install it with pip "
                               "install 'ssljax[plot]'.")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_a_broken_install_is_not_reported_as_missing(monkeypatch):
    """An ImportError from inside an installed package (another module missing) keeps its
    own message: telling the user to install what is installed would mislead."""
    import importlib
    from ssljax import _extras

    def broken(name):
        raise ModuleNotFoundError("No module named 'libcudart'", name="libcudart")
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="libcudart"):
        _extras.require("tensorflow", part="ssljax.train")


# ----------------------------------------------------------------------------- a real venv

def _index_reachable(dest) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                           "--dest", str(dest), "safetensors>=0.4"], capture_output=True,
                          text=True, timeout=120)
    return proc.returncode == 0


@pytest.mark.slow
def test_a_fresh_venv_with_the_core_install_computes_a_loss(tmp_path):
    """``pip install ssljax`` (no extras) into a new virtual environment: the core imports and
    computes a loss, and no TensorFlow was installed."""
    if not _index_reachable(tmp_path / "probe"):
        pytest.skip("the package index is unreachable: cannot build a fresh virtual environment")
    t0 = time.time()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # A copy of the source tree: pip builds in it, and the worktree gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "*.egg-info", "build", "__pycache__", "tests", "experiments"))
    proc = subprocess.run([python, "-m", "pip", "install", "--quiet", str(src)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True).stdout.lower()
    for absent in ("tensorflow", "tensorboardx", "matplotlib"):
        assert absent not in listed, f"{absent} came with the core install"
    assert "safetensors" in listed
    # Run outside the source tree, so `import ssljax` is the installed package.
    proc = _run(CORE_SNIPPET, python=python, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "core ok" in proc.stdout
    # The trainer imports (orbax comes with flax; device views need no TensorFlow), and the
    # tf.data pipeline names the extra.
    proc = _run("import ssljax.train", python=python, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("import ssljax.data.augment", python=python, cwd=str(tmp_path))
    assert PIPELINE_MESSAGE in proc.stderr, proc.stderr[-3000:]
    print(f"fresh core venv: {time.time() - t0:.0f}s")


def test_a_config_validates_without_the_train_extra():
    # ssljax.config checks views, masks and jigsaw with ssljax.data.specs (TF-free), so a
    # core install can build and check a config before any TensorFlow is needed.
    code = _HIDE_EXTRAS + '''
import importlib.util
from ssljax import config
spec = importlib.util.spec_from_file_location("cfg", "configs/infomin.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
c = module.get_config("fashion_mnist")
config.validate(c)
c.data.jigsaw.patch = 99
try:
    config.validate(c)
except config.ConfigError as e:
    print("rejected:", e)
'''
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rejected: " in proc.stdout and "jigsaw.patch=99" in proc.stdout, proc.stdout
