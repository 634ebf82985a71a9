"""Evaluation during training (``eval.every``): the evaluators of the trained encoder every
that many steps, as ``eval/<metric>`` rows of metrics.jsonl that a resume keeps."""

import json
import os

from helpers import tiny_config
from ssljax import sharding, train


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_every_n_steps_and_kept_on_resume(tmp_path):
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(1)
    overrides = {"total_steps": 4, "eval.every": 2, "eval.linear_epochs": 1,
                 "eval.batch_size": 64}
    # Stop after step 3: the evaluation of step 2 is written, the run resumes at step 4.
    assert train.train_and_evaluate(tiny_config("simclr", stop_after_step=3, **overrides),
                                    workdir, mesh=mesh) == {}
    first = [r for r in _rows(workdir) if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in first] == [2]
    assert set(first[0]) == {"step", "eval/linear_probe_top1", "eval/knn_top1",
                             "eval/effective_rank"}  # no baselines during training
    results = train.train_and_evaluate(tiny_config("simclr", **overrides), workdir, mesh=mesh)
    rows = _rows(workdir)
    assert [r for r in rows if any(k.startswith("eval/") for k in r)] == first  # kept, once
    # The last step is the final evaluation's (results.json), not an eval/ row.
    assert sorted(r["step"] for r in rows if "loss" in r) == [1, 2, 3, 4]
    assert "linear_probe_top1" in results and not any(k.startswith("eval/") for k in results)
