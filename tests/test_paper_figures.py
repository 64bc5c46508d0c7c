"""The paper figures beyond the central one (input-pixel PIP maps, simulation PIPs and true
features found, units kept per layer, calibration, training time), drawn from a frozen
fixture whose numbers are known by hand; what a table frozen before the artefacts existed
lacks is said in the figure, not a crash; and paper/run_grid.sh runs a shrunken paper grid
end to end (train, freeze, redraw) and continues it when run again."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, job_counts, paper_script
from slabbench.paper import REFREEZE, _write_npz, load_artefacts

_input, _sim, _nodes, _calib, _time = (paper_script(n) for n in ("input_pips", "simulation_pips", "nodes_kept", "calibration",
                                                                   "train_time"))
input_pip_rows, kernel_mosaic, input_pips = _input.input_pip_rows, _input.kernel_mosaic, _input.draw
found_rates, rate_points, simulation_pips = _sim.found_rates, _sim.rate_points, _sim.draw
layer_widths, nodes_kept, calibration = _nodes.layer_widths, _nodes.draw, _calib.draw
run_seconds, train_time = _time.run_seconds, _time.draw

_ONE = {"label": "REDUCED", "reduced": ["epochs 2 (protocol 200)"], "runs_present": 4, "runs_configured": 5, "config": "c.yaml",
        "config_sha256": "ab" * 32, "run_commits": ["0123456789abcdef"], "devices": ["cpu"], "runs_missing": ["x"],
        "frozen_at": "2026-01-01T00:00:00Z"}
PROV = {"format": 2, "experiments": {e: dict(_ONE) for e in ("mnist-x", "sim", "mnist-l5")},
        "paper_grid_missing": {"cifar10-vgg": "not run: needs the CIFAR-10 files", "diabetes": "not run"}}


def _rec(exp, method, seed, selection, target, sparsity, nodes, task="classification", **kw):
    row = dict(experiment=exp, dataset="mnist" if task == "classification" else "simulation", model="mlp", method=method,
               seed=seed, task=task, selection=selection, target_sparsity=target, sparsity=sparsity, nodes_kept=nodes,
               test_accuracy=0.9 if task == "classification" else None, test_rmse=None if task == "classification" else 1.2,
               test_nll=0.3, ece=0.02 if task == "classification" else None, train_seconds=10.0, device_name="cpu",
               epochs=2, finetune_epochs=0 if selection == "natural" else 1, fnr=None, fpr=None)
    row.update(kw)
    return row


def hand_runs() -> pd.DataFrame:
    """mnist-x: dense (10-5 units), spike_slab (natural + targets 0.5, 0.9), magnitude trained
    once per target (2 s and 3 s); sim: dense and spike_slab over 3 replicates."""
    rows = []
    for s in (0, 1):
        rows.append(_rec("mnist-x", "dense", s, "natural", None, 0.0, "10-5", train_seconds=4.0))
        rows.append(_rec("mnist-x", "spike_slab", s, "natural", None, 0.95, "6-4", train_seconds=8.0, test_nll_bma=0.25))
        rows.append(_rec("mnist-x", "spike_slab", s, "target", 0.5, 0.5, "10-5", train_seconds=8.0, ece=0.01 * (s + 1)))
        rows.append(_rec("mnist-x", "spike_slab", s, "target", 0.9, 0.9, f"{5 + s}-{5 - s}", train_seconds=8.0))
        rows.append(_rec("mnist-x", "magnitude", s, "target", 0.5, 0.5, "10-5", train_seconds=2.0))
        rows.append(_rec("mnist-x", "magnitude", s, "target", 0.9, 0.9, "5-5", train_seconds=3.0))
    for s in (0, 1, 2):
        rows.append(_rec("sim", "dense", s, "natural", None, 0.0, "7", task="regression", fnr=0.0, fpr=1.0))
        rows.append(_rec("sim", "spike_slab", s, "natural", None, 0.9, "3", task="regression", fnr=0.2, fpr=0.0))
    return pd.DataFrame(rows)


#: spike_slab's natural selections of the 3 simulation replicates (true features 0..4 of 8)
SELECTED = {0: [0, 1, 2, 3, 4], 1: [1, 2, 3, 4, 7], 2: [0, 2, 3, 4]}


@pytest.fixture
def frozen(tmp_path):
    """A frozen paper/data/ with hand-made artefacts: mnist-x input PIPs 0.1, 0.2, 0.6 per seed
    at every pixel except pixel (0, 0) = 1 (mean 0.3, and 1 at (0, 0)); sim PIPs of feature j
    = j / 10 in replicate 0, + 0.1 per replicate (mean (j + 1) / 10)."""
    arrays = {"mean_image/mnist-x": np.arange(784, dtype=np.float32).reshape(28, 28) / 784}
    for s, v in enumerate((0.1, 0.2, 0.6)):
        pip = np.full(784, v, dtype=np.float32)
        pip[0] = 1.0
        arrays[f"input_pip/mnist-x/spike_slab/seed={s}"] = pip
    for s in range(3):
        arrays[f"input_pip/sim/spike_slab/seed={s}"] = (np.arange(8) / 10 + 0.1 * s).astype(np.float32)
    meta = {"mnist-x": {"dataset": "mnist", "feature_shape": [28, 28], "true_support": None, "n_features": 784,
                        "mean_image": "mean", "input_pips": {"spike_slab": [0, 1, 2]}, "selected_features": {}},
            "sim": {"dataset": "simulation", "feature_shape": None, "true_support": [0, 1, 2, 3, 4], "n_features": 8,
                    "mean_image": "the inputs are not one image", "input_pips": {"spike_slab": [0, 1, 2]},
                    "selected_features": {"spike_slab": [0, 1, 2]}}}
    _write_npz(tmp_path / "pips.npz", arrays)
    (tmp_path / "artefacts.json").write_text(json.dumps(meta))
    pd.DataFrame([{"experiment": "sim", "method": "spike_slab", "seed": s, "selected": " ".join(map(str, sel))}
                  for s, sel in SELECTED.items()]).to_csv(tmp_path / "features.csv", index=False)
    return load_artefacts(tmp_path)


def _texts(fig) -> str:
    """Every text of ``fig``: suptitle, footer, panel texts and titles, legend entries."""
    parts = [t.get_text() for t in fig.texts] + [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [t.get_text() for t in ax.texts] + [ax.get_title()]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    return " ".join(parts)


def test_npz_is_byte_stable_and_round_trips(tmp_path, frozen):
    a = {"input_pip/e/m/seed=0": np.arange(3, dtype=np.float32)}
    _write_npz(tmp_path / "a.npz", a)
    _write_npz(tmp_path / "b.npz", a)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert frozen["missing"] == []
    assert frozen["arrays"]["input_pip/sim/spike_slab/seed=2"].tolist() == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert frozen["features"]["selected"].tolist() == list(SELECTED.values())


def test_input_pip_map_is_the_mean_over_seeds_beside_the_mean_image(frozen):
    rows = input_pip_rows(hand_runs(), frozen)
    assert [(r["experiment"], r["method"]) for r in rows] == [("mnist-x", "spike_slab")]
    assert rows[0]["pips"].shape == (3, 28, 28) and rows[0]["image"].shape == (28, 28)
    fig = input_pips(hand_runs(), PROV, frozen)
    img_ax, pip_ax = fig.axes[0], fig.axes[1]
    drawn = np.asarray(pip_ax.images[0].get_array())
    assert drawn.shape == (28, 28)
    assert drawn[0, 0] == pytest.approx(1.0) and drawn[5, 5] == pytest.approx(0.3)
    assert np.asarray(img_ax.images[0].get_array())[0, 1] == pytest.approx(1 / 784)
    text = _texts(fig)
    assert "1 of 784 pixels > 0.5" in text and "3 seeds" in text
    # seeds 0, 1 keep only pixel (0, 0), seed 2 (PIP 0.6) keeps all 784: the mean hides that
    assert "> 0.5 in every seed: 1, per seed 1–784" in text and "how far the seeds agree" in text
    assert "cifar10-vgg (not run: needs the CIFAR-10 files)" in text and "REDUCED" in text


def test_simulation_pips_mark_the_true_features_and_count_how_often_they_are_found(frozen):
    rates = found_rates(frozen["features"], "sim", [0, 1, 2, 3, 4], n_features=8)
    # x1 in replicates 0, 2; x2 in 0, 1; x3..x5 in all three; noise: feature 7 once in 3 x 3 noise features
    assert rates.loc["spike_slab", ["x1", "x2", "x3", "x4", "x5", "noise"]].tolist() == pytest.approx([2 / 3, 2 / 3, 1, 1, 1, 1 / 9])
    fig = simulation_pips(hand_runs(), PROV, frozen)
    ax, ax_found = fig.axes[0], fig.axes[1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["noise features (3)", "true features (5)", "mean over 3 replicates"]
    true_dots = ax.collections[1].get_offsets()
    assert len(true_dots) == 3 * 5 and np.asarray(true_dots)[:, 1].max() == pytest.approx(0.6)
    means = np.asarray(ax.collections[2].get_offsets())
    assert means[:, 1] == pytest.approx((np.arange(8) + 1) / 10)
    # above each true feature: how many replicates have its PIP > 0.5 (x5: 0.6 in replicate 2)
    assert [a.get_text() for a in ax.texts] == ["0/3", "0/3", "0/3", "0/3", "1/3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x1", "x2", "x3", "x4", "x5"]
    pos, step = _sim.feature_positions(200, [0, 1, 2, 3, 4])  # Bai et al.'s 200 inputs: x1..x5 13 apart
    assert step == pytest.approx(13) and pos[:5] == pytest.approx(13 * np.arange(1, 6))
    assert pos[5] == pytest.approx(13 * 6.5) and np.diff(pos[5:]) == pytest.approx(np.ones(194))
    heights = [p.get_height() for p in ax_found.patches]
    assert heights == pytest.approx([2 / 3, 2 / 3, 1, 1, 1, 1 / 9])
    assert "largest noise PIP 0.90" in ax.get_title()


def test_fnr_and_fpr_of_every_replicate_are_drawn_per_method(frozen):
    """The third panel: each method's FNR (filled) and FPR (open) of every replicate, so a
    method that keeps every input (FPR 1) cannot look better than one that selects."""
    runs = hand_runs()
    pts = rate_points(runs, "sim")
    assert sorted(pts["method"].unique()) == ["dense", "spike_slab"] and len(pts) == 6
    fig = simulation_pips(runs, PROV, frozen)
    ax = fig.axes[2]
    offsets = [np.asarray(c.get_offsets()) for c in ax.collections]
    assert len(offsets) == 4 and all(len(o) == 3 for o in offsets)  # 2 methods x (FNR, FPR), 3 replicates each
    assert [sorted(set(np.round(o[:, 1], 6))) for o in offsets] == [[0.0], [1.0], [0.2], [0.0]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["dense", "spike_slab"]
    assert "3 replicates" in ax.get_title()


def test_lenet5_conv1_kernel_pips_are_drawn_as_5x5_maps(frozen):
    """A convolutional first layer: its input PIP is one value per channel, so the figure shows
    conv1's kernel PIPs, one 5x5 tile per output channel (mean over input channels and seeds)."""
    arrays = dict(frozen["arrays"])
    meta = dict(frozen["meta"], **{"mnist-l5": {"dataset": "mnist", "feature_shape": [28, 28], "true_support": None,
                                                "n_features": 784, "mean_image": "mean", "input_pips": {"spike_slab": [0, 1]},
                                                "kernel_pips": {"spike_slab": [0, 1]}, "selected_features": {}}})
    for s in (0, 1):
        k = np.zeros((20, 1, 5, 5), dtype=np.float32)
        k[3, 0, 2, 2] = 1.0 if s == 0 else 0.5  # channel 3's centre: mean 0.75
        arrays[f"kernel_pip/mnist-l5/spike_slab/seed={s}"] = k
        arrays[f"input_pip/mnist-l5/spike_slab/seed={s}"] = np.ones(1, dtype=np.float32)
    arts = dict(frozen, arrays=arrays, meta=meta)
    row = next(r for r in input_pip_rows(hand_runs(), arts) if r["experiment"] == "mnist-l5")
    assert row["kernels"].shape == (2, 20, 1, 5, 5) and row["pips"] is None and row["message"] is None
    mosaic = kernel_mosaic(row["kernels"].mean(0))
    assert mosaic.shape == (4 * 6 - 1, 5 * 6 - 1)
    assert mosaic[2, 3 * 6 + 2] == pytest.approx(0.75) and np.isnan(mosaic[5, 0])  # tile (0, 3); a gap row
    fig = input_pips(hand_runs(), PROV, arts)
    pip_ax = next(ax for ax in fig.axes if "conv1 kernel PIPs" in ax.get_title())
    assert np.asarray(pip_ax.images[0].get_array()).shape == mosaic.shape
    assert "1 of 500 kernel weights > 0.5" in pip_ax.get_title() and "[REDUCED: epochs 2 (protocol 200)]" in pip_ax.get_title()


