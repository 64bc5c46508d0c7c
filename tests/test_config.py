"""A malformed configuration fails before any training, naming the bad value and the valid ones."""

import pytest

from slabbench.config import ConfigError, experiment_methods, run_specs, validate


def test_default_config_is_valid(default_config):
    cfg = validate(default_config)
    specs = run_specs(cfg)
    # by hand from config/config.yaml: simulation and friedman 6 methods each (their own lists, with
    # spike_slab_k4), digits and mnist5k the global 5; 22 x 3 seeds (the README's 66 runs)
    assert len(specs) == (6 + 6 + 5 + 5) * 3 == 66
    assert [len(experiment_methods(cfg, e)) for e in cfg["experiments"]] == [6, 6, 5, 5]
    # defaults are filled in and method options resolved per experiment
    assert all("finetune_lr_factor" in s and "method_params" in s for s in specs)


def _set(cfg, path, value):
    *parents, last = path
    node = cfg
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

CASES = [
    # (path, value, expected fragments of the message)
    (("methods",), ["dense", "l1"], ["unknown method 'l1'", "have ", "dense", "magnitude"]),
    (("experiments", "digits", "dataset"), "mnsit", ["unknown data set 'mnsit'", "did you mean 'mnist'", "simulation"]),
    (("sparsities",), [0.5, 1.5], ["config.sparsities[1] is 1.5", "strictly between 0 and 1"]),
    (("sparsities",), [0.0, 0.5], ["config.sparsities[0] is 0.0", "strictly between 0 and 1"]),
    (("sparsities",), [], ["config.sparsities is []", "non-empty list"]),
    (("seeds",), [0, "one"], ["config.seeds[1] is 'one'", "list of distinct integers"]),
    (("seeds",), [0, 1.5], ["config.seeds[1] is 1.5", "integers"]),
    (("seeds",), _DELETE, ["missing key(s) 'seeds' in config", "required keys: device, seeds"]),
    (("sedes",), [0], ["unknown key 'sedes' in config", "did you mean 'seeds'", "valid keys:"]),
    (("experiments", "digits", "epoch"), 3, ["unknown key 'epoch' in config.experiments.digits", "did you mean 'epochs'"]),
    (("experiments", "digits", "lr"), "1e-3", ["config.experiments.digits.lr is '1e-3'", "a number > 0", "write 1.0e-3"]),
    (("experiments", "digits", "epochs"), 0, ["config.experiments.digits.epochs is 0", "an integer >= 1"]),
    (("experiments", "digits", "batch_size"), "big", ["config.experiments.digits.batch_size is 'big'"]),
    (("experiments", "digits", "model"), "resnet", ["unknown model 'resnet'", "have mlp, lenet5, vgg"]),
    (("experiments", "digits", "model_params"), {"hiden": [3]}, ["unknown option(s) 'hiden' for model 'mlp'", "valid: hidden"]),
    (("experiments", "digits", "dataset_params"), {"split": 1}, ["unknown option 'split' for data set 'digits'", "valid options: split_seed"]),
    (("experiments", "bad/name"), {"dataset": "digits", "model": "mlp", "epochs": 1, "batch_size": 1, "lr": 0.1},
     ["bad name 'bad/name'", "letters, digits"]),
    (("device",), "gpu", ["config.device is 'gpu'", "auto, cpu, cuda"]),
    (("method_params", "magnitude", "wd"), 0.1, ["unknown option 'wd' for method 'magnitude'", "valid options:", "weight_decay"]),
    (("method_params", "magnitude", "scope"), "per-layer", ["option 'scope' of method 'magnitude' is 'per-layer'", "global, layerwise"]),
    (("method_params", "magnitude", "weight_decay"), "lots", ["option 'weight_decay' of method 'magnitude' must be float", "'lots'"]),
    (("method_params", "magnitude", "weight_decay"), "1e-4", ["must be float, got '1e-4' (str)", "as strings; write 1.0e-4"]),
    # what Snakemake's --config 'method_params={magnitude: {weight_decay: 0.5}}' hands the config
    (("method_params", "magnitude", "weight_decay"), "0.5", ["must be float, got '0.5' (str)", "Snakemake's --config",
                                                             "--configfile"]),
    # an option that may be null is still type-checked when it is not
    (("method_params", "spike_slab", "prior_inclusion"), "half", ["option 'prior_inclusion' of method 'spike_slab' must be "
                                                                  "float or null, got 'half' (str)"]),
    (("method_params", "spike_slab", "bma_samples"), 2.5, ["option 'bma_samples' of method 'spike_slab' must be int or null"]),
    (("method_params", "spike_slab", "phi_every"), -1, ["option 'phi_every' of method 'spike_slab' must be >= 0, got -1"]),
    (("method_params", "l1"), {}, ["config.method_params: unknown method 'l1'"]),
    (("experiments", "digits", "methods"), ["dense", "l1"], ["config.experiments.digits.methods: unknown method 'l1'"]),
    (("experiments", "digits", "seeds"), [], ["config.experiments.digits.seeds is []", "non-empty list"]),
    (("experiments", "digits", "sparsities"), [0.5, 1.0], ["config.experiments.digits.sparsities[1] is 1.0", "strictly between 0 and 1"]),
    # values that only the training job used to reject (the schema and the option keys were fine)
    (("experiments", "digits", "model_params"), {"activation": "sigmoid"}, ["model_params: model option activation is 'sigmoid'", "valid: relu, tanh"]),
    (("experiments", "digits", "model_params"), {"hidden": 7}, ["model option hidden is 7", "a list of hidden-layer widths"]),
    (("experiments", "digits", "model_params"), {"hidden": [0]}, ["model option hidden is [0]", "integers >= 1"]),
    (("experiments", "digits", "model_params"), {"init": 0.6}, ["model option init is 0.6", "'uniform:A'"]),
    (("experiments", "digits", "model_params"), {"init": "uniform:inf"}, ["model option init is 'uniform:inf'", "finite number > 0"]),
    (("experiments", "simulation", "dataset_params", "p"), 3, ["simulation.dataset_params: simulation needs p >= 5", "got p=3"]),
    (("experiments", "simulation", "dataset_params", "n_test"), 0, ["simulation option n_test must be >= 1, got 0"]),
    (("method_params", "dense"), {"weight_decay": -1.0}, ["option 'weight_decay' of method 'dense' must be >= 0, got -1.0"]),
    (("method_params", "spike_slab", "bma_samples"), -3, ["option 'bma_samples' of method 'spike_slab' must be an integer >= 1 or null"]),
    (("method_params", "magnitude", "prune_every"), -5, ["option 'prune_every' of method 'magnitude' must be >= 0", "got -5"]),
    # NaN and infinity pass every bound of a schema; a number key names nothing
    (("experiments", "digits", "lr"), float("nan"), ["config.experiments.digits.lr is nan", "must be finite"]),
    (("sparsities",), [0.5, float("nan")], ["config.sparsities[1] is nan", "must be finite"]),
    (("method_params", "spike_slab", "sigma0"), float("inf"), ["config.method_params.spike_slab.sigma0 is inf", "must be finite"]),
    (("checkpoint_minutes",), float("nan"), ["config.checkpoint_minutes is nan"]),
    (("experiments", 5), {"dataset": "digits", "model": "mlp", "epochs": 1, "batch_size": 1, "lr": 0.1},
     ["config.experiments: the key 5 is a int", "quote it: '5'"]),
    (("seeds",), [0, 20_000_000_000_000], ["config.seeds[1] is 20000000000000", "from 0 to 2147483647"]),
    (("experiments", "deploy"), {"dataset": "digits", "model": "mlp", "epochs": 1, "batch_size": 1, "lr": 0.1},
     ["config.experiments.deploy: the name 'deploy' is taken by results/figures/deploy.png"]),
]


