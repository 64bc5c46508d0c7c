"""Metrics measured on an exported (plain, masked) network.

Counting conventions (docs/science.md §3): *sparsity* counts prunable weights only;
*sparsity_all* counts weights and biases; *compression* = weights / nonzero weights;
*flops_kept* = sum over layers of nonzero weights x output positions, divided by the
same sum for the dense network (theoretical multiply-adds; masks give no speed-up by
themselves).  A hidden unit is *kept* if it has a nonzero incoming weight or bias and a
nonzero outgoing weight; an input feature is *kept* if some nonzero first-layer weight
leaves it (Bai et al.'s rule) for a unit that still reaches the outputs.  Features are the
flattened inputs (c, h, w) for every architecture: for a convolutional first layer a pixel is
kept if a nonzero kernel weight of a useful channel reads it at some output position (positions
that later layers ignore are not traced), so an MLP and LeNet-5 on MNIST both count of 784.

Predictive metrics of a net whose outputs are not all finite (a diverged run) are NaN, never
the accuracy of argmax over NaN logits (which is class 0).
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
def output_shapes(net: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Shape of each prunable layer's output for one input, without the batch dimension:
    (units,) for Linear, (channels, H, W) for Conv2d."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, layer in prunable_layers(net):
        def hook(mod, inp, out, name=name):
            shapes[name] = tuple(out.shape[1:])
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
    return shapes


def output_positions(net: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Spatial positions each prunable layer's output has (1 for Linear, H*W for Conv2d)."""
    return {name: math.prod(shape[1:]) for name, shape in output_shapes(net, input_shape).items()}


def _pixels_read(layer: nn.Module, kernel_used: torch.Tensor, out_hw: Sequence[int], input_shape: Sequence[int]) -> torch.Tensor:
    """Which input pixels a convolution reads through its used kernel positions.

    ``kernel_used``: (in_channels, kH, kW) bool, a kernel position with a nonzero weight for
    some useful output channel; ``out_hw``: the output's (H_out, W_out); ``input_shape``:
    (C, H, W).  Returns (C * H * W,) bool in the flattened (c, h, w) order of an MLP's inputs.
    """
    c, h, w = input_shape
    ones = torch.ones(1, 1, *out_hw, device=kernel_used.device)
    cover = F.conv_transpose2d(ones, kernel_used.float()[None], stride=layer.stride, padding=layer.padding,
                               dilation=layer.dilation)[0]  # (C, H', W'); H' <= H when a stride skips the last rows
    full = torch.zeros(c, h, w, device=kernel_used.device)
    full[:, :cover.shape[1], :cover.shape[2]] = cover[:, :h, :w]
    return (full > 0).flatten()


def structure(net: nn.Module, input_shape: Sequence[int]) -> dict:
    """Sparsity, compression, FLOPs kept, kept nodes per hidden layer, kept input features."""
    layers = effective_weights(net)
    shapes = output_shapes(net, input_shape)
    pos = {name: math.prod(shape[1:]) for name, shape in shapes.items()}
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
    # weights to the outputs: Bai's rule restricted to inputs that can still act (in a net whose
    # hidden units are all cut off, no input is selected), a deviation that docs/science.md
    # "Selection and pruning" gives with what it changed
    useful = torch.ones(layers[-1][2].shape[0], dtype=torch.bool, device=layers[-1][2].device)
    for i in range(len(layers) - 1, -1, -1):
        w = layers[i][2]
        reach = (w.reshape(w.shape[0], w.shape[1], -1)[useful] != 0).any(dim=2).any(dim=0)  # (inputs of layer i,)
        if i > 0:  # inputs of layer i -> units of layer i-1 (a flatten groups positions per unit)
            useful = reach.reshape(layers[i - 1][2].shape[0], -1).any(dim=1)
    name0, layer0, w0 = layers[0]
    if w0.dim() == 4:  # a convolution reads pixels, not channels: count the pixels (c, h, w)
        selected = _pixels_read(layer0, (w0[useful] != 0).any(dim=0), shapes[name0][1:], input_shape)
        read = _pixels_read(layer0, (w0 != 0).any(dim=0), shapes[name0][1:], input_shape)
    else:
        selected = reach
        read = (w0 != 0).any(dim=0)  # Bai et al.'s rule as written: any kept first-layer weight
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
        "features_kept_bai": int(read.sum()),
        "selected_features_bai": read.nonzero().flatten().tolist(),
    }


