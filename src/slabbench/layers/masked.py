"""Plain prunable layers: a weight mask held as a buffer and applied in ``forward``.

The exported network of every method is built from these, so masking, counting and
fine-tuning live in one place.  ``weight_mask`` has the weight's shape, values in {0, 1}.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from slabbench.layers import stacked


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by the buffer ``weight_mask`` (out, in).

    Stackable (:mod:`slabbench.layers.stacked`): with ``stack = S`` every tensor has a leading
    run dimension, input ``(S, B, in)``, output ``(S, B, out)``."""

    handles_run_dim = True
    stack = 0

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stacked.linear(x, self.weight * self.weight_mask, self.bias, self.stack)


class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is multiplied by the buffer ``weight_mask`` (out, in, kh, kw).

    Stackable: with ``stack = S`` every tensor has a leading run dimension, input
    ``(S, B, C, H, W)``, output ``(S, B, O, H', W')`` (:func:`slabbench.layers.stacked.conv2d`)."""

    handles_run_dim = True
    stack = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_mask
        if not self.stack:
            return self._conv_forward(x, w, self.bias)
        padding = self.padding
        if self.padding_mode != "zeros":
            x, padding = stacked.pad(x, self._reversed_padding_repeated_twice, self.padding_mode, self.stack), 0
        return stacked.conv2d(x, w, self.bias, self.stride, padding, self.dilation, self.groups, self.stack)


def make_plain(cls: type, *args, weight: torch.Tensor, bias: torch.Tensor | None, **kw) -> nn.Module:
    """A plain masked layer ``cls(*args, **kw)`` (``MaskedLinear`` / ``MaskedConv2d``) holding
    copies of ``weight`` and ``bias``, mask all ones, on ``weight``'s device and dtype.  Built
    on the meta device, so no random initialisation is drawn (the global RNG is untouched)."""
    layer = cls(*args, bias=bias is not None, device="meta", dtype=weight.dtype, **kw).to_empty(device=weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.weight_mask.fill_(1.0)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, (MaskedLinear, MaskedConv2d))


def prunable_layers(model: nn.Module, kinds: tuple[type, ...] = (MaskedLinear, MaskedConv2d)) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` of every layer of type ``kinds``, in forward order."""
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            yield name, module


def replace_layers(model: nn.Module, fn: Callable[[str, nn.Module], nn.Module | None], kinds: tuple[type, ...] = (MaskedLinear, MaskedConv2d)) -> nn.Module:
    """Return a deep copy of ``model`` where every layer of type ``kinds`` is replaced by
    ``fn(name, layer)`` (module names are kept, so parameter names line up)."""
    new = copy.deepcopy(model)
    for name, module in list(new.named_modules()):
        if isinstance(module, kinds):
            parent_name, _, child = name.rpartition(".")
            parent = new.get_submodule(parent_name) if parent_name else new
            replacement = fn(name, module)
            if replacement is not None:
                setattr(parent, child, replacement)
    return new
