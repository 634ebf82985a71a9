"""Pictures of runs: training curves from ``metrics.jsonl``, and a 2-D map of test features.

Every run writes ``WORKDIR/curves.png`` at each checkpoint and at its end (the trainer's
:meth:`ssljax.train.MetricsWriter.write_curves`): loss, learning rate, online-probe top-1
and, when ``eval.every`` runs the evaluators during training, kNN top-1 over steps. The final
evaluation adds ``WORKDIR/embedding.png`` (``eval.embedding_plot``): a t-SNE of a fixed,
seeded subset of the test features, coloured by class. Several runs' curves, overlaid:

  python -m ssljax.plot RUN_DIR [RUN_DIR ...] [--out FILE]

Pictures need ``pip install 'ssljax[plot]'`` (matplotlib, scikit-learn). A run never fails
because of them: without matplotlib it says so once and goes on; a picture that cannot be
drawn is one warning line, and a picture is written to a temporary file and renamed, so a
crash leaves the previous one whole.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("ssljax")

CURVES = "curves.png"
EMBEDDING = "embedding.png"
METRICS = "metrics.jsonl"

# (metrics.jsonl key, panel title, scale to the plotted unit). The online probe's accuracy
# is logged as a fraction; the evaluators' as a percentage.
PANELS: tuple[tuple[str, str, float], ...] = (
    ("loss", "loss", 1.0),
    ("lr", "learning rate", 1.0),
    ("probe_top1", "online probe top-1 (%)", 100.0),
    ("eval/knn_top1", "kNN top-1 (%)", 1.0),
)
# The final evaluation's kNN (the row ``results.json`` writes at the last step) ends the
# kNN curve of the evaluations during training.
_FINAL_KNN = "knn_top1"

EMBEDDING_POINTS = 2000  # test examples in the t-SNE map: seconds on one CPU core

_PLOT_HINT = "pip install 'ssljax[plot]' gives the pictures (curves.png, embedding.png)"
_hinted = False  # the missing-matplotlib line is said once per process


# ----------------------------------------------------------------------------- data

def read_metrics(path: str) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a line cut off by a crash is skipped)."""
    from etils import epath
    rows = []
    for line in epath.Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def series(rows: Sequence[Mapping[str, Any]], key: str, *, scale: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` over ``rows``, by step (the last row of a step wins),
    finite values only, times ``scale``; for ``eval/knn_top1`` the final evaluation's kNN
    ends the curve."""
    by_step = {}
    for row in rows:
        value = row.get(key)
        if key == PANELS[3][0] and value is None and "loss" not in row:
            value = row.get(_FINAL_KNN)  # the final evaluation's row
        if isinstance(value, (int, float)) and math.isfinite(value):
            by_step[int(row["step"])] = float(value) * scale
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _panels(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[tuple[str, str, float]]:
    """The panels some run has data for; kNN needs evaluations during training."""
    out = []
    for key, title, scale in PANELS:
        present = any(key in row for rows in runs.values() for row in rows)
        if present:
            out.append((key, title, scale))
    return out


# ----------------------------------------------------------------------------- figures

def curves_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]]):
    """A matplotlib ``Figure``: one panel per metric of :data:`PANELS` that some run logged,
    one line per run in each panel (labelled by the run's name)."""
    from matplotlib.figure import Figure
    panels = _panels(runs)
    if not panels:
        raise ValueError("no loss, learning rate, probe or kNN rows to plot")
    fig = Figure(figsize=(3.4 * len(panels), 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title, scale) in zip(axes, panels):
        for label, rows in runs.items():
            steps, values = series(rows, key, scale=scale)
            if len(steps):
                ax.plot(steps, values, marker="o" if len(steps) < 3 else None,
                        markersize=3, lw=1.2, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if key == "loss" and _spans_decades(ax):
            ax.set_yscale("log")
    if len(runs) > 1:
        axes[0].legend(fontsize=7)
    return fig


def _spans_decades(ax) -> bool:
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.ones(1)])
    values = values[values > 0]
    return len(values) > 1 and values.max() > 30 * values.min()


def embedding_figure(points_2d: np.ndarray, labels: np.ndarray, *,
                     class_names: Sequence[str] = (), title: str = ""):
    """A matplotlib ``Figure``: the 2-D points coloured by class, one scatter per class
    (a legend of ``class_names`` where there are at most 20 classes)."""
    from matplotlib.figure import Figure
    import matplotlib
    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"
                                if len(classes) <= 20 else "turbo"]
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.subplots()
    for i, c in enumerate(classes):
        keep = labels == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        colour = cmap(i if len(classes) <= 20 else i / max(len(classes) - 1, 1))
        ax.scatter(points_2d[keep, 0], points_2d[keep, 1], s=4, color=colour, label=name,
                   alpha=0.8, linewidths=0)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return fig


def tsne(features: np.ndarray, *, seed: int = 0, max_iter: int = 500) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of ``features [N, D]``, after PCA to 50 dimensions.

    500 iterations (scikit-learn's default is 1,000) already separate the classes of 2,000
    points; OpenMP threads are capped at half the cores, at most 4: on a busy 2-core machine
    2,000 points took 56 s with every core's thread and 4 s with one."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    x = np.asarray(features, np.float32)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    with threadpool_limits(limits=max(1, min(4, (os.cpu_count() or 2) // 2))):
        if x.shape[1] > 50 and len(x) > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        return TSNE(n_components=2, init="pca", learning_rate="auto", perplexity=perplexity,
                    max_iter=max_iter, random_state=seed).fit_transform(x)


def subset(n: int, size: int, seed: int) -> np.ndarray:
    """A fixed, seeded choice of ``min(n, size)`` indices out of ``n``, in order."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


# ----------------------------------------------------------------------------- files

def save_figure(fig, path: str) -> None:
    """``fig`` as a PNG at ``path`` (local or gs://), through a temporary file renamed into
    place: a reader or a crash never sees half a picture."""
    from etils import epath
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)  # Agg whatever the session's backend: no display needed
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    target = epath.Path(path)
    tmp = target.parent / f".{target.name}.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(target)


def _plotting_available(*modules: str) -> bool:
    """Whether ``modules`` import; if not, says once per process what installs them."""
    global _hinted
    try:
        for module in modules:
            __import__(module)
    except ImportError:
        if not _hinted:
            logger.info("%s is not installed: %s.", " or ".join(modules), _PLOT_HINT)
            _hinted = True
        return False
    return True


def write_curves(workdir: str) -> str | None:
    """``WORKDIR/curves.png`` from ``WORKDIR/metrics.jsonl``; the path, or None when there
    is nothing to draw or no matplotlib (one log line, once) or drawing failed (one warning
    line). Never raises: a picture must not stop a run."""
    path = os.path.join(workdir, CURVES)
    try:
        if not _plotting_available("matplotlib"):
            return None
        rows = read_metrics(os.path.join(workdir, METRICS))
        if not any("loss" in row for row in rows):
            return None
        save_figure(curves_figure({os.path.basename(os.path.normpath(workdir)): rows}), path)
        return path
    except Exception as e:  # noqa: BLE001 - any failure is one line, never the run's end
        logger.warning("Could not draw %s (%s: %s); the run goes on.", path,
                       type(e).__name__, e)
        return None


def write_embedding(workdir: str, features: np.ndarray, labels: np.ndarray, *,
                    class_names: Sequence[str] = (), seed: int = 0,
                    max_points: int = EMBEDDING_POINTS, title: str = "") -> str | None:
    """``WORKDIR/embedding.png``: a t-SNE map of a seeded subset of ``max_points`` test
    features coloured by class. Returns the path, or None (no matplotlib or scikit-learn:
    one log line; a failure: one warning line). Never raises."""
    path = os.path.join(workdir, EMBEDDING)
    try:
        if not _plotting_available("matplotlib", "sklearn"):
            return None
        t0 = time.time()
        keep = subset(len(labels), max_points, seed)
        points = tsne(np.asarray(features)[keep], seed=seed)
        title = title or f"t-SNE of {len(keep)} test features"
        save_figure(embedding_figure(points, np.asarray(labels)[keep],
                                     class_names=class_names, title=title), path)
        logger.info("Embedding map of %d test features: %s (%.0fs).", len(keep), path,
                    time.time() - t0)
        return path
    except Exception as e:  # noqa: BLE001 - any failure is one line, never the run's end
        logger.warning("Could not draw %s (%s: %s); the run goes on.", path,
                       type(e).__name__, e)
        return None


# ----------------------------------------------------------------------------- CLI

def overlay(run_dirs: Sequence[str], out: str) -> tuple[str | None, list[str]]:
    """One picture of several runs' curves at ``out``, each run labelled by its directory's
    name. Returns ``(out, problems)``: one sentence per directory left out; ``out`` is None
    when no directory had curves (nothing is written)."""
    runs, problems = {}, []
    for run_dir in run_dirs:
        name = os.path.basename(os.path.normpath(run_dir))
        path = os.path.join(run_dir, METRICS)
        if not os.path.isfile(path):
            problems.append(f"{run_dir} has no {METRICS}: left out (is it a run's --workdir?).")
            continue
        rows = read_metrics(path)
        if not any("loss" in row for row in rows):
            problems.append(f"{path} has no training rows yet: left out.")
            continue
        label, k = name, 2
        while label in runs:  # two runs of the same name from different parents
            label, k = f"{name} ({k})", k + 1
        runs[label] = rows
    if not runs:
        return None, problems
    save_figure(curves_figure(runs), out)
    return out, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.plot",
        description="Overlay the training curves (loss, learning rate, online probe, kNN) of "
                    "one or more runs, read from each RUN_DIR/metrics.jsonl.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's --workdir")
    parser.add_argument("--out", default="curves.png",
                        help="the picture to write (default: curves.png here)")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"error: python -m ssljax.plot needs matplotlib; install it with pip install "
              "'ssljax[plot]'.", file=sys.stderr)
        return 2
    out, problems = overlay(args.run_dirs, args.out)
    for problem in problems:
        print(problem, file=sys.stderr)
    if out is None:
        print("error: none of the run directories has curves to draw; pass the --workdir of "
              "a run that has logged a step.", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
