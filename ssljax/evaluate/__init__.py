"""Evaluators: the online probe lives in the train step; these score frozen features.

The probes (:func:`knn_top1`, :func:`linear_probe`, :func:`effective_rank`, the dense
probe of ``segmentation``) and the registry that runs them for a run
(``evaluators``: :func:`run_evaluators`, selected from ``config.eval``).
"""

from ssljax.evaluate.features import extract_features, features_of_batches
from ssljax.evaluate.knn import knn_predict, knn_top1
from ssljax.evaluate.linear import linear_probe
from ssljax.evaluate.rank import effective_rank
from ssljax.evaluate.evaluators import (  # noqa: E402  (after the probes it runs)
    EVALUATORS,
    EvalContext,
    baseline_scores,
    evaluate_encoder,
    run_evaluators,
)

__all__ = ["EVALUATORS", "EvalContext", "baseline_scores", "effective_rank", "evaluate_encoder",
           "extract_features", "features_of_batches", "knn_predict", "knn_top1",
           "linear_probe", "run_evaluators"]
