"""Fused elementwise work of the spike-and-slab layers: custom autograd functions with
hand-written backward passes (docs/science.md §1; same formulas as the straightforward autograd
code, which ``tests/test_spike_slab_ops.py`` keeps as the reference).

Why: a LeNet-300-100 step touches 266k weights through a dozen elementwise ops (softplus,
σ², μ², the gate sigmoid, the KL, ...) in the forward pass and as many in the backward pass.
Under plain autograd every op reads and writes a full weight-sized tensor and allocates a new
one (on CPU a fresh allocation is page-faulted in, which can cost more than the op), and the
backward pass re-derives gradients op by op.  Here each quantity is computed once, in place
where the tensor is our own temporary, and the backward pass uses the closed-form derivative:

* σ = softplus(ρ):            dσ/dρ = sigmoid(ρ)
* φ = sigmoid(θ):             dφ/dθ = φ (1 − φ)
* KL (per gate g, slab terms S_i = (σ_i² + μ_i²)/(2σ0²) − log σ_i + log σ0 − ½):
      KL_g = φ_g a_g + log sigmoid(−θ_g) − log(1 − λ),   a_g = θ_g − logit λ + Σ_{i∈g} S_i,
  which is the KL of docs/science.md §1 rearranged with log sigmoid(θ) = log sigmoid(−θ) + θ
  (one transcendental per gate instead of two); its derivatives are
      ∂KL/∂θ_g = φ_g (1 − φ_g) a_g,  ∂KL/∂μ_i = φ_g μ_i / σ0²,  ∂KL/∂σ_i = φ_g (σ_i/σ0² − 1/σ_i).
* LRT moments, E[w] = φμ and Var[w] = φ(σ² + μ²) − φ²μ², the latter evaluated as
  φσ² + φ(1 − φ)μ² (equal; a sum of non-negative terms, so no cancellation and never < 0):
      ∂E/∂μ = φ, ∂E/∂φ = μ, ∂V/∂μ = 2φ(1 − φ)μ, ∂V/∂σ = 2φσ, ∂V/∂φ = σ² + (1 − 2φ)μ².

Only torch ops, no host synchronisation, no Python branching on tensor values: the functions
run unchanged on CUDA (where they save kernel launches rather than page faults).  An output
that carries a gradient is finished in place in eager mode (no new tensor) and out of place
when traced by torch.compile (the same operation, so the same values): torch 2.11 traced an
in-place operation on such an output to wrong gradients (``tests/test_step.py``; 2.14.1 did
not).  Gate-shaped tensors enter as views that broadcast against the weight (``gate_view``); their gradients are
summed back over each gate's group with ``sum_to_size``.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch.autograd import Function


def _group_sum(t: torch.Tensor, view_shape: torch.Size, gate_shape: torch.Size) -> torch.Tensor:
    """Sum a weight-shaped tensor over each gate's group -> gate shape (``view_shape``: the
    gate shape viewed to broadcast against the weight; edge gates: ``t`` itself, no copy)."""
    return t.sum_to_size(view_shape).reshape(gate_shape)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) = log(1 + eˣ) without autograd, for the forward passes below.  On the CPU
    as max(x, 0) + log1p(e^−|x|) with log1p written as log(w)·u/(w − 1), w = 1 + u
    (Goldberg's identity, a few ulp): torch's CPU softplus and log1p run scalar code (about 13
    ns per element on one core against 4 for these five vectorised passes; within 2e-7
    relative of float64).  Elsewhere torch's own kernel (one launch)."""
    if x.device.type != "cpu":
        return F.softplus(x)
    u = torch.exp(-x.abs())
    w = u + 1
    return torch.where(w == 1, u, torch.log(w).mul_(u.div(w - 1))).add_(x.clamp(min=0))


