"""Metrics measured on an exported (plain, masked) network.

Counting conventions (SCIENCE.md §3): *sparsity* counts prunable weights only;
*sparsity_all* counts weights and biases; *compression* = weights / nonzero weights;
*flops_kept* = sum over layers of nonzero weights x output positions, divided by the
same sum for the dense network (theoretical multiply-adds; masks give no speed-up by
themselves).  A hidden unit is *kept* if it has a nonzero incoming weight or bias and a
nonzero outgoing weight; an input feature is *kept* if some nonzero first-layer weight
leaves it (Bai et al.'s rule).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slabbench.layers import prunable_layers

ECE_BINS = 15


def effective_weights(net: nn.Module) -> list[tuple[str, nn.Module, torch.Tensor]]:
    return [(name, layer, (layer.weight * layer.weight_mask).detach()) for name, layer in prunable_layers(net)]


@torch.no_grad()
def output_positions(net: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Spatial positions each prunable layer's output has (1 for Linear, H*W for Conv2d)."""
    positions: dict[str, int] = {}
    hooks = []
    for name, layer in prunable_layers(net):
        def hook(mod, inp, out, name=name):
            positions[name] = int(out[0].numel() // out.shape[1])
        hooks.append(layer.register_forward_hook(hook))
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        net(torch.zeros(1, *input_shape, device=device))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return positions


def structure(net: nn.Module, input_shape: Sequence[int]) -> dict:
    """Sparsity, compression, FLOPs kept, kept nodes per hidden layer, kept input features."""
    layers = effective_weights(net)
    pos = output_positions(net, input_shape)
    w_total = sum(w.numel() for _, _, w in layers)
    w_nnz = sum(int((w != 0).sum()) for _, _, w in layers)
    b_total = sum(l.bias.numel() for _, l, _ in layers if l.bias is not None)
    b_nnz = sum(int((l.bias != 0).sum()) for _, l, _ in layers if l.bias is not None)
    flops_dense = sum(w.numel() * pos[n] for n, _, w in layers)
    flops = sum(int((w != 0).sum()) * pos[n] for n, _, w in layers)

    nodes = []
    for (name, layer, w), (_, _, w_next) in zip(layers[:-1], layers[1:]):
        units = w.shape[0]
        incoming = (w.reshape(units, -1) != 0).any(dim=1)
        if layer.bias is not None:
            incoming = incoming | (layer.bias.detach() != 0)
        outgoing = (w_next.reshape(w_next.shape[0], units, -1) != 0).any(dim=2).any(dim=0)
        nodes.append(int((incoming & outgoing).sum()))
    # an input is selected iff a nonzero weight leads from it to a unit with a path of nonzero
    # weights to the outputs (Bai's rule, restricted to inputs that can still act: in a net
    # whose hidden units are all cut off, no input is selected)
    useful = torch.ones(layers[-1][2].shape[0], dtype=torch.bool, device=layers[-1][2].device)
    for i in range(len(layers) - 1, -1, -1):
        w = layers[i][2]
        reach = (w.reshape(w.shape[0], w.shape[1], -1)[useful] != 0).any(dim=2).any(dim=0)  # (inputs of layer i,)
        if i > 0:  # inputs of layer i -> units of layer i-1 (a flatten groups positions per unit)
            useful = reach.reshape(layers[i - 1][2].shape[0], -1).any(dim=1)
    selected = reach
    return {
        "n_weights": w_total,
        "nonzero_weights": w_nnz,
        "n_biases": b_total,
        "nonzero_biases": b_nnz,
        "sparsity": 1.0 - w_nnz / w_total,
        "sparsity_all": 1.0 - (w_nnz + b_nnz) / (w_total + b_total),
        "compression": (w_total / w_nnz) if w_nnz else math.inf,
        "flops_kept": flops / flops_dense,
        "nodes_kept": nodes,
        "features_kept": int(selected.sum()),
        "selected_features": selected.nonzero().flatten().tolist(),
    }


def selection_errors(selected: Sequence[int], true_support: Sequence[int], n_features: int) -> dict[str, float]:
    """False-negative rate over the true features, false-positive rate over the others."""
    sel, true = set(selected), set(true_support)
    n_noise = n_features - len(true)
    return {
        "fnr": len(true - sel) / len(true) if true else math.nan,
        "fpr": len(sel - true) / n_noise if n_noise else math.nan,
    }


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins.

    ``probs``: (n, classes) predictive probabilities; ``y``: (n,) labels.
    ECE = sum_b |B_b|/n * |accuracy(B_b) - confidence(B_b)|.
    """
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    # bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 would fall in bin 0
    idx = torch.clamp(torch.ceil(conf * bins).long() - 1, 0, bins - 1)
    total = torch.zeros(bins, dtype=torch.float64, device=idx.device).index_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    acc = torch.zeros(bins, dtype=torch.float64, device=idx.device).index_add_(0, idx, correct.double())
    cnf = torch.zeros(bins, dtype=torch.float64, device=idx.device).index_add_(0, idx, conf.double())
    nonempty = total > 0
    gap = (acc[nonempty] - cnf[nonempty]).abs()
    return float(gap.sum() / len(y))


def gaussian_nll(mean: torch.Tensor, y: torch.Tensor, noise_sd: float) -> torch.Tensor:
    """Per-point negative log-likelihood (nats) of ``y`` under N(mean, noise_sd^2)."""
    return 0.5 * ((y - mean) / noise_sd) ** 2 + math.log(noise_sd) + 0.5 * math.log(2 * math.pi)


def nll_loss(out: torch.Tensor, y: torch.Tensor, task: str, noise_sd: float = 1.0) -> torch.Tensor:
    """Mean NLL (nats per point) of a minibatch; ``out`` is logits (n, C) or means (n, 1)."""
    if task == "classification":
        return F.cross_entropy(out, y)
    return gaussian_nll(out.squeeze(-1), y, noise_sd).mean()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    was_training = net.training
    net.eval()
    try:
        return torch.cat([net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        net.train(was_training)


def predictive_metrics(out: torch.Tensor, y: torch.Tensor, task: str, noise_sd: float = 1.0, prefix: str = "test", probs: bool = False) -> dict[str, float]:
    """Accuracy, NLL, ECE (classification) or RMSE, NLL (regression) of predictions ``out``.

    Keys are ``{prefix}_accuracy`` etc.; the test split's ECE is plain ``ece``.

    ``out``: logits, or class probabilities when ``probs`` (e.g. a Bayesian model average);
    for regression the predictive mean, shape (n,) or (n, 1).
    """
    if task == "classification":
        p = out if probs else torch.softmax(out, dim=1)
        nll = float(-torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).mean())
        return {
            f"{prefix}_accuracy": float((p.argmax(1) == y).float().mean()),
            f"{prefix}_nll": nll,
            ("ece" if prefix == "test" else f"{prefix}_ece"): ece(p, y),
        }
    mean = out.reshape(-1)
    return {
        f"{prefix}_rmse": float(torch.sqrt(((mean - y) ** 2).mean())),
        f"{prefix}_nll": float(gaussian_nll(mean, y, noise_sd).mean()),
    }
