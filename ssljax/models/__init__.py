"""Flax Linen models: ResNet and ViT backbones, projector / predictor / classifier heads,
reconstruction decoders."""

from ssljax.models.decoder import ConvDecoder, TransformerDecoder
from ssljax.models.heads import MLP, LinearClassifier
from ssljax.models.multi_exit import (MultiExitClassifier, MultiExitContrastive,
                                      MultiExitFeatures, MultiExitResNet, multi_exit_resnet)
from ssljax.models.resnet import ResNet, ResNetStage, ResNetStem, feature_dim, resnet
from ssljax.models.vit import VIT_CONFIGS, ViT, keep_indices, vit

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
    "ViT",
    "vit",
    "keep_indices",
    "VIT_CONFIGS",
    "ConvDecoder",
    "TransformerDecoder",
]
