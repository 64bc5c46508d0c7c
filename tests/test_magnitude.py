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
    with pytest.raises(PluginError, match="'schedule' of method 'magnitude' is 'cyclic'; valid values: oneshot, gradual, iterative"):
        cls(make_params(cls.Params, {"schedule": "cyclic"}, "magnitude"),
            TrainContext("regression", 10, 1, 1, 0.1, torch.device("cpu"), None))


iterative = __import__("slabbench.methods.magnitude", fromlist=["x"])


def make(options, epochs=4, target=0.5):
    from slabbench.api import TrainContext, make_params

    cls = method_class("magnitude")
    return cls(make_params(cls.Params, options, "magnitude"),
               TrainContext("regression", 10, epochs, 1, 0.1, torch.device("cpu"), None, target=target))


def test_iterative_rounds_epochs_and_rates_by_hand():
    assert iterative.iterative_prune_epochs(10, 3, 0.2, 0.8) == [2, 5, 8]
    assert iterative.iterative_prune_epochs(10, 1, 0.5, 0.9) == [5]
    assert iterative.iterative_prune_epochs(2, 3, 0.0, 1.0) == [1, 1, 2]  # clipped to [1, E]; rounds may share an epoch
    # each round prunes the same fraction of the survivors: kept 1/2, 1/4, 1/8 of the weights
    assert [iterative.iterative_sparsity(k, 3, 0.875) for k in range(3)] == pytest.approx([0.5, 0.75, 0.875])
    m = make({"schedule": "iterative", "begin_frac": 0.5, "end_frac": 0.75, "rounds": 2, "retrain_lr_factor": 0.1})
    assert [m.lr_factor(e) for e in range(4)] == [1.0, 1.0, 0.1, 0.1]  # retraining at lr/10 from the first pruning
    assert make({"schedule": "gradual"}).lr_factor(3) == 1.0 and make({}).lr_factor(3) == 1.0


def test_layer_keep_counts_by_hand():
    counts = iterative.layer_keep_counts
    # Han et al.'s LeNet-300-100 rates at the overall sparsity they imply: exactly 8%, 9%, 26% kept
    sizes = {"fc1": 235200, "fc2": 30000, "fc3": 1000}
    han = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}
    assert counts(sizes, han, 18816 + 2700 + 260) == {"fc1": 18816, "fc2": 2700, "fc3": 260}
    # scaled: c = 12 / (10 + 5) = 0.8 -> 8 and 4; at 18 the first layer is full (10) and the rest goes to b (8)
    assert counts({"a": 10, "b": 10}, {"a": 0.0, "b": 0.5}, 12) == {"a": 8, "b": 4}
    assert counts({"a": 10, "b": 10}, {"a": 0.0, "b": 0.5}, 18) == {"a": 10, "b": 8}
    assert counts({"a": 3, "b": 3}, {"a": 0.0, "b": 0.0}, 3) == {"a": 2, "b": 1}  # 1.5 each: the tie to the earlier layer
    assert counts({"a": 3, "b": 3}, {"a": 0.0, "b": 0.0}, 0) == {"a": 0, "b": 0}


def test_iterative_layer_profile_prunes_by_hand_and_the_core_keeps_that_mask():
    """Layer "0": weights 1, 2, 3, 4 (sparsity 0.5 in the profile); layer "1": 5, 6 (0.0).
    Target 0.5 in 2 rounds.  Round 0 keeps n_keep(6, 1 - 0.5^0.5) = 4: layer "1" full (2), layer
    "0" its top 2 (3, 4).  Round 1 keeps 3: c = 3/4, 1.5 each, the tie to layer "0": 3, 4 and 6
    survive, where a global top-3 by |w| would keep 4, 5, 6."""
    from slabbench.layers import MaskedLinear
    from slabbench.prune import topk_masks

    m = make({"schedule": "iterative", "rounds": 2, "begin_frac": 0.25, "end_frac": 0.5,
              "layer_sparsity": {"0": 0.5, "1": 0.0}})
    net = m.build(torch.nn.Sequential(MaskedLinear(4, 1, bias=False), MaskedLinear(1, 2, bias=False)))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        net[1].weight.copy_(torch.tensor([[5.0], [6.0]]))
    m.after_epoch(net, 0)  # after epoch 1 of 4: round 0
    assert net[0].weight_mask.tolist() == [[0, 0, 1, 1]] and net[1].weight_mask.tolist() == [[1], [1]]
    m.after_epoch(net, 1)  # after epoch 2: round 1
    assert net[0].weight_mask.tolist() == [[0, 0, 1, 1]] and net[1].weight_mask.tolist() == [[0], [1]]
    masks = topk_masks(m.scores(net), 0.5, m.prune_scope)
    assert masks["0.weight"].tolist() == [[0, 0, 1, 1]] and masks["1.weight"].tolist() == [[0], [1]]


