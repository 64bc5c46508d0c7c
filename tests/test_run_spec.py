"""The typed run spec: built once in config.run_specs with every default resolved, and still,
read-only, exactly the dict a run spec has always been (so records, settings fingerprints and
the workflow's job parameters do not change)."""

import copy
import dataclasses
import json
import pickle

import pytest

from conftest import ROOT, tiny_spec
from slabbench.config import (RUN_OPTIONS, RunSpec, experiment_methods, experiment_seeds, experiment_sparsities,
                              load_yaml, method_options, run_options, run_specs, schema_path, validate, variant_base)


def dict_run_specs(config: dict) -> list[dict]:
    """config.run_specs as it was before run specs were typed (the reference their dict form keeps)."""
    specs = []
    for name, exp in config["experiments"].items():
        for method in experiment_methods(config, name):
            for seed in experiment_seeds(config, name):
                spec = {k: copy.deepcopy(v) for k, v in exp.items()
                        if k not in ("method_params", "methods", "seeds", "sparsities", "device", "stack_size", "graphs",
                                     "compile", "noise_rng", "flush_denormal", *RUN_OPTIONS)}
                spec.update(experiment=name, method=method, seed=int(seed), device=exp.get("device") or config["device"],
                            sparsities=experiment_sparsities(config, name),
                            method_params=method_options(config, name, method))
                base = variant_base(config, method)
                if base:
                    spec["variant_of"] = base
                core = run_options(config, name, method)
                if core["restarts"] != 1:
                    spec["restarts"] = int(core["restarts"])
                for key in ("restarts_keep", "restarts_screen_epochs"):
                    if core[key] is not None:
                        spec[key] = int(core[key])
                if config.get("on_divergence", "stop") != "stop":
                    spec["on_divergence"] = config["on_divergence"]
                if not exp.get("graphs", config.get("graphs", True)):
                    spec["graphs"] = False
                if exp.get("compile", config.get("compile", False)):
                    spec["compile"] = True
                if exp.get("noise_rng", config.get("noise_rng", "generators")) != "generators":
                    spec["noise_rng"] = exp.get("noise_rng", config.get("noise_rng"))
                if not exp.get("flush_denormal", config.get("flush_denormal", True)):
                    spec["flush_denormal"] = False
                specs.append(spec)
    return specs


CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml")) + [".test/config.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_every_specs_dict_form_is_the_dict_run_specs_made_before(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = validate(load_yaml(ROOT / path))
    typed, plain = run_specs(config), dict_run_specs(config)
    assert len(typed) == len(plain)
    for spec, before in zip(typed, plain):
        assert isinstance(spec, RunSpec)
        after = spec.to_dict()
        # the same keys in the same order, values and types: the same repr (what Snakemake compares),
        # JSON (records) and equality
        assert after == before and repr(after) == repr(before) and repr(spec) == repr(before)
        assert json.dumps(spec) == json.dumps(before) and spec == before


def test_every_default_is_resolved_in_the_spec():
    spec = RunSpec.of(tiny_spec("spike_slab"))
    assert (spec.restarts, spec.restarts_keep, spec.screen, spec.graphs, spec.flush_denormal) == (1, None, None, True, True)
    assert spec.stops_on_divergence and spec.variant_of is None and spec.plugin == "spike_slab"
    assert "restarts" not in spec and spec.get("restarts") is None  # the dict form keeps what it was given
    variant = RunSpec.of(tiny_spec("spike_slab_k3", variant_of="spike_slab", restarts=3, restarts_keep=1,
                                   restarts_screen_epochs=1, on_divergence="record"))
    assert variant.plugin == "spike_slab" and variant.screen == (1, 1) and not variant.stops_on_divergence


def test_the_specs_defaults_are_the_schemas():
    props = load_yaml(schema_path())["properties"]["experiments"]["additionalProperties"]["properties"]
    for key, prop in props.items():
        if "default" in prop:
            assert RunSpec.default(key) == prop["default"], key


def test_a_spec_is_read_only_and_survives_copies_and_pickling():
    spec = RunSpec.of(tiny_spec("l0", seed=3))
    with pytest.raises(TypeError, match="read-only"):
        spec["seed"] = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 4
    for other in (copy.deepcopy(spec), pickle.loads(pickle.dumps(spec)), RunSpec.of(spec.to_dict())):
        assert isinstance(other, RunSpec) and other == spec and list(other) == list(spec)
    changed = dataclasses.replace(spec, seed=4, graphs=False)
    assert changed.seed == 4 and changed["seed"] == 4 and changed["graphs"] is False and spec.seed == 3


def test_unknown_and_missing_keys_are_errors_naming_them():
    with pytest.raises(ValueError, match="unknown key.*'epoch'"):
        RunSpec.of(dict(tiny_spec(), epoch=3))
    spec = tiny_spec()
    del spec["lr"]
    with pytest.raises(ValueError, match="needs the key.*'lr'"):
        RunSpec.of(spec)
