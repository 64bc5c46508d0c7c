"""The dataset contract, checked for every file in datasets/ (a new data set is checked
automatically, as tests/test_contract.py checks every method).

:func:`check_dataset` builds a data set with its default options and checks what the core
relies on: a frozen ``Params`` with defaults, a spec that describes the data (task, outputs,
input shape, split sizes, ``true_support`` inside the inputs), every split of the declared size,
shape and dtype, splits that share no example, the same data for the same seed, and the seed
promise the spec makes (``replicate_per_seed``: a new replicate per seed; else the same fixed
splits for every seed).  A data set whose files are not on this machine raises
:class:`~slabbench.data.DatasetFilesMissing`; its test is skipped with that message.

The second half writes deliberately broken data-set files into a temporary plugin folder and
checks that the contract check fails on each, naming the broken promise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import sys

import numpy as np
import pytest
import torch
import yaml

import slabbench.datasets as datasets_pkg
from conftest import ROOT
from slabbench.api import SPLITS, TASKS, Dataset, DatasetSpec, PluginError, make_params
from slabbench.config import ConfigError, run_specs, validate
from slabbench.data import DatasetFilesMissing
from slabbench.registry import available, dataset_class, misnamed

SEEDS = (0, 1)


def _build(cls: type, name: str, seed: int) -> Dataset:
    ds = cls(make_params(cls.Params, {}, name), seed)
    ds.prepare()
    return ds


def _data(ds: Dataset) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: ds.load(split) for split in SPLITS}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[s][0], b[s][0]) and torch.equal(a[s][1], b[s][1]) for s in SPLITS)


def check_params(cls: type, name: str) -> None:
    """``Params`` is a frozen dataclass, every field has a default, unknown options fail."""
    assert dataclasses.is_dataclass(cls.Params), f"{name}: Params must be a dataclass, got {cls.Params!r}"
    assert cls.Params.__dataclass_params__.frozen, f"{name}: Params must be frozen (@dataclass(frozen=True))"
    try:
        make_params(cls.Params, {}, name)
    except PluginError as exc:
        if "needs option" in str(exc):  # a field without a default
            raise AssertionError(f"{name}: every field of Params needs a default ({exc})") from exc
        raise AssertionError(f"{name}: Params with its defaults is refused ({exc})") from exc
    try:
        make_params(cls.Params, {"no_such_option": 1}, name)
    except PluginError:
        pass
    else:
        raise AssertionError(f"{name}: an unknown option must fail")


def check_spec(spec: DatasetSpec, name: str) -> None:
    """The spec's fields are consistent with each other (see :class:`slabbench.api.DatasetSpec`)."""
    assert isinstance(spec, DatasetSpec), f"{name}: spec() must return a DatasetSpec, got {type(spec).__name__}"
    assert spec.name == name, f"{name}: spec name {spec.name!r} must be the file stem {name!r}"
    assert spec.task in TASKS, f"{name}: task {spec.task!r}; valid: {', '.join(TASKS)}"
    assert isinstance(spec.input_shape, tuple) and spec.input_shape and all(
        isinstance(d, int) and d > 0 for d in spec.input_shape), f"{name}: input_shape {spec.input_shape!r} must be a tuple of positive ints"
    if spec.task == "regression":
        assert spec.outputs == 1, f"{name}: a regression data set has outputs 1, got {spec.outputs}"
    else:
        assert isinstance(spec.outputs, int) and spec.outputs >= 2, f"{name}: a classifier needs outputs >= 2 classes, got {spec.outputs!r}"
    assert set(spec.sizes) == set(SPLITS), f"{name}: sizes must have the splits {', '.join(SPLITS)}, got {sorted(spec.sizes)}"
    assert all(isinstance(n, int) and n > 0 for n in spec.sizes.values()), f"{name}: split sizes must be positive ints, got {dict(spec.sizes)}"
    if spec.true_support is not None:
        support = spec.true_support
        assert isinstance(support, tuple) and support, f"{name}: true_support must be a non-empty tuple or None, got {support!r}"
        assert all(isinstance(i, int) and 0 <= i < spec.n_features for i in support), (
            f"{name}: true_support {support} must index the inputs 0..{spec.n_features - 1}")
        assert len(set(support)) == len(support), f"{name}: true_support {support} repeats an index"
        assert len(support) < spec.n_features, f"{name}: true_support covers every input: no noise feature to select against"
    if spec.feature_shape is not None:
        assert math.prod(spec.feature_shape) == spec.n_features, (
            f"{name}: feature_shape {spec.feature_shape} has {math.prod(spec.feature_shape)} pixels, the inputs {spec.n_features}")
    assert isinstance(spec.replicate_per_seed, bool), f"{name}: replicate_per_seed must be True or False, got {spec.replicate_per_seed!r}"


