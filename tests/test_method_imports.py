"""No method module imports another method module (issue 22): what methods share lives in
the shared modules (``base``, ``momentum``, ``multi_exit``) or in ``ssljax.losses``."""

import ast
import os

from helpers import REPO

METHODS_DIR = os.path.join(REPO, "ssljax", "methods")
SHARED = {"base", "momentum", "multi_exit"}  # shared parts, not methods: nothing registered


def method_modules() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(METHODS_DIR)
                  if f.endswith(".py") and f != "__init__.py" and f[:-3] not in SHARED)


def imported_methods_modules(path: str) -> set[str]:
    """The ``ssljax.methods`` submodules that the module at ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ssljax.methods":
                names.update(a.name for a in node.names)
            elif node.module.startswith("ssljax.methods."):
                names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[2] for a in node.names
                         if a.name.startswith("ssljax.methods."))
    return names


def test_no_method_module_imports_another():
    modules = method_modules()
    assert {"simclr", "moco", "byol", "mrcl", "infomin", "ce", "subnet_ce"} <= set(modules)
    offenders = {}
    for name in modules + sorted(SHARED):
        others = imported_methods_modules(os.path.join(METHODS_DIR, f"{name}.py")) & set(modules)
        others.discard(name)
        if others:
            offenders[name] = sorted(others)
    assert not offenders, f"method modules import other method modules: {offenders}"


def test_the_check_sees_an_import(tmp_path):
    """The parser finds each import form (a check that cannot fail is a defect)."""
    path = tmp_path / "m.py"
    path.write_text("from ssljax.methods import base, moco\nfrom ssljax.methods.simclr import X\n"
                    "import ssljax.methods.byol\n")
    assert imported_methods_modules(str(path)) == {"base", "moco", "simclr", "byol"}
