"""L0 regularisation with hard-concrete gates (Louizos et al. 2018): P(z != 0) against sampling,
the gate range, the penalty by hand, clamping, initial drop rates, natural masks and export."""

import math

import pytest
import torch

from slabbench.api import PluginError, TrainContext, make_params
from slabbench.layers import MaskedConv2d, MaskedLinear, prunable_layers
from slabbench.layers.l0 import (BETA, GAMMA, LOG_ALPHA_MAX, LOG_ALPHA_MIN, ZETA, L0Conv2d, L0Linear, eval_gate,
                                 hard_concrete, l0_layers, prob_nonzero)
from slabbench.prune import apply_masks
from slabbench.registry import method_class


def make_method(options=None, lr=1e-3):
    cls = method_class("l0")
    ctx = TrainContext(task="classification", n_train=100, epochs=1, steps_per_epoch=1, lr=lr,
                       device=torch.device("cpu"), spec=None)
    return cls(make_params(cls.Params, options or {}, "l0"), ctx)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), MaskedLinear(6, 4), torch.nn.ReLU(), MaskedLinear(4, 3))


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5, 4.0])
def test_prob_nonzero_matches_sampling_frequency(log_alpha):
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(200_000, generator=gen, dtype=torch.float64) * (1 - 2e-6) + 1e-6
    z = hard_concrete(torch.tensor(log_alpha, dtype=torch.float64), u)
    closed = prob_nonzero(torch.tensor(log_alpha, dtype=torch.float64)).item()
    # by hand: sigmoid(log alpha - beta log(-gamma / zeta)), beta = 2/3, -gamma/zeta = 1/11
    assert closed == pytest.approx(1 / (1 + math.exp(-(log_alpha + 2 / 3 * math.log(11)))), rel=1e-12)
    assert (z != 0).double().mean().item() == pytest.approx(closed, abs=0.005)  # ~5 binomial sd


def test_gates_lie_in_unit_interval_and_hit_exactly_0_and_1():
    torch.manual_seed(0)
    layer = L0Linear(torch.ones(3, 1000), gates="input", droprate=0.5).train()  # log alpha ~ 0
    z = torch.cat([layer.sample_gates() for _ in range(20)])
    assert z.min() == 0.0 and z.max() == 1.0
    assert ((z == 0).float().mean() - 0.168).abs() < 0.02  # P(z = 0) = sigmoid(beta log(1/11)) = 0.168
    assert ((z == 1).float().mean() - 0.168).abs() < 0.02  # symmetric at log alpha = 0
    assert ((z > 0) & (z < 1)).any()
    test = eval_gate(torch.linspace(-6, 6, 101))
    assert test.min() == 0.0 and test.max() == 1.0 and ((test > 0) & (test < 1)).any()
    # by hand: z_hat = 0 iff sigmoid(log alpha) <= 1/12, 1 iff sigmoid(log alpha) >= 11/12
    assert eval_gate(torch.tensor(-math.log(11) - 0.01)) == 0 and eval_gate(torch.tensor(-math.log(11) + 0.01)) > 0
    assert eval_gate(torch.tensor(math.log(11) + 0.01)) == 1 and eval_gate(torch.tensor(math.log(11) - 0.01)) < 1
    assert eval_gate(torch.tensor(0.0)).item() == pytest.approx(0.5 * (ZETA - GAMMA) + GAMMA)


def test_training_forward_draws_one_gate_vector_per_minibatch():
    torch.manual_seed(0)
    layer = L0Linear(torch.eye(5), gates="input").train()
    out = layer(torch.ones(64, 5))
    assert torch.equal(out, out[:1].expand_as(out))  # every row shares the gate sample
    layer.eval()
    assert torch.equal(layer(torch.ones(2, 5))[0], eval_gate(layer.log_alpha))


def test_penalty_by_hand_input_and_weight_gates():
    for gates, group in (("input", 4), ("weight", 1)):  # fc1: 6 inputs x 4 outputs
        method = make_method({"gates": gates, "l0_lambda": 0.3, "weight_decay": 2.0})
        model = method.build(mlp())
        with torch.no_grad():
            for _, layer in l0_layers(model):
                layer.log_alpha.fill_(0.5)
        p = 1 / (1 + math.exp(-(0.5 + BETA * math.log(11))))
        sq = sum((l.theta ** 2).sum().item() for _, l in l0_layers(model))
        b2 = sum((l.bias ** 2).sum().item() for _, l in l0_layers(model))
        expected = 0.3 * p * (24 + 12) + 0.5 * 2.0 * (p * sq + b2)  # every weight counted once in E[L0]
        assert method.penalty(model).item() == pytest.approx(expected, rel=1e-5)
        assert dict(l0_layers(model))["1"].group_size == group


