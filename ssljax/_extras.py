"""Optional dependencies: which extra of ``pip install ssljax[...]`` brings each one.

``pip install ssljax`` installs the core (``ssljax.losses``, ``ssljax.models``,
``ssljax.methods``: JAX, Flax, Optax, NumPy, ml-collections, safetensors). The trainer's
input pipeline, checkpoints and logs come with ``ssljax[train]``; pictures with
``ssljax[plot]``. A part that needs a missing package imports it through :func:`require`
(or checks with :func:`check`), so the error is one sentence naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# Top-level module -> (the name people install, the extra that brings it).
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorflow": ("TensorFlow", "train"),
    "tensorflow_datasets": ("TensorFlow Datasets", "train"),
    "orbax": ("orbax-checkpoint", "train"),
    "tensorboardX": ("tensorboardX", "train"),
    "matplotlib": ("matplotlib", "plot"),
    "sklearn": ("scikit-learn", "plot"),
}


def message(module: str, part: str) -> str:
    """The one sentence for ``part`` missing ``module``, e.g. "ssljax.train needs
    TensorFlow; install it with pip install 'ssljax[train]'."

    >>> message("orbax.checkpoint", "ssljax.checkpoint")
    "ssljax.checkpoint needs orbax-checkpoint; install it with pip install 'ssljax[train]'."
    """
    name, extra = PACKAGES[module.split(".")[0]]
    return f"{part} needs {name}; install it with pip install 'ssljax[{extra}]'."


def _is_missing(error: ImportError, module: str) -> bool:
    """Whether ``error`` says ``module`` itself (not something it imports) is absent."""
    return error.name is None or error.name.split(".")[0] == module.split(".")[0]


def require(module: str, *, part: str) -> ModuleType:
    """Imports ``module`` for ``part``; if it is not installed, raises ImportError with
    :func:`message` (the original error chained). An ImportError from inside an installed
    package (a broken install) is raised as it is."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if not _is_missing(e, module):
            raise
        raise ImportError(message(module, part), name=e.name) from e


def check(*modules: str, part: str) -> None:
    """Raises :func:`message`'s ImportError for the first of ``modules`` that is not
    installed, without importing any (``find_spec``: cheap, TensorFlow stays unloaded)."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError as e:  # a parent package missing, or hidden by a finder
            if not _is_missing(e, module):
                raise
            found = False
        if not found:
            raise ImportError(message(module, part), name=module)
