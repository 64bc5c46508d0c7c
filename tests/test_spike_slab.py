"""Spike-and-slab VI: KL, closed-form update, LRT moments and PIPs against exact
posterior inclusion probabilities, all checkable by hand or by brute force."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from slabbench.api import DatasetSpec, TrainContext, make_params
from slabbench.layers import MaskedConv2d, MaskedLinear
from slabbench.layers.spike_slab import SpikeSlabConv2d, SpikeSlabLinear, from_plain, logit
from slabbench.models import build_model
from slabbench.registry import method_class
from slabbench.train import fit

spike_slab = __import__("slabbench.methods.spike_slab", fromlist=["bai_prior_inclusion"])


def random_layer(granularity, mode="closed_form", seed=0, conv=False):
    torch.manual_seed(seed)
    plain = MaskedConv2d(2, 3, 2) if conv else MaskedLinear(4, 3)
    layer = (SpikeSlabConv2d if conv else SpikeSlabLinear)(plain, granularity=granularity, mode=mode)
    with torch.no_grad():
        layer.mu.uniform_(-1, 1)
        layer.rho.uniform_(-2, 0.5)
        layer.theta.uniform_(-2, 2)
    return layer


@pytest.mark.parametrize("granularity", ["edge", "node", "input"])
def test_kl_matches_monte_carlo(granularity):
    """KL(q‖p) = E_q[log q(w, γ) − log p(w, γ)]; for γ = 0 the spike δ0 cancels."""
    layer = random_layer(granularity)
    lam, sigma0 = 0.2, 1.3
    closed = float(layer.kl(logit(lam), sigma0).detach())
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    phi, mu, sigma = layer.phi.detach(), layer.mu.detach(), layer.sigma.detach()
    # one γ per group: sample at gate shape, then slab values per weight
    gam = (torch.rand((n, *phi.shape), generator=gen) < phi).double()
    w = mu + sigma * torch.randn((n, *mu.shape), generator=gen)
    log_ratio_slab = (torch.distributions.Normal(mu.double(), sigma.double()).log_prob(w.double())
                      - torch.distributions.Normal(0.0, sigma0).log_prob(w.double()))
    slab_group = torch.stack([layer.group_sum(r) for r in log_ratio_slab])  # (n, gate shape)
    per_gate = gam * (torch.log(phi.double() / lam) + slab_group) + (1 - gam) * torch.log((1 - phi.double()) / (1 - lam))
    total = per_gate.flatten(1).sum(1)
    mc, se = float(total.mean()), float(total.std() / math.sqrt(n))
    assert abs(closed - mc) < 4 * se + 1e-3, (closed, mc, se)


def test_closed_form_update_by_hand():
    layer = SpikeSlabLinear(MaskedLinear(2, 2), granularity="edge")
    with torch.no_grad():
        layer.mu.copy_(torch.tensor([[1.0, 0.0], [0.5, -2.0]]))
        layer.rho.copy_(torch.log(torch.expm1(torch.tensor([[0.5, 1.3], [0.25, 1.0]]))))  # σ
    layer.closed_form_update(logit(0.1), 1.3)
    sigma = torch.tensor([[0.5, 1.3], [0.25, 1.0]])
    mu = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
    expected = logit(0.1) + torch.log(sigma / 1.3) + mu ** 2 / (2 * sigma ** 2)
    assert torch.allclose(layer.theta, expected, atol=1e-5)
    assert layer.theta[0, 1] == pytest.approx(logit(0.1), abs=1e-5)  # μ = 0, σ = σ0: the prior odds
    node = SpikeSlabLinear(MaskedLinear(2, 2), granularity="node")
    with torch.no_grad():
        node.mu.copy_(layer.mu)
        node.rho.copy_(layer.rho)
    node.closed_form_update(logit(0.1), 1.3)  # group form: the per-weight terms summed per output unit
    assert torch.allclose(node.theta, logit(0.1) + (expected - logit(0.1)).sum(1), atol=1e-5)


def test_bai_prior_inclusion_for_the_simulation():
    # 200-7-7-7-1: T = 1400 + 49 + 49 + 7 weights + 22 biases, L = 3, N = 7, n = 3000, p = 200
    lam = spike_slab.bai_prior_inclusion(1527, 3, 7, 3000, 200)
    assert lam == pytest.approx(1.19e-4, rel=0.01)


def sample_preactivations(layer, x, n, gen):
    """Pre-activations of ``n`` networks sampled from q (z ~ Bernoulli(φ), w = z (μ + σ ε)),
    computed independently of the layer's forward: (n, *output shape)."""
    z = (torch.rand((n, *layer.theta.shape), generator=gen) < layer.phi.detach()).float()
    zw = torch.stack([layer.expand(zi) for zi in z])
    w = zw * (layer.mu.detach() + layer.sigma.detach() * torch.randn((n, *layer.mu.shape), generator=gen))
    b = layer.bias.detach().expand(n, -1)
    if layer.granularity == "node":
        b = b * z
    if isinstance(layer, SpikeSlabConv2d):
        k = layer.mu.shape[-1]
        cols = torch.nn.functional.unfold(x, k)  # (B, C k k, L)
        out = torch.einsum("bkl,nok->nbol", cols, w.flatten(2)) + b[:, None, :, None]
        side = x.shape[-1] - k + 1
        return out.reshape(n, x.shape[0], -1, side, side)
    return torch.einsum("bi,noi->nbo", x, w) + b[:, None, :]