def test_nodes_kept_are_fractions_of_the_dense_widths():
    runs = hand_runs()
    widths, whose = layer_widths(runs[runs["experiment"] == "mnist-x"])
    assert widths.tolist() == [10, 5] and "dense" in whose
    fig = nodes_kept(runs, PROV)
    layer2 = next(ax for ax in fig.axes if ax.get_title().startswith("mnist-x: hidden layer 2 (5 units"))
    lines = {c.get_label(): c.lines[0] for c in layer2.containers}  # error-bar lines, one per method
    # spike_slab layer 2 at target 0.9: seeds keep 5 and 4 of 5 -> mean 0.9; at 0.5 all 5 -> 1.0
    assert list(lines["spike_slab"].get_ydata()) == pytest.approx([1.0, 0.9])
    assert list(lines["magnitude"].get_ydata()) == pytest.approx([1.0, 1.0])
    star = next(ln for ln in layer2.get_lines() if ln.get_label() == "spike_slab natural")
    assert list(star.get_data()[1]) == pytest.approx([0.8]) and list(star.get_data()[0]) == pytest.approx([0.95])
    assert [ax.get_xscale() for ax in fig.axes if ax.get_visible() and ax.get_title()][:2] == ["logit", "logit"]


def test_an_experiment_without_dense_takes_its_widths_from_the_same_net_elsewhere():
    """A restarts experiment has no dense run: its layers are counted against the dense net of
    an experiment with the same data set, model and number of weights (20-20), not against the
    most its own runs kept (19-20)."""
    rows = [dict(experiment="fried", method="dense", dataset="friedman", model="mlp", n_weights=2420, nodes_kept="20-20"),
            dict(experiment="fried-k28", method="spike_slab_k28", dataset="friedman", model="mlp", n_weights=2420,
                 nodes_kept="19-20"),
            dict(experiment="other", method="dense", dataset="friedman", model="mlp", n_weights=999, nodes_kept="30-30")]
    runs = pd.DataFrame(rows)
    widths, whose = layer_widths(runs[runs["experiment"] == "fried-k28"], runs)
    assert widths.tolist() == [20, 20] and "`fried`, the same net" in whose
    widths, whose = layer_widths(runs[runs["experiment"] == "fried-k28"])
    assert widths.tolist() == [19, 20] and "no dense run" in whose


