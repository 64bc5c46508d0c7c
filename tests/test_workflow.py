"""The real workflow on the tiny grid of .test/config.yaml: outputs, reruns that do only what is
missing, a damaged run named with its retrain command, a moved checkout, report, lint, fail-fast
on a bad config (interrupted runs: test_interruptions.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import (ROOT, TEST_CONFIG, cfg_stacks, copy_checkout, job_counts, one_experiment_config, planned_jobs, snakemake,
                      snakemake_command, verify_stacks)

REQUIRED_COLUMNS = [
    "experiment", "dataset", "model", "method", "seed", "selection", "target_sparsity", "sparsity", "sparsity_all",
    "compression", "test_accuracy", "test_rmse", "test_nll", "ece", "flops_kept", "nodes_kept", "features_kept",
    "fnr", "fpr", "train_seconds", "device", "git_commit", "torch_version",
    "model_bytes_dense", "model_bytes_pruned", "model_bytes_sparse", "physical_empty", "latency_ms_b1", "latency_ms_b256",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    snakemake(workdir, "--cores", "2")
    return workdir


def test_outputs(finished):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    runs = pd.read_csv(finished / "results" / "summary" / "runs.csv")
    assert [c for c in REQUIRED_COLUMNS if c not in runs.columns] == []
    # every record measured its float16 network (classification: accuracy, regression: RMSE)
    fp16 = runs["test_accuracy_fp16"].where(runs["task"] == "classification", runs["test_rmse_fp16"])
    assert fp16.notna().all(), runs.loc[fp16.isna(), ["experiment", "method", "seed", "selection"]]
    # every (experiment, method, seed) ran; each pruning method has one record per target,
    # dense only its unpruned (natural) record, Bayesian methods a natural record too
    groups = runs.groupby(["experiment", "method", "seed"])
    assert len(groups) == len(cfg["experiments"]) * len(cfg["methods"]) * len(cfg["seeds"])
    for (exp, method, seed), g in groups:
        targets = sorted(g.loc[g["selection"] == "target", "target_sparsity"])
        assert targets == ([] if method == "dense" else sorted(cfg["sparsities"])), (exp, method, seed)
        assert (g["selection"] == "natural").sum() == (0 if method == "magnitude" else 1)
    sim = runs[runs["dataset"] == "simulation"]
    assert sim["test_rmse"].notna().all() and sim["fnr"].notna().all() and sim["test_accuracy"].isna().all()
    for exp in cfg["experiments"]:
        for ext in ("png", "pdf"):
            assert (finished / "results" / "figures" / f"{exp}.{ext}").stat().st_size > 1000
    md = (finished / "results" / "tables" / "summary.md").read_text()
    assert "±" in md and all(exp in md for exp in cfg["experiments"])
    assert "\\begin{table}" in (finished / "results" / "tables" / "summary.tex").read_text()
    assert "sim-tiny" in (finished / "results" / "tables" / "feature_selection.md").read_text()
    for exp in cfg["experiments"]:  # spike-and-slab inclusion-probability figures
        assert (finished / "results" / "figures" / "pips" / f"{exp}.png").stat().st_size > 1000
    # physical networks: one file (and its sparse form) per record, measured sizes, latency
    # where the net has a path from input to output (merged from the latency rule's table)
    for _, r in runs.iterrows():
        sel = "natural" if r["selection"] == "natural" else f"target={r['target_sparsity']:g}"
        folder = finished / "results" / "runs" / r["experiment"] / r["method"] / f"seed={r['seed']}"
        assert (folder / f"physical-{sel}.pt").is_file() and (folder / f"physical-{sel}.sparse.pt").is_file()
    assert (runs["model_bytes_pruned"] <= runs["model_bytes_dense"] + 2000).all()
    timed = runs[~runs["physical_empty"].astype(bool)]
    assert timed["latency_ms_b1"].gt(0).all() and timed["latency_ms_b256_dense"].gt(0).all()
    assert runs.loc[runs["physical_empty"].astype(bool), "latency_ms_b1"].isna().all()
    assert all(exp in (finished / "results" / "tables" / "deploy.md").read_text() for exp in cfg["experiments"])
    assert (finished / "results" / "figures" / "deploy.png").stat().st_size > 1000


def test_rerun_does_only_what_is_missing(finished):
    assert planned_jobs(finished) == {}
    stack = finished / "results" / "runs" / "sim-tiny" / "dense" / "stack-0.json"
    seeds = [finished / "results" / "runs" / "sim-tiny" / "dense" / f"seed={s}" / "metrics.jsonl" for s in (0, 1)]
    assert json.loads(stack.read_text())["runs"][1]["metrics"].endswith("dense/seed=1/metrics.jsonl")
    stack.unlink()
    seeds[0].unlink()
    # (Snakemake does not redo a missing intermediate file while what depends on it is up to date)
    (finished / "results" / "summary" / "runs.csv").unlink()
    assert planned_jobs(finished) == {"train": 1, "latency": 1, "aggregate": 1, "tables": 1, "feature_table": 1, "figure": 2,
                                      "deploy": 1, "all": 1}
    snakemake(finished, "--cores", "1")
    assert stack.exists() and all(p.exists() for p in seeds) and planned_jobs(finished) == {}


def test_damaged_run_is_named_with_the_command_that_retrains_it(finished):
    """A truncated metrics.jsonl of a finished grid: the aggregate stops naming the file and
    the command that retrains its stack; that command retrains it and everything downstream."""
    stack = "results/runs/sim-tiny/spike_slab/stack-0.json"
    metrics = finished / "results" / "runs" / "sim-tiny" / "spike_slab" / "seed=1" / "metrics.jsonl"
    data = metrics.read_bytes()
    metrics.write_bytes(data[: len(data) // 2])
    proc = snakemake(finished, "--cores", "1", "--forcerun", "aggregate", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "results/runs/sim-tiny/spike_slab/seed=1/metrics.jsonl is damaged" in out
    assert f"{len(data) // 2} bytes where {stack} recorded {len(data)}" in out
    command = f"snakemake --cores 8 --forcerun {stack}"
    assert command in out
    planned = job_counts(snakemake(finished, "-n", *command.split()[1:]).stdout)
    assert planned == {"train": 1, "aggregate": 1, "pips": 1, "tables": 1, "feature_table": 1, "figure": 2, "latency": 1,
                       "deploy": 1, "all": 1}
    snakemake(finished, *command.split()[1:])
    assert metrics.read_bytes().count(b"\n") == data.count(b"\n") and planned_jobs(finished) == {}
    verify_stacks(finished)



def test_a_moved_or_copied_checkout_retrains_nothing(tmp_path):
    """One experiment of the .test grid run in a checkout (cwd = the checkout, its own Snakefile), then the whole
    folder copied with timestamps (cp -a) to another path, at another depth: Snakemake plans
    nothing there (inputs are recorded relative to the working directory, not as absolute paths)."""
    first = copy_checkout(tmp_path / "first", keep_dates=True)
    # the simulation experiment with spike_slab: every rule but the second figure runs once
    one_experiment_config(first / ".test", ("spike_slab",), name="moved.yaml")
    cmd = [sys.executable, "-m", "snakemake", "--configfile", ".test/moved.yaml"]
    done = subprocess.run([*cmd, "--cores", "2"], cwd=first, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    moved = tmp_path / "elsewhere" / "deeper" / "copy"
    moved.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(first), str(moved)], check=True)
    dry = subprocess.run([*cmd, "-n", "--cores", "1"], cwd=moved, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert job_counts(dry.stdout) == {}, dry.stdout[-3000:]
    verify_stacks(moved)


def test_configfile_replaces_the_default_grid(tmp_path):
    """`--configfile X` runs X's grid alone: the default config/config.yaml (read relative to
    the working directory) is not merged into it."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    assert planned_jobs(tmp_path)["train"] == len(cfg_stacks())


def test_report(finished):
    snakemake(finished, "--report", "report.html")
    html = (finished / "report.html").read_text(errors="replace")
    assert "sim-tiny.png" in html and "summary.md" in html


def test_lint_is_clean(tmp_path):
    # the default config, linted in a folder of its own (Snakemake's log stays out of the checkout)
    proc = subprocess.run(snakemake_command(tmp_path, "--lint", config=ROOT / "config" / "config.yaml"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "good condition" in proc.stdout + proc.stderr


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["methods"] = ["dense", "l1"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "--cores", "1", config=bad, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "unknown method 'l1'" in out and "have dense, " in out
    assert not (tmp_path / "results").exists()