def assert_lrt_moments_match_samples(layer, conv: bool, sampler, n: int = 50_000) -> None:
    """The layer's moment-matched pre-activations (mean, variance) against ``n`` networks
    drawn from q by ``sampler(layer, x, n, generator)``."""
    x = torch.randn(3, 2, 4, 4) if conv else torch.randn(3, 4)
    with torch.no_grad():
        mean, var = layer.lrt_moments(x)
    samples = sampler(layer, x, n, torch.Generator().manual_seed(0))
    assert torch.allclose(samples.mean(0), mean, atol=4 * float(var.max().sqrt()) / math.sqrt(n) + 1e-4)
    assert torch.allclose(samples.var(0), var, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("granularity,conv", [("edge", False), ("node", False), ("input", False), ("edge", True), ("node", True)])
def test_lrt_moments_match_sampled_preactivations(granularity, conv):
    assert_lrt_moments_match_samples(random_layer(granularity, mode="lrt", conv=conv), conv, sample_preactivations)


def test_bma_forward_samples_from_q():
    layer = random_layer("node", mode="closed_form")
    x = torch.randn(5, 4)
    layer.eval()
    layer.bma = True
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(4000)])
        mean, var = layer.lrt_moments(x)
    assert torch.allclose(draws.mean(0), mean, atol=0.1)
    assert torch.allclose(draws.var(0), var, rtol=0.15, atol=0.02)


def exact_pips(X, y, lam, sigma0, noise):
    """Exact PIPs of Bayesian linear regression with a spike-and-slab prior, by enumerating
    all 2^p models: p(γ | y) ∝ λ^|γ| (1 − λ)^(p − |γ|) N(y; 0, noise² I + σ0² X_γ X_γᵀ)."""
    n, p = X.shape
    logw, models = [], []
    for gamma in itertools.product([0, 1], repeat=p):
        idx = [i for i in range(p) if gamma[i]]
        cov = noise ** 2 * np.eye(n) + sigma0 ** 2 * X[:, idx] @ X[:, idx].T
        _, logdet = np.linalg.slogdet(cov)
        loglik = -0.5 * (logdet + y @ np.linalg.solve(cov, y) + n * math.log(2 * math.pi))
        logw.append(loglik + len(idx) * math.log(lam) + (p - len(idx)) * math.log(1 - lam))
        models.append(gamma)
    logw = np.array(logw)
    post = np.exp(logw - logw.max())
    post /= post.sum()
    return (post[:, None] * np.array(models)).sum(0)


def test_closed_form_pips_match_exact_enumeration():
    # two strong, one weak and three null coefficients (exact PIPs ≈ 1, 1, 0.998, 0.008 x 3).
    # Mean-field VI cannot represent an ambiguous (multi-modal) posterior: with other data
    # draws a null coefficient correlated with the noise can have an exact PIP near 0.5 that
    # the closed-form update puts near 0.
    rng = np.random.default_rng(2)
    n, p, lam, sigma0, noise = 200, 6, 0.1, 1.0, 1.0
    X = rng.normal(size=(n, p))
    beta = np.array([1.5, -1.0, 0.3, 0.0, 0.0, 0.0])
    y = X @ beta + noise * rng.normal(size=n)
    exact = exact_pips(X, y, lam, sigma0, noise)

    cls = method_class("spike_slab")
    params = make_params(cls.Params, {"prior_inclusion": lam, "sigma0": sigma0, "phi_warmup_epochs": 50}, "spike_slab")
    ctx = TrainContext("regression", n, 800, 1, 0.02, torch.device("cpu"), None)
    method = cls(params, ctx)
    torch.manual_seed(0)
    net = nn.Sequential(MaskedLinear(p, 1, bias=False))
    with torch.no_grad():
        net[0].weight.zero_()
    model = method.build(net)
    xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    fit(model, method, xt, yt, epochs=800, batch_size=n, lr=0.02, task="regression", noise_sd=noise,
        generator=torch.Generator().manual_seed(0))
    pips = model[0].phi.detach().numpy().ravel()
    assert exact[2] > 0.99 and exact[3:].max() < 0.02  # the scenario is as described
    assert np.all(np.abs(pips - exact) < 0.15), (pips, exact)
    order = np.argsort(-pips)
    assert set(order[:3]) == {0, 1, 2}  # the true coefficients rank first