class SampledWeight(Function):
    """w = z_m (μ + softplus(ρ) ε) for given gates×mask ``zm`` and noise ``eps`` (no gradient
    to either).  Backward: ∂w/∂μ = z_m, ∂w/∂ρ = z_m ε sigmoid(ρ)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, rho, zm, eps):
        w = torch.addcmul(mu, softplus(rho), eps)  # μ + σ ε, one pass
        return w * zm if torch.compiler.is_compiling() else w.mul_(zm)  # (module docstring)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, rho, zm, eps = inputs
        ctx.save_for_backward(rho, zm, eps)

    @staticmethod
    def backward(ctx, g):
        rho, zm, eps = ctx.saved_tensors
        g_mu = g * zm
        g_rho = None
        if ctx.needs_input_grad[1]:
            g_rho = (g_mu * eps).mul_(torch.sigmoid(rho))
        return g_mu, g_rho, None, None


class LRTWeights(Function):
    """Moments of a spike-and-slab weight with edge / input gates, masked by the 0/1 weight
    mask m.  With p = φ m (φ = sigmoid(θ) viewed as ``gate_view``, σ = softplus(ρ)):
        E = p μ,   V = p σ² + E (μ − E)   (= m[φσ² + φ(1 − φ)μ²] since m² = m),
    and, because m φ(1 − φ) = p(1 − p) for m ∈ {0, 1}, the backward pass needs p only
    (the mask drops out of it):
        ∂/∂μ = p g_E + 2p(1 − p) μ g_V,   ∂/∂ρ = 2pσ sigmoid(ρ) g_V,
        ∂/∂θ = p(1 − p) [μ g_E + (σ² + (1 − 2p) μ²) g_V]   (summed over each gate's group).
    Also returns p, σ and σ² (no gradient) so that the backward pass need not recompute them."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, rho, theta, mask, gate_view):
        sigma = softplus(rho)
        p = torch.sigmoid(theta).reshape(gate_view)
        p = p.mul_(mask) if p.shape == mask.shape else p * mask  # edge gates: in place
        e = torch.mul(mu, p)
        v = torch.sub(mu, e).mul_(e)  # E(μ − E) = p(1 − p)μ²
        s2 = torch.mul(sigma, sigma)
        v = torch.addcmul(v, p, s2) if torch.compiler.is_compiling() else v.addcmul_(p, s2)  # + pσ² (docstring)
        return e, v, p, sigma, s2

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, rho, theta, mask, gate_view = inputs
        _, _, p, sigma, s2 = output
        ctx.gate_view, ctx.gate_shape = theta.reshape(gate_view).shape, theta.shape
        ctx.mark_non_differentiable(p, sigma, s2)
        ctx.set_materialize_grads(False)  # no zero-filled weight-sized grads for p, σ, σ²
        ctx.save_for_backward(mu, rho, p, sigma, s2)

    @staticmethod
    def backward(ctx, g_e, g_v, _p, _sigma, _s2):
        mu, rho, p, sigma, s2 = ctx.saved_tensors
        g_e = torch.zeros_like(mu) if g_e is None else g_e  # only one moment used downstream
        g_v = torch.zeros_like(mu) if g_v is None else g_v
        a = torch.addcmul(p, p, p, value=-1.0)  # p(1 − p)
        h = torch.mul(g_v, mu)  # μ g_V, shared by ∂/∂μ and ∂/∂θ
        g_mu = torch.mul(g_e, p).addcmul_(h, a, value=2.0)
        g_rho = g_theta = None
        if ctx.needs_input_grad[1]:
            g_rho = torch.mul(g_v, sigma).mul_(p).mul_(torch.sigmoid(rho)).mul_(2.0)
        if ctx.needs_input_grad[2]:  # μ g_E + (σ² + (1 − 2p)μ²) g_V = μ (g_E + h − 2p h) + σ² g_V
            t = torch.add(g_e, h).addcmul_(p, h, value=-2.0).mul_(mu).addcmul_(s2, g_v).mul_(a)
            g_theta = _group_sum(t, ctx.gate_view, ctx.gate_shape)
        return g_mu, g_rho, g_theta, None, None


def lrt_weights(mu, rho, theta, mask, gate_view) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[w], Var[w]) of :class:`LRTWeights`."""
    return LRTWeights.apply(mu, rho, theta, mask, gate_view)[:2]


def _slab_terms(mu, sigma, sigma0):
    """(σ² + μ²)/(2σ0²) − log σ, weight-shaped, one new tensor."""
    s = torch.mul(sigma, sigma).addcmul_(mu, mu).mul_(0.5 / sigma0 ** 2)
    return s.sub_(torch.log(sigma))


def _slab_grads(ctx, c, mu, rho, sigma, phi_w):
    """(∂/∂μ, ∂/∂ρ) of c · Σ_i φ_i [(σ_i² + μ_i²)/(2σ0²) − log σ_i]:
    c φ μ / σ0²  and  c φ (σ − σ0²/σ) / σ0² · sigmoid(ρ)."""
    s02 = ctx.sigma0 ** 2
    pc = phi_w * (c / s02)  # c φ / σ0², shared by both gradients (c: 0-dim, no host sync)
    g_mu = torch.mul(mu, pc) if ctx.needs_input_grad[0] else None
    g_rho = None
    if ctx.needs_input_grad[1]:
        g_rho = torch.reciprocal(sigma).mul_(-s02).add_(sigma)  # σ − σ0²/σ
        g_rho.mul_(pc).mul_(torch.sigmoid(rho))
    return g_mu, g_rho


class SlabKLFixedGate(Function):
    """Σ_i φ_i [(σ_i² + μ_i²)/(2σ0²) − log σ_i] for a constant φ (``closed_form``: θ is not
    trained, so φ, the gate KL and the constants are cached per update by the layer).
    ``phi_w`` is φ broadcast to the weight (a contiguous weight-shaped tensor).
    Backward: ∂/∂μ = φμ/σ0², ∂/∂ρ = φ(σ/σ0² − 1/σ) sigmoid(ρ)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, rho, phi_w, sigma0):
        sigma = softplus(rho)
        # Σ φ(σ² + μ²)/(2σ0²) − Σ φ log σ: the constant factor applied to a scalar, not a tensor
        phi_flat = phi_w.reshape(-1)
        quad = torch.dot(phi_flat, torch.mul(sigma, sigma).addcmul_(mu, mu).reshape(-1))
        return quad * (0.5 / sigma0 ** 2) - torch.dot(phi_flat, torch.log(sigma).reshape(-1)), sigma

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, rho, phi_w, sigma0 = inputs
        ctx.sigma0 = sigma0
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled grad for σ
        ctx.save_for_backward(mu, rho, output[1], phi_w)

    @staticmethod
    def backward(ctx, c, _sigma):
        mu, rho, sigma, phi_w = ctx.saved_tensors
        return (*_slab_grads(ctx, c, mu, rho, sigma, phi_w), None, None)