def test_training_time_sums_the_trainings_of_a_run():
    per = run_seconds(hand_runs()).set_index(["experiment", "method", "seed"])["seconds"]
    assert per[("mnist-x", "magnitude", 0)] == 5.0  # trained once per target: 2 s + 3 s
    assert per[("mnist-x", "spike_slab", 1)] == 8.0  # one model, four records
    fig = train_time(hand_runs(), PROV)
    text = _texts(fig)
    assert "8 s, 2.0× dense" in text and "5 s, 1.2× dense" in text and "cifar10-vgg" in text


def test_training_time_counts_one_model_per_target_where_the_method_trains_per_target():
    """Per-target training in one stack gives every target's model the same share (2 s): the run
    trained three models (6 s), and spike_slab with its default options one (2 s), whatever the
    number of its records."""
    rows = [dict(experiment="e", method=m, seed=0, selection="target", target_sparsity=t, train_seconds=2.0,
                 variant_of=v, method_params=p, device_name="cpu")
            for m, v, p in (("spike_slab_target", "spike_slab", '{"prior_from_target": true}'),
                            ("spike_slab", None, '{"sigma0": 1.3}'))
            for t in (0.5, 0.9, 0.99)]
    per = run_seconds(pd.DataFrame(rows)).set_index("method")
    assert per.loc["spike_slab_target", "seconds"] == 6.0 and per.loc["spike_slab_target", "models"] == 3
    assert per.loc["spike_slab", "seconds"] == 2.0 and per.loc["spike_slab", "models"] == 1