def test_natural_mask_scores_and_export():
    cls = method_class("spike_slab")
    params = make_params(cls.Params, {"prior_inclusion": 0.5}, "spike_slab")
    method = cls(params, TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None))
    model = method.build(nn.Sequential(MaskedLinear(2, 2)))
    with torch.no_grad():
        model[0].theta.copy_(torch.tensor([[3.0, -1.0], [0.5, -4.0]]))
        model[0].mu.copy_(torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
    assert method.natural_mask(model)["0.weight"].tolist() == [[1, 0], [1, 0]]
    scores, tiebreak = method.scores(model)["0.weight"]
    assert torch.equal(scores, model[0].theta)  # ranks by θ, then by |μ|/σ
    assert torch.allclose(tiebreak, model[0].mu.abs() / model[0].sigma)
    plain = method.export(model)
    assert isinstance(plain[0], MaskedLinear)
    assert torch.allclose(plain[0].weight, torch.sigmoid(model[0].theta) * model[0].mu)  # posterior mean φμ


def test_sampled_predict_averages_unmasked_sampled_networks():
    """Bai et al.'s test predictor: the mean of networks drawn from q over every weight, whatever
    its PIP or mask.  x = (1, 1), μ = (2, 4), φ = (0.75, 0.25), σ ≈ 0: E = 0.75·2 + 0.25·4 = 2.5;
    the natural-masked average keeps only the first weight: 0.75·2 = 1.5."""
    cls = method_class("spike_slab")
    params = make_params(cls.Params, {"prior_inclusion": 0.5, "bma_samples": 4000}, "spike_slab")
    method = cls(params, TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None))
    model = method.build(nn.Sequential(MaskedLinear(2, 1, bias=False)))
    with torch.no_grad():
        model[0].mu.copy_(torch.tensor([[2.0, 4.0]]))
        model[0].rho.fill_(-30.0)
        model[0].theta.copy_(torch.tensor([[logit(0.75), logit(0.25)]]))
        model[0].weight_mask.copy_(torch.tensor([[1.0, 0.0]]))  # a mask left on the layer is ignored ...
    x = torch.ones(1, 2)
    torch.manual_seed(0)
    sd = math.sqrt((0.75 * 0.25 * 4 + 0.25 * 0.75 * 16) / 4000)  # sd of the 4000-sample mean: 0.031
    assert float(method.sampled_predict(model, x)) == pytest.approx(2.5, abs=4 * sd)
    assert model[0].weight_mask.tolist() == [[1.0, 0.0]]  # ... and left as it was
    natural = method.bma_predict(model, method.natural_mask(model), x)
    assert natural.shape == (4000, 1) and float(natural.mean()) == pytest.approx(1.5, abs=4 * sd)  # per-sample means


def _beta_objective(phi, mu, sigma, g, h, beta, lam, sigma0):
    """Per-coefficient objective actually trained, NLL + β KL (times N), under the quadratic
    model log p(y | w) = c + g w − ½ h w² in this coefficient: E_q[log p] − c = φ (gμ − ½h(μ² + σ²))."""
    gate_kl = phi * np.log(phi / lam) + (1 - phi) * np.log((1 - phi) / (1 - lam))
    slab_kl = np.log(sigma0 / sigma) + (sigma ** 2 + mu ** 2) / (2 * sigma0 ** 2) - 0.5
    return -phi * (g * mu - 0.5 * h * (mu ** 2 + sigma ** 2)) + beta * (gate_kl + phi * slab_kl)


@pytest.mark.parametrize("beta", [0.05, 0.25, 1.0])
def test_closed_form_update_is_the_argmin_of_the_beta_weighted_objective(beta):
    """Under KL warm-up (β < 1) the slab is trained on NLL + β KL too, so it sits at
    σ² = β / (h + β/σ0²), μ = g / (h + β/σ0²); the φ that minimises the same objective is then
    logit λ + log(σ/σ0) + μ²/(2σ²), the update as it is: β cancels (docs/methods.md, "KL warm-up and the closed-form update").
    Slab optimum by numerical minimisation, φ by brute force over a grid of logits."""
    from scipy.optimize import minimize

    g, h, lam, sigma0 = 2.0, 3.75, 0.1, 1.0
    slab = minimize(lambda v: _beta_objective(1.0 - 1e-12, v[0], math.exp(v[1]), g, h, beta, lam, sigma0),
                    x0=[0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20_000})
    mu, sigma = slab.x[0], math.exp(slab.x[1])
    grid = np.arange(-12.0, 30.0, 1e-4)
    brute = grid[np.argmin(_beta_objective(1 / (1 + np.exp(-grid)), mu, sigma, g, h, beta, lam, sigma0))]

    layer = SpikeSlabLinear(MaskedLinear(1, 1, bias=False), granularity="edge")
    with torch.no_grad():
        layer.mu.fill_(mu)
        layer.rho.fill_(math.log(math.expm1(sigma)))  # σ = softplus(ρ)
    layer.closed_form_update(logit(lam), sigma0)
    assert float(layer.theta) == pytest.approx(brute, abs=2e-3)
    if beta == 0.25:  # by hand: h + β/σ0² = 4, σ = 1/4, μ = 1/2: logit λ + log(1/4) + 2
        assert (mu, sigma) == (pytest.approx(0.5, abs=1e-5), pytest.approx(0.25, abs=1e-5))
        assert brute == pytest.approx(logit(0.1) - math.log(4) + 2, abs=2e-4)
    # dividing the β = 1 signal term by β (the likelihood weighted 1, the KL β) misses it
    naive = logit(lam) + (mu ** 2 / (2 * sigma ** 2) - 0.5 + (mu ** 2 + sigma ** 2) / (2 * sigma0 ** 2)) / beta \
        - (math.log(sigma0 / sigma) + (sigma ** 2 + mu ** 2) / (2 * sigma0 ** 2) - 0.5)
    assert beta == 1.0 or abs(naive - brute) > 0.5


