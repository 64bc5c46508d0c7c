"""paper/: freezing the runs of some experiments with a provenance per experiment (protocol or
REDUCED), merging freezes of different experiments, the tables and the central figure drawn
from the frozen data, and `snakemake paper` redrawing everything without training (one job per
output)."""

import hashlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ROOT, job_counts, paper_script
from slabbench.cli import train_job
from slabbench.config import load_yaml, run_dir, run_specs, validate
from slabbench.paper import PaperError, freeze, load_frozen, protocol_differences, source_line, specs_sha256
from slabbench.published import published_comparison

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
    sim = prov["experiments"]["sim"]
    assert sim["runs_configured"] == 4 and sim["runs_present"] == 3
    assert sim["runs_missing"] == ["sim/spike_slab/seed=1"]  # the stale folder is not taken
    assert sim["label"] == "REDUCED" and sim["reduced"] == ["not an experiment of config/paper.yaml or config/published.yaml"]
    assert sim["config_sha256"] == hashlib.sha256(cfg_path.read_bytes()).hexdigest()
    assert sim["specs_sha256"] == specs_sha256([s for s in specs if s["experiment"] == "sim"])
    assert sim["devices"] and sim["run_commits"] and sim["torch"] and sim["note"] == "test"
    # dense: one natural record; spike_slab: natural + 2 targets
    assert len(runs) == 2 * 1 + 1 * 3
    assert set(zip(runs["method"], runs["seed"])) == {("dense", 0), ("dense", 1), ("spike_slab", 0)}
    line = source_line(prov)
    assert "REDUCED" in line and "3 of 4 runs" in line and "1 configured runs missing" in line


def test_the_published_comparisons_experiments_are_measured_against_config_published_yaml():
    """An experiment the paper grid lacks but config/published.yaml has (the papers' own
    protocols) is `protocol` when its runs are that block's, and REDUCED when shortened."""
    from slabbench.config import load_yaml, run_specs, validate
    from slabbench.paper import protocol_differences, protocol_of

    paper = {"simulation": [{"experiment": "simulation"}]}
    assert protocol_of("simulation", paper) == ("config/paper.yaml", paper["simulation"])
    assert protocol_of("nowhere", paper) == ("config/paper.yaml", [])
    where, proto = protocol_of("published-lenet300", paper)
    assert where == "config/published.yaml" and sorted(s["method"] for s in proto) == ["dense", "l0", "magnitude", "sparse_vd",
                                                                                             "spike_slab"]
    assert protocol_differences(proto, proto, {(s["method"], int(s["seed"])) for s in proto}) == []
    cfg = load_yaml(ROOT / "config" / "published.yaml")
    cfg["experiments"]["published-lenet300"]["epochs"] = 3
    short = [s for s in run_specs(validate(cfg)) if s["experiment"] == "published-lenet300"]
    assert protocol_differences(short, proto, {("dense", 0)}) == ["epochs 3 (protocol 200)",
                                                                 "methods not run: l0, magnitude, sparse_vd, spike_slab"]


def test_protocol_or_reduced_says_what_is_reduced():
    """Against the paper grid's block: epochs, fine-tuning, seeds, methods and method options."""
    def spec(method, seed, **over):
        return dict({"experiment": "e", "method": method, "seed": seed, "dataset": "mnist", "epochs": 200,
                     "finetune_epochs": 20, "batch_size": 100, "device": "cuda", "method_params": {"train_clip": True}}, **over)

    protocol = [spec(m, s) for m in ("dense", "sparse_vd", "l0") for s in range(30)]
    assert protocol_differences(protocol, protocol, {(m, s) for m in ("dense", "sparse_vd", "l0") for s in range(30)}) == []
    used = [spec(m, s, epochs=10, finetune_epochs=1, device="cpu", method_params={"train_clip": False})
            for m in ("dense", "sparse_vd") for s in range(5)]
    got = protocol_differences(used, protocol, {(m, s) for m in ("dense", "sparse_vd") for s in range(5)})
    assert got == ["5 of 30 seeds (0-4)", "epochs 10 (protocol 200)", "finetune_epochs 1 (protocol 20)",
                   "methods not run: l0", "dense train_clip false (protocol true)", "sparse_vd train_clip false (protocol true)"]
    # every seed, one run missing: said as such (the device never counts)
    present = {(m, s) for m in ("dense", "sparse_vd", "l0") for s in range(30)} - {("l0", 3)}
    assert protocol_differences(protocol, protocol, present) == ["1 of the protocol's runs of these methods missing"]


