"""Pictures of runs (issue 23, item 4): ``curves.png`` from metrics.jsonl at each checkpoint
and at the end, ``embedding.png`` from the final evaluation's test features, and
``python -m ssljax.plot`` overlaying several runs. A picture never stops a run."""

import json
import logging
import os
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="pip install -e '.[plot]'")
pytest.importorskip("sklearn", reason="pip install -e '.[plot]'")

from helpers import REPO  # noqa: E402
from ssljax import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(steps=(20, 40, 60, 80), *, eval_steps=(40,), final_knn=71.5):
    """metrics.jsonl rows as the trainer writes them: training rows (the online probe as a
    fraction), eval.every's ``eval/`` rows, and the final evaluation's row."""
    rows = [{"step": s, "loss": 10.0 - s / 20, "lr": 0.1 * s / 80, "probe_top1": s / 100,
             "probe_loss": 1.0, "images_per_sec": 500.0} for s in steps]
    rows += [{"step": s, "eval/knn_top1": 50.0 + s / 10, "eval/linear_probe_top1": 60.0}
             for s in eval_steps]
    rows.sort(key=lambda r: r["step"])
    if final_knn is not None:
        rows.append({"step": steps[-1], "linear_probe_top1": 80.0, "knn_top1": final_knn,
                     "online_probe_top1": 79.0})
    return rows


