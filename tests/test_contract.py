"""The plugin contract, checked for every file in methods/ (a new method is checked
automatically).  Variants lists extra option sets per method worth covering."""

import dataclasses
import math

import jsonschema
import pytest
import torch

from conftest import ROOT, tiny_spec
from slabbench.api import Method, PluginError, TrainContext, make_params
from slabbench.config import load_yaml
from slabbench.layers import MaskedConv2d, MaskedLinear, prunable_layers
from slabbench.metrics import nll_loss
from slabbench.models import build_model
from slabbench.outputs import check_mask
from slabbench.registry import available, dataset_class, method_class, misnamed
from slabbench.train import run, run_stack
from test_stacking import assert_records_close, records_alone

#: extra option sets per method (each granularity / schedule / scope); {} = defaults
VARIANTS = {
    "magnitude": [{"scope": "layerwise"}, {"schedule": "gradual"}],
    "spike_slab": [{"granularity": "node"}, {"granularity": "input"}, {"phi_update": "gumbel"},
                   {"phi_update": "lrt"}, {"phi_update": "lrt", "granularity": "node"}, {"export_mean": "slab"},
                   {"lrt_forward": True}],
    "l0": [{"gates": "weight"}],
    "sparse_vd": [{"train_clip": False}],  # the default is true (official LeNet scripts)
}
CASES = [(m, {}) for m in available("method")] + [(m, v) for m in available("method") for v in VARIANTS.get(m, [])]
METRICS_SCHEMA = load_yaml(ROOT / "workflow" / "schemas" / "metrics.schema.yaml")


def test_every_method_file_is_read():
    """A file in methods/ whose name breaks the naming rule is never read, so no contract test
    would run for it: name it here."""
    assert misnamed("method") == ""


@pytest.mark.parametrize("name", available("method"))
def test_params_are_a_frozen_dataclass_with_defaults(name):
    cls = method_class(name)
    assert issubclass(cls, Method)
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    params = make_params(cls.Params, {}, name)  # every option has a default
    with pytest.raises(PluginError, match="unknown option 'no_such_option'"):
        make_params(cls.Params, {"no_such_option": 1}, name)
    for f in dataclasses.fields(params):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, f.name, None)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{v}" for m, v in CASES])
def test_hooks_and_export(name, options):
    check_hooks_and_export(method_class(name), options, name)


def check_hooks_and_export(cls, options: dict, name: str) -> None:
    """A method's hooks on a small mlp over the digits, used as the core uses them: build, the
    forward pass, the penalty, two training steps with the method's optimiser and its
    ``after_step`` / ``after_epoch`` hooks, then export, scores and the natural mask (what
    they return is checked as every training job checks it)."""
    params = make_params(cls.Params, options, name)
    ds_cls = dataset_class("digits")
    ds = ds_cls(ds_cls.Params())
    spec = ds.spec()
    ctx = TrainContext(task=spec.task, n_train=100, epochs=1, steps_per_epoch=2, lr=1e-3,
                       device=torch.device("cpu"), spec=spec, target=0.5 if cls.trains_per_target(params) else None)
    torch.manual_seed(0)
    arch = build_model("mlp", spec, {"hidden": [8]})
    method = cls(params, ctx)
    model = method.build(arch)
    x, y = ds.load("train")
    out = model(x[:5])
    assert out.shape == (5, 10)
    pen = method.penalty(model)
    assert pen is None or (pen.ndim == 0 and torch.isfinite(pen) and pen.requires_grad)
    assert method.beta(0) >= 0
    opt = method.optimizer(model, 1e-3)
    for step in range(2):  # one epoch of two steps (ctx), as the core trains it
        loss = nll_loss(model(x[:16]), y[:16], spec.task)
        pen = method.penalty(model)
        if pen is not None:
            loss = loss + method.beta(0) * pen / ctx.n_train
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(model, step, 0)
    method.after_epoch(model, 0)
    exported = method.export(model)
    layers = dict(prunable_layers(exported))
    assert list(layers) == ["fc1", "fc2"]
    assert all(type(l) in (MaskedLinear, MaskedConv2d) for l in layers.values())
    scores = method.scores(model)
    if scores is not None:
        assert set(scores) == {f"{n}.weight" for n in layers}
        for k, v in scores.items():
            for part in (v if isinstance(v, tuple) else (v,)):
                assert part.shape == layers[k.rsplit(".", 1)[0]].weight.shape
    natural = method.natural_mask(model)
    if natural is not None:  # one 0/1 mask per weight, optionally per bias (the core's own check)
        check_mask(natural, exported, name)
        assert {k for k in natural if k.endswith(".weight")} == {f"{n}.weight" for n in layers}