def _train_b(root):
    """Experiment `b` (another config): dense, one seed, trained in the partial grid's folder."""
    cfg = dict(TINY, methods=["dense"], seeds=[0], experiments={"b": dict(TINY["experiments"]["sim"], epochs=1)})
    path = root / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    spec = run_specs(validate(load_yaml(path)))[0]
    folder = root / run_dir(spec)
    if not (folder / "metrics.jsonl").exists():
        train_job(spec, str(folder / "metrics.jsonl"), str(folder / "artefacts.pt"))
    return path


def test_freezing_one_experiment_keeps_the_others(partial_grid, tmp_path):
    """Freeze A (sim), then B (b, another config): A's rows, artefacts and provenance survive;
    re-freezing A replaces A only; the protocol is measured against the grid given."""
    import numpy as np

    root, cfg_path, _ = partial_grid
    b_cfg = _train_b(root)
    out = tmp_path / "data"
    first = freeze(cfg_path, out, experiments=["sim"], results_root=root, note="A")
    rows_a = pd.read_csv(out / "runs.csv")
    prov = freeze(b_cfg, out, experiments=["b"], results_root=root, full_grid=b_cfg, note="B")
    runs, loaded = load_frozen(out, references=False)
    assert sorted(loaded["experiments"]) == ["b", "sim"] and loaded == prov
    assert loaded["experiments"]["sim"] == first["experiments"]["sim"]  # A's provenance as frozen
    pd.testing.assert_frame_equal(runs[runs["experiment"] == "sim"].reset_index(drop=True)[list(rows_a)], rows_a,
                                  check_dtype=False)
    b = loaded["experiments"]["b"]
    assert b["label"] == "protocol" and b["reduced"] == [] and b["config"].endswith("b.yaml") and b["runs_present"] == 1
    assert "protocol" in source_line(prov) and "REDUCED" in source_line(prov)
    meta = json.loads((out / "artefacts.json").read_text())
    assert sorted(meta) == ["b", "sim"] and meta["sim"]["input_pips"] == {"spike_slab": [0]}
    with np.load(out / "pips.npz") as z:
        assert "input_pip/sim/spike_slab/seed=0" in z.files
    # re-freeze A: only A's entry changes
    again = freeze(cfg_path, out, experiments=["sim"], results_root=root, note="A again")
    assert again["experiments"]["b"] == b and again["experiments"]["sim"]["note"] == "A again"
    runs2, _ = load_frozen(out, references=False)
    assert len(runs2) == len(runs) and sorted(set(runs2["experiment"])) == ["b", "sim"]
    with pytest.raises(PaperError, match="unknown experiment.*nope.*have sim"):
        freeze(cfg_path, out, experiments=["nope"], results_root=root)


def test_an_old_provenance_is_migrated_and_kept_beside_a_new_freeze(partial_grid, tmp_path):
    """The single-dict provenance of a table frozen before per-experiment provenance: its
    experiment keeps its rows, REDUCED, with the old config, commits and note."""
    root, cfg_path, _ = partial_grid
    out = tmp_path / "data"
    freeze(cfg_path, out, experiments=["sim"], results_root=root)
    old = pd.read_csv(out / "runs.csv").assign(experiment="old")
    old.to_csv(out / "runs.csv", index=False)
    (out / "provenance.json").write_text(json.dumps({
        "label": "REDUCED run (not the paper grid)", "config": "config/gone.yaml", "config_sha256": "ab" * 32,
        "run_commits": ["0123456789abcdef"], "devices": ["NVIDIA H200"], "runs_configured": 4, "runs_present": 3,
        "runs_missing": ["old/spike_slab/seed=1"], "rows": 5, "note": "old run", "frozen_at": "2026-01-01T00:00:00Z"}))
    runs, migrated = load_frozen(out, references=False)
    entry = migrated["experiments"]["old"]
    assert entry["label"] == "REDUCED" and entry["note"] == "old run" and entry["config"] == "config/gone.yaml"
    assert entry["runs_missing"] == ["old/spike_slab/seed=1"] and "unknown" in entry["reduced"][0]
    prov = freeze(cfg_path, out, experiments=["sim"], results_root=root)
    assert sorted(prov["experiments"]) == ["old", "sim"] and prov["experiments"]["old"]["note"] == "old run"
    assert prov["format"] == 2 and "label" not in prov
    assert sorted(set(pd.read_csv(out / "runs.csv")["experiment"])) == ["old", "sim"]