def check_splits(data: dict, spec: DatasetSpec, name: str) -> None:
    """Each split: declared size, shapes and dtypes per the spec, finite values, valid labels;
    no example (input row) in two splits."""
    rows = {}
    for split in SPLITS:
        x, y = data[split]
        n = spec.sizes[split]
        assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), f"{name}/{split}: load() must return two tensors"
        assert x.dtype == torch.float32, f"{name}/{split}: x must be float32, got {x.dtype}"
        assert tuple(x.shape) == (n, *spec.input_shape), f"{name}/{split}: x has shape {tuple(x.shape)}, the spec says {(n, *spec.input_shape)}"
        assert tuple(y.shape) == (n,), f"{name}/{split}: y has shape {tuple(y.shape)}, the spec says ({n},)"
        assert torch.isfinite(x).all(), f"{name}/{split}: x has NaN or inf"
        if spec.task == "classification":
            assert y.dtype == torch.int64, f"{name}/{split}: class labels must be int64, got {y.dtype}"
            assert int(y.min()) >= 0 and int(y.max()) < spec.outputs, (
                f"{name}/{split}: labels span {int(y.min())}..{int(y.max())}, outside 0..{spec.outputs - 1}")
        else:
            assert y.dtype == torch.float32, f"{name}/{split}: regression targets must be float32, got {y.dtype}"
            assert torch.isfinite(y).all(), f"{name}/{split}: y has NaN or inf"
        rows[split] = {r.tobytes() for r in x.reshape(n, -1).numpy()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            shared = len(rows[a] & rows[b])
            assert not shared, f"{name}: splits {a} and {b} share {shared} example(s); splits must be disjoint"


def check_dataset(cls: type, name: str) -> None:
    """The whole contract for the data-set class ``cls`` (file stem ``name``), default options.

    Raises AssertionError naming the broken promise; :class:`DatasetFilesMissing` propagates.
    """
    check_params(cls, name)
    first = _build(cls, name, SEEDS[0])
    try:
        spec = first.spec()
    except PluginError as exc:  # DatasetSpec's own checks
        raise AssertionError(f"{name}: {exc}") from exc
    check_spec(spec, name)
    data = _data(first)
    check_splits(data, spec, name)
    again = _data(_build(cls, name, SEEDS[0]))
    assert _same(data, again), f"{name}: the same seed must give the same data (seed {SEEDS[0]} built twice differs)"
    other_ds = _build(cls, name, SEEDS[1])
    assert other_ds.spec() == spec, f"{name}: the spec must not depend on the seed"
    other = _data(other_ds)
    if spec.replicate_per_seed:
        for split in SPLITS:
            assert not torch.equal(data[split][0], other[split][0]), (
                f"{name}/{split}: replicate_per_seed=True, but seeds {SEEDS[0]} and {SEEDS[1]} give the same inputs")
    else:
        assert _same(data, other), (
            f"{name}: a fixed split (replicate_per_seed=False) must be the same for every seed; seeds {SEEDS[0]} and "
            f"{SEEDS[1]} differ (a simulation declares replicate_per_seed=True in its spec)")


def check_or_skip(cls: type, name: str) -> None:
    """:func:`check_dataset`, skipping (never failing) a data set whose files are absent."""
    try:
        check_dataset(cls, name)
    except DatasetFilesMissing as exc:
        pytest.skip(f"{name}: files not on this machine: {exc}")


def test_every_dataset_file_is_read():
    """A file in datasets/ whose name breaks the naming rule is never read, so no contract test
    would run for it: name it here."""
    assert misnamed("dataset") == ""


@pytest.mark.parametrize("name", available("dataset"))
def test_dataset_keeps_the_contract(name):
    check_or_skip(dataset_class(name), name)


# --------------------------------------------------------------------------- broken files

#: a valid replicate-per-seed data set; BROKEN applies one edit to it
VALID = '''
from dataclasses import dataclass

import torch

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec


@dataclass(frozen=True)
class Params:
    p: int = 6
    n: int = 40


class Dataset(_Base):
    Params = Params

    def __init__(self, params, seed=0):
        super().__init__(params, seed)
        n, p = params.n, params.p
        gen = torch.Generator().manual_seed(1000 + seed)
        x = torch.rand(3 * n, p, generator=gen)
        y = x[:, 0] - 2 * x[:, 1]
        self._splits = {"train": (x[:n], y[:n]), "val": (x[n:2 * n], y[n:2 * n]), "test": (x[2 * n:], y[2 * n:])}

    def spec(self):
        n, p = self.params.n, self.params.p
        return DatasetSpec(name="NAME", task="regression", input_shape=(p,), outputs=1,
                           sizes={"train": n, "val": n, "test": n}, true_support=(0, 1), replicate_per_seed=True)

    def load(self, split):
        return self._splits[split]
'''

#: broken promise -> (text in VALID, its replacement, fragment of the expected failure)
BROKEN = {
    "params_not_frozen": ("@dataclass(frozen=True)", "@dataclass", "must be frozen"),
    "name_not_file_stem": ('name="NAME"', 'name="other"', "must be the file stem"),
    "split_missing_in_sizes": ('"val": n, "test": n}', '"test": n}', "sizes must have the splits"),
    "size_not_as_declared": ('sizes={"train": n,', 'sizes={"train": n + 1,', "x has shape"),
    "x_float64": ("x = torch.rand(3 * n, p, generator=gen)", "x = torch.rand(3 * n, p, generator=gen, dtype=torch.float64)",
                  "x must be float32"),
    "y_column": ("y = x[:, 0] - 2 * x[:, 1]", "y = (x[:, 0] - 2 * x[:, 1])[:, None]", "y has shape"),
    "labels_not_int": ('task="regression", input_shape=(p,), outputs=1', 'task="classification", input_shape=(p,), outputs=3',
                       "class labels must be int64"),
    "val_overlaps_train": ('"val": (x[n:2 * n], y[n:2 * n])', '"val": (x[:n], y[:n])', "splits train and val share 40"),
    "support_outside_inputs": ("true_support=(0, 1)", "true_support=(0, p)", "integers that index the inputs 0..5"),
    "option_without_default": ("    p: int = 6", "    p: int", "every field of Params needs a default"),
    "not_reproducible": ("gen = torch.Generator().manual_seed(1000 + seed)", "gen = None", "the same seed must give the same data"),
    "replicate_ignores_seed": ("manual_seed(1000 + seed)", "manual_seed(1000)", "give the same inputs"),
    "fixed_split_varies_with_seed": ("replicate_per_seed=True", "replicate_per_seed=False", "must be the same for every seed"),
}


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """A second datasets/ folder on the plugin path; writes ``name.py`` from source, returns
    the discovered class.  Modules loaded from it are forgotten afterwards."""
    monkeypatch.setattr(datasets_pkg, "__path__", [*datasets_pkg.__path__, str(tmp_path)])
    written = []

    def write(name: str, source: str) -> type:
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        assert name in available("dataset")
        return dataset_class(name)

    yield write
    for name in written:
        sys.modules.pop(f"{datasets_pkg.__name__}.{name}", None)


def test_a_valid_file_passes_the_contract(plugin_folder):
    """The checker is not simply failing: the unbroken template keeps the contract."""
    check_dataset(plugin_folder("toy_valid", VALID.replace("NAME", "toy_valid")), "toy_valid")


def test_edits_reach_the_template():
    for old, new, _ in BROKEN.values():
        assert VALID.count(old) == 1, old


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_file_fails_the_contract(plugin_folder, broken):
    old, new, fragment = BROKEN[broken]
    name = f"toy_{broken}"
    cls = plugin_folder(name, VALID.replace(old, new).replace("NAME", name))
    with pytest.raises(AssertionError) as info:
        check_dataset(cls, name)
    assert fragment in str(info.value), str(info.value)


def test_missing_files_skip_with_their_own_message(plugin_folder):
    """A data set needing absent files is skipped (not failed) with the data set's message."""
    source = VALID.replace("NAME", "toy_files").replace(
        "    def load(self, split):",
        "    def prepare(self):\n"
        "        from slabbench.data import DatasetFilesMissing\n"
        "        raise DatasetFilesMissing('toy_files: put a.csv in resources/toy/')\n\n"
        "    def load(self, split):")
    cls = plugin_folder("toy_files", source)
    with pytest.raises(pytest.skip.Exception, match=r"toy_files: files not on this machine: toy_files: put a.csv in resources/toy/"):
        check_or_skip(cls, "toy_files")


def _readme_recipe() -> tuple[str, str]:
    """The python and yaml code blocks of the "Add your own data set" section of docs/datasets.md."""
    text = (ROOT / "docs" / "datasets.md").read_text()
    section = text.split("## Add your own data set: one file", 1)[1].split("\n## ", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    yaml_block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return python, yaml_block


def test_the_readme_recipe_keeps_the_contract_and_joins_a_grid(plugin_folder, tmp_path, monkeypatch, default_config):
    """A data set written from the recipe of docs/datasets.md alone: skipped with its own message while
    its file is missing, keeps the contract once the file is there, joins a grid with the
    recipe's one config entry."""
    python, yaml_block = _readme_recipe()
    cls = plugin_folder("my_data", python)
    monkeypatch.setenv("SLABBENCH_RESOURCES", str(tmp_path / "resources"))
    with pytest.raises(pytest.skip.Exception, match=r"my_data: files not on this machine: data set 'my_data': .*my_data.csv not found"):
        check_or_skip(cls, "my_data")
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(size=(50, 3)), rng.normal(size=50)])
    (tmp_path / "resources" / "my_data").mkdir(parents=True)
    np.savetxt(tmp_path / "resources" / "my_data" / "my_data.csv", table, delimiter=",")
    check_dataset(cls, "my_data")
    default_config["experiments"].update(yaml.safe_load(yaml_block)["experiments"])
    specs = [s for s in run_specs(validate(default_config)) if s["experiment"] == "my_data"]
    assert {s["dataset"] for s in specs} == {"my_data"} and len(specs) == len(default_config["methods"]) * len(default_config["seeds"])