def test_conv_channel_gate_counts_filter_size_and_gates_bias():
    torch.manual_seed(0)
    layer = L0Conv2d(torch.randn(3, 2, 3, 3), torch.ones(3), gates="input")
    assert layer.log_alpha.shape == (3,) and layer.group_size == 18
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([-4.0, 0.0, 4.0]))  # z_hat = 0, 0.5, 1
    plain = layer.to_masked()
    assert torch.allclose(plain.bias, torch.tensor([0.0, 0.5, 1.0]))  # bias * z_hat
    assert plain.weight[0].abs().sum() == 0 and torch.equal(plain.weight[2], layer.theta[2])
    x = torch.randn(2, 2, 5, 5)
    assert torch.allclose(plain(x), layer.eval()(x), atol=1e-6)


def test_log_alpha_clamped_after_a_step():
    method = make_method()
    model = method.build(mlp())
    with torch.no_grad():
        model[1].log_alpha.copy_(torch.tensor([10.0, -10.0, 0.3, 4.0, -5.0, 5.0]))
    method.after_step(model, step=0, epoch=0)
    assert torch.allclose(model[1].log_alpha, torch.tensor([LOG_ALPHA_MAX, LOG_ALPHA_MIN, 0.3, 4.0, LOG_ALPHA_MIN, LOG_ALPHA_MAX]))
    assert LOG_ALPHA_MAX == pytest.approx(math.log(100)) and LOG_ALPHA_MIN == pytest.approx(math.log(0.01))


def test_init_from_drop_rates_input_layer_of_an_mlp_only():
    method = make_method()
    model = method.build(mlp())
    assert model[1].log_alpha.mean().item() == pytest.approx(math.log(0.8 / 0.2), abs=0.02)  # input layer: d = 0.2
    assert model[3].log_alpha.mean().item() == pytest.approx(0.0, abs=0.02)  # d = 0.5
    assert model[1].log_alpha.std().item() < 0.05  # N(., 0.01^2) jitter as in the official code
    torch.manual_seed(0)
    conv_first = torch.nn.Sequential(MaskedConv2d(1, 4, 3), torch.nn.Flatten(), MaskedLinear(4 * 9, 2))
    model = make_method({"droprate_init": 0.3}).build(conv_first)
    assert model[0].log_alpha.mean().item() == pytest.approx(math.log(0.7 / 0.3), abs=0.02)  # not an MLP input layer
    assert model[2].log_alpha.mean().item() == pytest.approx(math.log(0.7 / 0.3), abs=0.02)


def test_tied_input_gates_keep_the_largest_weights_by_hand():
    # every gate at the upper clamp: P(z != 0) ties everywhere, |theta| must decide (the
    # shared pruning path once ranked float32 scores and kept the first weights by index)
    from slabbench.prune import topk_masks
    method = make_method({"gates": "input"})
    model = method.build(torch.nn.Sequential(MaskedLinear(3, 2), torch.nn.ReLU(), MaskedLinear(2, 1)))
    with torch.no_grad():
        model[0].log_alpha.fill_(LOG_ALPHA_MAX)
        model[2].log_alpha.fill_(LOG_ALPHA_MAX)
        model[0].theta.copy_(torch.tensor([[0.1, -0.9, 0.2], [0.5, 0.3, -0.8]]))
        model[2].theta.copy_(torch.tensor([[0.4, -0.7]]))
    masks = topk_masks(method.scores(model), 0.5)  # 8 weights, keep 4: |theta| 0.9, 0.8, 0.7, 0.5
    assert masks["0.weight"].tolist() == [[0, 1, 0], [1, 0, 1]]
    assert masks["2.weight"].tolist() == [[0, 1]]


def test_natural_mask_scores_and_export_bake_in_the_test_gate():
    for gates in ("input", "weight"):
        method = make_method({"gates": gates})
        model = method.build(mlp())
        with torch.no_grad():
            la = model[1].log_alpha
            la.fill_(3.0)
            la[..., 0] = -3.0  # input 0 off (z_hat = 0)
            la[..., 1] = 0.0  # input 1 half (z_hat = 0.5)
        natural = method.natural_mask(model)
        assert natural["1.weight"].shape == (4, 6)
        assert natural["1.weight"][:, 0].sum() == 0 and natural["1.weight"][:, 1:].min() == 1
        assert natural["3.weight"].min() == 1
        scores = method.scores(model)
        assert scores["1.weight"][0].shape == scores["1.weight"][1].shape == (4, 6)
        assert torch.allclose(scores["1.weight"][0][:, 1].float(), prob_nonzero(torch.tensor(0.0)).expand(4))
        exported = method.export(model)
        layers = dict(prunable_layers(exported))
        assert all(type(l) is MaskedLinear for l in layers.values()) and list(layers) == ["1", "3"]
        gate = eval_gate(model[1].log_alpha)
        assert torch.allclose(layers["1"].weight, model[1].theta * (gate if gates == "weight" else gate[None, :]))
        assert layers["1"].weight[:, 0].abs().sum() == 0
        assert torch.allclose(layers["1"].weight[:, 1], 0.5 * model[1].theta[:, 1])
        assert torch.equal(layers["1"].weight_mask, torch.ones(4, 6))
        x = torch.randn(7, 6)
        assert torch.allclose(apply_masks(exported, natural)(x), model.eval()(x), atol=1e-6)