def test_refresh_reads_again_what_a_frozen_experiment_lacks_against_the_paper_grid_as_it_is_now(tmp_path):
    """An edit of the paper grid's block (here fmnist-lenet300 at 150 epochs) changes what the
    frozen runs lack; --refresh says so without their runs and keeps everything else; an
    experiment whose own config changed since its freeze is refused (refreeze it instead)."""
    import shutil

    from slabbench.paper import refresh_provenance

    data = tmp_path / "data"
    shutil.copytree(ROOT / "paper" / "data", data)
    before = json.loads((data / "provenance.json").read_text())["experiments"]
    grid = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    grid["experiments"]["fmnist-lenet300"]["epochs"] = 150
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(grid))
    after = refresh_provenance(data, ["fmnist-lenet300"], full_grid=tmp_path / "paper.yaml")["experiments"]
    # the frozen runs' epochs: 200 (the protocol) unless the entry already lacks them
    short = [r for r in before["fmnist-lenet300"]["reduced"] if r.startswith("epochs ")]
    assert short in ([], ["epochs 10 (protocol 200)"])
    frozen_epochs = short[0].split()[1] if short else "200"
    assert f"epochs {frozen_epochs} (protocol 150)" in after["fmnist-lenet300"]["reduced"]
    same = {k: v for k, v in before["fmnist-lenet300"].items() if k != "reduced" and not k.startswith("refreshed_")}
    assert {k: after["fmnist-lenet300"][k] for k in same} == same and after["fmnist-lenet300"]["refreshed_at"]
    assert after["mnist-lenet300"] == before["mnist-lenet300"]  # not named: untouched
    prov = json.loads((data / "provenance.json").read_text())
    config = prov["experiments"]["fmnist-lenet300"]["config"]
    prov["experiments"]["fmnist-lenet300"]["config_sha256"] = "0" * 64  # as if its config changed since the freeze
    (data / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(PaperError, match=f"fmnist-lenet300: its config {config} is not the file frozen"):
        refresh_provenance(data, ["fmnist-lenet300"], full_grid=tmp_path / "paper.yaml")


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


def prov_of(*experiments, label="REDUCED", reduced=("epochs 10 (protocol 200)",)):
    """A per-experiment provenance of ``experiments``, each ``label``."""
    one = {"label": label, "reduced": list(reduced) if label == "REDUCED" else [], "runs_present": 2, "runs_configured": 3,
           "config": "c.yaml", "config_sha256": "ab" * 32, "run_commits": ["0123456789abcdef"], "devices": ["NVIDIA H200"],
           "runs_missing": ["x"], "frozen_at": "2026-01-01T00:00:00Z"}
    return {"format": 2, "experiments": {e: dict(one) for e in experiments}, "paper_grid_missing": {}}


PROV = prov_of("mnist-mlp", "mnist-lenet5")


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
    assert "REDUCED" in md and "the L0 script reports the best test error over its epochs" in md and "sparse VD's scripts the final network" in md
    assert lines["dense"].rstrip(" |").endswith("REDUCED: epochs 10 (protocol 200)")  # each row says its provenance


def test_published_comparison_counts_weights_on_a_path_and_the_papers_architecture():
    """n_weights 1,000: seed 0 keeps 100 nonzero weights of which 40 lie on a path, seed 1 keeps
    100 with 60 on a path -> weights kept 10.00 ± 0.00%, on a path 5.00 ± 1.41%; the MLP's
    architecture is seed 0's inputs then hidden units, as Louizos et al. count it."""
    rows = [dict(_row("l0", "natural", None, 0.98, 0.9, seed=s), n_weights=1000, physical_weights=w,
                 features_kept=f, nodes_kept=n) for s, w, f, n in ((1, 60, 250, "90-30"), (0, 40, 266, "88-33"))]
    md = published_comparison(pd.DataFrame(rows), PROV)
    line = next(ln for ln in md.splitlines() if ln.startswith("| mnist LeNet-300-100") and "| l0 " in ln)
    cells = [c.strip() for c in line.split("|")]
    assert cells[4:8] == ["10.00 ± 0.00%", "5.00 ± 1.41%", "10", "266-88-33"]
    # a row made before the record had physical_weights: no number invented
    old = published_comparison(pd.DataFrame([_row("l0", "natural", None, 0.98, 0.9)]), PROV)
    line = next(ln for ln in old.splitlines() if "| l0 " in ln)
    assert [c.strip() for c in line.split("|")][5] == "–"


def test_the_l0_note_follows_the_gates_the_runs_used():
    """The L0 note says the gates of the compared runs (default input), not fixed text."""
    def md(params):
        row = dict(_row("l0", "natural", None, 0.98, 0.9), method_params=params)
        return published_comparison(pd.DataFrame([row]), PROV)

    assert "L0 with `gates: weight` (per-weight gates" in md('{"gates": "weight"}')
    with_input = md('{"gates": "input", "l0_lambda": 0.1}')
    assert "`gates: input` (per input neuron / output channel, as the paper)" in with_input and "gates: weight" not in with_input
    assert "`gates: input`" in md("{}")  # the method's default
    assert "L0 with" not in published_comparison(pd.DataFrame([_row("dense", "natural", None, 0.98, 0.0)]), PROV)
    # two experiments with different gates: each note and option set names its experiment
    rows = [dict(_row("l0", "natural", None, 0.98, 0.9), method_params=p, experiment=e)
            for p, e in (('{"gates": "weight"}', "grid"), ('{"gates": "input"}', "published"))]
    both = published_comparison(pd.DataFrame(rows), PROV)
    assert "reports weights kept, not neurons (`grid`)." in both and "the paper the neurons (`published`)." in both
    assert 'Our `l0` options: `{"gates": "input"}` (`published`), `{"gates": "weight"}` (`grid`).' in both


def test_central_figure_has_a_panel_per_experiment():
    runs = pd.DataFrame([_row(m, "target", t, 0.9 + 0.01 * s, t, seed=s, model=mo)
                         for m in ("magnitude", "spike_slab") for t in (0.5, 0.9, 0.99) for s in (0, 1, 2)
                         for mo in ("mlp", "lenet5")])
    fig = paper_script("error_vs_sparsity").draw(runs, PROV)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert all(ax.get_xscale() == "logit" for ax in visible)
    assert "REDUCED" in " ".join(t.get_text() for t in fig.texts)
    assert all("[REDUCED: epochs 10 (protocol 200)]" in ax.get_title() for ax in visible)  # each panel its provenance


def test_central_figure_is_honest_about_ranges_and_empty_nets():
    """Error bands stay in [0, 100]%; the y-axis spans the means, not one wide band; a net
    with no path from input to output is a cross and is named in the caption; legends sit
    outside the panel."""
    rows = [_row("l0", "target", t, a, t, seed=s) for t, accs in ((0.5, (0.98, 0.97)), (0.9, (0.97, 0.96)),
                                                                   (0.99, (0.02, 0.9))) for s, a in enumerate(accs)]
    rows += [_row("magnitude", "target", t, 0.97 + 0.01 * s, t, seed=s) for t in (0.5, 0.9, 0.99) for s in (0, 1)]
    runs = pd.DataFrame(rows)
    runs.loc[(runs["method"] == "l0") & (runs["target_sparsity"] == 0.99) & (runs["seed"] == 0), "nodes_kept"] = "3-0"
    fig = paper_script("error_vs_sparsity").draw(runs, prov_of("mnist-mlp"))
    ax = fig.axes[0]
    ys = [v[1] for c in ax.collections for p in c.get_paths() for v in p.vertices]
    assert ys and max(ys) <= 100 and min(ys) >= 0  # the l0 band at 0.99 (errors 98 and 10) would pass 100 uncut
    lo, hi = ax.get_ylim()
    assert hi <= 54 * 1.25 + 1e-9 and lo >= 2 / 1.25 - 1e-9  # from the means 2 ... 54 (log axis, 25% margins)
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "X" and len(ln.get_xdata())]
    assert len(crosses) == 1 and list(crosses[0].get_ydata()) == pytest.approx([54.0])
    text = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "mnist-mlp: l0 at 0.99 (1/2)" in text and "cut at the metric's range" in text
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend is not None and legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the panel


