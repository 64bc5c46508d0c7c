"""Nothing dropped or pooled in silence (issue 14): diverged runs, per-metric counts, record
validation, duplicated runs, mixed settings, one figure point per target, compression as the
ratio of the means, the constant-predictor reference, freeze's spec check, the published
comparison per experiment."""

import json
import math

import pandas as pd
import pytest
import yaml

from slabbench.aggregate import PoolingError, check_runs, records_table, spec_setting, summary_table
from slabbench.io import RecordError, read_jsonl, write_records
from slabbench.paper import PaperError, freeze
from slabbench.published import published_comparison
from slabbench.plotting import plot_experiment, target_points
from slabbench.tables import render

SPEC = {"experiment": "sim", "dataset": "simulation", "model": "mlp", "method": "dense", "seed": 0, "sparsities": [0.5],
        "epochs": 2, "batch_size": 32, "lr": 0.01, "method_params": {}, "finetune_epochs": 0}
PROV = {"slabbench": "0.1.0", "python": "3.11", "torch": "2", "numpy": "2", "git_commit": "abc", "device_name": "cpu"}


def record(seed=0, method="dense", rmse=1.0, selection="natural", target=None, sparsity=0.0, spec=None, **over):
    """A schema-valid regression record of a p-7-1 net (70 + 7 weights)."""
    spec = dict(SPEC, method=method, seed=seed, **(spec or {}))
    nnz = round(77 * (1 - sparsity))
    rec = dict(experiment=spec["experiment"], dataset="simulation", model="mlp", method=method, seed=seed, task="regression",
               selection=selection, target_sparsity=target, sparsity=sparsity, sparsity_all=sparsity,
               compression=77 / nnz if nnz else math.inf, n_weights=77, nonzero_weights=nnz, test_rmse=rmse,
               test_nll=0.5 * (rmse or 0.0) ** 2 + 0.919, flops_kept=1 - sparsity, nodes_kept=[7], features_kept=10,
               train_seconds=1.0, device="cpu", spec=spec, provenance=PROV, finetune_epochs=spec["finetune_epochs"] if selection == "target" else 0,
               test_rmse_constant=3.0)
    rec.update(over)
    return rec


def written(tmp_path, records):
    write_records(tmp_path / "m.jsonl", records)
    return read_jsonl(tmp_path / "m.jsonl")


def test_a_diverged_run_is_counted_and_shown_not_averaged_away(tmp_path):
    """test RMSE [1.0, 1.2, NaN]: mean 1.10 over n = 2, with the third run shown as diverged."""
    recs = written(tmp_path, [record(0, rmse=1.0), record(1, rmse=1.2), record(2, rmse=math.nan, test_nll=math.nan)])
    assert recs[2]["test_rmse"] is None and recs[2]["nonfinite"] == {"test_nll": "nan", "test_rmse": "nan"}
    runs = records_table(recs)
    assert runs["nan_metrics"].tolist() == ["", "", "test_nll;test_rmse"]
    csv = tmp_path / "runs.csv"
    runs.to_csv(csv, index=False)
    runs = pd.read_csv(csv)  # what the table and figure jobs read
    row = summary_table(runs).iloc[0]
    assert row["seeds"] == 3 and row["diverged"] == 1
    assert row["test_rmse_n"] == 2 and row["test_rmse_n_nan"] == 1 and row["test_rmse_mean"] == pytest.approx(1.1)
    assert row["sparsity_n"] == 3 and row["sparsity_n_nan"] == 0
    md = render(runs, "markdown")
    assert "1.100 ± 0.141 (n = 2; 1 of 3 diverged)" in md
    all_bad = runs.assign(test_rmse=math.nan, nan_metrics="test_rmse")
    assert "| diverged (3 of 3) " in render(all_bad, "markdown")


