"""Offline data sets: shapes, disjoint fixed splits, determinism; real sets fail clearly."""

import gzip
import hashlib
import math

import numpy as np
import pytest
import torch

from slabbench.api import make_params
from slabbench.data import DatasetFilesMissing, read_idx, stratified_split
from slabbench.registry import dataset_class


def make(name, seed=0, **opts):
    cls = dataset_class(name)
    return cls(make_params(cls.Params, opts, name), seed)


@pytest.mark.parametrize("name,shape,task,outputs", [
    ("simulation", (200,), "regression", 1),
    ("digits", (1, 8, 8), "classification", 10),
    ("diabetes", (10,), "regression", 1),
    ("mnist5k", (1, 28, 28), "classification", 10),
    ("friedman", (100,), "regression", 1),
])
def test_offline_datasets(name, shape, task, outputs):
    ds = make(name)
    spec = ds.spec()
    assert spec.input_shape == shape and spec.task == task and spec.outputs == outputs
    rows = {}
    for split in ("train", "val", "test"):
        x, y = ds.load(split)
        assert x.dtype == torch.float32 and x.shape[1:] == shape and len(x) == len(y) == spec.sizes[split] > 0
        assert y.dtype == (torch.int64 if task == "classification" else torch.float32)
        rows[split] = {tuple(r) for r in x.reshape(len(x), -1)[:, :].numpy().round(6).tolist()} if name not in ("simulation", "friedman") else None
        x2, y2 = make(name).load(split)  # deterministic
        assert torch.equal(x, x2) and torch.equal(y, y2)
    if name in ("digits", "mnist5k"):  # no image shared between train and test
        assert not rows["train"] & rows["test"]


def test_mnist5k_split_sizes_and_stratification():
    ds = make("mnist5k")
    assert ds.spec().sizes == {"train": 3500, "val": 500, "test": 1000}
    counts = torch.bincount(ds.load("test")[1], minlength=10)
    assert counts.sum() == 1000 and counts.min() >= 80  # every class present in proportion


def test_simulation_follows_bai_design():
    ds = make("simulation", seed=3, p=7, n_train=50, n_val=10, n_test=20, noise_sd=0.0)
    x, y = ds.load("train")
    assert x.shape == (50, 7) and x.min() >= -1 and x.max() <= 1
    x1, x2, x3, x4, x5 = (x[:, i] for i in range(5))
    expected = 7 * x2 / (1 + x1 ** 2) + 5 * torch.sin(x3 * x4) + 2 * x5
    assert torch.allclose(y, expected)
    assert ds.spec().true_support == (0, 1, 2, 3, 4)
    other = make("simulation", seed=4, p=7, n_train=50, n_val=10, n_test=20)
    assert not torch.equal(other.load("train")[0], x)  # each seed is a new replicate


def test_simulation_rejects_small_p():
    with pytest.raises(ValueError, match="p >= 5"):
        make("simulation", p=3)


def test_friedman_follows_friedman1():
    ds = make("friedman", seed=3, p=8, n_train=50, n_val=10, n_test=20, noise_sd=0.0, center=False)
    x, y = ds.load("train")
    assert x.shape == (50, 8) and x.min() >= 0 and x.max() <= 1
    x1, x2, x3, x4, x5 = (x[:, i].double() for i in range(5))
    expected = 10 * torch.sin(torch.pi * x1 * x2) + 20 * (x3 - 0.5) ** 2 + 10 * x4 + 5 * x5
    assert torch.allclose(y.double(), expected, atol=1e-4)  # x stored as float32
    assert ds.spec().true_support == (0, 1, 2, 3, 4) and ds.spec().replicate_per_seed
    centred = make("friedman", seed=3, p=8, n_train=50, n_val=10, n_test=20, noise_sd=0.0)
    assert torch.equal(centred.load("train")[0], x)  # centring shifts y only, by a constant
    assert torch.allclose(centred.load("train")[1], y - 14.413297, atol=1e-4)
    other = make("friedman", seed=4, p=8, n_train=50, n_val=10, n_test=20)
    assert not torch.equal(other.load("train")[0], x)  # each seed is a new replicate