def _snakemake(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--configfile",
                           str(ROOT / ".test" / "config.yaml"), "--directory", str(tmp_path), "--cores", "1", *args],
                          capture_output=True, text=True, timeout=600)


def test_snakemake_paper_redraws_everything_from_the_frozen_table(partial_grid, tmp_path):
    root, cfg_path, _ = partial_grid
    freeze(cfg_path, tmp_path / "paper" / "data", results_root=root)
    proc = _snakemake(tmp_path, "paper")
    logs = tmp_path / "results" / "logs" / "paper"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + "".join(
        p.read_text() for p in (logs.glob("*.log") if logs.exists() else []))
    out = tmp_path / "paper"
    for name in ("figures/error_vs_sparsity.png", "figures/error_vs_sparsity.pdf", "tables/results.md", "tables/results.tex",
                 "tables/published_comparison.md", "tables/natural_sparsity.md", "tables/feature_selection.md",
                 "tables/feature_selection.tex", "README.md",
                 *(f"figures/{f}.{ext}" for f in ("input_pips", "simulation_pips", "nodes_kept", "calibration", "train_time")
                   for ext in ("png", "pdf"))):
        assert (out / name).stat().st_size > 200, name
    assert sorted(p.name for p in (out / "data").iterdir()) == ["artefacts.json", "features.csv", "pips.npz",
                                                                 "provenance.json", "runs.csv"]
    assert not (tmp_path / "results" / "runs").exists()  # nothing was trained
    assert "REDUCED" in (out / "tables" / "natural_sparsity.md").read_text()
    assert "sim" in (out / "tables" / "feature_selection.md").read_text()
    # one job per output, whose inputs are its own script, paper/_common.py and the frozen data
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(_snakemake(tmp_path, "-n", "paper"))
    (out / "figures" / "calibration.png").unlink()
    plan = _snakemake(tmp_path, "-n", "paper")
    text = plan.stdout + plan.stderr
    counts = job_counts(text)
    assert counts.get("paper_figure") == 1 and sum(n for r, n in counts.items() if r not in ("paper", "total")) == 1, text[-2000:]
    inputs = text[text.index("rule paper_figure:"):].split("output:")[0]
    assert "paper/calibration.py" in inputs and "paper/_common.py" in inputs and "paper/data/runs.csv" in inputs
    assert not any(f"paper/{other}.py" in inputs for other in ("error_vs_sparsity", "nodes_kept", "results", "claims"))