# -- bias priors (``bias_prior: spike_slab``, Bai et al.'s code) ---------------------------------

def _kl_term(phi, mu, sigma, lam, sigma0, gate=True):
    """One coefficient's KL, docs/science.md §1, by hand: gate part (if ``gate``) + φ × slab part."""
    g = phi * math.log(phi / lam) + (1 - phi) * math.log((1 - phi) / (1 - lam)) if gate else 0.0
    return g + phi * (math.log(sigma0 / sigma) + (sigma ** 2 + mu ** 2) / (2 * sigma0 ** 2) - 0.5)


def _set_layer(layer, mu, sigma, theta, b_mu, b_sigma, b_theta=None):
    inv = lambda s: torch.log(torch.expm1(torch.tensor(s)))  # noqa: E731  ρ with softplus(ρ) = σ
    with torch.no_grad():
        layer.mu.copy_(torch.tensor(mu))
        layer.rho.copy_(inv(sigma))
        layer.theta.copy_(torch.tensor(theta))
        layer.bias.copy_(torch.tensor(b_mu))
        layer.bias_rho.copy_(inv(b_sigma))
        if b_theta is not None:
            layer.bias_theta.copy_(torch.tensor(b_theta))
    layer._gate_cache = None


@pytest.mark.parametrize("mode", ["closed_form", "gumbel", "lrt"])
def test_kl_with_bias_prior_is_the_weight_terms_plus_the_bias_terms_by_hand(mode):
    """A 1-input, 2-output layer, edge gates: KL = Σ over its 2 weights and 2 biases of the
    per-coefficient KL (each with its own gate), computed term by term; dropping the bias prior
    drops exactly the bias terms."""
    lam, sigma0 = 0.2, 1.3
    mu, sigma, phi = [[0.5], [-1.0]], [[0.2], [1.0]], [[0.9], [0.3]]
    b_mu, b_sigma, b_phi = [0.25, 2.0], [0.1, 0.5], [0.6, 0.95]
    layer = SpikeSlabLinear(MaskedLinear(1, 2), mode=mode, bias_prior="spike_slab")
    _set_layer(layer, mu, sigma, [[logit(p[0])] for p in phi], b_mu, b_sigma, [logit(p) for p in b_phi])
    weights = sum(_kl_term(phi[j][0], mu[j][0], sigma[j][0], lam, sigma0) for j in range(2))
    biases = sum(_kl_term(b_phi[j], b_mu[j], b_sigma[j], lam, sigma0) for j in range(2))
    assert float(layer.kl(logit(lam), sigma0).detach()) == pytest.approx(weights + biases, rel=1e-5)
    plain = SpikeSlabLinear(MaskedLinear(1, 2), mode=mode)
    with torch.no_grad():
        for name in ("mu", "rho", "theta", "bias"):
            getattr(plain, name).copy_(getattr(layer, name))
    assert float(plain.kl(logit(lam), sigma0).detach()) == pytest.approx(weights, rel=1e-5)


def test_kl_with_bias_prior_under_node_gates_shares_the_units_gate():
    """Node gates: one γ per unit for its weights and bias, so the unit's gate term counts once
    and its φ multiplies the slab terms of its weights and of its bias."""
    lam, sigma0 = 0.2, 1.3
    mu, sigma, phi = [[0.5, 1.5], [-1.0, 0.0]], [[0.2, 0.3], [1.0, 0.7]], [0.9, 0.3]
    b_mu, b_sigma = [0.25, 2.0], [0.1, 0.5]
    layer = SpikeSlabLinear(MaskedLinear(2, 2), granularity="node", mode="lrt", bias_prior="spike_slab")
    assert not hasattr(layer, "bias_theta")
    _set_layer(layer, mu, sigma, [logit(p) for p in phi], b_mu, b_sigma)
    expected = 0.0
    for j in range(2):
        expected += _kl_term(phi[j], mu[j][0], sigma[j][0], lam, sigma0)  # gate term once per unit
        expected += _kl_term(phi[j], mu[j][1], sigma[j][1], lam, sigma0, gate=False)
        expected += _kl_term(phi[j], b_mu[j], b_sigma[j], lam, sigma0, gate=False)
    assert float(layer.kl(logit(lam), sigma0).detach()) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(layer.bias_pip(), torch.tensor(phi))