def test_friedman_target_scale_as_stated():
    """The docstring's scale: f(x) has mean 14.413 and sd 4.881 (closed form), so a centred y
    has mean 0 and sd sqrt(4.881² + noise_sd²); the noise is what is left after f."""
    import slabbench.datasets.friedman as mod

    assert abs(mod.SIGNAL_MEAN - 14.4133) < 1e-3 and abs(mod.SIGNAL_SD - 4.8812) < 1e-3
    ds = make("friedman", seed=0, p=5, n_train=100, n_val=10, n_test=200_000, noise_sd=2.0)
    x, y = ds.load("test")
    assert abs(float(y.mean())) < 0.05 and abs(float(y.std()) - math.hypot(4.8812, 2.0)) < 0.05
    signal = 10 * torch.sin(torch.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    assert abs(float((y - (signal - mod.SIGNAL_MEAN)).std()) - 2.0) < 0.02  # the test-RMSE floor is noise_sd


@pytest.mark.parametrize("opts,fragment", [({"p": 4}, "p >= 5"), ({"n_val": 0}, "n_val must be >= 1"),
                                           ({"noise_sd": -1.0}, "noise_sd must be >= 0")])
def test_friedman_rejects_bad_options(opts, fragment):
    with pytest.raises(ValueError, match=fragment):
        make("friedman", **opts)


def test_stratified_split_is_a_partition():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    parts = stratified_split(labels, (0.5, 0.3, 0.2), seed=0)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(60))
    assert [len(p) for p in parts] == [30, 18, 12]
    assert (np.bincount(labels[parts[0]]) == [5, 10, 15]).all()


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_missing_idx_files_say_which_where_and_how(tmp_path, name):
    ds = make(name, root=str(tmp_path), download=False)
    with pytest.raises(DatasetFilesMissing) as info:
        ds.prepare()
    msg = str(info.value)
    for fragment in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(tmp_path), "download"):
        assert fragment in msg


