"""Sparse variational dropout (Molchanov et al. 2017): the KL approximation against quadrature,
the local reparameterisation by moments, clipping, the natural rule, warm-up and export."""

import math

import numpy as np
import pytest
import torch

from slabbench.api import PluginError, TrainContext, make_params
from slabbench.layers import MaskedConv2d, MaskedLinear, prunable_layers
from slabbench.layers.sparse_vd import K1, Conv2dSVDO, LinearSVDO, neg_kl, svdo_layers
from slabbench.prune import apply_masks
from slabbench.registry import method_class

EULER_GAMMA = 0.5772156649015329


def e_log_abs_normal(alpha: float, n: int = 200_001) -> float:
    """E log|eps| for eps ~ N(1, alpha) by the trapezoid rule after r = |eps| = e^t:
    int t [phi(e^t) + phi(-e^t)] e^t dt, a smooth integrand (no log singularity left)."""
    sd = math.sqrt(alpha)
    t = np.linspace(-60.0, math.log(1.0 + 40.0 * sd), n)
    r = np.exp(t)
    phi = lambda x: np.exp(-0.5 * ((x - 1.0) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))  # noqa: E731
    density = (phi(r) + phi(-r)) * r  # density of t
    assert np.trapezoid(density, t) == pytest.approx(1.0, abs=1e-9)  # the grid covers the mass
    return float(np.trapezoid(t * density, t))


def make_method(options=None, epochs=20):
    cls = method_class("sparse_vd")
    ctx = TrainContext(task="classification", n_train=100, epochs=epochs, steps_per_epoch=1, lr=1e-3,
                       device=torch.device("cpu"), spec=None)
    return cls(make_params(cls.Params, options or {}, "sparse_vd"), ctx)


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), MaskedLinear(4, 3), torch.nn.ReLU(), MaskedLinear(3, 2))


def test_quadrature_matches_monte_carlo():
    torch.manual_seed(0)
    eps = 1.0 + math.sqrt(2.0) * torch.randn(4_000_000, dtype=torch.float64)
    assert e_log_abs_normal(2.0) == pytest.approx(torch.log(eps.abs()).mean().item(), abs=3e-3)


def test_kl_approximation_within_001_nats_of_the_true_kl():
    # -KL(N(theta, alpha theta^2) || log-uniform) = 0.5 log alpha - E_{eps~N(1,alpha)} log|eps| + C.
    # As alpha -> inf, E log|eps| -> 0.5 log alpha - (gamma_E + log 2)/2, so the C making -KL -> 0
    # (the paper's convention, the approximation's -k1) is C = -(gamma_E + log 2)/2.
    c = -(EULER_GAMMA + math.log(2.0)) / 2.0
    assert c == pytest.approx(-K1, abs=1e-3)
    las = np.linspace(-8.0, 8.0, 81)
    true = np.array([0.5 * la - e_log_abs_normal(math.exp(la)) + c for la in las])
    approx = neg_kl(torch.tensor(las, dtype=torch.float64)).numpy()
    assert np.abs(approx - true).max() < 0.01
    assert true[0] == pytest.approx(-4.635, abs=1e-3)  # strong penalty at small alpha


def test_kl_uses_clipped_log_alpha_and_penalty_sums_layers():
    method = make_method()
    model = method.build(tiny_net())
    layers = dict(svdo_layers(model))
    with torch.no_grad():
        for layer in layers.values():
            layer.log_sigma2.fill_(50.0)  # log alpha >> 8: KL per weight = KL(8)
    per_weight = -neg_kl(torch.tensor(8.0, dtype=torch.float64)).item()  # KL at the clip
    by_hand = K1 - K1 / (1 + math.exp(-(1.87320 + 1.48695 * 8))) + 0.5 * math.log1p(math.exp(-8))
    assert per_weight == pytest.approx(by_hand, rel=1e-9)
    assert -neg_kl(torch.tensor(40.0, dtype=torch.float64)).item() < per_weight / 10  # unclipped (log alpha > 40): ~0
    pen = method.penalty(model)
    assert pen.item() == pytest.approx(per_weight * (12 + 6), rel=1e-3)  # float32 cancellation in k1 s - k1
    assert pen.requires_grad


def test_log_alpha_definition():
    layer = LinearSVDO(torch.tensor([[0.5, -0.01]]), torch.zeros(1), log_sigma2_init=-4.0)
    expected = torch.tensor([[-4.0 - math.log(0.25 + 1e-8), -4.0 - math.log(1e-4 + 1e-8)]])
    assert torch.allclose(layer.log_alpha(), expected)


