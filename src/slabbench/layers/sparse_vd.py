"""Sparse variational dropout layers (Molchanov, Ashukha & Vetrov, ICML 2017), docs/science.md §2.

Each weight has the factorised Gaussian posterior q(w_ij) = N(theta_ij, sigma_ij^2) in the
additive noise reparameterisation (paper §4): the trained parameters are the mean ``theta`` and
``log_sigma2`` = log sigma^2, and the dropout rate is derived from them,

    log alpha_ij = log sigma_ij^2 - log(theta_ij^2 + 1e-8)           (paper §4, sigma^2 = alpha theta^2)

``theta``, ``log_sigma2`` and ``log alpha`` all have the weight's shape: ``(out, in)`` for
:class:`LinearSVDO`, ``(out, in / groups, kh, kw)`` for :class:`Conv2dSVDO`.  The bias
``(out,)`` is a plain parameter that enters the mean only.  Log alpha is clipped to
``[-8, 8]`` (:data:`LOG_ALPHA_CLIP`) in the training forward and in the KL, as in the
official code; the natural rule and the scores use the unclipped value.

Training forward, local reparameterisation trick (paper §3 and §4), with eps ~ N(0, 1) drawn per
output element (per data point and unit / position):

    mean = x theta + b,      var = x^2 sigma_c^2,      out = mean + sqrt(var + 1e-8) * eps

where sigma_c^2 = exp(clip(log alpha, -8, 8)) * theta^2.  Inside the clip range this equals
sigma^2 * theta^2 / (theta^2 + 1e-8), i.e. sigma^2 up to the 1e-8 guard; outside it the
variance follows the clipped alpha, which is what "log alpha is clipped in training" means
in the official (Lasagne) layers.  For Conv2d, ``x theta`` and ``x^2 sigma_c^2`` are
convolutions.  With ``train_clip`` the weights with log alpha > ``threshold`` are zeroed in
the training forward: in the mean always, in the variance only when ``clip_variance``.
Its default (``None``) follows the official code per layer type: the dense layer
(``DenseVarDropOutARD``, the LeNet-300-100 script) zeroes them in the mean only, so a clipped
weight still adds noise x^2 sigma_c^2; the convolution (``Conv2DVarDropOutARD``) zeroes them in
both (``nets/layers.py`` of ars-ashuha/variational-dropout-sparsifies-dnn).  Eval forward
(``not self.training``, with or without ``train_clip``): the deterministic means, theta masked
by log alpha <= ``threshold``.

KL(q || p) to the log-uniform prior p(|w|) ∝ 1/|w|, per weight, in nats (paper eq. 14):

    -KL ≈ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1,
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695,

with the constant chosen so that -KL -> 0 as alpha -> inf; log(1 + 1/alpha) is computed as
``log1p(exp(-log alpha))``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from slabbench.layers import stacked
from slabbench.layers.masked import MaskedConv2d, MaskedLinear, make_plain, prunable_layers

K1, K2, K3 = 0.63576, 1.87320, 1.48695  #: constants of the KL approximation (paper eq. 14)
LOG_ALPHA_CLIP = 8.0  #: |log alpha| bound in the training forward and the KL (official code)
LOG_SIGMA2_INIT = -10.0  #: initial log sigma^2 (official code, ``ard_init = -10``)
THRESHOLD = 3.0  #: drop weights with log alpha > 3 (paper §4 / official code)
EPS = 1e-8  #: guard in log(theta^2 + eps) and sqrt(var + eps)


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Unclipped log alpha = log sigma^2 - log(theta^2 + 1e-8) (paper §4), elementwise."""
    return log_sigma2 - torch.log(theta * theta + EPS)