@pytest.mark.parametrize("path,value,fragments", CASES, ids=[".".join(map(str, c[0])) + "=" + repr(c[1])[:20] for c in CASES])
def test_malformed_config_fails_with_clear_message(default_config, path, value, fragments):
    _set(default_config, path, value)
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_bad_global_method_option_is_reported_once_where_it_is_written(default_config):
    """A typo under the global method_params used to be reported once per experiment, under
    the experiments' names; an experiment's own override is reported under its own path."""
    default_config["method_params"]["magnitude"]["wd"] = 0.1
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    lines = [l for l in str(info.value).splitlines() if "'wd'" in l]
    assert len(lines) == 1 and lines[0].strip().startswith("config.method_params.magnitude: unknown option 'wd'"), lines
    del default_config["method_params"]["magnitude"]["wd"]
    default_config["experiments"]["digits"]["method_params"] = {"magnitude": {"scope": "per-layer"}}
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    lines = [l for l in str(info.value).splitlines() if "per-layer" in l]
    assert len(lines) == 1 and lines[0].strip().startswith("config.experiments.digits.method_params.magnitude: option 'scope'"), lines


def test_a_method_whose_constructor_reads_the_data_is_named_not_a_traceback(default_config, monkeypatch):
    """Validation builds each method with a placeholder context (no data set): a plugin whose
    ``__init__`` reads ``ctx.spec`` used to crash ``slabbench validate`` with a bare traceback."""
    import slabbench.config as C
    from slabbench.api import Method

    class NeedsData(Method):
        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.width = ctx.spec.n_features

    real = C.method_class
    monkeypatch.setattr(C, "method_class", lambda name: NeedsData if name == "magnitude" else real(name))
    default_config["method_params"].pop("magnitude", None)
    for exp in default_config["experiments"].values():
        exp.get("method_params", {}).pop("magnitude", None)
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    msg = str(info.value)
    assert "method 'magnitude': its constructor raised AttributeError" in msg and "n_features" in msg, msg
    assert "placeholder context (ctx.spec None" in msg and "test_config.py" in msg, msg

