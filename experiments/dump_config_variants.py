"""Writes tests/data/config_variants.json: every config file's variants, resolved.

For each ``configs/<name>.py`` and each variant its ``get_config`` accepts (the default, each
dataset, each modifier and every pair of modifiers for the files that combine them), and for
every entry of the benchmark suites as ``ssljax.benchmark.load_config(suite, name, 0)``
resolves it, the full ``config.to_dict()`` in JSON form. ``tests/test_config_presets.py``
rebuilds them and compares exactly, so a refactor of the config files that changes any value
fails there.

Run from the repository root:
  python experiments/dump_config_variants.py
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "config_variants.json")

_FMNIST_CIFAR = ("fashion_mnist", "cifar10", "cifar100")
_MRCL_MODS = ("masking_only", "reconstruction_only", "simclr", "vit", "infonce", "block",
              "token")


def _mrcl_variants() -> list[str]:
    out = []
    for dataset in ("fashion_mnist", "cifar10", "cifar100", "imagenet"):
        out.append(dataset)
        for n in (1, 2):
            out.extend(",".join((dataset,) + mods)
                       for mods in itertools.combinations(_MRCL_MODS, n))
    return out


# Every variant of every config file ("" is get_config() with its default argument).
VARIANTS: dict[str, list[str]] = {
    "simclr": ["", "fashion_mnist", "fashion_mnist_long", "cifar10", "cifar100", "stl10",
               "imagenet"],
    "byol": ["", "fashion_mnist", "cifar10", "cifar100", "imagenet"],
    "barlow_twins": ["", "fashion_mnist", "cifar10", "cifar100", "imagenet"],
    "vicreg": ["", "fashion_mnist", "cifar10", "cifar100", "imagenet"],
    "corinfomax": ["", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet100",
                   "imagenet"],
    "moco": ["", "fashion_mnist", "cifar10", "cifar100", "imagenet"]
            + [f"{d},infomin_aug" for d in ("fashion_mnist", "cifar10", "cifar100", "imagenet")],
    "infomin": ["", "fashion_mnist", "cifar10", "cifar100", "imagenet"],
    "metamask": ["", "fashion_mnist", "cifar10", "cifar100"],
    "mrcl": [""] + _mrcl_variants(),
    "selfcon": [""] + list(_FMNIST_CIFAR),
    "supcon": [""] + list(_FMNIST_CIFAR),
    "ce": [""] + list(_FMNIST_CIFAR),
    "simsiam": ["", "fashion_mnist", "cifar10", "cifar100"],
    "subnet_ce": [""] + list(_FMNIST_CIFAR),
    "infomin_views": ["", "fashion_mnist", "fashion_mnist_semi", "stl10", "stl10_semi"],
    "view_contrast": [""] + [f"{s}{d}" for s in ("rgb", "ydbdr", "ycbcr", "lab", "learned")
                             for d in ("", "_stl10")],
}


def _jsonable(value):
    """Tuples become tagged lists so that a tuple/list change is caught too."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return {"__float__": "nan"}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"__repr__": repr(value)}


def load_module(name: str):
    """``configs/<name>.py`` loaded by path, as ``--config=configs/<name>.py`` does."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_dump_cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_all() -> dict[str, dict]:
    """``{"<name>:<variant>": to_dict, "benchmark/<suite>/<entry>": to_dict}``."""
    from ssljax import benchmark
    out = {}
    files = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
                   if f.endswith(".py") and not f.startswith("_"))
    for name in files:
        if name not in VARIANTS:
            continue
        module = load_module(name)
        for variant in VARIANTS[name]:
            c = module.get_config(variant) if variant else module.get_config()
            out[f"{name}:{variant}"] = _jsonable(c.to_dict())
    for suite_name, suite in sorted(benchmark.SUITES.items()):
        for entry in suite.entries:
            c = benchmark.load_config(suite, entry, 0)
            out[f"benchmark/{suite_name}/{entry}"] = _jsonable(c.to_dict())
    return out


def main() -> None:
    sys.path.insert(0, REPO)
    data = resolve_all()
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(data)} resolved configs to {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    main()