def test_training_forward_moments_match_local_reparameterisation():
    torch.manual_seed(1)
    theta = torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.4, -0.2]])
    layer = LinearSVDO(theta, torch.tensor([0.1, -0.2]), log_sigma2_init=-2.0, train_clip=False).train()
    x = torch.tensor([[1.0, -2.0, 0.5]]).expand(200_000, 3)
    with torch.no_grad():
        out = layer(x)
    mean = x[0] @ theta.T + torch.tensor([0.1, -0.2])
    var = (x[0] ** 2) @ torch.full_like(theta, math.exp(-2.0)).T  # x^2 sigma^2
    assert torch.allclose(out.mean(0), mean, atol=4 * (var.sqrt() / math.sqrt(200_000)).max())
    assert torch.allclose(out.var(0), var, rtol=0.02)


def test_conv_training_variance_is_a_convolution_of_x_squared():
    torch.manual_seed(2)
    theta = torch.randn(2, 1, 3, 3) * 0.5
    layer = Conv2dSVDO(theta, torch.zeros(2), log_sigma2_init=-3.0, padding=1, train_clip=False).train()
    x = torch.randn(1, 1, 4, 4).expand(50_000, 1, 4, 4)
    with torch.no_grad():
        out = layer(x)
    expected_var = torch.nn.functional.conv2d(x[:1] ** 2, torch.full_like(theta, math.exp(-3.0)), padding=1)[0]
    assert torch.allclose(out.var(0), expected_var, rtol=0.05, atol=1e-6)
    expected_mean = torch.nn.functional.conv2d(x[:1], theta, padding=1)[0]
    assert torch.allclose(out.mean(0), expected_mean, atol=0.01)


def _clip_case(layer_type, **kw):
    """One kept weight (log alpha = -30) and one with log alpha = 5 > 3 (variance e^5 = 148.4),
    input 1 on the second only: the output's mean and variance show what the clipped weight adds."""
    if layer_type == "linear":
        layer = LinearSVDO(torch.tensor([[1.0, 1.0]]), None, log_sigma2_init=-30.0, **kw)
        x = torch.tensor([[0.0, 1.0]]).expand(40_000, 2)
    else:  # a 1x1 convolution over two channels
        layer = Conv2dSVDO(torch.ones(1, 2, 1, 1), None, log_sigma2_init=-30.0, **kw)
        x = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1).expand(40_000, 2, 1, 1)
    with torch.no_grad():
        layer.log_sigma2.view(-1)[1] = 5.0
        torch.manual_seed(3)
        out = layer.train()(x).flatten()
    return float(out.mean()), float(out.var())


@pytest.mark.parametrize("layer_type, clip_variance, mean, var", [
    ("linear", None, 0.0, math.exp(5)),  # official dense layer: the clipped weight leaves the mean only
    ("conv", None, 0.0, 0.0),            # official conv layer: it leaves mean and variance
    ("linear", True, 0.0, 0.0),
    ("conv", False, 0.0, math.exp(5)),
])
def test_train_clip_per_layer_type_as_the_official_code(layer_type, clip_variance, mean, var):
    m, v = _clip_case(layer_type, train_clip=True, clip_variance=clip_variance)
    assert abs(m - mean) < 4 * math.sqrt(var / 40_000) + 1e-3
    assert v == pytest.approx(var, rel=0.03, abs=1e-3)
    m, v = _clip_case(layer_type, train_clip=False, clip_variance=clip_variance)  # no clip: mean 1, variance e^5
    assert abs(m - 1.0) < 4 * math.sqrt(math.exp(5) / 40_000) and v == pytest.approx(math.exp(5), rel=0.03)


def test_train_clip_variance_option_reaches_the_layers():
    net = torch.nn.Sequential(MaskedConv2d(1, 2, 3), torch.nn.Flatten(), MaskedLinear(2, 2))
    official = [l.clip_variance for _, l in svdo_layers(make_method().build(net))]
    assert official == [True, False]  # Conv2d, Linear
    assert [l.clip_variance for _, l in svdo_layers(make_method({"train_clip_variance": True}).build(net))] == [True, True]
    assert [l.clip_variance for _, l in svdo_layers(make_method({"train_clip_variance": False}).build(net))] == [False, False]


def test_eval_forward_is_deterministic_masked_mean_and_export_matches():
    method = make_method()
    model = method.build(tiny_net())
    with torch.no_grad():
        model[1].log_sigma2[0, :2] = 10.0  # two weights with log alpha > 3
    model.eval()
    x = torch.randn(5, 4)
    a, b = model(x), model(x)
    assert torch.equal(a, b)
    natural = method.natural_mask(model)
    assert natural["1.weight"][0, :2].sum() == 0 and natural["1.weight"].sum() == 10
    exported = method.export(model)
    layers = dict(prunable_layers(exported))
    assert list(layers) == ["1", "3"] and all(type(l) is MaskedLinear for l in layers.values())
    assert torch.equal(layers["1"].weight, model[1].theta) and torch.equal(layers["1"].weight_mask, torch.ones(3, 4))
    assert torch.allclose(apply_masks(exported, natural)(x), a)


