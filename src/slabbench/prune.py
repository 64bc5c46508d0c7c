"""Thresholding, in one place: scores -> keep-masks -> masked network.

Every method reaches a sparsity target ``s`` the same way: it supplies one score per
prunable weight (higher = more important) and :func:`topk_masks` keeps the top
``1 - s`` fraction, either over all prunable weights at once (``scope="global"``) or
layer by layer (``scope="layerwise"``).

A score may be a pair ``(primary, tiebreak)`` of tensors of the weight's shape: weights are
then ranked lexicographically, by ``primary`` first and, among equal primaries (weights that
share a gate), by ``tiebreak``; remaining ties go to the lower flat index (first layer first,
row by row).  Scores are ranked in their own dtype: nothing is cast, so no precision is lost.
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


Score = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _top(keys: list[torch.Tensor], k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries in the lexicographic order of ``keys``
    (flat tensors of one length, most significant first); remaining ties by index."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):  # stable sorts from the least significant key up
        order = order[torch.argsort(key[order], descending=True, stable=True)]
    keep = torch.zeros(keys[0].numel(), dtype=torch.bool, device=keys[0].device)
    keep[order[:k]] = True
    return keep


def _keys(score: Score) -> list[torch.Tensor]:
    """A score or a (primary, tiebreak) pair -> its ranking keys, NaN ranked last."""
    parts = list(score) if isinstance(score, (tuple, list)) else [score]
    if any(p.shape != parts[0].shape for p in parts):
        raise ValueError(f"a score pair must have one shape, got {[tuple(p.shape) for p in parts]}")
    return [torch.nan_to_num(p.detach(), nan=-math.inf) for p in parts]


def topk_masks(scores: dict[str, Score], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks (float32 0/1, each of its score's shape) at ``sparsity`` in ``scope``.

    ``scores`` maps ``"<layer>.weight"`` to a tensor or a ``(primary, tiebreak)`` pair (see the
    module docstring).  NaN scores rank last.  Global: exactly ``n_keep(total, s)`` weights survive.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown prune scope {scope!r}; valid: {', '.join(SCOPES)}")
    keys = {k: _keys(v) for k, v in scores.items()}
    depth = {len(v) for v in keys.values()}
    if len(depth) > 1:
        raise ValueError("scores mix plain tensors and (primary, tiebreak) pairs; give every layer the same form")
    if scope == "layerwise":
        return {k: _top([p.flatten() for p in v], n_keep(v[0].numel(), sparsity)).view_as(v[0]).float()
                for k, v in keys.items()}
    flat = [torch.cat([v[i].flatten() for v in keys.values()]) for i in range(depth.pop())]
    keep = _top(flat, n_keep(flat[0].numel(), sparsity))
    masks, start = {}, 0
    for k, v in keys.items():
        masks[k] = keep[start:start + v[0].numel()].view_as(v[0]).float()
        start += v[0].numel()
    return masks


def keep_top(score: Score, k: int) -> torch.Tensor:
    """Keep-mask (float32 0/1, the score's shape) of exactly the ``k`` highest-ranked entries of
    one score tensor or ``(primary, tiebreak)`` pair (NaN last, ties by index); ``k`` may be 0."""
    keys = _keys(score)
    if not 0 <= k <= keys[0].numel():
        raise ValueError(f"cannot keep {k} of {keys[0].numel()} weights")
    return _top([p.flatten() for p in keys], k).view_as(keys[0]).float()


def apply_masks(net: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Set each masked layer's ``weight_mask`` from ``masks`` (keys ``"<layer>.weight"``)
    and zero the pruned weights.  The weight keys must match the prunable layers exactly.

    A natural mask may also hold ``"<layer>.bias"`` keys (0/1 of the bias's shape): biases that
    share a gate with what the method's own rule dropped (a spike-and-slab unit under node
    gates); those biases are zeroed.  Only natural selections carry them, and those are never
    fine-tuned: a bias is otherwise never pruned."""
    layers = dict(prunable_layers(net))
    expected = {f"{name}.weight" for name in layers}
    biases = {f"{name}.bias" for name, layer in layers.items() if layer.bias is not None}
    if not expected <= set(masks) or not set(masks) <= expected | biases:
        raise KeyError(f"mask keys {sorted(masks)} do not match prunable weights {sorted(expected)} (and, optionally, "
                       f"their biases {sorted(biases)})")
    with torch.no_grad():
        for name, layer in layers.items():
            m = masks[f"{name}.weight"].to(layer.weight.device, layer.weight.dtype)
            if m.shape != layer.weight.shape:
                raise ValueError(f"mask for {name}.weight has shape {tuple(m.shape)}, weight {tuple(layer.weight.shape)}")
            layer.weight_mask.copy_(m)
            layer.weight.mul_(m)
            if f"{name}.bias" in masks:
                mb = masks[f"{name}.bias"].to(layer.bias.device, layer.bias.dtype)
                if mb.shape != layer.bias.shape:
                    raise ValueError(f"mask for {name}.bias has shape {tuple(mb.shape)}, bias {tuple(layer.bias.shape)}")
                layer.bias.mul_(mb)
    return net


def magnitude_scores(net: nn.Module) -> dict[str, torch.Tensor]:
    """|w| of every (masked) prunable weight; already-pruned weights score 0."""
    return {f"{name}.weight": (layer.weight * layer.weight_mask).detach().abs() for name, layer in prunable_layers(net)}
