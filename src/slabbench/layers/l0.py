"""L0-regularised layers with hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018), docs/science.md §2.

Each layer holds the weights ``theta`` (the paper's theta-tilde), a bias and one gate
location ``log_alpha`` per gate.  Gate granularity (``gates``):

* ``"input"`` (the paper's group sparsity): one gate per input neuron of a Linear layer
  (``log_alpha`` ``(in,)``, gating the column ``theta[:, j]`` of ``out`` weights) and one
  gate per output channel of a Conv2d layer (``log_alpha`` ``(c_out,)``, gating the filter
  ``theta[k]`` of ``c_in / groups * kh * kw`` weights and the bias ``b[k]``);
* ``"weight"``: one gate per weight (``log_alpha`` of the weight's shape), the bias ungated.

Hard concrete gate (the paper's 'hard concrete' distribution), u ~ U(1e-6, 1 - 1e-6) as in the
official code:

    s = sigmoid((log u - log(1 - u) + log alpha) / beta),   s_bar = s (zeta - gamma) + gamma,
    z = min(1, max(0, s_bar)),        beta = 2/3, gamma = -0.1, zeta = 1.1.

Probability that a gate is non-zero (paper eq. 12, the complement of the CDF at 0):

    P(z != 0) = sigmoid(log alpha - beta log(-gamma / zeta)).

Test-time gate (paper eq. 13): z_hat = min(1, max(0, sigmoid(log alpha)(zeta - gamma) + gamma)).

The training forward draws one gate vector per call, i.e. per minibatch, shared by all its
data points (the official code's default, ``local_rep=False``); eval uses z_hat.  The
weights that act are ``theta * z`` (z broadcast to the weight's shape).

Penalty (nats, before the core's division by N): the expected L0 of eq. 12 combined with L2 as in
the paper's 'combining the L0 norm with other norms', with the group sizes of its 'group sparsity':

    lambda * sum_g |g| P(z_g != 0)  +  sum_g P(z_g != 0) * 0.5 * weight_decay * sum_{j in g} theta_j^2
                                    +  0.5 * weight_decay * sum of ungated b^2
                                    (+ P(z_k != 0) * 0.5 * weight_decay * b_k^2 for gated conv biases)

|g| is the number of weights a gate controls (``out`` for a Linear input gate, c_in/groups
* kh * kw for a conv channel, 1 per weight), so the first term is lambda times the expected
number of non-zero weights, exactly the official code's ``- lamba`` summed over each group.
Biases are not counted in the L0 term (the benchmark's sparsity counts weights only).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn

from slabbench.layers import stacked
from slabbench.layers.masked import MaskedConv2d, MaskedLinear, make_plain, prunable_layers

BETA = 2.0 / 3.0  #: temperature of the hard concrete (paper's experiments and official code: 2/3)
GAMMA, ZETA = -0.1, 1.1  #: stretch interval (gamma, zeta) of the hard concrete (paper / official code)
U_EPS = 1e-6  #: u ~ U(eps, 1 - eps) (official code's ``epsilon``)
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)  #: clamp after every step (official code)
LOG_ALPHA_INIT_SD = 1e-2  #: log alpha ~ N(log(1 - d) - log d, 0.01^2) at init (official code)
GATES = ("input", "weight")


def hard_concrete(log_alpha: torch.Tensor, u: torch.Tensor, beta: float = BETA, gamma: float = GAMMA,
                  zeta: float = ZETA) -> torch.Tensor:
    """Hard-concrete sample z in [0, 1] from uniform noise ``u`` (the paper's hard concrete);
    ``u`` broadcasts against ``log_alpha``."""
    s = torch.sigmoid((torch.log(u) - torch.log(1.0 - u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    """P(z != 0) = sigmoid(log alpha - beta log(-gamma / zeta)) (paper eq. 12), elementwise."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def eval_gate(log_alpha: torch.Tensor, gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    """Deterministic test-time gate min(1, max(0, sigmoid(log alpha)(zeta - gamma) + gamma)) (paper eq. 13)."""
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0.0, 1.0)



def droprate_to_log_alpha(droprate: float) -> float:
    """log alpha whose sigmoid keeps 1 - d: log(1 - d) - log(d) (official initialisation)."""
    if not 0.0 < droprate < 1.0:
        raise ValueError(f"drop rate must be in (0, 1), got {droprate!r}")
    return math.log(1.0 - droprate) - math.log(droprate)


class _L0Mixin:
    """Shared gate logic (see the module docstring).  ``expand(g)`` broadcasts a gate-shaped
    tensor to the weight's shape; ``group_size`` is |g|."""

    theta: nn.Parameter
    log_alpha: nn.Parameter
    bias: nn.Parameter | None
    gates: str
    group_size: int
    beta: float
    stack = 0  #: runs held along a leading dimension (see slabbench.layers.stacked)

    def _init_l0(self, weight: torch.Tensor, bias: torch.Tensor | None, gates: str, gate_shape: tuple[int, ...],
                 group_size: int, droprate: float, beta: float) -> None:
        if gates not in GATES:
            raise ValueError(f"unknown gate granularity {gates!r}; valid: {', '.join(GATES)}")
        self.gates = gates
        self.group_size = int(group_size)
        self.beta = float(beta)
        self.droprate_init = float(droprate)
        self.theta = nn.Parameter(weight.detach().clone())
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)
        init = torch.randn(gate_shape, dtype=weight.dtype) * LOG_ALPHA_INIT_SD + droprate_to_log_alpha(droprate)
        self.log_alpha = nn.Parameter(init.to(weight.device))

    def sample_gates(self) -> torch.Tensor:
        """One hard-concrete sample per gate (the gate shape), u ~ U(1e-6, 1 - 1e-6)."""
        u = stacked.rand_like(self.log_alpha, self.stack) * (1.0 - 2.0 * U_EPS) + U_EPS
        return hard_concrete(self.log_alpha, u, self.beta)

    def gate_values(self) -> torch.Tensor:
        """Sampled gates in training, the test-time gate z_hat in eval; the gate shape."""
        return self.sample_gates() if self.training else eval_gate(self.log_alpha)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) per gate (paper eq. 12), the gate shape."""
        return prob_nonzero(self.log_alpha, self.beta)

    def constrain(self) -> None:
        """Clamp log alpha to [log 0.01, log 100] in place (after every optimiser step)."""
        with torch.no_grad():
            self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of non-zero weights sum_g |g| P(z_g != 0) (scalar, weights)."""
        return self.prob_nonzero().sum() * self.group_size

    def l2(self, weight_decay: float) -> torch.Tensor:
        """Gate-weighted L2 (the paper's L2 combined with the expected L0): sum_g P_g 0.5 wd sum_{j in g} theta_j^2, plus
        0.5 wd b^2 for biases (gated by P for conv output-channel gates); scalar, nats."""
        p = self.expand(self.prob_nonzero())
        total = 0.5 * weight_decay * (p * self.theta * self.theta).sum()
        if self.bias is not None:
            b2 = self.bias * self.bias
            if self._gates_bias():
                b2 = self.prob_nonzero() * b2
            total = total + 0.5 * weight_decay * b2.sum()
        return total

    def _gates_bias(self) -> bool:
        return False

    def masked_weight(self, z: torch.Tensor) -> torch.Tensor:
        """theta * z with z broadcast to the weight's shape."""
        return self.theta * self.expand(z)

    def expand(self, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L0Linear(_L0Mixin, nn.Module):
    """L0 Linear layer.  Input ``(n, in)``, output ``(n, out)``; ``theta`` ``(out, in)``,
    ``bias`` ``(out,)`` (never gated), ``log_alpha`` ``(in,)`` (``gates="input"``) or
    ``(out, in)`` (``gates="weight"``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, gates: str = "input",
                 droprate: float = 0.5, beta: float = BETA):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        shape, size = ((self.in_features,), self.out_features) if gates == "input" else (tuple(weight.shape), 1)
        self._init_l0(weight, bias, gates, shape, size, droprate, beta)

    @classmethod
    def from_plain(cls, layer: nn.Linear, **kw) -> "L0Linear":
        return cls(layer.weight * getattr(layer, "weight_mask", 1.0), layer.bias, **kw)

    handles_run_dim = True

    def expand(self, g):
        return g.unsqueeze(-2) if self.gates == "input" else g  # (S,) in -> (S,) 1, in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stacked.linear(x, self.masked_weight(self.gate_values()), self.bias, self.stack)

    def to_masked(self) -> MaskedLinear:
        """Plain :class:`MaskedLinear`: weight = theta * z_hat (baked in), same bias, mask ones."""
        return make_plain(MaskedLinear, self.in_features, self.out_features,
                          weight=self.masked_weight(eval_gate(self.log_alpha)), bias=self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gates={self.gates}"


class L0Conv2d(_L0Mixin, nn.Module):
    """L0 Conv2d layer.  Input ``(n, c_in, h, w)``, output ``(n, c_out, h', w')``; ``theta``
    ``(c_out, c_in / groups, kh, kw)``, ``bias`` ``(c_out,)``, ``log_alpha`` ``(c_out,)``
    (``gates="input"``: output channels, bias gated too) or the weight's shape.  Stackable:
    with ``stack = S`` every tensor has a leading run dimension, input ``(S, n, c_in, h, w)``."""

    handles_run_dim = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, stride=1, padding=0, dilation=1,
                 groups: int = 1, gates: str = "input", droprate: float = 0.5, beta: float = BETA):
        super().__init__()
        self.out_channels = weight.shape[0]
        self.in_channels = weight.shape[1] * groups
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        per_channel = weight[0].numel()
        shape, size = ((self.out_channels,), per_channel) if gates == "input" else (tuple(weight.shape), 1)
        self._init_l0(weight, bias, gates, shape, size, droprate, beta)

    @classmethod
    def from_plain(cls, layer: nn.Conv2d, **kw) -> "L0Conv2d":
        if layer.padding_mode != "zeros":
            raise ValueError(f"L0 supports padding_mode 'zeros' only, got {layer.padding_mode!r}")
        return cls(layer.weight * getattr(layer, "weight_mask", 1.0), layer.bias, stride=layer.stride,
                   padding=layer.padding, dilation=layer.dilation, groups=layer.groups, **kw)

    def expand(self, g):
        return g[..., None, None, None] if self.gates == "input" else g  # (S,) c_out -> (S,) c_out, 1, 1, 1

    def _gates_bias(self) -> bool:
        return self.gates == "input"

    def _bias(self, z: torch.Tensor) -> torch.Tensor | None:
        if self.bias is None or not self._gates_bias():
            return self.bias
        return self.bias * z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gate_values()
        return stacked.conv2d(x, self.masked_weight(z), self._bias(z), self.stride, self.padding, self.dilation,
                              self.groups, self.stack)

    def to_masked(self) -> MaskedConv2d:
        """Plain :class:`MaskedConv2d`: weight = theta * z_hat, bias * z_hat for channel gates."""
        z = eval_gate(self.log_alpha)
        return make_plain(MaskedConv2d, self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups,
                          weight=self.masked_weight(z), bias=self._bias(z))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, gates={self.gates}"


L0_LAYERS = (L0Linear, L0Conv2d)


def l0_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, layer)`` of every L0 layer of ``model``, in module order."""
    return prunable_layers(model, L0_LAYERS)


def to_l0(layer: nn.Module, **kw) -> nn.Module:
    """The L0 counterpart of a plain ``MaskedLinear`` / ``MaskedConv2d``."""
    if isinstance(layer, nn.Linear):
        return L0Linear.from_plain(layer, **kw)
    if isinstance(layer, nn.Conv2d):
        return L0Conv2d.from_plain(layer, **kw)
    raise TypeError(f"L0 supports Linear and Conv2d layers, got {type(layer).__name__}")