def test_natural_rule_and_scores_use_unclipped_log_alpha():
    method = make_method({"threshold": 9.0})  # above the clip at 8: only the unclipped value can exceed it
    model = method.build(tiny_net())
    with torch.no_grad():
        model[3].theta.fill_(1.0)
        model[3].log_sigma2.fill_(0.0)
        model[3].log_sigma2[0, 0] = 10.0  # log alpha 10 > 9 (clipped: 8)
        model[3].log_sigma2[0, 1] = 12.0
    mask = method.natural_mask(model)["3.weight"]
    assert mask[0, 0] == 0 and mask[0, 1] == 0 and mask[1].sum() == 3
    scores = method.scores(model)["3.weight"]
    assert scores[0, 1] < scores[0, 0] < scores[1, 0]  # 12 and 10 differ although both clip to 8
    assert scores[0, 0].item() == pytest.approx(-10.0, abs=1e-5)


def test_kl_warmup_window_epochs_and_fraction():
    m = make_method()
    assert [m.beta(e) for e in (0, 4, 5)] == [0.0, 0.0, 0.0]
    assert m.beta(11) == pytest.approx(6 / 15) and m.beta(19) == pytest.approx(14 / 15)
    assert m.beta(20) == 1.0 and m.beta(150) == 1.0
    f = make_method({"kl_warmup_unit": "fraction", "kl_warmup_start": 0.25, "kl_warmup_end": 0.75}, epochs=40)
    assert f.beta(10) == 0.0 and f.beta(20) == pytest.approx(0.5) and f.beta(30) == 1.0
    step = make_method({"kl_warmup_start": 0, "kl_warmup_end": 0})
    assert step.beta(0) == 1.0


def test_bad_options_are_rejected():
    with pytest.raises(PluginError, match="'kl_warmup_unit' of method 'sparse_vd' is 'steps'; valid values: epochs, fraction"):
        make_method({"kl_warmup_unit": "steps"})
    with pytest.raises(PluginError, match="kl_warmup_start <= kl_warmup_end"):
        make_method({"kl_warmup_start": 10, "kl_warmup_end": 5})
    with pytest.raises(PluginError, match="must lie in \\[0, 1\\]"):
        make_method({"kl_warmup_unit": "fraction"})  # 5 and 20 are not fractions


def test_conv_net_builds_and_exports_with_same_names():
    torch.manual_seed(0)
    net = torch.nn.Sequential(MaskedConv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), MaskedLinear(3 * 5 * 5, 2))
    method = make_method()
    model = method.build(net)
    assert [type(l) for _, l in svdo_layers(model)] == [Conv2dSVDO, LinearSVDO]
    x = torch.randn(2, 1, 5, 5)
    assert model.train()(x).shape == (2, 2)
    exported = method.export(model.eval())
    assert [n for n, _ in prunable_layers(exported)] == ["0", "3"]
    assert isinstance(exported[0], MaskedConv2d) and exported[0].padding == (1, 1)
    assert torch.allclose(apply_masks(exported, method.natural_mask(model))(x), model(x), atol=1e-6)


def test_lr_schedules_are_the_official_optpolicy_functions_at_200_epochs():
    # nets/optpolicy.py: lr_linear(e, k) = k * min(2 - e/100, 1), lr_linear_to0(e, lr) = lr * max(0, (200 - e)/200)
    half = make_method({"lr_schedule": "linear_from_half"}, epochs=200)
    to0 = make_method({"lr_schedule": "linear_to0"}, epochs=200)
    const = make_method(epochs=200)
    for e in (0, 1, 50, 99, 100, 101, 150, 199):
        assert half.lr_factor(e) == pytest.approx(min(2 - e / 100, 1))
        assert to0.lr_factor(e) == pytest.approx((200 - e) / 200)
        assert const.lr_factor(e) == 1.0
    assert half.lr_factor(150) == pytest.approx(0.5) and to0.lr_factor(150) == pytest.approx(0.25)
    # the same fractions of a shorter run: 10 epochs, epoch 5 is the half-way point
    short = make_method({"lr_schedule": "linear_from_half"}, epochs=10)
    assert [short.lr_factor(e) for e in (0, 5, 6, 9)] == pytest.approx([1.0, 1.0, 0.8, 0.2])


def test_bad_lr_schedule_is_rejected():
    with pytest.raises(PluginError, match="'lr_schedule' of method 'sparse_vd' is 'cosine'; valid values: "
                                          "constant, linear_from_half, linear_to0"):
        make_method({"lr_schedule": "cosine"})
