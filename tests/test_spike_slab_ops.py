"""The fused spike-and-slab functions (layers/spike_slab_ops.py) against a straightforward
autograd implementation of docs/science.md §1: same forward values and the same gradients for
μ, ρ, θ and the bias, given the same random draws (float64, so any difference is a formula
difference, not rounding)."""

import math

import pytest
import torch
import torch.nn.functional as F

from slabbench.layers import MaskedConv2d, MaskedLinear
from slabbench.layers.spike_slab import LRT_EPS, SpikeSlabConv2d, SpikeSlabLinear, logit

LOGIT_LAM, SIGMA0 = logit(0.05), 1.3


def reference_kl(layer, logit_lam, sigma0):
    """Σ_g [φ log(φ/λ) + (1−φ) log((1−φ)/(1−λ))] + Σ_g φ_g Σ_{i∈g} [log(σ0/σ) + (σ² + μ²)/(2σ0²) − ½]."""
    lam = 1 / (1 + math.exp(-logit_lam))
    theta = layer.theta
    phi = torch.sigmoid(theta)
    sigma = F.softplus(layer.rho)
    gate = phi * (F.logsigmoid(theta) - math.log(lam)) + (1 - phi) * (F.logsigmoid(-theta) - math.log(1 - lam))
    slab = math.log(sigma0) - torch.log(sigma) + (sigma ** 2 + layer.mu ** 2) / (2 * sigma0 ** 2) - 0.5
    return gate.sum() + (phi * layer.group_sum(slab)).sum()


def reference_forward(layer, x):
    """Training forward: sampled gates (closed_form) or the moment-matched pre-activations (lrt),
    drawing the random numbers in the layer's order."""
    phi = torch.sigmoid(layer.theta)
    sigma = F.softplus(layer.rho)
    mu, mask, b = layer.mu, layer.weight_mask, layer.bias
    if not layer.lrt_forward:
        z = torch.bernoulli(phi.detach())
        w = layer.expand(z) * (mu + sigma * torch.randn_like(mu)) * mask
        return layer._op(x, w, b * z if layer.granularity == "node" else b)
    mu, s2 = mu * mask, sigma ** 2 * mask
    if layer.granularity == "node":
        m = layer._op(x, mu, b)
        v = layer._op(x * x, s2, None)
        p = layer._out_view(phi, m)
        mean, var = p * m, p * (v + m * m) - p * p * m * m
    else:
        p = layer.expand(phi)
        mean = layer._op(x, p * mu, b)
        var = layer._op(x * x, p * (s2 + mu * mu) - p * p * mu * mu, None)
    return mean + torch.sqrt(var.clamp_min(0) + LRT_EPS) * torch.randn_like(mean)


def make_layer(granularity, mode, lrt_forward, conv, seed=0):
    torch.manual_seed(seed)
    plain = MaskedConv2d(3, 4, 2) if conv else MaskedLinear(6, 5)
    layer = (SpikeSlabConv2d if conv else SpikeSlabLinear)(plain, granularity=granularity, mode=mode,
                                                          lrt_forward=lrt_forward).double()
    with torch.no_grad():
        layer.mu.uniform_(-1, 1)
        layer.rho.uniform_(-4, 1)
        layer.theta.uniform_(-3, 3)
        layer.bias.uniform_(-0.5, 0.5)
        layer.weight_mask.copy_((torch.rand_like(layer.mu) > 0.2).double())
    return layer


CASES = [(g, mode, lrt_forward, conv)
         for g in ("edge", "node", "input") for conv in (False, True)
         for mode, lrt_forward in (("lrt", True), ("closed_form", False), ("closed_form", True))
         if not (g == "input" and conv)] + [("edge", "gumbel", False, False)]