def test_closed_form_update_of_biases_by_hand():
    """Each bias: logit φ_b = logit λ + log(σ_b/σ0) + μ_b²/(2σ_b²); node gates add the bias's
    term to its unit's group sum."""
    lam, sigma0 = 0.1, 1.3
    layer = SpikeSlabLinear(MaskedLinear(1, 2), bias_prior="spike_slab")
    _set_layer(layer, [[1.0], [0.0]], [[0.5], [1.3]], [[0.0], [0.0]], [0.5, 0.0], [0.25, 1.3])
    layer.closed_form_update(logit(lam), sigma0)
    b_expected = [logit(lam) + math.log(0.25 / 1.3) + 0.5 ** 2 / (2 * 0.25 ** 2), logit(lam)]  # μ = 0, σ = σ0: prior odds
    assert layer.bias_theta.tolist() == pytest.approx(b_expected, abs=1e-5)
    w_expected = logit(lam) + math.log(0.5 / 1.3) + 1 / (2 * 0.25)
    assert layer.theta[:, 0].tolist() == pytest.approx([w_expected, logit(lam)], abs=1e-5)
    node = SpikeSlabLinear(MaskedLinear(1, 2), granularity="node", bias_prior="spike_slab")
    _set_layer(node, [[1.0], [0.0]], [[0.5], [1.3]], [0.0, 0.0], [0.5, 0.0], [0.25, 1.3])
    node.closed_form_update(logit(lam), sigma0)
    assert node.theta.tolist() == pytest.approx([w_expected + b_expected[0] - logit(lam), logit(lam)], abs=1e-5)


def sample_preactivations_with_bias_prior(layer, x, n, gen):
    """Like :func:`sample_preactivations`, biases drawn from q too: b = z_b (μ_b + σ_b ε)."""
    z = (torch.rand((n, *layer.theta.shape), generator=gen) < layer.phi.detach()).float()
    w = torch.stack([layer.expand(zi) for zi in z]) * (
        layer.mu.detach() + layer.sigma.detach() * torch.randn((n, *layer.mu.shape), generator=gen))
    zb = z if layer.granularity == "node" else (torch.rand((n, *layer.bias.shape), generator=gen) < layer.bias_pip()).float()
    b = zb * (layer.bias.detach() + torch.nn.functional.softplus(layer.bias_rho.detach()) * torch.randn((n, *layer.bias.shape), generator=gen))
    if isinstance(layer, SpikeSlabConv2d):
        k = layer.mu.shape[-1]
        cols = torch.nn.functional.unfold(x, k)
        out = torch.einsum("bkl,nok->nbol", cols, w.flatten(2)) + b[:, None, :, None]
        side = x.shape[-1] - k + 1
        return out.reshape(n, x.shape[0], -1, side, side)
    return torch.einsum("bi,noi->nbo", x, w) + b[:, None, :]


def random_layer_with_bias_prior(granularity, mode, conv=False):
    layer = random_layer(granularity, mode=mode, conv=conv)
    plain = MaskedConv2d(2, 3, 2) if conv else MaskedLinear(4, 3)
    out = (SpikeSlabConv2d if conv else SpikeSlabLinear)(plain, granularity=granularity, mode=mode, bias_prior="spike_slab")
    with torch.no_grad():
        for name in ("mu", "rho", "theta"):
            getattr(out, name).copy_(getattr(layer, name))
        out.bias.copy_(torch.tensor([1.5, -0.5, 0.2]))
        out.bias_rho.copy_(torch.tensor([-1.0, 0.0, -2.0]))
        if granularity != "node":
            out.bias_theta.copy_(torch.tensor([1.0, -1.0, 0.0]))
    return out


@pytest.mark.parametrize("granularity,conv", [("edge", False), ("node", False), ("input", False), ("edge", True), ("node", True)])
def test_lrt_moments_with_bias_prior_match_sampled_preactivations(granularity, conv):
    assert_lrt_moments_match_samples(random_layer_with_bias_prior(granularity, "lrt", conv), conv,
                                     sample_preactivations_with_bias_prior)


@pytest.mark.parametrize("granularity,mode", [("edge", "closed_form"), ("node", "closed_form"), ("edge", "gumbel")])
def test_sampled_forward_with_bias_prior_draws_biases_from_q(granularity, mode):
    """Training forward (sampled gates) and the BMA forward: mean and variance of the outputs
    match the moments of q, biases included (a bias's gate and slab noise add mean φ_b μ_b and
    variance φ_b σ_b² + φ_b(1 − φ_b)μ_b²)."""
    layer = random_layer_with_bias_prior(granularity, mode)
    x = torch.randn(5, 4)
    with torch.no_grad():
        mean, var = layer.lrt_moments(x)
        torch.manual_seed(0)
        for training in (True, False):
            layer.train(training)
            layer.bma = not training
            draws = torch.stack([layer(x) for _ in range(4000)])
            assert torch.allclose(draws.mean(0), mean, atol=0.1)
            assert torch.allclose(draws.var(0), var, rtol=0.15, atol=0.02)
    layer.eval()
    layer.bma = False
    plain = layer.to_plain()  # the posterior mean network: E[b] = φ_b μ_b
    assert torch.allclose(plain.bias, layer.bias_pip() * layer.bias)


@pytest.mark.parametrize("granularity,mode", [("edge", "gumbel"), ("node", "gumbel"), ("input", "gumbel"),
                                              ("edge", "closed_form")])