def test_a_float16_overflow_is_counted_for_its_metric_not_as_a_diverged_run(tmp_path):
    """Seed 1's float16 form overflowed (NaN test_rmse_fp16) in a net that trained well; seed 2
    diverged: one diverged run, and the fp16 metric's mean is over seed 0 alone (n = 1, 2 NaN)."""
    recs = written(tmp_path, [record(0, test_rmse_fp16=1.25), record(1, rmse=1.2, test_rmse_fp16=math.nan),
                              record(2, rmse=math.nan, test_nll=math.nan, test_rmse_fp16=math.nan)])
    runs = records_table(recs)
    assert runs["nan_metrics"].tolist() == ["", "test_rmse_fp16", "test_nll;test_rmse;test_rmse_fp16"]
    row = summary_table(runs).iloc[0]
    assert row["diverged"] == 1 and row["test_rmse_n"] == 2
    assert row["test_rmse_fp16_n"] == 1 and row["test_rmse_fp16_n_nan"] == 2 and row["test_rmse_fp16_mean"] == 1.25


def test_the_deploy_table_shows_the_fp16_metric_only_over_every_seed(tmp_path):
    """Seeds 0 and 1 with RMSE 1.0 and 1.2: their fp16 RMSEs 1.1 and 1.3 give 1.200 beside 1.100;
    with seed 1's missing (a run recorded before the field) the cell is "–", not seed 0's 1.100."""
    from slabbench.deploy import render

    phys = dict(model_bytes_dense=900, model_bytes_pruned=800, model_bytes_sparse=700, model_bytes_sparse_fp16=600,
                physical_empty=False, physical_widths=[7, 1])
    both = records_table(written(tmp_path, [record(0, rmse=1.0, test_rmse_fp16=1.1, **phys),
                                            record(1, rmse=1.2, test_rmse_fp16=1.3, **phys)]))
    row = next(l for l in render(both).splitlines() if l.startswith("| dense"))
    assert [c.strip() for c in row.split("|")[3:5]] == ["1.100", "1.200"], row
    one = records_table(written(tmp_path, [record(0, rmse=1.0, test_rmse_fp16=1.1, **phys), record(1, rmse=1.2, **phys)]))
    row = next(l for l in render(one).splitlines() if l.startswith("| dense"))
    assert [c.strip() for c in row.split("|")[3:5]] == ["1.100", "–"], row

def test_records_are_checked_against_the_schema_when_written(tmp_path):
    with pytest.raises(RecordError, match="sim/dense/seed=0.*test_rmse.*-1"):
        write_records(tmp_path / "a.jsonl", [record(rmse=-1.0)])
    with pytest.raises(RecordError, match="test_rmse null without being named in 'nonfinite'"):
        write_records(tmp_path / "b.jsonl", [record(rmse=None, test_nll=1.0)])
    with pytest.raises(RecordError, match="required property"):
        write_records(tmp_path / "c.jsonl", [{k: v for k, v in record().items() if k != "test_rmse"}])
    assert not list(tmp_path.iterdir())  # nothing was written


def test_a_fully_pruned_net_has_infinite_compression_and_the_table_the_ratio_of_means(tmp_path):
    """Sparsities 1.0 and 0.9: the mean of the ratios is inf (77/0), the compression the mean
    sparsity 0.95 implies is 20×; 0.95 and 0.97 give 25× (the mean of the ratios: 26.7×)."""
    recs = written(tmp_path, [record(0, selection="target", target=0.9, sparsity=1.0, method="magnitude"),
                              record(1, selection="target", target=0.9, sparsity=0.9, method="magnitude")])
    assert recs[0]["compression"] is None and recs[0]["nonfinite"] == {"compression": "inf"}
    runs = records_table(recs)
    assert runs["compression"].tolist()[0] == math.inf
    row = summary_table(runs).iloc[0]
    assert row["compression_n_inf"] == 1 and row["compression_of_means"] == pytest.approx(20.0)
    md = render(runs, "markdown")
    assert "compression × (of means)" in md and "| 20.0 " in md.replace("20.0  ", "20.0 ")
    runs2 = runs.assign(sparsity=[0.95, 0.97])
    assert summary_table(runs2).iloc[0]["compression_of_means"] == pytest.approx(25.0)


