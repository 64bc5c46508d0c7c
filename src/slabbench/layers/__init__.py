"""Layers: plain masked layers (the exported network) and helpers to swap layer types."""

from slabbench.layers.masked import MaskedConv2d, MaskedLinear, is_prunable, prunable_layers, replace_layers

__all__ = ["MaskedConv2d", "MaskedLinear", "is_prunable", "prunable_layers", "replace_layers"]
