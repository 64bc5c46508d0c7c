"""Core hooks behind the published protocols: the learning-rate factor applied each epoch, and
a method's unmasked posterior-sampling predictor recorded beside its natural selection."""

import math

import pytest
import torch

from conftest import tiny_spec
from slabbench.api import Method, adam
from slabbench.train import run


class _Halt(Method):
    """Dense training whose learning rate drops to 0 after the first epoch."""

    def optimizer(self, model, lr):
        return adam(model.parameters(), lr, 1e-3)

    def lr_factor(self, epoch):
        return 1.0 if epoch == 0 else 0.0


class _Zero(Method):
    """A template method whose 'sampled' predictor is the constant 0 (regression) or uniform."""

    def sampled_predict(self, model, x):
        if self.ctx.task == "regression":
            return torch.zeros(len(x))
        return torch.full((len(x), self.ctx.spec.outputs), 1.0 / self.ctx.spec.outputs)


def _use(monkeypatch, cls):
    from slabbench import train as T
    monkeypatch.setattr(T, "method_class", lambda name: cls)


def test_lr_factor_zero_after_the_first_epoch_equals_one_epoch(monkeypatch):
    _use(monkeypatch, _Halt)
    two = run(tiny_spec("halt", epochs=2, finetune_epochs=0))[0]
    one = run(tiny_spec("halt", epochs=1, finetune_epochs=0))[0]
    _use(monkeypatch, Method)
    plain = run(tiny_spec("plain", epochs=2, finetune_epochs=0))[0]
    for a, b, c in zip(two, one, plain):
        assert a["test_rmse"] == pytest.approx(b["test_rmse"], rel=1e-6)  # lr 0: Adam changes nothing
        assert a["test_rmse"] != pytest.approx(c["test_rmse"], rel=1e-6)  # ... where lr 1 would have


def test_sampled_predictor_recorded_on_the_natural_selection_only(monkeypatch):
    from slabbench.registry import dataset_class
    from slabbench.api import make_params

    _use(monkeypatch, _Zero)
    spec = tiny_spec("zero", seed=3)
    records, _ = run(spec)
    natural = [r for r in records if r["selection"] == "natural"]
    assert len(natural) == 1 and all("test_rmse_sampled" not in r for r in records if r["selection"] == "target")
    ds = dataset_class("simulation")(make_params(dataset_class("simulation").Params, spec["dataset_params"], "d"), 3)
    for split in ("val", "test"):
        y = ds.load(split)[1]
        assert natural[0][f"{split}_rmse_sampled"] == pytest.approx(math.sqrt(float((y ** 2).mean())), rel=1e-6)
    records, _ = run(tiny_spec("zero", dataset="digits"))
    assert records[0]["test_accuracy_sampled"] == pytest.approx(0.1, abs=0.05)  # argmax of ties: class 0
    assert "test_rmse_sampled" not in records[0]


def test_dense_has_no_sampled_predictor_and_spike_slab_has_one():
    dense = run(tiny_spec("dense"))[0]
    assert not any(k.endswith("_sampled") for r in dense for k in r)
    slab = run(tiny_spec("spike_slab"))[0]
    nat = [r for r in slab if r["selection"] == "natural"][0]
    assert nat["test_rmse_sampled"] > 0 and nat["val_rmse_sampled"] > 0


def test_sampled_draws_leave_the_model_averages_as_they_were(monkeypatch):
    """The sampled predictor draws from its own seed and restores torch's generator, so the
    masked BMA records are the same with and without it."""
    from slabbench.registry import method_class

    slab = method_class("spike_slab")
    spec = tiny_spec("spike_slab", seed=2, finetune_epochs=0)
    with_it = run(spec)[0]
    monkeypatch.setattr(slab, "sampled_predict", lambda self, model, x: None)
    without = run(spec)[0]
    assert [r["test_rmse_bma"] for r in with_it] == [r["test_rmse_bma"] for r in without]
    assert "test_rmse_sampled" in with_it[0] and "test_rmse_sampled" not in without[0]



def _row(method, rmse, sampled=None, seed=0, params="{}"):
    return dict(experiment="sim", dataset="simulation", model="mlp", method=method, seed=seed, task="regression",
                selection="natural", target_sparsity=None, test_rmse=rmse, test_rmse_bma=None, test_rmse_sampled=sampled,
                sparsity=0.5, compression=2.0, fnr=0.0, fpr=0.0, nodes_kept="7-7", epochs=10, method_params=params)


def test_natural_table_shows_the_sampled_rmse_only_where_measured():
    import pandas as pd

    from conftest import paper_script

    natural_sparsity = paper_script("natural_sparsity").render
    prov = {"format": 2, "experiments": {"sim": {
        "label": "protocol", "reduced": [], "runs_present": 1, "runs_configured": 1, "config": "c.yaml",
        "config_sha256": "ab" * 32, "run_commits": ["0123456789abcdef"], "devices": ["cpu"], "runs_missing": [],
        "frozen_at": "2026-01-01T00:00:00Z"}}}
    with_it = natural_sparsity(pd.DataFrame([_row("dense", 3.0), _row("spike_slab", 1.25, 1.20, seed=0),
                                             _row("spike_slab", 1.23, 1.16, seed=1)]), prov)
    assert "sampled nets, unmasked" in with_it
    line = [ln for ln in with_it.splitlines() if ln.startswith("| spike_slab")][0]
    assert "1.180 ± 0.028" in line  # mean and sd of 1.20 and 1.16
    without = natural_sparsity(pd.DataFrame([_row("dense", 3.0), _row("spike_slab", 1.25)]), prov)
    assert "sampled" not in without


def test_published_comparison_names_the_official_schedules_when_used():
    import pandas as pd

    from slabbench.published import published_comparison

    def rows(params):
        return pd.DataFrame([dict(_row("sparse_vd", None, params=params), dataset="mnist", task="classification",
                                  test_accuracy=0.98, experiment="mnist-mlp")])

    assert "Adam at a constant learning rate for every method" in published_comparison(rows("{}"), None)
    md = published_comparison(rows('{"lr_schedule": "linear_to0"}'), None)
    assert "for every method" not in md and "`sparse_vd`'s `lr_schedule`" in md


def test_subnormal_floats_flush_to_zero_while_a_job_trains_on_the_cpu(monkeypatch):
    """flush_denormal (default true) flushes subnormal floats on the CPU during the job only;
    false keeps them; the records say which."""
    from slabbench import train as T
    from slabbench.api import Method

    seen = []

    class Probe(Method):
        def after_epoch(self, model, epoch):
            seen.append(float(torch.tensor(1e-39) * 1.0))  # 1e-39 < 1.18e-38: subnormal in float32

    monkeypatch.setattr(T, "method_class", lambda name: Probe)
    on = T.run_stack([tiny_spec("probe", epochs=1, device="cpu")])
    off = T.run_stack([tiny_spec("probe", epochs=1, device="cpu", flush_denormal=False)])
    assert seen == [0.0, pytest.approx(1e-39, rel=1e-3)]
    assert on[0][0][0]["provenance"]["flush_denormal"] is True
    assert off[0][0][0]["provenance"]["flush_denormal"] is False
    assert float(torch.tensor(1e-39) * 1.0) != 0.0  # switched off again after the job
