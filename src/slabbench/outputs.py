"""What a method hands the core is checked where it enters: its scores and its natural mask.

A plugin's mistake (a layer left out, a score of the wrong shape, an empty dict because a hook
accumulated nothing, NaN) otherwise surfaces far away, as a ``KeyError`` in the top-k or a mask
that silently keeps the wrong weights.  Every error names the method, the hook and what is wrong.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slabbench.api import MethodOutputError
from slabbench.layers import prunable_layers


def _expected(net: nn.Module) -> dict[str, torch.Size]:
    return {f"{name}.weight": layer.weight.shape for name, layer in prunable_layers(net)}


def _check_keys(got: dict, expected: dict, where: str) -> None:
    missing = [k for k in expected if k not in got]
    extra = sorted(k for k in got if k not in expected)
    if not got:
        raise MethodOutputError(f"{where} returned an empty dict; expected one tensor per prunable weight: "
                                f"{', '.join(expected)} (a hook that accumulates scores, e.g. from gradients "
                                "in after_step, may have collected nothing)")
    if missing or extra:
        parts = ([f"no entry for {', '.join(missing)}"] if missing else []) + (
            [f"entries for {', '.join(extra)}, which are not prunable weights"] if extra else [])
        raise MethodOutputError(f"{where} returned {'; '.join(parts)}; expected exactly: {', '.join(expected)}")


def _keyed_by_weight(value: Any, net: nn.Module, where: str, what: str, otherwise: str) -> dict[str, torch.Size]:
    """Check that ``value`` is a dict keyed by exactly the prunable weights of ``net``; return
    {key: the weight's shape}."""
    if not isinstance(value, dict):
        raise MethodOutputError(f"{where} returned a {type(value).__name__}; expected a dict of {what} keyed "
                                f"'<layer>.weight', or {otherwise}")
    expected = _expected(net)
    _check_keys(value, expected, where)
    return expected


def check_scores(scores: Any, net: nn.Module, method: str, diverged: bool = False) -> None:
    """``scores`` (a :meth:`Method.scores` result, not ``None``) has one tensor (or a
    ``(primary, tiebreak)`` pair of tensors) of each prunable weight's shape of the exported
    ``net``, keyed ``"<layer>.weight"``; no NaN unless the run ``diverged`` (a diverged run under
    ``on_divergence: record`` keeps ranking NaN last).  ±inf ranks first / last and is allowed
    (a closed-form PIP logit reaches +inf when σ underflows)."""
    where = f"method {method!r}: scores()"
    expected = _keyed_by_weight(scores, net, where, "tensors", "None for a method that never prunes")
    for key, shape in expected.items():
        value = scores[key]
        parts = list(value) if isinstance(value, (tuple, list)) else [value]
        if len(parts) not in (1, 2) or not all(torch.is_tensor(p) for p in parts):
            raise MethodOutputError(f"{where}[{key!r}] is {type(value).__name__}; expected a tensor or a "
                                    "(primary, tiebreak) pair of tensors")
        for p in parts:
            if p.shape != shape:
                raise MethodOutputError(f"{where}[{key!r}] has shape {tuple(p.shape)}; the weight has {tuple(shape)}")
            if p.is_complex():
                raise MethodOutputError(f"{where}[{key!r}] has dtype {p.dtype}; expected a real dtype")
            if not diverged and p.is_floating_point():
                bad = int(torch.isnan(p).sum())
                if bad:
                    raise MethodOutputError(f"{where}[{key!r}] has {bad} NaN of {p.numel()} in a run that did not "
                                            "diverge; NaN cannot be ranked")


def check_mask(mask: Any, net: nn.Module, method: str) -> None:
    """``mask`` (a :meth:`Method.natural_mask` result, not ``None``) has one 0/1 tensor of each
    prunable weight's shape of the exported ``net``, keyed ``"<layer>.weight"``, and optionally
    one of a layer's bias shape, keyed ``"<layer>.bias"`` (biases gated with dropped units)."""
    where = f"method {method!r}: natural_mask()"
    biases = {f"{name}.bias": layer.bias.shape for name, layer in prunable_layers(net) if layer.bias is not None}
    weights = {k: v for k, v in mask.items() if k not in biases} if isinstance(mask, dict) else mask
    expected = _keyed_by_weight(weights, net, where, "0/1 tensors", "None for a method without a natural selection")
    expected.update({k: biases[k] for k in mask if k in biases})
    for key, shape in expected.items():
        m = mask[key]
        if not torch.is_tensor(m):
            raise MethodOutputError(f"{where}[{key!r}] is {type(m).__name__}; expected a tensor")
        if m.shape != shape:
            raise MethodOutputError(f"{where}[{key!r}] has shape {tuple(m.shape)}; the {key.rsplit('.', 1)[1]} has "
                                    f"{tuple(shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise MethodOutputError(f"{where}[{key!r}] holds values other than 0 and 1")