@pytest.mark.parametrize("granularity,mode,lrt_forward,conv", CASES)
def test_fast_path_matches_reference(granularity, mode, lrt_forward, conv):
    layer = make_layer(granularity, mode, lrt_forward, conv)
    x = torch.randn(7, 3, 5, 5, dtype=torch.float64) if conv else torch.randn(7, 6, dtype=torch.float64)
    params = [p for p in (layer.mu, layer.rho, layer.theta, layer.bias) if p.requires_grad]
    results = []
    for impl in ("fast", "reference"):
        torch.manual_seed(1)
        if impl == "fast" or mode == "gumbel":  # gumbel's forward is plain autograd in both
            out, kl = layer(x), layer.kl(LOGIT_LAM, SIGMA0)
        else:
            out, kl = reference_forward(layer, x), reference_kl(layer, LOGIT_LAM, SIGMA0)
        if mode == "gumbel" and impl == "reference":
            kl = reference_kl(layer, LOGIT_LAM, SIGMA0)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        loss = (out * weights).sum() + 0.37 * kl
        results.append((out.detach(), kl.detach(), torch.autograd.grad(loss, params)))
    (out_f, kl_f, g_f), (out_r, kl_r, g_r) = results
    assert torch.allclose(out_f, out_r, rtol=1e-10, atol=1e-12)
    assert torch.allclose(kl_f, kl_r, rtol=1e-10, atol=1e-10), (kl_f, kl_r)
    for p, a, b in zip(("mu", "rho", "theta", "bias"), g_f, g_r):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (p, (a - b).abs().max())


@pytest.mark.parametrize("granularity", ["edge", "node", "input"])
def test_kl_gradient_for_a_fixed_gate_matches_reference(granularity):
    """closed_form: θ is a buffer, its KL terms come from the per-update cache; after an update
    the cache is rebuilt (the value tracks θ)."""
    layer = make_layer(granularity, "closed_form", False, False)
    for _ in range(2):
        fast = layer.kl(LOGIT_LAM, SIGMA0)
        ref = reference_kl(layer, LOGIT_LAM, SIGMA0)
        assert torch.allclose(fast, ref, rtol=1e-10)
        gf = torch.autograd.grad(fast, [layer.mu, layer.rho])
        gr = torch.autograd.grad(ref, [layer.mu, layer.rho])
        for a, b in zip(gf, gr):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
        layer.closed_form_update(LOGIT_LAM, SIGMA0)


def test_float32_fast_path_close_to_reference():
    """In float32 (the training dtype) the rearranged formulas agree to rounding."""
    layer = make_layer("edge", "lrt", True, False).float()
    x = torch.randn(64, 6)
    torch.manual_seed(1)
    fast = layer(x).sum() + layer.kl(LOGIT_LAM, SIGMA0) / 100
    gf = torch.autograd.grad(fast, [layer.mu, layer.rho, layer.theta])
    torch.manual_seed(1)
    ref = reference_forward(layer, x).sum() + reference_kl(layer, LOGIT_LAM, SIGMA0) / 100
    gr = torch.autograd.grad(ref, [layer.mu, layer.rho, layer.theta])
    assert torch.allclose(fast, ref, rtol=1e-5)
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # addcmul_ has no batching rule yet
def test_functions_vmap_over_stacked_runs():
    """The fused functions keep the door open for training several runs at once with
    torch.func (docs/design.md): under vmap (and grad inside vmap) they give the per-run results."""
    from slabbench.layers import spike_slab_ops as ops
    torch.manual_seed(0)
    n, shape = 3, (5, 6)
    mu, rho, theta = torch.randn(n, *shape), torch.randn(n, *shape) - 2, torch.randn(n, *shape)
    mask = (torch.rand(shape) > 0.2).float()
    for view in (shape, (-1, 1), (1, -1)):
        th = theta if view == shape else theta[:, :, 0] if view == (-1, 1) else theta[:, 0, :]

        def loss(m, r, t, view=view):
            e, v = ops.lrt_weights(m, r, t, mask, view)
            return (e * e).sum() + v.sum() + ops.spike_slab_kl(m, r, t, view, LOGIT_LAM, SIGMA0)

        batched = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)))(mu, rho, th)
        for i in range(n):
            single = torch.func.grad(loss, argnums=(0, 1, 2))(mu[i], rho[i], th[i])
            for a, b in zip(batched, single):
                assert torch.allclose(a[i], b, rtol=1e-5, atol=1e-6)
    phi_w = torch.rand(shape)
    batched = torch.func.vmap(lambda m, r: ops.slab_kl_fixed_gate(m, r, phi_w, SIGMA0))(mu, rho)
    assert torch.allclose(batched, torch.stack([ops.slab_kl_fixed_gate(mu[i], rho[i], phi_w, SIGMA0) for i in range(n)]))


def test_the_forward_softplus_equals_torchs_to_float32_rounding():
    import torch.nn.functional as F

    from slabbench.layers.spike_slab_ops import softplus

    x = torch.cat([torch.linspace(-60, 60, 20001), torch.tensor([0.0, -1e-8, 1e-8, -88.0, 88.0])])
    ref = F.softplus(x.double())
    got = softplus(x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.all((got.double() - ref).abs() <= 3e-7 * ref + 1e-45)
