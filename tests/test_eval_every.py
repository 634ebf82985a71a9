"""Evaluation during training (``eval.every``): the evaluators of the trained encoder every
that many steps, as ``eval/<metric>`` rows of metrics.jsonl that a resume keeps."""

import json
import os

import pytest
from helpers import tiny_config
from ssljax import sharding, train


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.slow  # about 74 s: two trainer runs with evaluations and plots
def test_every_n_steps_and_kept_on_resume(tmp_path):
    """Also the pictures (issue 23, item 4): ``curves.png`` at each checkpoint, with a kNN
    panel (4 panels side by side), and ``embedding.png`` from the final evaluation only."""
    pytest.importorskip("matplotlib", reason="pip install -e '.[plot]'")
    pytest.importorskip("sklearn", reason="pip install -e '.[plot]'")
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(1)
    overrides = {"total_steps": 4, "eval.every": 2, "eval.linear_epochs": 1,
                 "eval.batch_size": 64, "eval.embedding_plot": True}
    # Stop after step 3: the evaluation of step 2 is written, the run resumes at step 4.
    assert train.train_and_evaluate(tiny_config("simclr", stop_after_step=3, **overrides),
                                    workdir, mesh=mesh) == {}
    first = [r for r in _rows(workdir) if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in first] == [2]
    assert set(first[0]) == {"step", "eval/linear_probe_top1", "eval/knn_top1",
                             "eval/effective_rank"}  # no baselines during training
    width, height = _png_size(os.path.join(workdir, "curves.png"))  # the stop's checkpoint
    assert width > 3 * height  # loss, learning rate, online probe, kNN in a row
    assert not os.path.exists(os.path.join(workdir, "embedding.png"))  # not evaluated yet
    results = train.train_and_evaluate(tiny_config("simclr", **overrides), workdir, mesh=mesh)
    rows = _rows(workdir)
    assert [r for r in rows if any(k.startswith("eval/") for k in r)] == first  # kept, once
    # The last step is the final evaluation's (results.json), not an eval/ row.
    assert sorted(r["step"] for r in rows if "loss" in r) == [1, 2, 3, 4]
    assert "linear_probe_top1" in results and not any(k.startswith("eval/") for k in results)
    _png_size(os.path.join(workdir, "curves.png"))
    assert min(_png_size(os.path.join(workdir, "embedding.png"))) > 200