def test_the_config_check_names_an_option_without_default(plugin_folder, default_config):
    """An option whose Params field has no default and that the config does not set: a configuration
    error naming the data set and the option (was a bare TypeError from the dataclass)."""
    plugin_folder("toy_nodefault", VALID.replace("    p: int = 6", "    p: int").replace("NAME", "toy_nodefault"))
    entry = {"dataset": "toy_nodefault", "model": "mlp", "model_params": {"hidden": [3]}, "epochs": 1, "batch_size": 8,
             "lr": 0.01}
    default_config["experiments"] = {"toy": dict(entry)}
    with pytest.raises(ConfigError, match=r"toy.*data set 'toy_nodefault' needs option\(s\) 'p': its Params gives no default"):
        validate(copy.deepcopy(default_config))
    default_config["experiments"]["toy"]["dataset_params"] = {"p": 6}
    assert {s["dataset"] for s in run_specs(validate(copy.deepcopy(default_config)))} == {"toy_nodefault"}


def test_a_support_outside_the_inputs_is_refused_when_the_spec_is_made():
    """Before any training (the spec is made when a training job builds its data): a support
    outside the inputs used to surface after training as an FPR above 1 that the records refused.
    numpy integers are indices too (metrics and figures take them)."""
    import numpy as np

    def spec(support):
        return DatasetSpec(name="toy", task="regression", input_shape=(2, 3), outputs=1, sizes={"train": 1, "val": 1, "test": 1},
                           true_support=support)

    assert spec(tuple(np.arange(6))).true_support == tuple(range(6))
    for bad, named in (((0, 6), "6"), ((0, -1), "-1"), ((0, 1.0), "1.0"), ((True,), "True")):
        with pytest.raises(PluginError, match=r"data set 'toy': true_support must hold integers that index the inputs 0..5 "
                                              r"\(0-based, into the flattened input of shape \(2, 3\)\); these do not: " + re.escape(named) + "$"):
            spec(bad)


