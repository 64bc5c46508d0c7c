"""Many runs, one process: stacked training equals training alone, run by run; divergence
stops a job loudly; stacks are split to fit memory; a method that stacks nothing still runs."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_spec
from slabbench.api import DatasetSpec, Method, TrainContext, make_params
from slabbench.layers import MaskedLinear
from slabbench.layers.stacked import run_generators
from slabbench.models import build_model
from slabbench.registry import method_class
from slabbench.stack import run_views, stack_modules, unstack, unstackable_modules
from slabbench.train import TrainingDiverged, plan_chunks, run, run_stack, stack_refusal

# every built-in method and option that changes how it trains
CASES = [
    ("dense", {}), ("magnitude", {}), ("magnitude", {"schedule": "gradual"}), ("magnitude", {"scope": "layerwise"}),
    ("spike_slab", {}), ("spike_slab", {"granularity": "node"}), ("spike_slab", {"granularity": "input"}),
    ("spike_slab", {"phi_update": "gumbel"}), ("spike_slab", {"phi_update": "lrt"}), ("spike_slab", {"lrt_forward": True}),
    ("spike_slab", {"rho_lr_factor": 3.0, "phi_every": 1}), ("spike_slab", {"bias_prior": "spike_slab"}),
    ("spike_slab", {"bias_prior": "spike_slab", "granularity": "node", "phi_update": "gumbel"}),
    ("spike_slab", {"bias_prior": "spike_slab", "phi_update": "lrt"}),
    ("sparse_vd", {}), ("sparse_vd", {"train_clip": False}), ("l0", {}), ("l0", {"gates": "weight"}),
]
SKIP = {"train_seconds", "provenance", "stack_runs"}


def assert_records_close(a: list[dict], b: list[dict], rel: float = 1e-4) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for key in set(ra) - SKIP:
            va, vb = ra[key], rb[key]
            if isinstance(va, float) and isinstance(vb, float):
                assert (math.isnan(va) and math.isnan(vb)) or va == pytest.approx(vb, rel=rel, abs=1e-7), key
            else:
                assert va == vb, key


@pytest.mark.parametrize("dataset", ["simulation", "digits"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for m, o in CASES])
def test_seed_in_a_stack_equals_seed_alone(name, options, dataset):
    specs = [tiny_spec(name, dataset=dataset, method_params=options, seed=s) for s in (0, 1, 2)]
    stacked = run_stack(specs)
    alone = run(specs[1])
    assert stacked[1][0][0]["stack_runs"] >= 3 and alone[0][0]["stack_runs"] == len(alone[0][0]["spec"]["sparsities"]) ** (options.get("schedule") == "gradual")
    assert_records_close(stacked[1][0], alone[0])
    # the three runs really differ (no run copied another's numbers)
    rmse = "test_rmse" if dataset == "simulation" else "test_nll"
    assert len({round(r[0][-1][rmse], 9) for r in stacked}) == 3


@pytest.mark.parametrize("name,options", [c for c in CASES if c[0] != "magnitude"])
def test_built_in_methods_stack_on_an_mlp(name, options):
    cls = method_class(name)
    spec = DatasetSpec("toy", "regression", (5,), 1, {"train": 10})
    ctx = TrainContext("regression", 10, 1, 1, 1e-2, torch.device("cpu"), spec)
    method = cls(make_params(cls.Params, options, name), ctx)
    model = method.build(build_model("mlp", spec, {"hidden": [4]}))
    assert stack_refusal(method, model) is None


def test_stacked_forward_and_penalty_equal_the_runs_alone():
    cls = method_class("spike_slab")
    spec = DatasetSpec("toy", "regression", (5,), 1, {"train": 10})
    ctx = TrainContext("regression", 10, 1, 1, 1e-2, torch.device("cpu"), spec)
    models, method = [], None
    for seed in range(3):
        torch.manual_seed(seed)
        method = cls(make_params(cls.Params, {"granularity": "node"}, "spike_slab"), ctx)
        models.append(method.build(build_model("mlp", spec, {"hidden": [4, 3]})))
    stacked = stack_modules(models)
    x = torch.randn(3, 7, 5)
    for m in [stacked, *models]:
        m.eval()
    assert torch.allclose(stacked(x), torch.stack([m(x[i]) for i, m in enumerate(models)]), atol=1e-6)
    kl = method.penalty(stacked)
    assert kl.item() == pytest.approx(sum(method.penalty(m).item() for m in models), rel=1e-5)
    # training noise: run s draws from generator s only, whatever shares its stack
    stacked.train()
    with run_generators([torch.Generator().manual_seed(10 + i) for i in range(3)]):
        out = stacked(x)
    one = stack_modules([models[2]]).train()
    with run_generators([torch.Generator().manual_seed(12)]):
        assert torch.equal(out[2], one(x[2:3])[0])
    # unstack gives run s back; views write through to the stack
    back = unstack(stacked, 1)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), models[1].state_dict().values()))
    views = run_views(stacked)
    with torch.no_grad():
        views[2][1].theta.fill_(-3.0)
    assert (stacked[1].theta[2] == -3.0).all() and (stacked[1].theta[:2] != -3.0).all()


def test_conv_nets_and_foreign_layers_fall_back_to_one_run_after_another(caplog):
    assert unstackable_modules(build_model("lenet5", DatasetSpec("img", "classification", (1, 28, 28), 10, {}))) == ["MaskedConv2d", "MaxPool2d"]

    class Mine(MaskedLinear):  # a plugin's own layer: not declared stackable
        pass

    assert unstackable_modules(nn.Sequential(Mine(3, 2))) == ["Mine"]


def test_divergence_stops_the_job_naming_the_run():
    spec = tiny_spec("dense", lr=1e8, epochs=3, seed=4)
    with pytest.raises(TrainingDiverged, match=r"tiny/dense seed=4: training diverged at epoch \d+ of 3.*lr = 1e\+08"):
        run_stack([spec, dict(spec, seed=5)])


def test_on_divergence_record_keeps_the_other_runs():
    bad = tiny_spec("dense", lr=1e8, on_divergence="record", epochs=3)
    res = run_stack([dict(bad, seed=0)])
    assert res[0][0][0]["diverged"].startswith("epoch ")


def test_plan_chunks_splits_what_does_not_fit():
    assert [list(c) for c in plan_chunks(5, bytes_per_run=100, free_bytes=10_000)] == [[0, 1, 2, 3, 4]]
    assert [list(c) for c in plan_chunks(5, bytes_per_run=100, free_bytes=400)] == [[0, 1], [2, 3], [4]]
    assert [list(c) for c in plan_chunks(2, bytes_per_run=10**12, free_bytes=1)] == [[0], [1]]


class _Template(Method):
    """A method written from the README's template: knows nothing of stacking."""

    def optimizer(self, model, lr):
        from slabbench.api import adam
        return adam(model.parameters(), lr, 1e-4)

    def scores(self, model):
        from slabbench.prune import magnitude_scores
        return magnitude_scores(model)


class _OwnPenalty(_Template):
    def penalty(self, model):  # couples nothing, but is not declared stackable
        return sum((p ** 2).sum() for p in model.parameters())


def test_template_methods_stack_and_unknown_penalties_run_one_after_another(monkeypatch, caplog):
    import logging

    from slabbench import train as T
    spec = DatasetSpec("toy", "regression", (5,), 1, {"train": 10})
    ctx = TrainContext("regression", 10, 1, 1, 1e-2, torch.device("cpu"), spec)
    model = build_model("mlp", spec, {"hidden": [4]})
    assert stack_refusal(_Template(None, ctx), model) is None
    assert "penalty" in stack_refusal(_OwnPenalty(None, ctx), model)
    for cls in (_Template, _OwnPenalty):
        monkeypatch.setattr(T, "method_class", lambda name, cls=cls: cls)
        specs = [tiny_spec("template", seed=s) for s in (0, 1)]
        with caplog.at_level(logging.INFO, logger="slabbench.train"):
            res = run_stack(specs)
        alone = run(specs[1])
        assert_records_close(res[1][0], alone[0])
    assert "train one after another (not stacked: it overrides penalty()" in caplog.text
    assert "train stacked" in caplog.text