def test_calibration_says_what_the_table_lacks():
    runs = hand_runs()
    fig = calibration(runs, PROV)
    text = _texts(fig)
    assert "spike_slab BMA ece: not in the frozen table" in text.replace("\n", " ")
    assert REFREEZE in text.replace("\n", " ")
    ece = next(ax for ax in fig.axes if ax.get_title().startswith("mnist-x: ECE\n"))
    line = next(ln for ln in ece.get_lines() if ln.get_label() == "spike_slab")
    assert list(line.get_ydata()) == pytest.approx([0.015, 0.02])  # ece at 0.5: (0.01 + 0.02) / 2
    nll = next(ax for ax in fig.axes if ax.get_title().startswith("mnist-x: test NLL\n[REDUCED: epochs 2 (protocol 200)]"))
    assert any(ln.get_label().startswith("spike_slab BMA natural") and ln.get_ydata()[0] == pytest.approx(0.25)
               for ln in nll.get_lines())


def test_every_figure_draws_from_a_table_frozen_before_the_artefacts(tmp_path):
    """The committed table was frozen before the freeze kept PIPs: each figure says what is
    missing and how to get it, instead of failing."""
    arts = load_artefacts(tmp_path)
    assert arts["missing"] == ["artefacts.json", "pips.npz", "features.csv"] and arts["arrays"] is None
    runs = hand_runs()
    for fig in (input_pips(runs, PROV, arts), simulation_pips(runs, PROV, arts)):
        text = _texts(fig).replace("\n", " ")
        assert "not in the frozen data" in text and " ".join(REFREEZE.split()) in " ".join(text.split())
        assert "cifar10-vgg" in text
    # without per-feature data the simulation panel falls back to the table's FNR: 1 - 0.2
    fig = simulation_pips(runs, PROV, arts)
    found = fig.axes[1]
    assert [round(float(y), 6) for c in found.collections for y in c.get_offsets()[:, 1]] == [1.0] * 3 + [0.8] * 3