def test_committed_paper_outputs_match_the_frozen_provenance():
    """The committed paper/ tables name the provenance of the committed run table, experiment
    by experiment, and each experiment's config still configures its runs as frozen."""
    runs, prov = load_frozen(ROOT / "paper" / "data")
    assert sorted(prov["experiments"]) == sorted(runs["experiment"].unique())
    for exp, entry in prov["experiments"].items():
        g = runs[runs["experiment"] == exp]
        assert entry["runs_present"] == len(set(zip(g["method"], g["seed"]))), exp
        assert set(entry["run_commits"]) == set(g["git_commit"].astype(str).unique()), exp
        assert entry["label"] in ("protocol", "REDUCED") and (entry["label"] == "protocol") == (entry["reduced"] == []), exp
        # the committed config is the one the experiment was frozen with (re-freeze after editing its block)
        specs = [s for s in run_specs(validate(load_yaml(ROOT / entry["config"]))) if s["experiment"] == exp]
        assert specs_sha256(specs) == entry["specs_sha256"], exp
    text = (ROOT / "paper" / "tables" / "results.md").read_text()
    assert source_line(prov) in text


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
    from slabbench.paper import with_source_md

    runs, prov = load_frozen(ROOT / "paper" / "data")
    tables = ROOT / "paper" / "tables"
    assert (tables / "published_comparison.md").read_text() == published_comparison(runs, prov)
    assert (tables / "natural_sparsity.md").read_text() == paper_script("natural_sparsity").render(runs, prov)
    assert (tables / "results.md").read_text() == with_source_md(paper_script("results").render(runs, prov, "markdown"), prov)


def test_committed_readme_is_what_claims_py_makes_of_the_committed_data():
    """Every number paper/README.md quotes is generated from paper/data/ (paper/claims.py over
    paper/README.template.md): nobody typed a claim that the data does not say."""
    claims = paper_script("claims")
    runs, prov = load_frozen(ROOT / "paper" / "data")
    made = claims.render((ROOT / "paper" / "README.template.md").read_text(), claims.claims(runs, prov, ROOT / "paper" / "data"))
    assert (ROOT / "paper" / "README.md").read_text() == made


