"""Thresholding, in one place: scores -> keep-masks -> masked network.

Every method reaches a sparsity target ``s`` the same way: it supplies one score per
prunable weight (higher = more important) and :func:`topk_masks` keeps the top
``1 - s`` fraction, either over all prunable weights at once (``scope="global"``) or
layer by layer (``scope="layerwise"``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slabbench.layers import prunable_layers

SCOPES = ("global", "layerwise")


def n_keep(total: int, sparsity: float) -> int:
    """Number of weights kept out of ``total`` at sparsity ``sparsity`` (at least one)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return max(1, int(math.floor((1.0 - sparsity) * total + 0.5)))


def _top(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of ``flat``; ties broken by index (stable)."""
    order = torch.argsort(flat, descending=True, stable=True)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def topk_masks(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks (float 0/1, each of its score's shape) at ``sparsity`` in ``scope``.

    NaN scores rank last.  Global: exactly ``n_keep(total, s)`` weights survive.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown prune scope {scope!r}; valid: {', '.join(SCOPES)}")
    clean = {k: torch.nan_to_num(v.detach().float(), nan=-math.inf) for k, v in scores.items()}
    if scope == "layerwise":
        return {k: _top(v.flatten(), n_keep(v.numel(), sparsity)).view_as(v).float() for k, v in clean.items()}
    flat = torch.cat([v.flatten() for v in clean.values()])
    keep = _top(flat, n_keep(flat.numel(), sparsity))
    masks, start = {}, 0
    for k, v in clean.items():
        masks[k] = keep[start:start + v.numel()].view_as(v).float()
        start += v.numel()
    return masks


def apply_masks(net: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Set each masked layer's ``weight_mask`` from ``masks`` (keys ``"<layer>.weight"``)
    and zero the pruned weights.  Keys must match the prunable layers exactly."""
    layers = dict(prunable_layers(net))
    expected = {f"{name}.weight" for name in layers}
    if set(masks) != expected:
        raise KeyError(f"mask keys {sorted(masks)} do not match prunable weights {sorted(expected)}")
    with torch.no_grad():
        for name, layer in layers.items():
            m = masks[f"{name}.weight"].to(layer.weight.device, layer.weight.dtype)
            if m.shape != layer.weight.shape:
                raise ValueError(f"mask for {name}.weight has shape {tuple(m.shape)}, weight {tuple(layer.weight.shape)}")
            layer.weight_mask.copy_(m)
            layer.weight.mul_(m)
    return net


def magnitude_scores(net: nn.Module) -> dict[str, torch.Tensor]:
    """|w| of every (masked) prunable weight; already-pruned weights score 0."""
    return {f"{name}.weight": (layer.weight * layer.weight_mask).detach().abs() for name, layer in prunable_layers(net)}