@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{v}" for m, v in CASES])
@pytest.mark.parametrize("dataset", ["simulation", "digits"])
def test_run_records_follow_the_schema(name, options, dataset):
    spec = tiny_spec(method=name, dataset=dataset, method_params=options)
    records, artefacts = run(spec)
    assert records, "a run gives at least one record"
    for rec in records:
        jsonschema.validate(rec, METRICS_SCHEMA)
        assert rec["method"] == name and rec["spec"]["method_params"] == options
        assert ("test_accuracy_fp16" if rec["task"] == "classification" else "test_rmse_fp16") in rec
    targets = sorted(r["target_sparsity"] for r in records if r["selection"] == "target")
    if targets:
        assert targets == sorted(spec["sparsities"])
        for rec in records:
            if rec["selection"] == "target":  # the global top-k keeps at most the target's share
                # (exactly, to within one weight, unless the exported net has zeros of its own,
                # e.g. L0's closed test-time gates: then it is sparser, and reported as such)
                assert rec["sparsity"] >= rec["target_sparsity"] - 1 / rec["n_weights"] - 1e-9
    else:
        assert [r["selection"] for r in records] == ["natural"]


@pytest.mark.parametrize("name", available("method"))
def test_a_seed_in_a_stack_equals_it_alone(name):
    """The core trains a job's seeds as one stacked model: seed 1 beside seed 0 must give the
    records it gives alone (to float rounding), else a hook, penalty or optimiser mixes the runs'
    slices (docs/extending.md, "What a method must avoid to stack").  A method that trains once per
    target stacks its targets too: each target of seed 1 is then compared with that target alone."""
    specs = [tiny_spec(name, dataset="digits", seed=s) for s in (0, 1)]
    cls = method_class(name)
    stacked = run_stack(specs)
    alone = records_alone(specs[1], cls.trains_per_target(make_params(cls.Params, {}, name)))
    try:
        assert_records_close(stacked[1][0], alone)
    except AssertionError as err:
        raise AssertionError(f"method {name!r}: seed 1 trained in a stack of 2 gives other records than alone "
                             f"({err}); its hooks, penalty or optimiser mix the runs' slices of the stacked "
                             "tensors: see docs/extending.md, 'What a method must avoid to stack'") from None


@pytest.mark.parametrize("name", available("method"))
def test_same_seed_same_numbers(name):
    a, _ = run(tiny_spec(method=name))
    b, _ = run(tiny_spec(method=name))
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("train_seconds", "finetune_seconds")} for r in recs]  # noqa: E731
    assert strip(a) == strip(b)
    c, _ = run(tiny_spec(method=name, seed=1))
    # another seed trains another network: the test error differs (not only the seed's label)
    assert [r["test_rmse"] for r in a] != [r["test_rmse"] for r in c]


def test_a_misnamed_method_file_is_named_wherever_its_method_is_asked_for(tmp_path, monkeypatch, default_config):
    """Every message about an unknown method says which method files are not read for their names."""
    import slabbench.methods as methods_pkg
    from slabbench.config import ConfigError, validate

    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(tmp_path)])
    (tmp_path / "My-Method.py").write_text("")
    (tmp_path / "Pkg-Dir").mkdir()
    (tmp_path / "Pkg-Dir" / "__init__.py").write_text("")
    default_config["methods"] = ["dense", "My-Method"]
    default_config["method_params"] = {"my_variant": {"method": "My-Method"}}
    exp = next(iter(default_config["experiments"]))
    default_config["experiments"][exp]["methods"] = ["My-Method"]
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    msg = str(info.value)
    note = "(not read: My-Method.py, Pkg-Dir/: a method file's name is lowercase letters, digits and _, starting with a letter)"
    for where in ("config.methods:", "config.method_params.my_variant.method:", f"config.experiments.{exp}.methods:"):
        line = next(m for m in msg.splitlines() if where in m)
        assert note in line, line