def test_wall_time_adds_each_runs_share_and_its_targets_fine_tuning_per_experiment_and_device():
    """Two seeds of one CPU job (900 s and 2,700 s of training; fine-tuning 60 s per target, two
    targets each) and a per-target GPU method whose three trainings got 10 s each (equal shares
    of one stack: three models, not one), its fine-tuning not recorded."""
    import pandas as pd

    claims = paper_script("claims")
    rows = [dict(experiment="a", method="m", seed=s, selection=sel, device="cpu", train_seconds=t,
                 finetune_seconds=(60.0 if sel == "target" else None))
            for s, t in ((0, 900.0), (1, 2700.0)) for sel in ("natural", "target", "target")]
    rows += [dict(experiment="b", method="spike_slab_target", seed=0, selection="target", device="cuda:0",
                  train_seconds=10.0, finetune_seconds=None, variant_of="spike_slab",
                  method_params='{"prior_from_target": true}') for _ in range(3)]
    prov = {"experiments": {"a": {"devices": ["AMD EPYC (AVX512)"]}, "b": {"devices": ["NVIDIA H200"]}}}
    lines = claims.wall_time(pd.DataFrame(rows), prov).splitlines()
    assert lines[0].startswith("- `a` (AMD EPYC (AVX512)): 2 runs, 1.00 h of training and 4.0 min of fine-tuning in all, "
                               "900–2700 s of training per run")
    assert lines[1].startswith("- `b` (NVIDIA H200): 1 run, 30 s of training in all (fine-tuning not recorded), ")
    assert lines[2].startswith("- Together, the 1 experiment trained on a CPU (`a`): 1.07 h of training and fine-tuning, ")
    assert lines[3].startswith("- Together, the 1 experiment trained on a GPU (`b`): 30 s of training and fine-tuning "
                               "(fine-tuning not recorded for `b`)")


def _pip_artefacts(n_inputs, seeds=2):
    import torch
    return [{"pip_input": torch.linspace(0, 1, n_inputs), "pip_weight": {"fc.weight": torch.rand(3, n_inputs)}}
            for _ in range(seeds)]


@pytest.mark.parametrize("support,labels", [((0, 1), ["noise features", "true features"]),
                                            ((0, 1, 2, 3, 4), ["true features"]),
                                            (None, [])])
def test_pip_figure_legend_names_only_the_groups_drawn(support, labels):
    """With no noise inputs (the 5-input simulation diagnostic) the legend used to show a
    'noise features' patch in the colour of the true ones and an empty 'true features' entry; with
    no known support (real data) it called every input a noise feature: now no legend, and the
    title says the true features are unknown."""
    from slabbench.plotting import plot_pips

    fig = plot_pips(_pip_artefacts(5), true_support=support, title="sim-5")
    assert fig.get_suptitle() == "sim-5"  # the experiment's title, not the bar panel's
    ax = fig.axes[0]
    if labels:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    else:
        assert ax.get_legend() is None and "true features unknown" in ax.get_title()
    heights = sorted(round(p.get_height(), 6) for c in ax.containers for p in c)
    assert heights == [0.0, 0.25, 0.5, 0.75, 1.0]  # one bar per input, mean over seeds


def test_targets_clause_names_a_target_a_method_did_not_hit():
    """l0 asked for 0.5 keeps its own gates at 0.6 (as on MNIST): the lowest mean at 0.5 is
    then a comparison at another sparsity, and the clause says so; magnitude hits 0.5 and 0.9
    (within 0.005) and is not named."""
    import pandas as pd

    claims = paper_script("claims")
    rows = [dict(experiment="e", method=m, seed=s, selection="target", target_sparsity=t, sparsity=r,
                 task="classification", test_accuracy=acc)
            for s in (0, 1)
            for m, t, r, acc in (("magnitude", 0.5, 0.5, 0.98), ("magnitude", 0.9, 0.902, 0.97),
                                 ("l0", 0.5, 0.6, 0.99), ("l0", 0.9, 0.9, 0.96))]
    text = claims._targets_clause(pd.DataFrame(rows), [0.5, 0.9], "At targets")
    assert "lowest mean by target: 0.5 `l0`, 0.9 `magnitude`" in text
    assert text.endswith(" Targets a method did not hit, its runs compared at their mean sparsity instead: 0.5 `l0` at 0.6.")