def test_sampled_forward_matches_the_moments_of_q(granularity, mode):
    """Without a bias prior (the default): the training forward's sampled outputs have the mean
    and variance of the pre-activations under q (Monte Carlo, 4000 draws), an independent check
    of gumbel's relaxed-gate forward, which the fast-path test compares only with itself."""
    layer = random_layer(granularity, mode=mode)
    x = torch.randn(5, 4)
    with torch.no_grad():
        mean, var = layer.lrt_moments(x)
        torch.manual_seed(0)
        layer.train()
        draws = torch.stack([layer(x) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), mean, atol=0.1)
    assert torch.allclose(draws.var(0), var, rtol=0.15, atol=0.02)


def test_gumbel_and_lrt_train_bias_gates_by_gradient():
    for mode in ("gumbel", "lrt"):
        layer = random_layer_with_bias_prior("edge", mode)
        assert isinstance(layer.bias_theta, nn.Parameter)
        torch.manual_seed(0)
        (layer(torch.randn(8, 4)).pow(2).sum() + layer.kl(logit(0.1), 1.3)).backward()
        assert layer.bias_theta.grad is not None and layer.bias_theta.grad.abs().sum() > 0
        assert layer.bias_rho.grad.abs().sum() > 0
    assert "bias_theta" in dict(random_layer_with_bias_prior("edge", "closed_form").named_buffers())


def test_bias_prior_option_is_checked_and_selection_stays_on_weights():
    cls = method_class("spike_slab")
    ctx = TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None)
    with pytest.raises(Exception, match=r"bias_prior.*'gates'.*none, spike_slab"):
        cls(make_params(cls.Params, {"bias_prior": "gates"}, "spike_slab"), ctx)
    method = cls(make_params(cls.Params, {"prior_inclusion": 0.5, "bias_prior": "spike_slab"}, "spike_slab"), ctx)
    model = method.build(nn.Sequential(MaskedLinear(2, 2), nn.ReLU(), MaskedLinear(2, 1, bias=False)))
    assert model[2].bias_prior == "none"  # no bias, nothing to hold
    with torch.no_grad():
        model[0].bias_theta.fill_(-5.0)  # both biases excluded by their PIPs ...
    assert set(method.natural_mask(model)) == {"0.weight", "2.weight"}  # ... but never masked
    assert set(method.scores(model)) == {"0.weight", "2.weight"}
    assert method.extra_artifacts(model)["pip_bias"]["0.bias"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(-5.0)).item()] * 2)


# -- the ρ learning rate ------------------------------------------------------------------------

def test_rho_lr_factor_must_be_positive():
    cls = method_class("spike_slab")
    ctx = TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None)
    with pytest.raises(Exception, match=r"rho_lr_factor.*> 0, got 0"):
        cls(make_params(cls.Params, {"rho_lr_factor": 0.0}, "spike_slab"), ctx)


def test_rho_lr_factor_sets_the_learning_rate_of_every_rho():
    cls = method_class("spike_slab")
    ctx = TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None)
    method = cls(make_params(cls.Params, {"rho_lr_factor": 3.0, "bias_prior": "spike_slab", "phi_update": "lrt"}, "spike_slab"), ctx)
    model = method.build(nn.Sequential(MaskedLinear(3, 2), nn.ReLU(), MaskedLinear(2, 1)))
    opt = method.optimizer(model, 0.01)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter once
    for name, p in model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(0.03 if name.endswith("rho") else 0.01), name
    # one Adam step moves each ρ by about its learning rate (Adam's first step is ± lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    model.train()
    (model(torch.randn(4, 3)).pow(2).sum() + method.penalty(model)).backward()
    opt.step()
    step = (model[0].rho.detach() - before["0.rho"]).abs()
    assert torch.allclose(step, torch.full_like(step, 0.03), rtol=1e-3)


def test_a_damped_closed_form_update_moves_theta_that_fraction_of_the_way():
    torch.manual_seed(0)
    layer = from_plain(MaskedLinear(3, 2), granularity="edge", mode="closed_form", phi_init=0.99, rho_init=-3.0)
    before = layer.theta.detach().clone()
    full = copy.deepcopy(layer)
    full.closed_form_update(logit(0.1), 1.3)
    layer.closed_form_update(logit(0.1), 1.3, step=0.25)
    assert torch.allclose(layer.theta, before + 0.25 * (full.theta - before), atol=1e-6)
    assert not torch.allclose(layer.theta, full.theta)
    again = copy.deepcopy(full)
    again.closed_form_update(logit(0.1), 1.3, step=1.0)
    assert torch.equal(again.theta, full.theta)  # step 1 is the update itself, exactly


@pytest.mark.parametrize("granularity", ["edge", "node"])
def test_closed_form_update_rewrites_the_cached_gate_in_place(granularity):
    """What ``_fixed_gate`` hands out (φ, φ broadcast to the weight, the KL's constant part) stays
    the same tensors across an update and holds the new values, bit for bit those of a fresh
    computation: a CUDA graph captured before the update reads these very tensors."""
    torch.manual_seed(0)
    layer = SpikeSlabLinear(MaskedLinear(3, 2), granularity=granularity)
    with torch.no_grad():
        layer.mu.uniform_(-1, 1)
    phi, phi_w, const = layer._fixed_gate(logit(0.1), 1.3)
    before = phi_w.clone()
    layer.closed_form_update(logit(0.1), 1.3)
    phi2, phi_w2, const2 = layer._fixed_gate(logit(0.1), 1.3)
    assert phi2 is phi and phi_w2 is phi_w and const2 is const
    assert not torch.equal(phi_w, before)
    layer._gate_cache = None  # a fresh computation from the updated θ
    fresh = layer._fixed_gate(logit(0.1), 1.3)
    assert torch.equal(phi, fresh[0]) and torch.equal(phi_w, fresh[1]) and torch.equal(const, fresh[2])


