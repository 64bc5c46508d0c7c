"""Layers: plain masked layers (the exported network), the architectures' other layers
(batch norm, pooling) and helpers to swap layer types."""

from slabbench.layers.basic import BatchNorm1d, BatchNorm2d, MaxPool2d
from slabbench.layers.masked import MaskedConv2d, MaskedLinear, is_prunable, prunable_layers, replace_layers

__all__ = ["BatchNorm1d", "BatchNorm2d", "MaxPool2d", "MaskedConv2d", "MaskedLinear", "is_prunable", "prunable_layers", "replace_layers"]
