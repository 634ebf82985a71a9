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


_HIDE_TENSORFLOW = '''
import importlib.abc, sys

class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """As if TensorFlow (and TFDS) were not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, _NoTensorFlow())
'''


def test_methods_models_and_losses_import_without_tensorflow():
    """Methods read data settings from ``ssljax.data.specs``; nothing on their import path
    (nor the config checks, checkpoints, evaluators) may need TensorFlow."""
    code = _HIDE_TENSORFLOW + (
        "import ssljax.losses, ssljax.models, ssljax.methods, ssljax.config, ssljax.checkpoint\n"
        "import ssljax.evaluate, ssljax.data, ssljax.data.specs, ssljax.data.transfer\n"
        "from ssljax.data import MaskConfig, dataset_info, mask_config_from\n"
        "assert dataset_info('cifar10').num_classes == 10\n"
        "assert mask_config_from({'ratio': 0.25}).grid(28) == 7\n"
        "assert not [m for m in sys.modules if m.startswith('tensorflow')]\n"
        "try:\n"
        "    import ssljax.data.augment\n"
        "except ImportError as e:\n"
        "    assert 'hidden by the test' in str(e.__cause__)\n"
        "    assert \"pip install 'ssljax[train]'\" in str(e)\n"
        "else:\n"
        "    raise AssertionError('the finder did not hide TensorFlow')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _imports_of(path: str, package: str, *, top_level: bool = False) -> set[str]:
    """The ``ssljax.data`` modules that the module at ``path`` imports, anywhere in it (or,
    with ``top_level``, when it is imported)."""
    import ast
    tree = ast.parse(open(path).read())
    out = set()
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                out.update(f"{package}.{a.name}" for a in node.names)
            elif node.module.startswith(package + "."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(package + "."))
    return out


def test_the_data_package_has_no_import_circle():
    """Every module of ``ssljax.data`` (function-level imports included) imports only modules
    of a lower layer: the import graph has no cycle."""
    import os
    package = "ssljax.data"
    root = os.path.join(REPO, "ssljax", "data")
    modules = {f"{package}.{f[:-3]}": os.path.join(root, f) for f in os.listdir(root)
               if f.endswith(".py") and f != "__init__.py"}
    graph = {m: _imports_of(p, package) & set(modules) for m, p in modules.items()}
    done, visiting = set(), []

    def visit(m):
        if m in visiting:
            raise AssertionError(f"import circle: {' -> '.join(visiting[visiting.index(m):] + [m])}")
        if m in done:
            return
        visiting.append(m)
        for n in sorted(graph[m]):
            visit(n)
        visiting.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    # The TensorFlow-free layer imports no module of the package that loads TensorFlow
    # (through ``ssljax.data._tf``, the one module that imports it) when it is imported.
    graph = {m: _imports_of(p, package, top_level=True) & set(modules)
             for m, p in modules.items()}

    def closure(m):
        seen, todo = set(), [m]
        while todo:
            for n in graph[todo.pop()] - seen:
                seen.add(n)
                todo.append(n)
        return seen

    for m in ("specs", "transfer", "sources", "coloured"):
        assert f"{package}._tf" not in closure(f"{package}.{m}"), (m, closure(f"{package}.{m}"))
