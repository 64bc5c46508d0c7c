"""A method written from the template of docs/extending.md that reads gradients works stacked exactly as
alone, and what a method hands the core (scores, natural masks) is checked where it enters."""

import importlib.util
import logging
import re

import pytest
import torch

from conftest import ROOT, tiny_spec
from slabbench import train as T
from slabbench.api import DatasetSpec, Method, MethodOutputError
from slabbench.layers import prunable_layers
from slabbench.models import build_model
from slabbench.outputs import check_mask, check_scores
from slabbench.stack import run_views, stack_modules
from slabbench.train import run, run_stack
from test_contract import check_hooks_and_export
from test_stacking import assert_records_close


def _readme_method(tmp_path, marker: str):
    """The ``Method`` of the code block of docs/extending.md that starts with ``marker``, loaded as a file."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), re.S)
    code = next(b for b in blocks if b.startswith(marker))
    path = tmp_path / "readme_method.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("readme_method", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Method


@pytest.fixture
def taylor(tmp_path, monkeypatch):
    """The first-order Taylor method of docs/extending.md (|w * dL/dw| summed over the last epoch) as the
    method of every run spec."""
    cls = _readme_method(tmp_path, "# methods/taylor.py")
    monkeypatch.setattr(T, "method_class", lambda name: cls)
    return cls


@pytest.mark.parametrize("dataset", ["simulation", "digits"])
def test_a_gradient_reading_method_stacked_equals_alone(taylor, dataset, caplog):
    specs = [tiny_spec("taylor", dataset=dataset, seed=s) for s in (0, 1, 2)]
    with caplog.at_level(logging.INFO, logger="slabbench.train"):
        stacked = run_stack(specs)
    assert "train stacked" in caplog.text
    alone = run(specs[1])
    assert stacked[1][0][0]["stack_runs"] == 3 and alone[0][0]["stack_runs"] == 1
    assert_records_close(stacked[1][0], alone[0])
    s_scores, a_scores = stacked[1][1]["scores"], alone[1]["scores"]
    assert set(s_scores) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for key in s_scores:
        assert (a_scores[key] > 0).any()  # gradients were read: the sums are not all zero
        torch.testing.assert_close(s_scores[key], a_scores[key], rtol=1e-4, atol=1e-7)
    assert not torch.equal(stacked[0][1]["scores"]["fc1.weight"], s_scores["fc1.weight"])  # runs differ


def test_the_gradient_reading_method_of_the_docs_passes_the_contract_checks(taylor):
    """The recipe of docs/extending.md runs tests/test_contract.py on a new method: the Taylor
    example, saved as a file, passes its hooks-and-export check (its scores exist once it has
    trained: the check trains it first, as the core does)."""
    check_hooks_and_export(taylor, {}, "taylor")


def test_views_carry_each_runs_slice_of_the_stacked_gradient():
    spec = DatasetSpec("toy", "regression", (5,), 1, {"train": 10})
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model("mlp", spec, {"hidden": [4]}))
    stacked = stack_modules(models)
    views = run_views(stacked)
    views.share_grads()
    assert all(p.grad is None for v in views for p in v.parameters())  # nothing computed yet: as alone
    x = torch.randn(3, 7, 5)
    stacked(x).pow(2).sum().backward()
    views.share_grads()
    for s, (model, view) in enumerate(zip(models, views)):
        model(x[s]).pow(2).sum().backward()
        for (name, p), q in zip(model.named_parameters(), view.parameters()):
            torch.testing.assert_close(q.grad, p.grad, msg=name)
    # zeroed in place and accumulated again (the core's way with per-run hooks): views follow
    grads = [p.grad for p in stacked.parameters()]
    for p in stacked.parameters():
        p.grad.zero_()
    (2 * stacked(x).pow(2).sum()).backward()
    views.share_grads()
    assert all(p.grad is g for p, g in zip(stacked.parameters(), grads))
    torch.testing.assert_close(views[1].fc1.weight.grad, 2 * models[1].fc1.weight.grad)


# ---------------------------------------------------------------- outputs checked where they enter


def _net():
    return build_model("mlp", DatasetSpec("toy", "regression", (5,), 1, {"train": 10}), {"hidden": [4, 3]})


def _good(net):
    return {f"{n}.weight": torch.rand_like(layer.weight) for n, layer in prunable_layers(net)}


@pytest.mark.parametrize("change,message", [
    (lambda s: {}, r"method 'mine': scores\(\) returned an empty dict; expected one tensor per prunable weight: "
                   r"fc1.weight, fc2.weight, fc3.weight \(a hook that accumulates"),
    (lambda s: {k: v for k, v in s.items() if k != "fc2.weight"}, r"scores\(\) returned no entry for fc2.weight; "
                                                                    r"expected exactly: fc1.weight, fc2.weight, fc3.weight"),
    (lambda s: dict(s, **{"fc9.weight": s["fc1.weight"]}), r"entries for fc9.weight, which are not prunable weights"),
    (lambda s: dict(s, **{"fc2.weight": s["fc2.weight"].T}), r"scores\(\)\['fc2.weight'\] has shape \(4, 3\); the weight has \(3, 4\)"),
    (lambda s: dict(s, **{"fc1.weight": (s["fc1.weight"], s["fc1.weight"][:, :2])}), r"\['fc1.weight'\] has shape \(4, 2\)"),
    (lambda s: dict(s, **{"fc3.weight": s["fc3.weight"] * float("nan")}), r"\['fc3.weight'\] has 3 NaN of 3 in a run that did not diverge"),
    (lambda s: [s], r"returned a list; expected a dict"),
])
def test_bad_scores_name_the_method_hook_and_fault(change, message):
    net = _net()
    with pytest.raises(MethodOutputError, match=message):
        check_scores(change(_good(net)), net, "mine")


def test_good_scores_pass_and_a_diverged_run_may_rank_nan_last():
    net = _net()
    check_scores(_good(net), net, "mine")
    scores = _good(net)
    scores["fc1.weight"][0, 0] = float("inf")  # orderable
    check_scores(scores, net, "mine")
    scores["fc1.weight"][0, 1] = float("nan")
    check_scores(scores, net, "mine", diverged=True)
    with pytest.raises(MethodOutputError, match="1 NaN of 20"):
        check_scores(scores, net, "mine")


def test_bad_natural_masks_are_named():
    net = _net()
    mask = {k: (v > 0.5).float() for k, v in _good(net).items()}
    check_mask(mask, net, "mine")
    with pytest.raises(MethodOutputError, match=r"natural_mask\(\)\['fc1.weight'\] has shape \(20,\)"):
        check_mask(dict(mask, **{"fc1.weight": mask["fc1.weight"].flatten()}), net, "mine")
    with pytest.raises(MethodOutputError, match=r"natural_mask\(\)\['fc2.weight'\] holds values other than 0 and 1"):
        check_mask(dict(mask, **{"fc2.weight": mask["fc2.weight"] * 0.5}), net, "mine")
    with pytest.raises(MethodOutputError, match=r"natural_mask\(\) returned no entry for fc3.weight"):
        check_mask({k: v for k, v in mask.items() if k != "fc3.weight"}, net, "mine")


class _Forgetful(Method):
    """Accumulates scores in after_step but forgets one layer."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.acc = {}

    def after_step(self, model, step, epoch):
        for name, layer in prunable_layers(model):
            if name != "fc2":
                self.acc[f"{name}.weight"] = layer.weight.grad.abs()

    def scores(self, model):
        return self.acc


def test_a_training_job_stops_on_bad_scores_before_writing_records(monkeypatch):
    monkeypatch.setattr(T, "method_class", lambda name: _Forgetful)
    with pytest.raises(MethodOutputError, match=r"method 'forgetful': scores\(\) returned no entry for fc2.weight"):
        run_stack([tiny_spec("forgetful", seed=s) for s in (0, 1)])