def neg_kl(log_alpha_: torch.Tensor) -> torch.Tensor:
    """-KL(q(w) || p(w)) per weight in nats, the approximation of paper eq. 14:
    k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1.  The caller clips
    log alpha (the layers clip to [-8, 8]); elementwise, same shape as the input."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha_) - 0.5 * torch.log1p(torch.exp(-log_alpha_)) - K1


class _SVDOMixin:
    """Shared parameters and rules of the two layer types (see the module docstring)."""

    theta: nn.Parameter
    log_sigma2: nn.Parameter
    bias: nn.Parameter | None
    threshold: float
    train_clip: bool
    clip_variance: bool
    CLIP_VARIANCE: bool  #: the official code's choice for this layer type (``clip_variance=None``)

    def _init_svdo(self, weight: torch.Tensor, bias: torch.Tensor | None, log_sigma2_init: float,
                   threshold: float, train_clip: bool, clip_variance: bool | None = None) -> None:
        self.theta = nn.Parameter(weight.detach().clone())
        self.log_sigma2 = nn.Parameter(torch.full_like(self.theta, float(log_sigma2_init)))
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)
        self.threshold = float(threshold)
        self.train_clip = bool(train_clip)
        self.clip_variance = self.CLIP_VARIANCE if clip_variance is None else bool(clip_variance)

    def log_alpha(self) -> torch.Tensor:
        """Unclipped log alpha, the weight's shape."""
        return log_alpha(self.theta, self.log_sigma2)

    def clipped_log_alpha(self) -> torch.Tensor:
        """Log alpha clipped to [-8, 8] (training forward and KL), the weight's shape."""
        return self.log_alpha().clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def keep_mask(self) -> torch.Tensor:
        """Natural keep-mask: 1.0 where the unclipped log alpha <= threshold, else 0.0;
        the weight's shape, no gradient."""
        return (self.log_alpha() <= self.threshold).to(self.theta.dtype).detach()

    def kl(self) -> torch.Tensor:
        """Sum over this layer's weights of KL(q || p) in nats (scalar), eq. 14 on the
        clipped log alpha."""
        return -neg_kl(self.clipped_log_alpha()).sum()

    def _train_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean weight, variance weight sigma_c^2) of the training forward, each the weight's
        shape; with ``train_clip`` theta is masked in the mean, and in the variance too when
        ``clip_variance`` (see the module docstring)."""
        la = self.clipped_log_alpha()
        theta = var_theta = self.theta
        if self.train_clip:  # configuration flags, not tensor values
            theta = theta * self.keep_mask()
            if self.clip_variance:
                var_theta = theta
        return theta, torch.exp(la) * var_theta * var_theta


class LinearSVDO(_SVDOMixin, nn.Module):
    """Sparse-VD Linear layer.  Input ``(n, in)``, output ``(n, out)``; ``theta`` and
    ``log_sigma2`` ``(out, in)``, ``bias`` ``(out,)``.  With ``train_clip`` the clipped weights
    leave the mean only (``clip_variance=None``: the official dense layer).  Stackable: with
    ``stack = S`` every tensor has a leading run dimension (:mod:`slabbench.layers.stacked`)."""

    CLIP_VARIANCE = False
    handles_run_dim = True
    stack = 0

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 log_sigma2_init: float = LOG_SIGMA2_INIT, threshold: float = THRESHOLD, train_clip: bool = False,
                 clip_variance: bool | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._init_svdo(weight, bias, log_sigma2_init, threshold, train_clip, clip_variance)

    @classmethod
    def from_plain(cls, layer: nn.Linear, **kw) -> "LinearSVDO":
        """Start from a plain (masked) Linear: theta = its (masked) weight, same bias."""
        w = layer.weight * getattr(layer, "weight_mask", 1.0)
        return cls(w, layer.bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return stacked.linear(x, self.theta * self.keep_mask(), self.bias, self.stack)
        theta, var_w = self._train_weights()
        mean = stacked.linear(x, theta, self.bias, self.stack)
        var = stacked.linear(x * x, var_w, None, self.stack)
        return mean + torch.sqrt(var + EPS) * stacked.randn_like(mean, self.stack)

    def to_masked(self) -> MaskedLinear:
        """A plain :class:`MaskedLinear` with weight = theta, the same bias, mask all ones."""
        return make_plain(MaskedLinear, self.in_features, self.out_features, weight=self.theta, bias=self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, "
                f"train_clip={self.train_clip}, clip_variance={self.clip_variance}")


class Conv2dSVDO(_SVDOMixin, nn.Module):
    """Sparse-VD Conv2d layer.  Input ``(n, c_in, h, w)``, output ``(n, c_out, h', w')``;
    ``theta`` and ``log_sigma2`` ``(c_out, c_in / groups, kh, kw)``, ``bias`` ``(c_out,)``.
    The variance is ``conv2d(x^2, sigma_c^2)`` with the same stride / padding / dilation.
    With ``train_clip`` the clipped weights leave the mean and the variance
    (``clip_variance=None``: the official convolution layer).  Stackable: with ``stack = S``
    every tensor has a leading run dimension, input ``(S, n, c_in, h, w)``."""

    CLIP_VARIANCE = True
    handles_run_dim = True
    stack = 0

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, stride=1, padding=0, dilation=1,
                 groups: int = 1, log_sigma2_init: float = LOG_SIGMA2_INIT, threshold: float = THRESHOLD,
                 train_clip: bool = False, clip_variance: bool | None = None):
        super().__init__()
        self.out_channels = weight.shape[0]
        self.in_channels = weight.shape[1] * groups
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._init_svdo(weight, bias, log_sigma2_init, threshold, train_clip, clip_variance)

    @classmethod
    def from_plain(cls, layer: nn.Conv2d, **kw) -> "Conv2dSVDO":
        """Start from a plain (masked) Conv2d (zero padding only): theta = its (masked) weight."""
        if layer.padding_mode != "zeros":
            raise ValueError(f"sparse VD supports padding_mode 'zeros' only, got {layer.padding_mode!r}")
        w = layer.weight * getattr(layer, "weight_mask", 1.0)
        return cls(w, layer.bias, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                   groups=layer.groups, **kw)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return stacked.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups, self.stack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv(x, self.theta * self.keep_mask(), self.bias)
        theta, var_w = self._train_weights()
        mean = self._conv(x, theta, self.bias)
        var = self._conv(x * x, var_w, None)
        return mean + torch.sqrt(var + EPS) * stacked.randn_like(mean, self.stack)

    def to_masked(self) -> MaskedConv2d:
        """A plain :class:`MaskedConv2d` with weight = theta, the same bias, mask all ones."""
        return make_plain(MaskedConv2d, self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups,
                          weight=self.theta, bias=self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"threshold={self.threshold}, train_clip={self.train_clip}, clip_variance={self.clip_variance}")


SVDO_LAYERS = (LinearSVDO, Conv2dSVDO)


def svdo_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, layer)`` of every sparse-VD layer of ``model``, in module order."""
    return prunable_layers(model, SVDO_LAYERS)


def to_svdo(layer: nn.Module, **kw) -> nn.Module:
    """The sparse-VD counterpart of a plain ``MaskedLinear`` / ``MaskedConv2d``."""
    if isinstance(layer, nn.Linear):
        return LinearSVDO.from_plain(layer, **kw)
    if isinstance(layer, nn.Conv2d):
        return Conv2dSVDO.from_plain(layer, **kw)
    raise TypeError(f"sparse VD supports Linear and Conv2d layers, got {type(layer).__name__}")
