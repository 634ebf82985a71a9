"""Methods, registered by name: ``get_method(config.method)``."""

from __future__ import annotations

import difflib

from ssljax.methods.base import InputSpec, LossOutput, Method, RunFacts, TrainState

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes a method available to configs under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty `name` to be registered.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"A method named {cls.name!r} is already registered.")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {name!r} (known: {', '.join(sorted(_REGISTRY))}){hint}")
    return _REGISTRY[name]


def available() -> list[str]:
    return sorted(_REGISTRY)


# Importing a method module registers it.
from ssljax.methods import simclr  # noqa: E402,F401
from ssljax.methods import metamask  # noqa: E402,F401
from ssljax.methods import barlow_twins  # noqa: E402,F401
from ssljax.methods import vicreg  # noqa: E402,F401
from ssljax.methods import corinfomax  # noqa: E402,F401
from ssljax.methods import selfcon  # noqa: E402,F401
from ssljax.methods import supcon  # noqa: E402,F401
from ssljax.methods import ce  # noqa: E402,F401
from ssljax.methods import subnet_ce  # noqa: E402,F401
from ssljax.methods import moco  # noqa: E402,F401
from ssljax.methods import byol  # noqa: E402,F401
from ssljax.methods import infomin  # noqa: E402,F401
from ssljax.methods import view_learning  # noqa: E402,F401
from ssljax.methods import mrcl  # noqa: E402,F401
from ssljax.methods import simsiam  # noqa: E402,F401

__all__ = ["InputSpec", "LossOutput", "Method", "RunFacts", "TrainState", "available",
           "get_method", "register"]