def slab_kl_fixed_gate(mu, rho, phi_w, sigma0: float) -> torch.Tensor:
    return SlabKLFixedGate.apply(mu, rho, phi_w, sigma0)[0]


class SpikeSlabKL(Function):
    """KL(q ‖ p) of a layer whose gates are trained by gradient (``lrt``, ``gumbel``), nats:
    Σ_g [φ_g a_g + log sigmoid(−θ_g)] − G log(1 − λ),  a_g = θ_g − logit λ + Σ_{i∈g} S_i,
    S_i = (σ_i² + μ_i²)/(2σ0²) − log σ_i + log σ0 − ½  (see the module docstring).
    ``logit_lam``: a float, or a tensor of logit λ per run that broadcasts against θ
    ((S, 1, ..., 1) against a stacked θ (S, ...)): each run's KL under its own λ (no gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, rho, theta, gate_view, logit_lam, sigma0):
        sigma = softplus(rho)
        a = _group_sum(_slab_terms(mu, sigma, sigma0), theta.reshape(gate_view).shape, theta.shape)
        group = mu.numel() // theta.numel()  # weights per gate
        phi = torch.sigmoid(theta)
        if torch.is_tensor(logit_lam):  # per run: G log(1 − λ_s) for each run's G gates
            a.add_(theta).add_(group * (math.log(sigma0) - 0.5)).sub_(logit_lam)
            lam_term = (F.logsigmoid(-logit_lam) * (theta.numel() // logit_lam.numel())).sum()
        else:
            a.add_(theta).add_(group * (math.log(sigma0) - 0.5) - logit_lam)
            lam_term = theta.numel() * -math.log1p(math.exp(logit_lam))  # G log(1 − λ)
        # Σ log sigmoid(−θ) = −Σ softplus(θ)
        kl = torch.dot(phi.reshape(-1), a.reshape(-1)) - F.softplus(theta).sum() - lam_term
        return kl, sigma, a, phi

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, rho, theta, gate_view, logit_lam, sigma0 = inputs
        _, sigma, a, phi = output
        ctx.sigma0, ctx.gate_view = sigma0, gate_view
        ctx.mark_non_differentiable(sigma, a, phi)
        ctx.set_materialize_grads(False)  # no zero-filled grads for σ, a, φ
        ctx.save_for_backward(mu, rho, sigma, a, phi)

    @staticmethod
    def backward(ctx, c, _sigma, _a, _phi):
        mu, rho, sigma, a, phi = ctx.saved_tensors
        g_mu, g_rho = _slab_grads(ctx, c, mu, rho, sigma, phi.reshape(ctx.gate_view))
        g_theta = None
        if ctx.needs_input_grad[2]:  # c φ(1 − φ) a
            g_theta = torch.addcmul(phi, phi, phi, value=-1.0).mul_(a).mul_(c)
        return g_mu, g_rho, g_theta, None, None, None


def spike_slab_kl(mu, rho, theta, gate_view, logit_lam: float | torch.Tensor, sigma0: float) -> torch.Tensor:
    return SpikeSlabKL.apply(mu, rho, theta, gate_view, logit_lam, sigma0)[0]


class LRTNoise(Function):
    """out = mean + sqrt(max(var, 0) + eps) ε for given noise ε.
    Backward: ∂/∂mean = 1, ∂/∂var = ε / (2 sqrt(var + eps)) (var >= 0 by construction of the
    moments, so the clamp never cuts a gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mean, var, noise, lrt_eps):
        std = var.clamp_min(0).add_(lrt_eps).sqrt_()
        return torch.addcmul(mean, std, noise), std

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled grad for std
        ctx.save_for_backward(inputs[2], output[1])

    @staticmethod
    def backward(ctx, g, _std):
        noise, std = ctx.saved_tensors
        g_var = torch.mul(g, noise).div_(std).mul_(0.5) if ctx.needs_input_grad[1] else None
        return g, g_var, None, None


def lrt_noise(mean, var, noise, lrt_eps: float) -> torch.Tensor:
    return LRTNoise.apply(mean, var, noise, lrt_eps)[0]


# Function.apply binds the forward's arguments through inspect.signature on every call (the
# forward / setup_context style); a precomputed __signature__ turns that lookup into an
# attribute read, ~20 µs less per call (a small net's step makes eight such calls).
for _function in (SampledWeight, LRTWeights, SlabKLFixedGate, SpikeSlabKL, LRTNoise):
    _function.forward.__signature__ = inspect.signature(_function.forward)