def test_a_duplicated_seed_is_refused():
    recs = [record(0), record(0, rmse=2.0), record(1)]
    with pytest.raises(PoolingError, match="sim/dense/0/natural"):
        records_table(recs)
    runs = pd.DataFrame([record(0), record(1)]).assign(nan_metrics="")
    dup = pd.concat([runs, runs.iloc[:1]])
    for f in (summary_table, check_runs, lambda r: render(r, "markdown"), plot_experiment):
        with pytest.raises(PoolingError, match="more than once"):
            f(dup)


def test_settings_are_kept_apart_in_the_summary_and_refused_in_tables_and_figures():
    """Two fine-tuning budgets (or method options) of one experiment × method must not be
    averaged under one label."""
    a = [record(s, method="l0", selection="target", target=0.5, sparsity=0.5, spec={"finetune_epochs": 0}) for s in (0, 1)]
    b = [record(s, method="l0", selection="target", target=0.5, sparsity=0.5, rmse=2.0, spec={"finetune_epochs": 5})
         for s in (2, 3)]
    runs = records_table(a + b)
    summary = summary_table(runs)
    assert len(summary) == 2 and sorted(summary["finetune_epochs"]) == [0, 5]
    assert sorted(summary["test_rmse_mean"]) == [1.0, 2.0]
    for f in (check_runs, lambda r: render(r, "markdown"), plot_experiment):
        with pytest.raises(PoolingError, match="sim/l0.*different (finetune_epochs|setting)"):
            f(runs)
    c = [record(s, method="l0", spec={"method_params": {"l0_lambda": s + 1.0}}) for s in (0, 1)]
    with pytest.raises(PoolingError, match="different method_params"):
        check_runs(records_table(c))


def test_figure_points_are_grouped_by_target_not_by_the_sparsity_reached():
    """L0 targets 0.5, 0.8, 0.9 that all stop at 0.92 stay three points of two seeds each."""
    rows = [record(s, method="l0", selection="target", target=t, sparsity=0.92 + 0.001 * s, rmse=1 + t)
            for t in (0.5, 0.8, 0.9) for s in (0, 1)]
    runs = records_table(rows)
    p = target_points(runs, "test_rmse")
    assert p["target_sparsity"].tolist() == [0.5, 0.8, 0.9] and p["n"].tolist() == [2, 2, 2]
    assert p["mean"].tolist() == pytest.approx([1.5, 1.8, 1.9]) and p["reached"].tolist() == pytest.approx([0.9205] * 3)
    fig = plot_experiment(runs)
    line = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "l0"][0]
    assert len(line.get_xdata()) == 3
    # the constant predictor is drawn as a reference line (regression)
    assert any(ln.get_label().startswith("constant predictor") for ln in fig.axes[0].get_lines())
    assert "Student-t 95% CI" in fig.axes[0].get_legend().get_title().get_text()


def test_regression_tables_show_the_constant_predictor():
    runs = records_table([record(s, rmse=4.5, method="l0", selection="target", target=0.8, sparsity=0.8) for s in (0, 1)])
    md = render(runs, "markdown")
    line = [ln for ln in md.splitlines() if ln.startswith("| constant (training mean)")][0]
    assert "3.000 ± 0.000" in line and "reference" in line


def _classification_row(experiment, method, seed, accuracy, epochs):
    return dict(experiment=experiment, dataset="mnist", model="mlp", method=method, seed=seed, task="classification",
                selection="natural", target_sparsity=None, test_accuracy=accuracy, sparsity=0.0, nodes_kept="300-100",
                epochs=epochs, method_params="{}", finetune_epochs=0)


def test_published_comparison_keeps_experiments_apart():
    runs = pd.DataFrame([_classification_row("mnist-short", "dense", s, 0.98, 10) for s in (0, 1)]
                        + [_classification_row("mnist-long", "dense", s, 0.99, 200) for s in (0, 1)])
    md = published_comparison(runs, None)
    dense = [ln for ln in md.splitlines() if "| dense " in ln and "LeNet-300-100" in ln]
    assert len(dense) == 2
    assert any("(mnist-long)" in ln and "1.00 ± 0.00" in ln and "| 200 " in ln for ln in dense)
    assert any("(mnist-short)" in ln and "2.00 ± 0.00" in ln for ln in dense)