def test_iterative_runs_reach_every_target():
    spec = tiny_spec(method="magnitude", epochs=4, finetune_epochs=1,
                     method_params={"schedule": "iterative", "rounds": 2, "begin_frac": 0.25, "end_frac": 0.5,
                                    "layer_sparsity": {"fc1": 0.9, "fc2": 0.5, "fc3": 0.0}})
    records, _ = run(spec)
    assert [r["target_sparsity"] for r in records] == [0.5, 0.9]
    for r in records:
        assert abs(r["sparsity"] - r["target_sparsity"]) <= 1 / r["n_weights"] + 1e-9


def test_bad_iterative_options_are_rejected():
    from slabbench.api import PluginError

    with pytest.raises(PluginError, match="'rounds' of method 'magnitude' must be an integer >= 1, got 0"):
        make({"schedule": "iterative", "rounds": 0})
    with pytest.raises(PluginError, match="'retrain_lr_factor' of method 'magnitude' must be > 0, got 0"):
        make({"schedule": "iterative", "retrain_lr_factor": 0})
    with pytest.raises(PluginError, match="layer 'fc1' has sparsity 1.0; each must be a number in \\[0, 1\\)"):
        make({"schedule": "iterative", "layer_sparsity": {"fc1": 1.0}})
    with pytest.raises(PluginError, match="must be a mapping layer name -> sparsity .* got \\[0.9, 0.5\\]"):
        make({"schedule": "iterative", "layer_sparsity": [0.9, 0.5]})
    with pytest.raises(PluginError, match="needs a schedule that prunes during training .* got schedule 'oneshot'"):
        make({"layer_sparsity": {"fc1": 0.9}})
    with pytest.raises(PluginError, match="leave scope at 'global', got 'layerwise'"):
        make({"schedule": "iterative", "scope": "layerwise", "layer_sparsity": {"fc1": 0.9}})
    from slabbench.layers import MaskedLinear
    m = make({"schedule": "iterative", "layer_sparsity": {"fc1": 0.9, "conv9": 0.5}})
    net = torch.nn.Sequential()
    net.add_module("fc1", MaskedLinear(2, 2))
    net.add_module("fc2", MaskedLinear(2, 1))
    with pytest.raises(PluginError, match="unknown \\['conv9'\\], missing \\['fc2'\\]; the layers are fc1, fc2"):
        m.build(net)


def test_gradual_masks_follow_the_cubic_schedule_step_by_step(monkeypatch):
    """The mask density after every training step of a real run, against Zhu & Gupta's schedule by
    hand: 64 points at batch 32 = 2 steps per epoch, 4 epochs = 8 steps; begin 0, end 0.5 = steps
    0..4, pruning every step: s_t = s_f (1 - (1 - t/4)^3) = 0, 0.578125, 0.875, 0.984375, 1 x s_f,
    held from step 4 on.  A run that never pruned on the way (only the core's top-k at the end)
    keeps density 1 until then."""
    from slabbench.layers import prunable_layers
    from slabbench.prune import n_keep

    cls = method_class("magnitude")
    seen: dict[float, list[tuple[int, float]]] = {}
    original = cls.after_step

    def spy(self, model, step, epoch):
        original(self, model, step, epoch)
        kept = sum(int(layer.weight_mask.sum()) for _, layer in prunable_layers(model))
        seen.setdefault(self.ctx.target, []).append((step, kept))

    monkeypatch.setattr(cls, "after_step", spy)
    spec = tiny_spec(method="magnitude", method_params={"schedule": "gradual", "begin_frac": 0.0, "end_frac": 0.5,
                                                        "prune_every": 1}, epochs=4, finetune_epochs=0)
    records, _ = run(spec)
    n = records[0]["n_weights"]  # 8*6 + 6*4 + 4*1 = 76
    assert n == 76
    assert sorted(seen) == [0.5, 0.9]
    for s_f, trace in seen.items():
        fraction = {0: 0.0, 1: 0.578125, 2: 0.875, 3: 0.984375}
        expected = [(t, n if fraction.get(t, 1.0) == 0.0 else n_keep(n, s_f * fraction.get(t, 1.0))) for t in range(8)]
        assert trace == expected, s_f