def test_gate_lr_factor_scales_only_log_alpha():
    method = make_method({"gate_lr_factor": 10.0}, lr=1e-3)
    model = method.build(mlp())
    opt = method.optimizer(model, 1e-3)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model[1].log_alpha)] == pytest.approx(1e-2) and lrs[id(model[1].theta)] == pytest.approx(1e-3)
    assert len(lrs) == len(list(model.parameters()))


def test_official_gated_l2_on_a_two_weight_layer_by_hand():
    """The official L0Dense._reg_w for one output, two input gates, theta = (1, 2), b = 3:
    sum_j (1 - cdf_qz(0))_j (0.5 wd theta_j^2 + lambda) + 0.5 wd b^2, with
    cdf_qz(0) = sigmoid(beta * logit(0.1 / 1.2) - log alpha).  At log alpha = 0: 1 - cdf = 0.83182."""
    method = make_method({"l0_lambda": 0.1, "weight_decay": 0.5})
    layer = L0Linear(torch.tensor([[1.0, 2.0]]), torch.tensor([3.0]), gates="input")
    with torch.no_grad():
        layer.log_alpha.zero_()
    keep = 1 - 1 / (1 + math.exp(-(2 / 3) * math.log((0.1 / 1.2) / (1 - 0.1 / 1.2))))
    assert keep == pytest.approx(0.83182, abs=1e-5)
    expected = keep * (0.5 * 0.5 * 1 + 0.1) + keep * (0.5 * 0.5 * 4 + 0.1) + 0.5 * 0.5 * 9
    assert method.penalty(torch.nn.Sequential(layer)).item() == pytest.approx(expected, rel=1e-6)  # 1.45 * 0.83182 + 2.25 = 3.4561


def test_ema_after_two_steps_is_the_weighted_mean_and_is_what_is_exported():
    """ema = 0.5, a parameter at 1 after step 1 and 4 after step 2: a_2 = 0.5 * 0.5 * 1 + 0.5 * 4
    = 2.25, debiased by 1 - 0.5^2: 3.0 = (0.5 * 1 + 4) / 1.5.  It replaces the parameters after
    the last epoch, so the exported weight is theta_avg * z_hat(log alpha_avg)."""
    method = make_method({"ema": 0.5})
    model = method.build(mlp())
    for value in (1.0, 4.0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        method.after_step(model, step=0, epoch=0)
    method.after_epoch(model, epoch=0)  # epochs = 1: the last epoch
    for p in model.parameters():
        assert torch.allclose(p, torch.full_like(p, 3.0))
    exported = method.export(model.eval())
    z_hat = eval_gate(torch.tensor(3.0)).item()  # sigmoid(3) * 1.2 - 0.1 = 1.0424 -> clamped to 1
    assert z_hat == 1.0 and torch.allclose(exported[1].weight, torch.full((4, 6), 3.0))
    # the average sees the clamped gates: a log alpha of 10 enters as log 100
    method = make_method({"ema": 0.5})
    model = method.build(mlp())
    with torch.no_grad():
        model[1].log_alpha.fill_(10.0)
    method.after_step(model, step=0, epoch=0)
    method.after_epoch(model, epoch=0)
    assert torch.allclose(model[1].log_alpha, torch.full((6,), LOG_ALPHA_MAX))


def test_ema_off_leaves_the_last_iterate():
    method = make_method()
    model = method.build(mlp())
    before = [p.detach().clone() for p in model.parameters()]
    method.after_step(model, step=0, epoch=0)
    method.after_epoch(model, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_options_are_rejected():
    with pytest.raises(PluginError, match="'gates' of method 'l0' is 'neuron'; valid values: input, weight"):
        make_method({"gates": "neuron"})
    with pytest.raises(PluginError, match="'droprate_init_input' of method 'l0' must be in \\(0, 1\\), got 1.0"):
        make_method({"droprate_init_input": 1.0})
    with pytest.raises(PluginError, match="'ema' of method 'l0' must be in \\[0, 1\\) .*got 1.0"):
        make_method({"ema": 1.0})