TINY = {"device": "cpu", "seeds": [0, 1], "sparsities": [0.5], "methods": ["dense"],
        "experiments": {"sim": {"dataset": "simulation", "dataset_params": {"p": 8, "n_train": 64, "n_val": 32, "n_test": 64},
                                "model": "mlp", "model_params": {"hidden": [6]}, "epochs": 2, "batch_size": 32, "lr": 0.01}}}


def test_freeze_checks_each_run_against_its_configured_spec(tmp_path):
    from slabbench.config import load_yaml, run_specs, validate

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    specs = run_specs(validate(load_yaml(cfg)))
    prov = dict(git_commit="abc", git_dirty=False, device_name="cpu", torch_version="2")
    rows = [dict(experiment="sim", dataset="simulation", model="mlp", method="dense", seed=s["seed"], task="regression",
                 selection="natural", target_sparsity=None, epochs=2, finetune_epochs=0, method_params="{}",
                 setting=spec_setting(json.loads(json.dumps(s))), **prov) for s in specs]
    pd.DataFrame(rows).to_csv(tmp_path / "ok.csv", index=False)
    assert freeze(cfg, tmp_path / "a", runs_csv=tmp_path / "ok.csv")["experiments"]["sim"]["runs_present"] == 2
    rows[1]["epochs"] = 200  # made with another budget than the config says
    pd.DataFrame(rows).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PaperError, match="sim/dense/seed=1: epochs 200 != 2"):
        freeze(cfg, tmp_path / "b", runs_csv=tmp_path / "bad.csv")
    rows[1]["epochs"] = 2
    rows[1]["setting"] = "0" * 12  # any other spec value (lr, batch size, ...)
    pd.DataFrame(rows).to_csv(tmp_path / "bad2.csv", index=False)
    with pytest.raises(PaperError, match="sim/dense/seed=1: setting 000000000000 != "):
        freeze(cfg, tmp_path / "c", runs_csv=tmp_path / "bad2.csv")


def test_a_diverged_classifier_is_counted_in_the_figure(tmp_path):
    """Accuracy NaN for a diverged seed (never argmax-of-NaN's class 0): the figure draws the
    other seeds and names the diverged run in the legend (table read back from a CSV)."""
    rows = [dict(_classification_row("mnist", "magnitude", s, 0.9 if s else math.nan, 10), selection="target",
                 target_sparsity=t, sparsity=t, nan_metrics="test_accuracy;test_nll" if s == 0 else "")
            for t in (0.5, 0.9) for s in (0, 1, 2)]
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    runs = pd.read_csv(tmp_path / "runs.csv")
    fig = plot_experiment(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "magnitude (2 diverged runs not drawn)" in labels
    ok = runs.assign(nan_metrics=math.nan, test_accuracy=0.9)  # no name at all: an all-NaN float column
    assert "magnitude" in [t.get_text() for t in plot_experiment(ok).axes[0].get_legend().get_texts()]


def test_a_cpu_run_records_which_cpu_and_instruction_set():
    """Two x86_64 machines can train the same spec to different numbers (kernels of another
    vector instruction set round differently): a record names the CPU model and the
    instruction set torch dispatches to, not just the architecture."""
    import torch

    from slabbench.provenance import cpu_name, provenance

    isa = torch.backends.cpu.get_cpu_capability()
    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: fpu\n"
    assert cpu_name(info) == f"AMD EPYC 7763 64-Core Processor ({isa})"
    assert cpu_name("Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n") == f"Raspberry Pi 4 Model B Rev 1.4 ({isa})"
    both = "Model\t\t: Raspberry Pi 5\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n"
    assert cpu_name(both) == f"ARMv8 Processor rev 1 (v8l) ({isa})"  # the processor before the board
    assert cpu_name("").endswith(f" ({isa})") and len(cpu_name("")) > len(f" ({isa})")  # falls back to the platform
    assert provenance(torch.device("cpu"))["device_name"] == cpu_name()