def test_the_config_check_names_a_misnamed_file_and_a_file_without_its_class(plugin_folder, default_config, tmp_path):
    """A data-set file whose name breaks the rule is not read, and asking for it says so (it used to
    say only 'unknown data set'); a file without its Dataset class is a configuration error naming
    the file (it was a TypeError traceback)."""
    (tmp_path / "Sparse-X.py").write_text(VALID.replace("NAME", "Sparse-X"))
    (tmp_path / "_helpers.py").write_text("")  # a helper: not a plugin, not named
    (tmp_path / "toy_noclass.py").write_text("X = 1\n")
    entry = {"model": "mlp", "model_params": {"hidden": [3]}, "epochs": 1, "batch_size": 8, "lr": 0.01}
    default_config["experiments"] = {"a": {"dataset": "Sparse-X", **entry}, "b": {"dataset": "toy_noclass", **entry}}
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    msg = str(info.value)
    assert "unknown data set 'Sparse-X'" in msg and "(not read: Sparse-X.py: a dataset file's name is lowercase" in msg
    assert "_helpers" not in msg
    assert "config.experiments.b.dataset: dataset file " in msg and "toy_noclass.py must define `Dataset`" in msg
    sys.modules.pop(f"{datasets_pkg.__name__}.toy_noclass", None)
