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

from conftest import ROOT, copy_checkout, job_counts

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


def planned_jobs(workdir: Path, config: Path = TEST_CONFIG) -> dict[str, int]:
    """Job counts of a dry run ({} when nothing is to be done)."""
    return job_counts(snakemake(workdir, "-n", "--cores", "1", config=config).stdout)


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


def verify_stacks(workdir: Path) -> list[Path]:
    """Check every stack file under workdir against the checksums it records (the aggregate's
    check); the stack files, sorted."""
    from slabbench.stackfile import verified_files

    stacks = sorted((workdir / "results" / "runs").rglob("stack-*.json"))
    cwd = os.getcwd()
    os.chdir(workdir)  # the paths in a stack file are relative to Snakemake's working directory
    try:
        for stack in stacks:
            assert json.loads(stack.read_text())["format"] == 2, stack
            verified_files(stack.relative_to(workdir), "metrics")
    finally:
        os.chdir(cwd)
    return stacks


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
    """The .test grid run in a checkout (cwd = the checkout, its own Snakefile), then the whole
    folder copied with timestamps (cp -a) to another path, at another depth: Snakemake plans
    nothing there (inputs are recorded relative to the working directory, not as absolute paths)."""
    first = copy_checkout(tmp_path / "first", keep_dates=True)
    cmd = [sys.executable, "-m", "snakemake", "--configfile", ".test/config.yaml"]
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


def one_experiment_config(tmp_path: Path, methods: tuple[str, ...] = ("dense", "magnitude")) -> Path:
    """The .test grid with its simulation experiment and ``methods`` only (one train job each)."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["experiments"] = {"sim-tiny": cfg["experiments"]["sim-tiny"]}
    cfg["methods"] = list(methods)
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_second_invocation_in_the_same_folder_is_refused(tmp_path):
    """Two `snakemake` runs in one folder: the second refuses (Snakemake's directory lock), the
    first finishes every run intact."""
    config = one_experiment_config(tmp_path)
    first = subprocess.Popen([*SNAKEMAKE, "--configfile", str(config), "--directory", str(tmp_path), "--cores", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    locks = tmp_path / ".snakemake" / "locks"
    deadline = time.time() + 120
    while time.time() < deadline and not (locks.is_dir() and any(locks.iterdir())):
        time.sleep(0.1)
    assert locks.is_dir() and any(locks.iterdir()), "the first run should hold the lock"
    second = snakemake(tmp_path, "--cores", "1", config=config, check=False)
    assert first.poll() is None, "the first run should still be running when the second tries"
    assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    assert len(verify_stacks(tmp_path)) == 2 and len(list((tmp_path / "results" / "runs").rglob("metrics.jsonl"))) == 4
    assert planned_jobs(tmp_path, config) == {}


def test_sigkilled_run_resumes_after_unlock_with_only_the_interrupted_stacks(tmp_path):
    """The whole process group killed with SIGKILL while a train job runs: every stack file
    left verifies, the lock stays until `snakemake --unlock`, and the rerun trains only the
    stacks that had not finished (finished stack files keep their mtime)."""
    methods = ("dense", "magnitude", "spike_slab")
    config = one_experiment_config(tmp_path, methods)
    proc = subprocess.Popen([*SNAKEMAKE, "--configfile", str(config), "--directory", str(tmp_path), "--cores", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs, logs = tmp_path / "results" / "runs", tmp_path / "results" / "logs" / "train"
    deadline = time.time() + 300
    # two stacks finished and the third job started (its log exists): with one core Snakemake
    # starts a job only after recording the previous one as finished
    while time.time() < deadline and not (len(list(runs.rglob("stack-*.json"))) >= 2
                                          and len(list(logs.rglob("*.log"))) > len(list(runs.rglob("stack-*.json")))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = {p: p.stat().st_mtime_ns for p in verify_stacks(tmp_path)}
    assert len(done) == 2, "the kill should land in the third train job"
    locked = snakemake(tmp_path, "--cores", "1", config=config, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(tmp_path, "--unlock", config=config)
    assert planned_jobs(tmp_path, config)["train"] == 1
    snakemake(tmp_path, "--cores", "2", config=config)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stacks were not redone
    assert len(verify_stacks(tmp_path)) == len(methods) and planned_jobs(tmp_path, config) == {}
    assert len(list(runs.rglob("metrics.jsonl"))) == 2 * len(methods)


def test_train_jobs_save_their_state_as_often_as_the_config_says(tmp_path):
    """``checkpoint_minutes`` reaches the train jobs (0: a save every epoch, slabbench.checkpoint),
    a finished job leaves no checkpoint, and changing the interval retrains nothing."""
    config = one_experiment_config(tmp_path, ("spike_slab",))
    snakemake(tmp_path, "--cores", "1", "--config", "checkpoint_minutes=0", config=config)
    log = (tmp_path / "results" / "logs" / "train" / "sim-tiny" / "spike_slab" / "stack-0.log").read_text()
    # 5 training epochs, 1 fine-tuning epoch
    assert log.count("checkpoint written: results/checkpoints/sim-tiny/spike_slab/stack-0.pt (") == 6, log[-2000:]
    assert "(sim-tiny/spike_slab: stack 0: after epoch 5 of 5)" in log
    assert "(sim-tiny/spike_slab fine-tuning: stack 0: after epoch 1 of 1)" in log
    assert not list((tmp_path / "results" / "checkpoints").rglob("*.pt"))
    assert planned_jobs(tmp_path, config) == {}