def _write_run(path, rows, *, cut_line=True):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        if cut_line:
            f.write('{"step": 100, "loss": 3.')  # a line cut off by a crash
    return str(path)


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``save_figure`` writes, by file name (the file is written too)."""
    figures = {}
    save = plot.save_figure

    def keep(fig, path):
        figures[os.path.basename(path)] = fig
        save(fig, path)
    monkeypatch.setattr(plot, "save_figure", keep)
    return figures


def _lines(ax):
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


# ----------------------------------------------------------------------------- curves

def test_curves_are_the_logged_metrics(tmp_path, drawn):
    workdir = _write_run(tmp_path / "run_a", _rows())
    assert plot.write_curves(workdir) == os.path.join(workdir, "curves.png")
    _assert_png(os.path.join(workdir, "curves.png"))
    fig = drawn["curves.png"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "learning rate", "online probe top-1 (%)", "kNN top-1 (%)"]
    loss, lr, probe, knn = (_lines(ax)["run_a"] for ax in fig.axes)
    np.testing.assert_array_equal(loss[0], [20, 40, 60, 80])
    np.testing.assert_allclose(loss[1], [9.0, 8.0, 7.0, 6.0])
    np.testing.assert_allclose(lr[1], [0.025, 0.05, 0.075, 0.1])
    np.testing.assert_allclose(probe[1], [20.0, 40.0, 60.0, 80.0])  # percent, not fraction
    # kNN: the evaluation during training, then the final evaluation's.
    np.testing.assert_array_equal(knn[0], [40, 80])
    np.testing.assert_allclose(knn[1], [54.0, 71.5])


def test_no_knn_panel_without_evaluations_during_training(tmp_path, drawn):
    workdir = _write_run(tmp_path / "run", _rows(eval_steps=()))
    plot.write_curves(workdir)
    assert [ax.get_title() for ax in drawn["curves.png"].axes] == [
        "loss", "learning rate", "online probe top-1 (%)"]


def test_nothing_to_draw_before_the_first_logged_step(tmp_path):
    workdir = str(tmp_path)
    open(os.path.join(workdir, "metrics.jsonl"), "w").close()
    assert plot.write_curves(workdir) is None
    assert not os.path.exists(os.path.join(workdir, "curves.png"))


def test_a_failing_picture_is_one_warning_and_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                    caplog):
    workdir = _write_run(tmp_path / "run", _rows())
    plot.write_curves(workdir)
    before = open(os.path.join(workdir, "curves.png"), "rb").read()

    def broken_savefig(self, fname, **kw):  # fails half-way through writing
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:
            with open(fname, "wb") as f:
                f.write(b"\x89PNG half")
        raise RuntimeError("renderer exploded")
    import matplotlib.figure
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with caplog.at_level(logging.INFO, logger="ssljax"):
        assert plot.write_curves(workdir) is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "renderer exploded" in warnings[0].getMessage()
    assert open(os.path.join(workdir, "curves.png"), "rb").read() == before
    assert sorted(os.listdir(workdir)) == ["curves.png", "metrics.jsonl"]


def test_without_matplotlib_the_run_goes_on_with_one_line(tmp_path, monkeypatch, caplog):
    workdir = _write_run(tmp_path / "run", _rows())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(plot, "_hinted", False)
    with caplog.at_level(logging.INFO, logger="ssljax"):
        assert plot.write_curves(workdir) is None
        assert plot.write_curves(workdir) is None  # every checkpoint: said once
        assert plot.write_embedding(workdir, np.zeros((5, 2)), np.zeros(5, int)) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "pip install 'ssljax[plot]'" in lines[0], lines
    assert not os.path.exists(os.path.join(workdir, "curves.png"))


def test_only_process_0_draws_the_curves(tmp_path, monkeypatch):
    import jax

    from ssljax import train
    workdir = _write_run(tmp_path / "run", _rows(), cut_line=False)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    train.MetricsWriter(workdir).write_curves()
    assert not os.path.exists(os.path.join(workdir, "curves.png"))
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    writer = train.MetricsWriter(workdir, start_step=80)
    writer.write_curves()
    writer.close()
    _assert_png(os.path.join(workdir, "curves.png"))


# ----------------------------------------------------------------------------- overlay CLI

def test_overlay_has_one_line_per_run_in_each_panel(tmp_path, drawn, capsys):
    a = _write_run(tmp_path / "simclr_s0", _rows())
    b = _write_run(tmp_path / "byol_s0", _rows(steps=(20, 40, 60), eval_steps=(20, 40),
                                               final_knn=60.0))
    missing = str(tmp_path / "not_a_run")
    os.makedirs(missing)
    out = str(tmp_path / "overlay.png")
    assert plot.main([a, b, missing, "--out", out]) == 0
    _assert_png(out)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{missing} has no metrics.jsonl: left out (is it a run's --workdir?)."]
    fig = drawn["overlay.png"]
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert sorted(_lines(ax)) == ["byol_s0", "simclr_s0"], ax.get_title()
    np.testing.assert_allclose(_lines(fig.axes[3])["byol_s0"][1], [52.0, 54.0, 60.0])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["simclr_s0",
                                                                             "byol_s0"]


def test_overlay_of_no_run_is_one_sentence_per_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssljax.plot", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "x.png")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{tmp_path / 'nope'} has no metrics.jsonl: left out (is it a run's --workdir?).",
        "error: none of the run directories has curves to draw; pass the --workdir of a run "
        "that has logged a step."]
    assert not os.path.exists(tmp_path / "x.png")


# ----------------------------------------------------------------------------- embedding

def _clusters(n_per=150, classes=3, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 6
    labels = np.repeat(np.arange(classes), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def test_embedding_is_a_map_of_the_features_coloured_by_class(tmp_path, drawn):
    features, labels = _clusters(n_per=100)
    names = ("cat", "dog", "ship")
    path = plot.write_embedding(str(tmp_path), features, labels, class_names=names, seed=0,
                                max_points=200)
    assert path == str(tmp_path / "embedding.png")
    _assert_png(path)
    ax = drawn["embedding.png"].axes[0]
    scatters = ax.collections
    assert [s.get_label() for s in scatters] == list(names)
    # One colour per class, each holding its class's examples of the seeded subset.
    counts = np.bincount(labels[plot.subset(len(labels), 200, seed=0)], minlength=3)
    assert [len(s.get_offsets()) for s in scatters] == counts.tolist() and counts.sum() == 200
    colours = [tuple(np.round(s.get_facecolor()[0], 3)) for s in scatters]
    assert len(set(colours)) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(names)
    # The map keeps the clusters apart: each point's nearest other point is of its class.
    points = np.concatenate([s.get_offsets() for s in scatters])
    point_labels = np.concatenate([[i] * len(s.get_offsets()) for i, s in enumerate(scatters)])
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(point_labels[d.argmin(1)] == point_labels) > 0.95


def test_the_subset_is_fixed_by_the_seed():
    a, b = plot.subset(10_000, 2000, seed=0), plot.subset(10_000, 2000, seed=0)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 2000 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, plot.subset(10_000, 2000, seed=1))
    np.testing.assert_array_equal(plot.subset(50, 2000, seed=0), np.arange(50))


def _encoder_context(workdir, *, embedding_plot=True):
    """What the ``encoder`` evaluator reads of its context, with features that count their
    computations."""
    features, labels = _clusters(n_per=40)
    ctx = types.SimpleNamespace(
        config=ml_collections.ConfigDict({"seed": 0, "method": "simclr",
                                          "data": {"name": "fashion_mnist"},
                                          "eval": {"embedding_plot": embedding_plot}}),
        info=types.SimpleNamespace(class_names=("a", "b", "c")), workdir=workdir, calls=0)

    def compute(params, state):
        ctx.calls += 1
        return ({"": features}, labels), ({"": features}, labels)
    ctx.features = compute
    ctx.score_named = lambda *a: {"knn_top1": 1.0}
    return ctx


@pytest.mark.parametrize("case", ["final", "off", "during_training", "process_1"])
def test_the_encoder_evaluator_draws_the_map_from_its_features(tmp_path, monkeypatch, case):
    import jax

    from ssljax.evaluate import evaluators
    ctx = _encoder_context(None if case == "during_training" else str(tmp_path),
                           embedding_plot=case != "off")
    if case == "process_1":
        monkeypatch.setattr(jax, "process_index", lambda: 1)
    out = evaluators.encoder(ctx, types.SimpleNamespace(params=None, state=None))
    assert out["knn_top1"] == 1.0 and "effective_rank" in out
    assert ctx.calls == 1  # the map reuses the probes' features
    assert os.path.exists(tmp_path / "embedding.png") == (case == "final")


def test_the_switch_is_a_config_key_of_every_method():
    from helpers import load_config
    from ssljax.config import ConfigError, check_overrides
    cfg = load_config("corinfomax")
    assert cfg.eval.embedding_plot is True  # the default run draws the map
    check_overrides(["--config.eval.embedding_plot=False"], cfg)
    with pytest.raises(ConfigError, match="did you mean 'eval.embedding_plot'"):
        check_overrides(["--config.eval.embeding_plot=False"], cfg)