def _two_runs(granularity, mode, bias_prior, lams=(0.5, 0.01)):
    """Two layers of one shape with their own λ (prior_logit) and random μ, ρ, θ."""
    layers = []
    for seed, lam in enumerate(lams):
        torch.manual_seed(seed)
        layer = SpikeSlabLinear(MaskedLinear(4, 3), granularity=granularity, mode=mode, bias_prior=bias_prior,
                                prior_logit=logit(lam))
        with torch.no_grad():
            layer.mu.uniform_(-1, 1)
            layer.rho.uniform_(-2, 0.5)
            layer.theta.uniform_(-2, 2)
            if bias_prior == "spike_slab":
                layer.bias.uniform_(-1, 1)
                layer.bias_rho.uniform_(-2, 0.5)
                if granularity != "node":
                    layer.bias_theta.uniform_(-2, 2)
        layers.append(layer)
    return layers


@pytest.mark.parametrize("granularity,mode,bias_prior", [
    ("edge", "closed_form", "none"), ("node", "closed_form", "spike_slab"), ("edge", "closed_form", "spike_slab"),
    ("input", "lrt", "none"), ("node", "gumbel", "spike_slab"), ("edge", "lrt", "spike_slab")])
def test_a_stack_of_runs_with_their_own_prior_gives_each_runs_kl_and_update(granularity, mode, bias_prior):
    """``prior_from_target``: runs of different λ in one stack.  The stacked layer's KL (its own
    λ per run, ``logit_lam=None``) is the sum of each run's KL alone under its λ (a float), with
    each run's gradient; its closed-form update gives each run the θ it gets alone."""
    from slabbench.stack import stack_modules, unstack

    lams = (0.5, 0.01)
    alone = _two_runs(granularity, mode, bias_prior, lams)
    stacked = stack_modules(alone)
    assert stacked.prior_logit.shape == (2,)
    kl = stacked.kl(None, 1.3)
    kl.backward()
    kls = [layer.kl(logit(lam), 1.3) for layer, lam in zip(alone, lams)]
    for k in kls:
        k.backward()
    assert kl.item() == pytest.approx(sum(k.item() for k in kls), rel=1e-6)
    # one float λ for both runs gives another value: the per-run λ is what counts
    assert abs(copy.deepcopy(stacked).kl(logit(lams[0]), 1.3).item() - kl.item()) > 1.0
    for name, p in stacked.named_parameters():
        grads = [dict(layer.named_parameters())[name].grad for layer in alone]
        if p.grad is None:  # not in the KL (a plain bias): not alone either
            assert grads == [None, None], name
            continue
        for s, g in enumerate(grads):
            assert torch.allclose(p.grad[s], g, rtol=1e-5, atol=1e-6), name
    if mode != "closed_form":
        return
    stacked.closed_form_update(None, 1.3)
    for s, (layer, lam) in enumerate(zip(alone, lams)):
        layer.closed_form_update(logit(lam), 1.3)
        run = unstack(stacked, s)
        assert torch.allclose(run.theta, layer.theta, atol=1e-5)
        if bias_prior == "spike_slab" and granularity != "node":
            assert torch.allclose(run.bias_theta, layer.bias_theta, atol=1e-5)
        assert run.prior_logit.item() == pytest.approx(logit(lam), rel=1e-6)  # each run gets its own back


