"""Magnitude pruning: Zhu & Gupta's cubic schedule by hand, gradual and layer-wise runs."""

import pytest
import torch

from conftest import tiny_spec
from slabbench.registry import method_class
from slabbench.train import run

cubic_sparsity = __import__("slabbench.methods.magnitude", fromlist=["cubic_sparsity"]).cubic_sparsity


def test_cubic_schedule_by_hand():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with t0 = 10, n dt = 20, s_i = 0, s_f = 0.8
    assert cubic_sparsity(5, 10, 20, 0.0, 0.8) == 0.0  # before t0: s_i
    assert cubic_sparsity(10, 10, 20, 0.0, 0.8) == 0.0
    assert cubic_sparsity(20, 10, 20, 0.0, 0.8) == pytest.approx(0.8 - 0.8 * 0.125)  # half-way: 0.7
    assert cubic_sparsity(30, 10, 20, 0.0, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(99, 10, 20, 0.0, 0.8) == pytest.approx(0.8)  # held after the end


def test_gradual_prunes_during_training_to_the_target():
    spec = tiny_spec(method="magnitude", method_params={"schedule": "gradual", "begin_frac": 0.0, "end_frac": 0.5},
                     epochs=4, finetune_epochs=0)
    records, _ = run(spec)
    assert [r["target_sparsity"] for r in records] == [0.5, 0.9]  # one training run per target
    for r in records:
        assert abs(r["sparsity"] - r["target_sparsity"]) <= 1 / r["n_weights"] + 1e-9


def test_layerwise_scope_prunes_each_layer_alike():
    from slabbench.api import TrainContext, make_params
    from slabbench.layers import MaskedLinear
    from slabbench.prune import topk_masks

    cls = method_class("magnitude")
    params = make_params(cls.Params, {"scope": "layerwise"}, "magnitude")
    method = cls(params, TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None))
    net = torch.nn.Sequential(MaskedLinear(4, 10), MaskedLinear(10, 2))
    with torch.no_grad():
        net[0].weight.mul_(100)  # a global threshold would prune the second layer entirely
    masks = topk_masks(method.scores(net), 0.5, method.prune_scope)
    assert masks["0.weight"].mean() == 0.5 and masks["1.weight"].mean() == 0.5
    glob = topk_masks(method.scores(net), 0.5, "global")
    assert glob["1.weight"].sum() == 0


def test_bad_schedule_is_rejected():
    from slabbench.api import PluginError, TrainContext, make_params

    cls = method_class("magnitude")
    with pytest.raises(PluginError, match="'schedule' of method 'magnitude' is 'cyclic'; valid values: oneshot, gradual"):
        cls(make_params(cls.Params, {"schedule": "cyclic"}, "magnitude"),
            TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None))
