"""Evaluators: the online probe lives in the train step; these score frozen features."""

from ssljax.evaluate.features import extract_features, features_of_batches
from ssljax.evaluate.knn import knn_predict, knn_top1
from ssljax.evaluate.linear import linear_probe
from ssljax.evaluate.rank import effective_rank

__all__ = ["effective_rank", "extract_features", "features_of_batches", "knn_predict", "knn_top1", "linear_probe"]