def test_config_must_be_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate([1, 2])


def test_experiment_seeds_and_methods_override_the_global_lists(default_config):
    """An experiment may run its own seeds (e.g. 30 simulation replicates) and methods."""
    default_config["experiments"]["digits"]["seeds"] = [5, 6, 7, 8]
    default_config["experiments"]["digits"]["methods"] = ["dense", "spike_slab"]
    cfg = validate(default_config)
    specs = run_specs(cfg)
    digits = [(s["method"], s["seed"]) for s in specs if s["experiment"] == "digits"]
    assert sorted(digits) == sorted((m, s) for m in ("dense", "spike_slab") for s in (5, 6, 7, 8))
    others = [s for s in specs if s["experiment"] != "digits"]
    assert len(others) == sum(len(experiment_methods(cfg, e)) for e in cfg["experiments"] if e != "digits") * len(cfg["seeds"])
    assert all("seeds" not in s and "methods" not in s for s in specs)


def test_experiment_sparsities_override_the_global_targets(default_config):
    """A small net (e.g. the 5-input simulation diagnostic) can have targets of its own."""
    default_config["experiments"]["digits"]["sparsities"] = [0.3, 0.6]
    specs = run_specs(validate(default_config))
    assert {tuple(s["sparsities"]) for s in specs if s["experiment"] == "digits"} == {(0.3, 0.6)}
    assert {tuple(s["sparsities"]) for s in specs if s["experiment"] != "digits"} == {tuple(default_config["sparsities"])}


def test_experiment_device_overrides_the_global_device(default_config):
    """Tiny nets can train on the CPU while image nets use the GPU."""
    default_config["device"] = "cuda"
    default_config["experiments"]["simulation"]["device"] = "cpu"
    specs = run_specs(validate(default_config))
    assert {s["device"] for s in specs if s["experiment"] == "simulation"} == {"cpu"}
    assert {s["device"] for s in specs if s["experiment"] != "simulation"} == {"cuda"}
    default_config["experiments"]["simulation"]["device"] = "gpu"
    with pytest.raises(ConfigError, match="config.experiments.simulation.device is 'gpu'"):
        validate(default_config)


