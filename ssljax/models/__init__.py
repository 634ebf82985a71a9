"""Flax Linen models: ResNet backbones and projector / predictor / classifier heads."""

from ssljax.models.heads import MLP, LinearClassifier
from ssljax.models.multi_exit import (MultiExitClassifier, MultiExitContrastive,
                                      MultiExitFeatures, MultiExitResNet, multi_exit_resnet)
from ssljax.models.resnet import ResNet, ResNetStage, ResNetStem, feature_dim, resnet

__all__ = [
    "ResNet",
    "ResNetStage",
    "ResNetStem",
    "resnet",
    "feature_dim",
    "MLP",
    "LinearClassifier",
    "MultiExitResNet",
    "MultiExitContrastive",
    "MultiExitClassifier",
    "MultiExitFeatures",
    "multi_exit_resnet",
]
