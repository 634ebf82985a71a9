"""The Colab notebooks run top to bottom (tiny settings: SSLJAX_NOTEBOOK_TINY=1) and match
their generator; the README links each one with a Colab badge."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(REPO, "experiments", "notebooks")
sys.path.insert(0, NB_DIR)

import make_notebooks  # noqa: E402

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]'")


@pytest.mark.parametrize("name", sorted(make_notebooks.NOTEBOOKS))
def test_notebook_is_generated_from_make_notebooks(name):
    on_disk = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    expected = make_notebooks.NOTEBOOKS[name]()
    assert [c.source for c in on_disk.cells] == [c.source for c in expected], \
        "run python experiments/notebooks/make_notebooks.py"


@pytest.mark.parametrize("name", sorted(make_notebooks.NOTEBOOKS))
def test_readme_has_a_colab_badge(name):
    readme = open(os.path.join(REPO, "README.md")).read()
    assert (f"https://colab.research.google.com/github/{make_notebooks.GITHUB}/blob/main/"
            f"experiments/notebooks/{name}") in readme


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(make_notebooks.NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, monkeypatch):
    monkeypatch.setenv("SSLJAX_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("SSLJAX_REPO", REPO)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NB_DIR}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "stream" for o in outputs)  # it printed its results
    if name != "01_objectives.ipynb":  # the others plot (matplotlib's inline backend)
        assert any("image/png" in o.get("data", {}) for o in outputs)