def test_data_noise_sd_and_likelihood_noise_sd_are_compared(default_config, caplog):
    import logging

    from slabbench.config import validate

    exp = next(n for n, e in default_config["experiments"].items() if e["dataset"] == "simulation")
    with caplog.at_level(logging.WARNING, logger="slabbench.config"):
        validate(default_config)
    assert "draws noise" not in caplog.text
    default_config["experiments"][exp]["dataset_params"]["noise_sd"] = 0.5
    default_config["experiments"][exp]["noise_sd"] = 1.0
    with caplog.at_level(logging.WARNING, logger="slabbench.config"):
        validate(default_config)
    assert f"config.experiments.{exp}: the data set draws noise with sd 0.5" in caplog.text and "noise_sd 1" in caplog.text


def test_a_command_line_boolean_is_read_as_one(default_config):
    """``snakemake --config graphs=false`` hands the option over as the string 'false': the
    strings true / false (any case) of a boolean option are booleans; anything else is refused
    with the valid values named."""
    cfg = validate(dict(default_config, graphs="false", flush_denormal="True"))
    assert cfg["graphs"] is False and cfg["flush_denormal"] is True
    assert all(s["graphs"] is False and "flush_denormal" not in s for s in run_specs(cfg))
    assert "graphs" not in run_specs(validate(default_config))[0]  # on by default: out of the spec
    with pytest.raises(ConfigError, match=r"config.graphs is 'no'; expected true \(default\) or false"):
        validate(dict(default_config, graphs="no"))


def test_command_line_lists_of_numbers_are_read_as_numbers(default_config):
    """``snakemake --config seeds=[0,1]`` hands the items over as the strings '0' and '1'."""
    cfg = validate(dict(default_config, seeds=["0", " 1"], sparsities=["0.5", "0.8"]))
    assert cfg["seeds"] == [0, 1] and cfg["sparsities"] == [0.5, 0.8]
    assert {s["seed"] for s in run_specs(cfg)} == {0, 1}
    with pytest.raises(ConfigError, match=r"config.seeds\[1\] is 'one'"):
        validate(dict(default_config, seeds=["0", "one"]))


def test_checkpoint_minutes_is_a_number_of_minutes_kept_out_of_the_specs(default_config):
    """How often a training job saves its state is no part of a run's spec (changing it retrains
    nothing); a negative or non-numeric value is refused with the key named."""
    specs = run_specs(validate(default_config))
    assert run_specs(validate(dict(default_config, checkpoint_minutes=0.5))) == specs
    for bad in (-1, "often"):
        with pytest.raises(ConfigError, match=r"config.checkpoint_minutes"):
            validate(dict(default_config, checkpoint_minutes=bad))


def test_a_key_repeated_in_one_mapping_of_a_config_file_is_refused(tmp_path):
    """A copied experiment block left under its old name would replace the first one silently."""
    from slabbench.config import load_yaml

    path = tmp_path / "grid.yaml"
    path.write_text("seeds: [0]\nexperiments:\n  sim:\n    dataset: simulation\n  sim:\n    dataset: friedman\n")
    with pytest.raises(ConfigError, match=r"grid.yaml, line 5: the key 'sim' appears twice in one mapping \(first at line 3\)"):
        load_yaml(path)
    path.write_text("a: {x: 1, x: 2}\n")
    with pytest.raises(ConfigError, match="the key 'x' appears twice"):
        load_yaml(path)
    path.write_text("a: {x: 1, y: 2}\nb: {x: 1}\n")  # the same key in two mappings is fine
    assert load_yaml(path) == {"a": {"x": 1, "y": 2}, "b": {"x": 1}}


def test_the_cli_names_a_config_file_it_cannot_read_without_a_traceback(tmp_path, capsys):
    from slabbench.cli import main

    (tmp_path / "broken.yaml").write_text("seeds: [0\n")
    for path, fragment in ((tmp_path / "missing.yaml", "No such file"), (tmp_path, "Is a directory"),
                           (tmp_path / "broken.yaml", "expected ',' or ']'")):
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{path}: ") and fragment in err and "Traceback" not in err