def test_per_run_prior_by_hand():
    """μ = 0 and σ = σ0: the update's term log(σ/σ0) + μ²/(2σ²) is 0, so each run's θ becomes
    its own logit λ, φ = λ, and every run's KL is then 0 (q = p); the cached constant of the
    KL follows the update in place (the same tensor, as a captured CUDA graph reads it)."""
    from slabbench.stack import stack_modules

    sigma0, lams = 1.3, (0.5, 0.1, 0.01)
    layers = []
    for lam in lams:
        layer = SpikeSlabLinear(MaskedLinear(2, 2), granularity="edge", prior_logit=logit(lam))
        with torch.no_grad():
            layer.mu.zero_()
            layer.rho.fill_(math.log(math.expm1(sigma0)))  # softplus(ρ) = σ0
        layers.append(layer)
    stacked = stack_modules(layers)
    _, _, const = stacked._fixed_gate(stacked._prior(None), sigma0)
    assert stacked.kl(None, sigma0).item() > 1.0  # φ = 0.99 everywhere: far from λ = 0.1, 0.01
    stacked.closed_form_update(None, sigma0)
    expected = torch.tensor([logit(lam) for lam in lams]).reshape(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(stacked.theta, expected, atol=1e-5)
    assert stacked._fixed_gate(stacked._prior(None), sigma0)[2] is const
    assert stacked.kl(None, sigma0).item() == pytest.approx(0.0, abs=1e-5)


def test_a_layer_without_its_own_prior_needs_a_float():
    layer = SpikeSlabLinear(MaskedLinear(2, 2))
    with pytest.raises(ValueError, match="logit_lam None.*built without one"):
        layer.kl(None, 1.3)


@pytest.mark.parametrize("options", [{}, {"prior_from_target": True}])
def test_only_prior_from_target_puts_lambda_in_the_layers(options):
    """Plain spike_slab keeps one float λ (its layers hold none: its stacks compute as before);
    ``prior_from_target`` stores 1 − target in every layer."""
    cls = method_class("spike_slab")
    spec = DatasetSpec("toy", "regression", (5,), 1, {"train": 10})
    ctx = TrainContext("regression", 10, 1, 1, 1e-2, torch.device("cpu"), spec, target=0.9)
    method = cls(make_params(cls.Params, options, "spike_slab"), ctx)
    model = method.build(build_model("mlp", spec, {"hidden": [4]}))
    held = [m.prior_logit.item() for m in model.modules() if "prior_logit" in m._buffers]
    assert held == ([pytest.approx(logit(0.1), rel=1e-6)] * 2 if options else [])
    assert method.penalty(model).item() > 0


def test_load_state_dict_refreshes_the_closed_form_gate_cache_in_place():
    """The cached φ is rewritten in place when load_state_dict writes θ (a traced step reads the
    cache without checking θ's version, and a captured graph reads these very tensors)."""
    from torch import nn

    from slabbench.layers.spike_slab import SpikeSlabLinear

    layer = SpikeSlabLinear(nn.Linear(4, 3))
    layer.kl(-1.0, 1.3)
    phi = layer._gate_cache[2]
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["theta"].fill_(2.0)
    layer.load_state_dict(state)
    assert layer._gate_cache[2] is phi  # the same tensor, new values
    torch.testing.assert_close(phi, torch.full_like(phi, 1 / (1 + math.exp(-2.0))))


def test_node_gates_drop_a_unit_with_its_bias_in_the_natural_selection():
    """Under node gates one γ covers a unit's incoming weights and its bias: the median
    probability model's dropped unit outputs relu(0), not relu(φb), and is not counted as kept
    (units 1 and 3 of fc1 have θ = −0.01, PIP 0.4975 < 0.5: a sampled gate is open half the time)."""
    from slabbench import metrics as M
    from slabbench.prune import apply_masks

    cls = method_class("spike_slab")
    ctx = TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None)
    method = cls(make_params(cls.Params, {"granularity": "node", "prior_inclusion": 0.5}, "spike_slab"), ctx)
    torch.manual_seed(0)
    model = method.build(nn.Sequential(MaskedLinear(3, 4), nn.ReLU(), MaskedLinear(4, 1)))
    with torch.no_grad():
        model[0].theta.copy_(torch.tensor([5.0, -0.01, 5.0, -0.01]))
        model[0].bias.fill_(1.0)
        model[2].theta.fill_(5.0)
    mask = method.natural_mask(model)
    assert set(mask) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert mask["0.bias"].tolist() == [1.0, 0.0, 1.0, 0.0]
    net = apply_masks(method.export(model).eval(), mask)
    assert net[0].bias.tolist() == pytest.approx([torch.sigmoid(torch.tensor(5.0)).item(), 0.0] * 2)
    assert M.structure(net, (3,))["nodes_kept"] == [2]
    # the masked model average: the dropped units' sampled biases are masked too
    hidden = []
    model[0].register_forward_hook(lambda mod, inp, out: hidden.append(out))
    method.bma_predict(model, mask, torch.randn(5, 3))
    assert all(bool((h[:, [1, 3]] == 0).all()) and bool((h[:, [0, 2]] != 0).any()) for h in hidden)
    assert model[0].bias_keep is None  # restored after the average


def test_a_natural_mask_may_zero_biases_and_the_core_checks_their_keys():
    from slabbench.api import MethodOutputError
    from slabbench.outputs import check_mask
    from slabbench.prune import apply_masks

    net = nn.Sequential(MaskedLinear(2, 2), nn.ReLU(), MaskedLinear(2, 1, bias=False))
    ones = {"0.weight": torch.ones(2, 2), "2.weight": torch.ones(1, 2)}
    check_mask(dict(ones, **{"0.bias": torch.tensor([1.0, 0.0])}), net, "m")
    with pytest.raises(MethodOutputError, match=r"\['0.bias'\] has shape \(3,\); the bias has \(2,\)"):
        check_mask(dict(ones, **{"0.bias": torch.ones(3)}), net, "m")
    with pytest.raises(MethodOutputError, match="2.bias, which are not prunable weights"):
        check_mask(dict(ones, **{"2.bias": torch.ones(1)}), net, "m")  # fc2 has no bias
    with torch.no_grad():
        net[0].bias.fill_(2.0)
    apply_masks(net, dict(ones, **{"0.bias": torch.tensor([1.0, 0.0])}))
    assert net[0].bias.tolist() == [2.0, 0.0]
    with pytest.raises(KeyError, match="optionally, their biases"):
        apply_masks(net, dict(ones, **{"1.bias": torch.ones(2)}))