# --------------------------------------------------------------------------- freeze + scripts on the shrunken paper grid

PAPER_TINY = ROOT / ".test" / "paper.yaml"
#: the stacks of .test/paper.yaml trained in-process (seconds); the rest stays missing
TRAINED = {("simulation", "dense"), ("simulation", "spike_slab"), ("simulation", "sparse_vd"), ("friedman", "spike_slab"),
           ("digits", "dense"), ("digits", "spike_slab"), ("mnist5k", "spike_slab")}
FIGURES = ("input_pips", "simulation_pips", "nodes_kept", "calibration", "train_time")


@pytest.fixture(scope="module")
def tiny_paper(tmp_path_factory):
    """Part of the shrunken paper grid trained in this process, frozen, and every new figure
    script run on the frozen data as `snakemake paper` runs it (python SCRIPT PAPER_DIR)."""
    import runpy

    from slabbench.cli import train_stack_job
    from slabbench.config import STACK_FILE, load_yaml, stack_jobs, validate
    from slabbench.paper import freeze

    root = tmp_path_factory.mktemp("tiny-paper")
    for (exp, method, i), specs in stack_jobs(validate(load_yaml(PAPER_TINY))).items():
        if (exp, method) in TRAINED:
            train_stack_job(specs, str(root / STACK_FILE.format(experiment=exp, method=method, stack=i)))
    prov = freeze(PAPER_TINY, root / "paper" / "data", results_root=root, full_grid=ROOT / "config" / "paper.yaml")
    argv = sys.argv
    if str(ROOT / "paper") not in sys.path:
        sys.path.insert(0, str(ROOT / "paper"))  # the scripts import paper/_common.py
    try:
        for name in FIGURES:
            sys.argv = [name, str(root / "paper")]
            runpy.run_path(str(ROOT / "paper" / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return root, prov


def test_freeze_keeps_each_runs_input_pips_and_selections(tiny_paper):
    import torch

    root, prov = tiny_paper
    data = root / "paper" / "data"
    arts = load_artefacts(data)
    assert arts["missing"] == [] and prov["artefacts"]["input_pip_runs"] == 3 + 2 + 2 + 2
    for exp, seed, size in (("simulation", 2, 12), ("friedman", 1, 8), ("digits", 0, 64), ("mnist5k", 1, 784)):
        kept = arts["arrays"][f"input_pip/{exp}/spike_slab/seed={seed}"]
        saved = torch.load(root / "results" / "runs" / exp / "spike_slab" / f"seed={seed}" / "artefacts.pt", weights_only=True)
        assert kept.shape == (size,) and kept.tolist() == saved["pip_input"].float().tolist()
    assert arts["arrays"]["mean_image/digits"].shape == (8, 8) and arts["arrays"]["mean_image/mnist5k"].shape == (28, 28)
    assert "mean_image/simulation" not in arts["arrays"]
    meta = arts["meta"]
    assert meta["simulation"]["true_support"] == [0, 1, 2, 3, 4] and meta["simulation"]["n_features"] == 12
    assert meta["digits"]["feature_shape"] == [8, 8] and meta["digits"]["true_support"] is None
    f = arts["features"]
    assert sorted(set(zip(f["experiment"], f["method"]))) == [("friedman", "spike_slab"), ("simulation", "dense"),
                                                             ("simulation", "sparse_vd"), ("simulation", "spike_slab")]
    rec = json.loads((root / "results" / "runs" / "simulation" / "spike_slab" / "seed=1" / "metrics.jsonl").read_text().splitlines()[0])
    row = f[(f["experiment"] == "simulation") & (f["method"] == "spike_slab") & (f["seed"] == 1)]
    assert rec["selection"] == "natural" and row["selected"].iloc[0] == rec["selected_features"]
    assert f.loc[f["method"] == "dense", "selected"].map(len).tolist() == [12, 12, 12]  # dense keeps every input
    for name, sha in prov["artefacts"]["files"].items():
        assert __import__("hashlib").sha256((data / name).read_bytes()).hexdigest() == sha
    assert sum(p.stat().st_size for p in data.iterdir()) < 100_000
    assert prov["paper_grid_missing"]["cifar10-vgg"].startswith("not run: needs the CIFAR-10 files")
    assert "simulation" not in prov["paper_grid_missing"] and prov["paper_grid_missing"]["diabetes"] == "not run"


def test_every_new_figure_script_draws_from_the_frozen_data(tiny_paper):
    root, prov = tiny_paper
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (root / "paper" / "figures" / f"{name}.{ext}").stat().st_size > 10_000, (name, ext)
    arts = load_artefacts(root / "paper" / "data")
    runs = pd.read_csv(root / "paper" / "data" / "runs.csv")
    rows = {r["experiment"]: r for r in input_pip_rows(runs, arts)}
    assert sorted(rows) == ["digits", "mnist5k"]
    assert rows["digits"]["pips"].shape == (2, 8, 8) and rows["mnist5k"]["pips"].shape == (2, 28, 28)
    mean = np.mean([arts["arrays"][f"input_pip/digits/spike_slab/seed={s}"] for s in (0, 1)], axis=0).reshape(8, 8)
    assert rows["digits"]["pips"].mean(0) == pytest.approx(mean)
    fig = simulation_pips(runs, prov, arts)
    text = _texts(fig)
    assert "simulation: spike_slab input PIPs, 3 replicates" in text and "friedman: spike_slab input PIPs, 2 replicates" in text
    assert "cifar10-vgg (not run: needs the CIFAR-10 files" in text.replace("\n", " ")


# --------------------------------------------------------------------------- paper/run_grid.sh
# The whole shrunken grid through paper/run_grid.sh takes minutes on a small shared machine:
# opt-in, as the SLURM test (SLABBENCH_GRID_TEST=1).
grid_test = pytest.mark.skipif(os.environ.get("SLABBENCH_GRID_TEST") != "1",
                               reason="runs the shrunken paper grid (minutes); set SLABBENCH_GRID_TEST=1")


def run_grid(workdir, *args, **env_vars):
    env = dict(os.environ, **env_vars, WORKDIR=str(workdir), PYTHON=sys.executable, CORES="2",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(["bash", str(ROOT / "paper" / "run_grid.sh"), str(PAPER_TINY), *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The shrunken paper grid run by paper/run_grid.sh: trained, frozen, redrawn."""
    workdir = tmp_path_factory.mktemp("paper-grid")
    proc = run_grid(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc


@grid_test
def test_run_grid_trains_freezes_and_redraws_the_shrunken_grid(grid):
    workdir, proc = grid
    data, prov = workdir / "paper" / "data", json.loads((workdir / "paper" / "data" / "provenance.json").read_text())
    # everything but CIFAR-10 (no files) ran: 3 + 2 + 2 + 2 seeds x 5 methods; CIFAR-10 has no entry
    exps = prov["experiments"]
    assert sorted(exps) == ["digits", "friedman", "mnist5k", "simulation"]
    assert sum(e["runs_configured"] for e in exps.values()) == 45 and sum(e["runs_present"] for e in exps.values()) == 45
    assert all(e["runs_missing"] == [] and e["label"] == "REDUCED" for e in exps.values())
    assert prov["paper_grid_missing"]["cifar10-vgg"].startswith("not run: needs the CIFAR-10 files")
    assert all(e["config"] == ".test/paper.yaml" and "snakemake exit status" in e["note"] for e in exps.values())
    assert "10 configured runs missing" in proc.stdout
    arts = load_artefacts(data)
    assert arts["missing"] == []
    assert prov["artefacts"]["input_pip_runs"] == 9  # spike_slab: 3 + 2 + 2 + 2 seeds
    shapes = {k: v.shape for k, v in arts["arrays"].items()}
    assert shapes["input_pip/simulation/spike_slab/seed=2"] == (12,)
    assert shapes["input_pip/digits/spike_slab/seed=1"] == (64,) and shapes["mean_image/digits"] == (8, 8)
    assert shapes["input_pip/mnist5k/spike_slab/seed=0"] == (784,) and shapes["mean_image/mnist5k"] == (28, 28)
    assert arts["meta"]["simulation"]["true_support"] == [0, 1, 2, 3, 4] == arts["meta"]["friedman"]["true_support"]
    f = arts["features"]
    assert set(f["experiment"]) == {"simulation", "friedman"}
    assert len(f[(f["experiment"] == "simulation") & (f["method"] == "spike_slab")]) == 3
    total = sum(p.stat().st_size for p in data.iterdir())
    assert total < 200_000, total
    out = workdir / "paper"
    for name in ("error_vs_sparsity", "input_pips", "simulation_pips", "nodes_kept", "calibration", "train_time"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 10_000, (name, ext)
    results = (out / "tables" / "results.md").read_text()
    assert "cifar10-vgg (not run: needs the CIFAR-10 files" in results and "REDUCED" in results
    # the finished stacks, archived to continue elsewhere: every run's records, no per-weight files
    from slabbench.archive import read_archive
    manifest, members = read_archive(out / "archive" / "paper.tar.gz")
    assert manifest["runs"] == 45 and manifest["config"] == ".test/paper.yaml"
    assert sum(n.endswith("metrics.jsonl") for n in members) == 45


@grid_test
def test_run_grid_continues_an_unfinished_grid(grid):
    """Run again after losing one job's outputs: only that job trains; the rest is kept."""
    workdir, _ = grid
    runs = workdir / "results" / "runs"
    lost = runs / "digits" / "dense"
    for p in sorted(lost.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    kept = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.jsonl")}
    proc = run_grid(workdir, ARCHIVE="none")  # the archive of the first run would restore the lost stack
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (lost / "seed=0" / "metrics.jsonl").exists() and (lost / "seed=1" / "metrics.jsonl").exists()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing else retrained
    prov = json.loads((workdir / "paper" / "data" / "provenance.json").read_text())
    assert sum(e["runs_present"] for e in prov["experiments"].values()) == 45
    # planned: the lost digits/dense stack and the five CIFAR-10 stacks, which fail again
    assert job_counts(proc.stdout + proc.stderr).get("train") == 6, proc.stderr[-3000:]


def test_run_grid_passes_snakemake_args_to_the_training_snakemake(tmp_path):
    """SNAKEMAKE_ARGS reaches the training Snakemake word by word (here an option it refuses)."""
    proc = run_grid(tmp_path, ARCHIVE="none", SNAKEMAKE_ARGS="--no-such-option 7")
    out = proc.stdout + proc.stderr
    assert "unrecognized arguments: --no-such-option 7" in out and "snakemake exit status 2" in out
    assert proc.returncode != 0  # nothing trained: nothing to freeze


def test_freeze_facts_never_download(tmp_path, monkeypatch):
    """Data-set facts at freeze time come from the files at hand: MNIST without its files is
    said to be missing, and no download is tried (the config's download: true is overridden)."""
    from slabbench.paper import _dataset_facts
    from slabbench.registry import dataset_class

    tried = []
    monkeypatch.setattr(dataset_class("mnist"), "_download", lambda self: tried.append(self))
    spec = {"experiment": "mnist-lenet300", "dataset": "mnist", "dataset_params": {"root": str(tmp_path), "download": True},
            "seed": 0}
    facts, image = _dataset_facts(spec)
    assert image is None and facts["feature_shape"] is None
    assert facts["mean_image"] == "data files missing at freeze time (DatasetFilesMissing)"
    assert tried == []


def test_no_path_reads_every_sign_of_a_net_cut_from_its_input():
    """A zero in any layer of ``nodes_kept`` (one hidden layer reads back from a CSV as a
    number), an empty physical network (units fed by their bias alone), or no weight left."""
    from slabbench.plotting import no_path

    g = pd.DataFrame({"nodes_kept": ["300-100", "3-0", 0.0, 4.0, 7.0, None],
                      "physical_empty": [False, False, False, True, None, False],
                      "nonzero_weights": [10, 5, 0, 11, 9, 0]})
    assert no_path(g).tolist() == [False, True, True, True, False, True]
    csv = pd.read_csv(__import__("io").StringIO("nodes_kept,physical_empty\n4,False\n0,False\n2,True\n"))
    assert no_path(csv).tolist() == [False, True, True]


def test_experiments_frozen_without_artefacts_beside_ones_with_them_say_so(frozen):
    """After a freeze of some experiments, those frozen earlier (no artefacts) still get their
    panels, saying what is missing; the simulation's falls back to the table's FNR."""
    from slabbench.paper import REFREEZE

    old = hand_runs().replace({"experiment": {"mnist-x": "mnist-old", "sim": "sim-old"}})
    runs = pd.concat([hand_runs(), old], ignore_index=True)
    prov = dict(PROV, experiments=dict(PROV["experiments"], **{e: PROV["experiments"]["sim"] for e in ("mnist-old", "sim-old")}))
    rows = {r["experiment"]: r for r in input_pip_rows(runs, frozen)}
    # an image experiment without the PIP method (a published-comparison baseline) has no panel
    baselines = hand_runs().replace({"experiment": {"mnist-x": "mnist-baselines"}})
    baselines = baselines[(baselines["experiment"] == "mnist-baselines") & (baselines["method"] != "spike_slab")]
    assert len(baselines) and "mnist-baselines" not in {r["experiment"] for r in input_pip_rows(
        pd.concat([runs, baselines], ignore_index=True), frozen)}
    assert rows["mnist-old"]["pips"] is None and "artefacts of mnist-old are not in the frozen data" in rows["mnist-old"]["message"]
    assert rows["mnist-x"]["pips"] is not None
    fig = simulation_pips(runs, prov, frozen)
    titled = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("sim-old: true features found per replicate") for t in titled)
    assert any(t.startswith("sim: spike_slab input PIPs, 3 replicates") for t in titled)
    assert " ".join(REFREEZE.split()) in " ".join(_texts(fig).split())


def test_an_axis_with_one_target_gains_round_sparsities_that_do_not_crowd_it():
    """published-lenet300 has one target (0.9182) and natural points from 0.655 to 0.9975: 0.8
    and 0.99 are marked too, 0.95 (0.52 from 0.9182 in logit) is not; three targets stay alone."""
    from slabbench.plotting import sparsity_ticks

    assert sparsity_ticks([0.9182], [0.655, 0.9182, 0.9975]) == [0.8, 0.9182, 0.99]
    assert sparsity_ticks([0.5, 0.9, 0.99], [0.4, 0.999]) == [0.5, 0.9, 0.99]


def test_a_log_error_axis_under_a_decade_labels_values_inside_it():
    """mnist-lenet300's errors span 1.18-12.5%, fmnist's 8.2-26.7%: the finest mantissa set with
    at most 8 ticks inside is labelled (matplotlib's default labelled nothing below 2 there);
    wider spans fall back to 1, 2, 5 x 10^k; a span too narrow for two ticks gets none."""
    from slabbench.plotting import log_ticks

    assert log_ticks(1.18, 12.5) == [1.5, 2, 3, 5, 10]
    assert log_ticks(8.2, 26.7) == [10, 12, 15, 20]
    assert log_ticks(1.2, 112) == [2, 5, 10, 20, 50, 100]
    assert log_ticks(0.51, 0.55) == []
    assert log_ticks(0, 1) == []


def test_off_path_summary_names_targets_whose_weights_mostly_lie_on_no_path():
    """error_vs_sparsity's caption: a target up to 0.9 whose nets keep fewer than the share of their
    nonzero weights on an input-output path (mean over seeds) is named with that share; above 0.9,
    at the share or above, natural selections and tables without physical_weights are not."""
    if str(ROOT / "paper") not in sys.path:
        sys.path.insert(0, str(ROOT / "paper"))
    from _common import off_path_summary

    rows = [("d", "spike_slab_target", "target", 0.5, 275, 5), ("d", "spike_slab_target", "target", 0.5, 275, 6),
            ("d", "l0", "target", 0.8, 110, 22), ("d", "l0", "target", 0.95, 28, 1),
            ("d", "sparse_vd", "natural", None, 100, 1), ("e", "magnitude", "target", 0.9, 55, 10)]
    runs = pd.DataFrame(rows, columns=["experiment", "method", "selection", "target_sparsity", "nonzero_weights",
                                       "physical_weights"])
    # d/spike_slab_target at 0.5: (5 + 6) / 2 / 275 = 2%; l0 at 0.8: 20% is not below 20%; e at 0.9: 18%
    assert off_path_summary(runs, 0.2, 0.9) == ["d: spike_slab_target at 0.5 (2% on a path)",
                                                "e: magnitude at 0.9 (18% on a path)"]
    assert off_path_summary(runs.drop(columns="physical_weights"), 0.2, 0.9) == []