def test_missing_cifar_files_say_which_where_and_how(tmp_path):
    ds = make("cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DatasetFilesMissing) as info:
        ds.prepare()
    assert "data_batch_1" in str(info.value) and str(tmp_path) in str(info.value)


def test_only_a_failed_download_or_corrupt_cifar_files_count_as_missing(tmp_path, monkeypatch):
    """Files missing or failing torchvision's MD5 sums, which a download (torchvision re-extracts a
    good tarball or fetches it) could not repair, are DatasetFilesMissing naming those files (the
    contract test skips on it); any other error, here a wrong keyword, is a bug and propagates."""
    import urllib.error

    import torchvision.datasets
    from torchvision.datasets import CIFAR10

    calls = []

    def raising(exc):
        class Stand:  # torchvision's class with its checksums, whose constructor fails
            train_list, test_list, meta = CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta

            def __init__(self, root, train, download):
                calls.append(download)
                raise exc
        return Stand

    ds = make("cifar10", root=str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", raising(urllib.error.URLError("no network")))
    with pytest.raises(DatasetFilesMissing, match="data_batch_1.*batches.meta missing or corrupt and could not be "
                                                  "downloaded in .*cifar-10-batches-py \\(URLError"):
        ds.prepare()
    assert calls == [True]
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", raising(TypeError("unexpected keyword argument 'train'")))
    with pytest.raises(TypeError, match="unexpected keyword"):
        ds.prepare()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(b"not a pickle")
    calls.clear()  # present but corrupt: a repair is tried (download: true), then the files are named
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", raising(urllib.error.URLError("no network")))
    with pytest.raises(DatasetFilesMissing, match="files data_batch_1, .*test_batch, batches.meta missing or corrupt "
                                                  "and could not be downloaded"):
        ds.prepare()
    assert calls == [True]
    calls.clear()
    with pytest.raises(DatasetFilesMissing, match="files data_batch_1, .*batches.meta missing or corrupt "
                                                  "\\(download: false\\)"):
        make("cifar10", root=str(tmp_path), download=False).prepare()
    assert calls == []


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(raw)
    return hashlib.sha256(raw).hexdigest()


def test_idx_reader_and_checksum(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    digest = _write_idx(tmp_path / "a-idx3-ubyte.gz", arr)
    got, sha = read_idx(tmp_path / "a-idx3-ubyte.gz")
    assert (got == arr).all() and sha == digest


def test_mnist_like_loader_splits_real_format(tmp_path):
    from slabbench.data import MNIST_LIKE_FILES, load_mnist_like

    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.full((20, 28, 28), 255))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 2)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((6, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 2)
    splits = load_mnist_like("toy", [tmp_path], {}, "how", None, val_size=4, split_seed=0)
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [16, 4, 6]
    assert splits["train"][0].shape == (16, 1, 28, 28) and float(splits["train"][0].max()) == 1.0
    assert torch.bincount(splits["val"][1]).tolist() == [2, 2]
    assert len(MNIST_LIKE_FILES) == 4


def test_mnist_checksum_mismatch_is_reported(tmp_path):
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    _write_idx(tmp_path / (names[0] + ".gz"), np.zeros((20, 28, 28)))
    _write_idx(tmp_path / (names[1] + ".gz"), np.arange(20) % 10)
    _write_idx(tmp_path / (names[2] + ".gz"), np.zeros((10, 28, 28)))
    _write_idx(tmp_path / (names[3] + ".gz"), np.arange(10))
    ds = make("mnist", root=str(tmp_path), download=False, val_size=10)
    with pytest.raises(ValueError, match="decodes to SHA-256 .* expected"):
        ds.prepare()


def test_both_simulations_reach_the_feature_selection_table_and_pip_figure():
    """Every data set with a true support gets FNR / FPR, a feature-selection section and a PIP
    figure with its true features marked: nothing in the tables or figures names the simulation."""
    import matplotlib.pyplot as plt

    from conftest import tiny_spec
    from slabbench.aggregate import records_table
    from slabbench.plotting import plot_pips
    from slabbench.tables import render_feature_selection
    from slabbench.train import run

    small = {"p": 8, "n_train": 64, "n_val": 32, "n_test": 64}
    records, artefacts = [], []
    for dataset in ("simulation", "friedman"):
        for seed in (0, 1):
            recs, arts = run(tiny_spec(method="spike_slab", dataset=dataset, experiment=f"{dataset}-tiny",
                                       dataset_params=small, seed=seed))
            records += recs
            artefacts += [arts] if dataset == "friedman" else []
    runs = records_table(records)
    assert runs.groupby("experiment")["fnr"].count().to_dict() == {"friedman-tiny": 6, "simulation-tiny": 6}
    for fmt in ("markdown", "latex"):
        table = render_feature_selection(runs, fmt)
        assert "friedman-tiny: feature selection" in table and "simulation-tiny: feature selection" in table
        assert "FPR, Bai's rule" in table and "train RMSE" in table
    fig = plot_pips(artefacts, None, make("friedman", **small).spec().true_support, "friedman-tiny")
    assert len(fig.axes[0].patches) == 8  # one bar per input
    assert fig.axes[0].get_legend_handles_labels()[1] == ["noise features", "true features"]
    plt.close(fig)


def test_diabetes_is_standardised_with_training_rows_only():
    """Features and target: mean 0 and sd 1 over the training split exactly (not over all
    rows); the test split's own statistics are left as they fall."""
    from slabbench.api import make_params
    from slabbench.registry import dataset_class

    cls = dataset_class("diabetes")
    ds = cls(make_params(cls.Params, {}, "diabetes"), 0)
    x, y = ds.load("train")
    assert x.double().mean(0).abs().max() < 1e-5 and (x.double().std(0, unbiased=False) - 1).abs().max() < 1e-5
    assert abs(float(y.double().mean())) < 1e-6 and abs(float(y.double().std(unbiased=False)) - 1) < 1e-5
    xt, _ = ds.load("test")
    assert xt.double().mean(0).abs().max() > 1e-3  # test rows did not set the centring


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_a_root_that_is_not_a_path_is_refused_when_the_options_are_read(name):
    """``root: str | None``: null and a string pass, a number is refused by the option check
    (it used to pass and crash the training job)."""
    from slabbench.api import PluginError

    cls = dataset_class(name)
    assert make_params(cls.Params, {"root": None}, name).root is None
    assert make_params(cls.Params, {"root": "data"}, name).root == "data"
    with pytest.raises(PluginError, match=f"option 'root' of {name} must be str or null, got 5 \\(int\\)"):
        make_params(cls.Params, {"root": 5}, name)
