"""The real workflow on the tiny grid of .test/config.yaml: outputs, report, lint,
fail-fast on a bad config, and resume after a kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, job_counts

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
TEST_CONFIG = ROOT / ".test" / "config.yaml"
REQUIRED_COLUMNS = [
    "experiment", "dataset", "model", "method", "seed", "selection", "target_sparsity", "sparsity", "sparsity_all",
    "compression", "test_accuracy", "test_rmse", "test_nll", "ece", "flops_kept", "nodes_kept", "features_kept",
    "fnr", "fpr", "train_seconds", "device", "git_commit", "torch_version",
    "model_bytes_dense", "model_bytes_pruned", "model_bytes_sparse", "physical_empty", "latency_ms_b1", "latency_ms_b256",
]


def snakemake(workdir: Path, *args: str, config: Path = TEST_CONFIG, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SNAKEMAKE, "--configfile", str(config), "--directory", str(workdir), *args],
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Job counts of a dry run ({} when nothing is to be done)."""
    return job_counts(snakemake(workdir, "-n", "--cores", "1").stdout)


def cfg_runs():
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    return [(e, m, s) for e in cfg["experiments"] for m in cfg["methods"] for s in cfg["seeds"]]


def cfg_stacks():
    """One training job per experiment x method: every seed of the tiny grid fits one stack."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    return [(e, m) for e in cfg["experiments"] for m in cfg["methods"]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    snakemake(workdir, "--cores", "2")
    return workdir


def test_outputs(finished):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    runs = pd.read_csv(finished / "results" / "summary" / "runs.csv")
    assert [c for c in REQUIRED_COLUMNS if c not in runs.columns] == []
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
    proc = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
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


def test_killed_run_resumes_with_only_the_missing_jobs(tmp_path):
    proc = subprocess.Popen([*SNAKEMAKE, "--configfile", str(TEST_CONFIG), "--directory", str(tmp_path), "--cores", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "results" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(runs.rglob("stack-*.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    done = {p: p.stat().st_mtime_ns for p in runs.rglob("stack-*.json")}
    assert 2 <= len(done) < len(cfg_stacks()), "the kill should land mid-run"
    # nothing half-written is left behind: every record file parses
    for p in runs.rglob("metrics.jsonl"):
        assert all(line.startswith("{") for line in p.read_text().splitlines())
    assert planned_jobs(tmp_path)["train"] == len(cfg_stacks()) - len(done)
    snakemake(tmp_path, "--cores", "2")
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stacks were not redone
    assert len(list(runs.rglob("metrics.jsonl"))) == len(list(cfg_runs()))


def test_train_jobs_ask_for_a_gpu_per_experiment_device(tmp_path):
    """A train job asks for gpu=1 when its experiment trains on CUDA (the experiment's own
    `device`, else the global one), and gpu=0 on the CPU."""
    import re

    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["device"] = "cuda"
    cfg["experiments"]["sim-tiny"]["device"] = "cpu"
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", "--cores", "1", config=mixed).stdout
    gpus = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        exp = re.search(r"wildcards: experiment=([\w-]+)", block)
        res = re.search(r"^\s+resources: .*\bgpu=(\d+)", block, re.M)
        if block.lstrip().startswith("rule train:") and exp and res:
            gpus.setdefault(exp.group(1), set()).add(int(res.group(1)))
    assert gpus == {"sim-tiny": {0}, "digits-tiny": {1}}
