"""Importing ssljax must not start the XLA backend: jax.distributed.initialize (multi-host)
has to run first, and `python -m ssljax.main` loads configs (and so every method) before it."""

import subprocess
import sys

from helpers import REPO


def test_importing_every_module_leaves_the_backend_unstarted():
    code = ("import jax._src.xla_bridge as xb\n"
            "import ssljax, ssljax.losses, ssljax.models, ssljax.data, ssljax.evaluate\n"
            "import ssljax.methods, ssljax.train, ssljax.main, ssljax.distributed\n"
            "assert not xb._backends, 'an import started the XLA backend'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