def selection_errors(selected: Sequence[int], true_support: Sequence[int], n_features: int,
                     suffix: str = "") -> dict[str, float]:
    """False-negative rate over the true features, false-positive rate over the others, as
    ``fnr{suffix}`` and ``fpr{suffix}``."""
    sel, true = set(selected), set(true_support)
    n_noise = n_features - len(true)
    return {
        f"fnr{suffix}": len(true - sel) / len(true) if true else math.nan,
        f"fpr{suffix}": len(sel - true) / n_noise if n_noise else math.nan,
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


def gaussian_mixture_nll(sample_means: torch.Tensor, y: torch.Tensor, noise_sd: float) -> torch.Tensor:
    """Per-point NLL (nats) of ``y`` under the equal-weight mixture of N(m_s, noise_sd^2):

        -log (1/S) sum_s N(y; m_s, noise_sd^2)   (a Bayesian model average's predictive density)

    ``sample_means``: (S, n) predictive means of S posterior samples; ``y``: (n,).  Computed
    with logsumexp, so it stays finite far in the tails.  With S = 1 it equals
    :func:`gaussian_nll`; it is never larger than the average of the per-sample NLLs (Jensen).
    """
    if sample_means.dim() != 2:
        raise ValueError(f"sample_means must be (S, n), got shape {tuple(sample_means.shape)}")
    log_p = -gaussian_nll(sample_means, y[None, :], noise_sd)  # (S, n)
    return -(torch.logsumexp(log_p, dim=0) - math.log(sample_means.shape[0]))


def _nan_metrics(keys) -> dict[str, float]:
    return {k: math.nan for k in keys}


def predictive_metrics(out: torch.Tensor, y: torch.Tensor, task: str, noise_sd: float = 1.0, prefix: str = "test", probs: bool = False) -> dict[str, float]:
    """Accuracy, NLL, ECE (classification) or RMSE, NLL (regression) of predictions ``out``.

    Keys are ``{prefix}_accuracy`` etc.; the test split's ECE is plain ``ece``.

    ``out`` without ``probs``: logits (n, C), or the predictive mean (n,) / (n, 1).
    With ``probs`` (a Bayesian model average): class probabilities (n, C); for regression
    either (S, n) per-sample predictive means — RMSE of their average, NLL of the mixture
    (:func:`gaussian_mixture_nll`) — or only the average (n,), which gives the RMSE and no NLL
    (the mixture's density cannot be had from its mean).

    Classification NLL is -log_softmax(logits)[y], exact at any confidence; from
    probabilities it is -log max(p[y], smallest positive normal float of p's dtype) — the clamp
    acts only where p[y] underflowed to 0 (about 87 nats in float32, 708 in float64).

    Non-finite outputs anywhere (a diverged net) make every metric NaN.
    """
    ece_key = "ece" if prefix == "test" else f"{prefix}_ece"
    if task == "classification":
        keys = (f"{prefix}_accuracy", f"{prefix}_nll", ece_key)
        if not bool(torch.isfinite(out).all()):
            return _nan_metrics(keys)
        if probs:
            p = out
            logp_y = torch.log(p.gather(1, y[:, None]).clamp_min(torch.finfo(p.dtype).tiny))
        else:
            logp = torch.log_softmax(out, dim=1)
            logp_y, p = logp.gather(1, y[:, None]), logp.exp()
        return {keys[0]: float((p.argmax(1) == y).float().mean()), keys[1]: float(-logp_y.mean()), keys[2]: ece(p, y)}
    keys = (f"{prefix}_rmse", f"{prefix}_nll")
    if probs and out.dim() == 2 and out.shape[-1] != 1:
        if not bool(torch.isfinite(out).all()):
            return _nan_metrics(keys)
        mean = out.mean(0)
        nll = float(gaussian_mixture_nll(out, y, noise_sd).mean())
    else:
        mean = out.reshape(-1)
        if not bool(torch.isfinite(mean).all()):
            return _nan_metrics(keys if not probs else keys[:1])
        nll = None if probs else float(gaussian_nll(mean, y, noise_sd).mean())
    res = {keys[0]: float(torch.sqrt(((mean - y) ** 2).mean()))}
    if nll is not None:
        res[keys[1]] = nll
    return res


def constant_predictor_metrics(y_train: torch.Tensor, y: torch.Tensor, prefix: str = "test") -> dict[str, float]:
    """The reference a regression net must beat: predict the training mean for every point.

    ``y_train``: (n_train,) training targets; ``y``: (n,) targets of the evaluated split.
    Returns ``{prefix}_rmse_constant`` = sqrt(mean((y - mean(y_train))^2)) in units of y.
    """
    c = y_train.double().mean()
    return {f"{prefix}_rmse_constant": float(torch.sqrt(((y.double() - c) ** 2).mean()))}
