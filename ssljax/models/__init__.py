"""Flax Linen models: ResNet and ViT backbones, projector / predictor / classifier heads,
reconstruction decoders."""

from ssljax.models.decoder import ConvDecoder, TransformerDecoder
from ssljax.models.heads import MLP, LinearClassifier
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
    "ViT",
    "vit",
    "keep_indices",
    "VIT_CONFIGS",
    "ConvDecoder",
    "TransformerDecoder",
]