def test_the_cli_stops_quietly_when_its_reader_leaves():
    """``slabbench runs CONFIG | head -1``: a closed pipe ends the listing with status 1 and
    without a traceback (it printed BrokenPipeError's), for a long listing (paper.yaml's 606
    runs fail in a write) and a short one (the default grid's 66 fail in the exit's flush),
    with stdout buffered as in a terminal session without PYTHONUNBUFFERED."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for config in ("config/paper.yaml", "config/config.yaml"):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line
        cmd = [sys.executable, "-c", "import sys; from slabbench.cli import main; sys.exit(main())", "runs", config]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=write, stderr=subprocess.PIPE, env=env)
        os.close(write)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and err.decode() == "", (config, proc.returncode, err.decode())


def test_a_slabbench_root_that_is_no_checkout_is_named(tmp_path, monkeypatch):
    from slabbench._plugins import repo_root

    monkeypatch.setenv("SLABBENCH_ROOT", str(tmp_path))
    with pytest.raises(RuntimeError, match=f"SLABBENCH_ROOT='{tmp_path}' is not a slabbench checkout"):
        repo_root()


def test_yaml_merge_keys_still_load_and_option_values_may_be_keyed_freely(tmp_path):
    from slabbench.config import _value_problems, load_yaml
    from slabbench.models import model_option_error

    path = tmp_path / "grid.yaml"
    path.write_text("a: &base {lr: 0.1, epochs: 2}\nb:\n  <<: *base\n  lr: 0.01\nc: {<<: [*base], epochs: 3}\n")
    assert load_yaml(path) == {"a": {"lr": 0.1, "epochs": 2}, "b": {"lr": 0.01, "epochs": 2}, "c": {"lr": 0.1, "epochs": 3}}
    # a plugin option's value (e.g. per-class weights) may use number keys; names may not
    assert _value_problems({"experiments": {"x": {"dataset_params": {"class_weights": {0: 1.0, 1: 2.0}}}}}) == []
    assert _value_problems({"experiments": {"x": {"method_params": {"m": {"w": {0: 1.0}}}}}}) == []
    assert len(_value_problems({"experiments": {"x": {"dataset_params": {3: 1}}}})) == 1
    assert len(_value_problems({"method_params": {1: {}}})) == 1
    assert "write 5.0e-1" in model_option_error("vgg", {"width": "5e-1"})


def test_the_cli_names_a_bad_slabbench_root_in_one_line(tmp_path, monkeypatch, capsys):
    from slabbench.cli import main

    monkeypatch.setenv("SLABBENCH_ROOT", str(tmp_path))
    assert main(["validate", "config/config.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"slabbench: SLABBENCH_ROOT='{tmp_path}' is not a slabbench checkout") and "Traceback" not in err


def test_option_types_are_checked_in_every_annotation_form():
    """A plugin's Params may annotate with strings (`from __future__ import annotations`), classes,
    `X | None` or `typing.Optional[X]`: each is checked, null passes where None is allowed, and a
    form too complex to check (a tuple) is left to the plugin."""
    import dataclasses
    from typing import Optional

    from slabbench.api import PluginError, make_params

    @dataclasses.dataclass(frozen=True)
    class Params:
        a: Optional[int] = None
        b: "Optional[str]" = None
        c: "tuple[int, ...] | None" = None
        d: float | None = None
        e: int = 1

    assert make_params(Params, {"a": 3, "b": "x", "c": (1,), "d": 2, "e": 3}, "t") == Params(3, "x", (1,), 2, 3)
    assert make_params(Params, {"a": None, "b": None, "c": None, "d": None}, "t") == Params()
    for key, value, valid in (("a", "x", "int or null"), ("b", 3, "str or null"), ("d", "y", "float or null"), ("e", 1.5, "int")):
        with pytest.raises(PluginError, match=f"option '{key}' of t must be {valid}, got {value!r}"):
            make_params(Params, {key: value}, "t")
