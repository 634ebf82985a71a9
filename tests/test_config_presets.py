"""Guard rail for the config files: every variant resolves to exactly the recorded config.

``tests/data/config_variants.json`` holds ``config.to_dict()`` of every variant of every
``configs/*.py`` and of every benchmark entry (``experiments/dump_config_variants.py`` writes
it). A refactor of the config files (presets, the variant parser) must leave every key and
value as recorded; a deliberate change of a recipe regenerates the file in the same commit.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import dump_config_variants as dump  # noqa: E402

with open(os.path.join(REPO, "tests", "data", "config_variants.json")) as f:
    RECORDED = json.load(f)


@pytest.fixture(scope="module")
def resolved():
    return dump.resolve_all()


def test_every_config_file_is_recorded():
    files = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
                   if f.endswith(".py") and not f.startswith("_"))
    assert files == sorted(dump.VARIANTS), (
        "a config file is missing from experiments/dump_config_variants.py VARIANTS")


def test_every_variant_resolves_as_recorded(resolved):
    assert sorted(resolved) == sorted(RECORDED)
    changed = [k for k in RECORDED if resolved[k] != RECORDED[k]]
    if changed:
        k = changed[0]
        diff = sorted(set(_flat(resolved[k]).items()) ^ set(_flat(RECORDED[k]).items()))
        pytest.fail(f"{len(changed)} variant(s) changed, first {k}: {diff[:6]}")


def _flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and not set(value) <= {"__tuple__", "__float__", "__repr__"}:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


@pytest.mark.parametrize("name", sorted(dump.VARIANTS))
def test_unknown_variant_is_one_sentence(name):
    module = dump.load_module(name)
    with pytest.raises(ValueError, match=r"^Unknown .*configs/.*\.py"):
        module.get_config("no_such_dataset")


def test_config_files_load_from_another_cwd(tmp_path):
    """``--config=<path>`` loads a file by path: its helpers must import from any directory."""
    code = ("import importlib.util, os, sys\n"
            f"root = {os.path.join(REPO, 'configs')!r}\n"
            "for name in sorted(sys.argv[1:]):\n"
            "    spec = importlib.util.spec_from_file_location('c_' + name, os.path.join(root, name + '.py'))\n"
            "    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "    print(name, m.get_config().method)\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code, *dump.VARIANTS], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == len(dump.VARIANTS)
