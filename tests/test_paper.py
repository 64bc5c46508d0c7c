"""paper/: freezing a run table with its provenance, the tables and the central figure drawn
from it, and `snakemake paper` redrawing everything without training."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from slabbench.cli import train_job
from slabbench.config import load_yaml, run_dir, run_specs, validate
from slabbench.paper import PaperError, error_vs_sparsity, freeze, load_frozen, published_comparison, source_line

TINY = {
    "device": "cpu", "seeds": [0, 1], "sparsities": [0.5, 0.9], "methods": ["dense", "spike_slab"],
    "experiments": {"sim": {"dataset": "simulation", "dataset_params": {"p": 8, "n_train": 64, "n_val": 32, "n_test": 64},
                            "model": "mlp", "model_params": {"hidden": [6]}, "epochs": 2, "batch_size": 32, "lr": 0.01}},
}


@pytest.fixture(scope="module")
def partial_grid(tmp_path_factory):
    """A 4-run grid of which 3 runs exist, plus one run folder made with another spec."""
    root = tmp_path_factory.mktemp("grid")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    specs = run_specs(validate(load_yaml(cfg_path)))
    done = specs[:3]
    for spec in done:
        folder = root / run_dir(spec)
        train_job(spec, str(folder / "metrics.jsonl"), str(folder / "artefacts.pt"))
    stale = dict(specs[3], epochs=1)  # same folder as the 4th run, another spec
    folder = root / run_dir(stale)
    train_job(stale, str(folder / "metrics.jsonl"), str(folder / "artefacts.pt"))
    return root, cfg_path, specs


def test_freeze_partial_records_what_is_present_and_missing(partial_grid, tmp_path):
    root, cfg_path, specs = partial_grid
    prov = freeze(cfg_path, tmp_path / "data", results_root=root, full_grid=ROOT / "config" / "paper.yaml", note="test")
    runs, prov2 = load_frozen(tmp_path / "data")
    assert prov2 == prov
    assert prov["runs_configured"] == 4 and prov["runs_present"] == 3
    assert prov["runs_missing"] == ["sim/spike_slab/seed=1"]  # the stale folder is not taken
    assert prov["label"].startswith("REDUCED")
    assert prov["config_sha256"] == __import__("hashlib").sha256(cfg_path.read_bytes()).hexdigest()
    assert prov["devices"] and prov["run_commits"] and prov["note"] == "test"
    # dense: one natural record; spike_slab: natural + 2 targets
    assert len(runs) == 2 * 1 + 1 * 3
    assert set(zip(runs["method"], runs["seed"])) == {("dense", 0), ("dense", 1), ("spike_slab", 0)}
    line = source_line(prov)
    assert "REDUCED" in line and "3 of 4 runs" in line and "1 configured runs missing" in line


def test_freeze_refuses_an_empty_grid(tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    with pytest.raises(PaperError, match="no runs to freeze"):
        freeze(cfg_path, tmp_path / "data", results_root=tmp_path)
    with pytest.raises(PaperError, match="freeze a run table first"):
        load_frozen(tmp_path / "nothing")


def _row(method, selection, target, accuracy, sparsity, seed=0, model="mlp"):
    return dict(experiment=f"mnist-{model}", dataset="mnist", model=model, method=method, seed=seed, task="classification",
                selection=selection, target_sparsity=target, test_accuracy=accuracy, sparsity=sparsity,
                nodes_kept="300-100", epochs=10, test_accuracy_bma=None, test_rmse=None, test_rmse_bma=None,
                compression=1 / (1 - sparsity) if sparsity < 1 else None, fnr=None, fpr=None)


PROV = {"label": "REDUCED run (not the paper grid)", "runs_present": 2, "runs_configured": 3, "config": "c.yaml",
        "config_sha256": "ab" * 32, "run_commits": ["0123456789abcdef"], "devices": ["NVIDIA H200"], "runs_missing": ["x"],
        "frozen_at": "2026-01-01T00:00:00Z"}


def test_published_comparison_by_hand():
    runs = pd.DataFrame([
        _row("dense", "natural", None, 0.98, 0.0, seed=0), _row("dense", "natural", None, 0.97, 0.0, seed=1),
        _row("magnitude", "target", 0.9, 0.975, 0.9), _row("magnitude", "target", 0.5, 0.99, 0.5),
        _row("magnitude", "target", 0.99, 0.9, 0.99),
    ])
    md = published_comparison(runs, PROV)
    lines = {ln.split("|")[2].strip(): ln for ln in md.splitlines() if ln.startswith("| mnist LeNet-300-100")}
    # dense: error 2.0 and 3.0 -> 2.50 ± 0.71; published 1.64
    assert "2.50 ± 0.71 (natural, 2 seeds)" in lines["dense"] and "1.64" in lines["dense"]
    # magnitude: the target nearest to Han et al.'s 8% kept is 0.9 (10% kept), error 2.5
    assert "2.50 (target 0.9, 1 seeds)" in lines["magnitude"] and "10.00%" in lines["magnitude"]
    assert "not run" in lines["sparse_vd"]
    assert "REDUCED" in md and "best test error over epochs" in md


def test_central_figure_has_a_panel_per_experiment():
    runs = pd.DataFrame([_row(m, "target", t, 0.9 + 0.01 * s, t, seed=s, model=mo)
                         for m in ("magnitude", "spike_slab") for t in (0.5, 0.9, 0.99) for s in (0, 1, 2)
                         for mo in ("mlp", "lenet5")])
    fig = error_vs_sparsity(runs, PROV)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert all(ax.get_xscale() == "logit" for ax in visible)
    assert "REDUCED" in " ".join(t.get_text() for t in fig.texts)


def test_snakemake_paper_redraws_everything_from_the_frozen_table(partial_grid, tmp_path):
    root, cfg_path, _ = partial_grid
    freeze(cfg_path, tmp_path / "paper" / "data", results_root=root)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--configfile",
                           str(ROOT / ".test" / "config.yaml"), "--directory", str(tmp_path), "--cores", "1", "paper"],
                          capture_output=True, text=True, timeout=600)
    log = (tmp_path / "results" / "logs" / "paper.log")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + (log.read_text() if log.exists() else "")
    out = tmp_path / "paper"
    for name in ("figures/error_vs_sparsity.png", "figures/error_vs_sparsity.pdf", "tables/results.md", "tables/results.tex",
                 "tables/published_comparison.md", "tables/natural_sparsity.md", "tables/feature_selection.md",
                 *(f"figures/{f}.{ext}" for f in ("input_pips", "simulation_pips", "nodes_kept", "calibration", "train_time")
                   for ext in ("png", "pdf"))):
        assert (out / name).stat().st_size > 200, name
    assert sorted(p.name for p in (out / "data").iterdir()) == ["artefacts.json", "features.csv", "pips.npz",
                                                                 "provenance.json", "runs.csv"]
    assert not (tmp_path / "results" / "runs").exists()  # nothing was trained
    assert "REDUCED" in (out / "tables" / "natural_sparsity.md").read_text()
    assert "sim" in (out / "tables" / "feature_selection.md").read_text()


def test_committed_paper_outputs_match_the_frozen_provenance():
    """The committed paper/ tables name the provenance of the committed run table."""
    runs, prov = load_frozen(ROOT / "paper" / "data")
    assert prov["runs_present"] == len(set(zip(runs["experiment"], runs["method"], runs["seed"])))
    assert set(prov["run_commits"]) == set(runs["git_commit"].astype(str).unique())
    text = (ROOT / "paper" / "tables" / "results.md").read_text()
    assert source_line(prov) in text
    # the committed config is the one the table was frozen with (re-freeze after editing it)
    assert __import__("hashlib").sha256((ROOT / prov["config"]).read_bytes()).hexdigest() == prov["config_sha256"]


def test_freeze_refuses_runs_outside_the_config(partial_grid, tmp_path):
    root, cfg_path, _ = partial_grid
    freeze(cfg_path, tmp_path / "a", results_root=root)
    runs = pd.read_csv(tmp_path / "a" / "runs.csv")
    runs.loc[0, "experiment"] = "other"
    runs.to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(PaperError, match="not in .*tiny.yaml's grid .*other/"):
        freeze(cfg_path, tmp_path / "b", runs_csv=tmp_path / "runs.csv")


def test_committed_tables_are_what_the_scripts_draw_from_the_committed_table():
    """Nobody edited a committed table by hand, and the code still draws the same tables."""
    from slabbench.paper import natural_sparsity

    runs, prov = load_frozen(ROOT / "paper" / "data")
    tables = ROOT / "paper" / "tables"
    assert (tables / "published_comparison.md").read_text() == published_comparison(runs, prov)
    assert (tables / "natural_sparsity.md").read_text() == natural_sparsity(runs, prov)


def _pip_artefacts(n_inputs, seeds=2):
    import torch
    return [{"pip_input": torch.linspace(0, 1, n_inputs), "pip_weight": {"fc.weight": torch.rand(3, n_inputs)}}
            for _ in range(seeds)]


@pytest.mark.parametrize("support,labels", [((0, 1), ["noise features", "true features"]),
                                            ((0, 1, 2, 3, 4), ["true features"]),
                                            (None, ["noise features"])])
def test_pip_figure_legend_names_only_the_groups_drawn(support, labels):
    """With no noise inputs (the 5-input simulation diagnostic) the legend used to show a
    'noise features' patch in the colour of the true ones and an empty 'true features' entry."""
    from slabbench.plotting import plot_pips

    fig = plot_pips(_pip_artefacts(5), true_support=support)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    heights = sorted(round(p.get_height(), 6) for c in ax.containers for p in c)
    assert heights == [0.0, 0.25, 0.5, 0.75, 1.0]  # one bar per input, mean over seeds
