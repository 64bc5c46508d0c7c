"""The pipeline on a real SLURM cluster through profiles/slurm.

`test_jobs_declare_cluster_resources` always runs (a dry run, no cluster). The end-to-end tests
start a single-node cluster on this machine (tests/slurm/start-cluster.sh: root, apt-get) and take
7 minutes on an idle 2-core machine (14-15 on a busy one), so they run only when asked for:

    .venv/bin/pip install -e ".[test,slurm]"
    SLABBENCH_SLURM_TEST=1 .venv/bin/python -m pytest tests/test_slurm.py

They submit the .test grid, cancel one training job with scancel while it runs, check that the
failure is reported with its log and that a rerun redoes only what is missing, and compare
results/summary/runs.csv with a local run of the same grid.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TEST_CONFIG, cfg_runs, cfg_stacks, planned_jobs, snakemake, snakemake_command
from slabbench.aggregate import LATENCY

CLUSTER = ROOT / "tests" / "slurm"
# settings for the single-node test cluster, not for a real one: it has no accounting daemon
# (so status by squeue, not sacct), no accounts, and jobs of seconds (so the first status check
# after 1 s instead of 40 s)
TEST_CLUSTER_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                     "--slurm-no-account"]
#: what differs between two runs of the same grid: wall times (training and the latency rule's
#: timings, checked for presence below) and provenance
NOT_COMPARED = {"train_seconds", "finetune_seconds", "device_name", "git_commit", "git_dirty", "slabbench_version", "torch_version",
                "python_version", *LATENCY}
RUN_KEY = ["experiment", "method", "seed", "selection", "target_sparsity"]
OPT_IN = os.environ.get("SLABBENCH_SLURM_TEST") == "1"
needs_cluster = pytest.mark.skipif(
    not OPT_IN, reason="end-to-end SLURM test: opt in with SLABBENCH_SLURM_TEST=1 (needs root and apt-get; 7-15 min on 2 cores)")


def on_slurm(workdir: Path) -> list[str]:
    return snakemake_command(workdir, "--workflow-profile", str(ROOT / "profiles" / "slurm"), *TEST_CLUSTER_ARGS)


def test_jobs_declare_cluster_resources(tmp_path):
    """What every job asks of a cluster; a train job asks for one GPU when its experiment trains on
    CUDA (the experiment's own `device`, else the global one), and none on the CPU."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["device"] = "cuda"
    cfg["experiments"]["sim-tiny"]["device"] = "cpu"
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(cfg))
    # every rule's threads resolve without --cores, as under profiles/slurm (a dry run sets cores;
    # --dag builds the jobs as a real run does; no profile: the default one sets cores; the SLURM
    # plugin need not be installed): `threads: workflow.cores` stopped every SLURM run here
    dag = snakemake(tmp_path, "--workflow-profile", "none", "--dag", check=False)
    assert dag.returncode == 0 and "digraph" in dag.stdout, dag.stdout[-2000:] + dag.stderr[-2000:]
    # latency holds every core of a local run; inside a cluster allocation (Snakemake's remote mode,
    # which sees the node's cores) it asks for the one CPU it was submitted with, else srun refuses
    for mode, threads in (("default", "2"), ("remote", "1")):
        plan = snakemake(tmp_path, "-n", "--cores", "2", "--mode", mode).stdout
        block = re.split(r"\n(?=\[|(?:local)?rule )", plan[plan.index("rule latency:"):])[0]
        found = re.search(r"^\s+threads: (\d+)$", block, re.M)  # (a dry run leaves out 'threads: 1')
        assert (found.group(1) if found else "1") == threads, (mode, block)
    cpu_train = {"gpu": "0", "mem_mb": "2000", "runtime": "120"}
    gpu_train = {"gpu": "1", "mem_mb": "6000", "runtime": "120"}
    for config, expected_train in ((TEST_CONFIG, {"sim-tiny": cpu_train, "digits-tiny": cpu_train}),
                                   (mixed, {"sim-tiny": cpu_train, "digits-tiny": gpu_train})):
        proc = snakemake(tmp_path, "-n", "--cores", "1", config=config)  # raises, with the output, on a failure
        resources, train = {}, {}  # rule -> its "resources:" line; experiment -> its train jobs' lines
        for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
            rule = re.match(r"(?:local)?rule (\w+):", block)
            line = re.search(r"^\s+resources: (.*)$", block, re.M)
            if rule and line:
                res = dict(kv.split("=", 1) for kv in line.group(1).split(", "))
                resources[rule.group(1)] = res
                if rule.group(1) == "train":
                    exp = re.search(r"wildcards: experiment=([\w-]+)", block).group(1)
                    train.setdefault(exp, []).append({k: res[k] for k in ("gpu", "mem_mb", "runtime")})
        assert set(resources) >= {"train", "aggregate", "tables", "figure", "feature_table", "pips"}, resources
        assert {exp: jobs[0] for exp, jobs in train.items()} == expected_train, train
        assert all(job == jobs[0] for jobs in train.values() for job in jobs), train
        resources.pop("train")
        resources.pop("all", None)
        for rule, res in resources.items():
            assert (res["mem_mb"], res["runtime"]) == ("2000", "15"), (rule, res)
            assert res.get("gpu", "0") == "0", (rule, res)


@pytest.fixture(scope="module")
def cluster():
    started_here = not (Path(os.environ.get("SLABBENCH_SLURM_STATE", "/tmp/slabbench-slurm")) / "pids").exists()
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(CLUSTER / "start-cluster.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the test cluster did not start:\n{proc.stdout}\n{proc.stderr}"
    print(f"cluster up in {time.monotonic() - t0:.1f} s")
    yield
    if started_here:
        subprocess.run(["bash", str(CLUSTER / "stop-cluster.sh")], timeout=120)


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> pd.DataFrame:
    """The reference: the same grid run locally."""
    workdir = tmp_path_factory.mktemp("local")
    snakemake(workdir, "--cores", "2", timeout=1200)  # raises, with the output, on a failure
    return pd.read_csv(workdir / "results" / "summary" / "runs.csv")


def running_train_job(deadline: float) -> tuple[str, str]:
    """(SLURM job id, wildcards) of the first training job seen running."""
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            jobid, comment = line.split("|", 1)
            if comment.startswith("rule_train_wildcards_"):
                return jobid, comment.removeprefix("rule_train_wildcards_")
        time.sleep(0.2)
    raise AssertionError("no training job started running on the test cluster within the deadline")


def split_wildcards(wildcards: str) -> tuple[str, str, str]:
    """'sim-tiny_spike_slab_0' -> ('sim-tiny', 'spike_slab', '0')"""
    return re.fullmatch(r"(.+?)_([a-z][a-z0-9_]*)_([0-9]+)", wildcards).groups()


@pytest.fixture(scope="module")
def cancelled(cluster, tmp_path_factory):
    """Submit the grid, scancel the first training job while it runs; Snakemake must fail."""
    workdir = tmp_path_factory.mktemp("slurm")
    log = workdir.parent / "slurm-first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(on_slurm(workdir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        jobid, wildcards = running_train_job(time.time() + 600)
        job = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True).stdout
        # cancel mid-run: once the training script has opened its log
        train_log = workdir / "results" / "logs" / "train" / "{}/{}/stack-{}.log".format(*split_wildcards(wildcards))
        deadline = time.time() + 300
        while time.time() < deadline and not train_log.exists():
            time.sleep(0.1)
        assert train_log.exists(), f"{train_log} did not appear while SLURM job {jobid} ran"
        cancel = subprocess.run(["scancel", jobid], capture_output=True, text=True)
        assert cancel.returncode == 0 and not cancel.stderr, cancel.stderr
        rc = proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:  # Snakemake cancels its SLURM jobs on SIGINT (not on SIGTERM)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
    return workdir, rc, log.read_text(), jobid, wildcards, job


@needs_cluster
def test_train_jobs_ask_slurm_for_their_resources(cancelled):
    job = cancelled[5]
    assert "TimeLimit=02:00:00" in job and "MinMemoryNode=2000M" in job and re.search(r"\bNumCPUs=1\b", job), job


@needs_cluster
def test_cancelled_job_is_reported_with_its_log(cancelled):
    workdir, rc, out, jobid, wildcards, _ = cancelled
    assert rc != 0, out[-3000:]
    assert f"SLURM-job '{jobid}' failed, SLURM status is: 'CANCELLED'" in out, out[-3000:]
    experiment, method, stack = split_wildcards(wildcards)
    assert "Error in rule train" in out, out[-3000:]
    # the job's own log is named and shown (show-failed-logs), and so is the SLURM log
    assert f"Logfile results/logs/train/{experiment}/{method}/stack-{stack}.log:" in out, out[-3000:]
    assert f"slurm_logs/rule_train/{wildcards}/{jobid}.log" in out, out[-3000:]
    assert (workdir / ".snakemake" / "slurm_logs" / "rule_train" / wildcards / f"{jobid}.log").exists()
    victim = workdir / "results" / "runs" / experiment / method / f"stack-{stack}.json"
    assert not victim.exists()


@needs_cluster
def test_rerun_on_slurm_redoes_only_what_is_missing_and_matches_a_local_run(cancelled, local_runs):
    workdir = cancelled[0]
    runs = workdir / "results" / "runs"
    done = {p: p.stat().st_mtime_ns for p in runs.rglob("stack-*.json")}
    assert 1 <= len(done) < len(cfg_stacks())
    assert planned_jobs(workdir)["train"] == len(cfg_stacks()) - len(done)
    proc = subprocess.run(on_slurm(workdir), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stacks were not redone
    assert len(list(runs.rglob("stack-*.json"))) == len(cfg_stacks())
    assert len(list(runs.rglob("metrics.jsonl"))) == len(cfg_runs())
    assert planned_jobs(workdir) == {}

    on_cluster = pd.read_csv(workdir / "results" / "summary" / "runs.csv")
    assert sorted(on_cluster.columns) == sorted(local_runs.columns)
    assert NOT_COMPARED <= set(local_runs.columns)  # (a renamed column would otherwise be compared)
    # the latency rule timed every network with a path from input to output there too
    timed = ~on_cluster["physical_empty"].astype(bool)
    assert timed.any() and (on_cluster.loc[timed, LATENCY] > 0).all().all()
    compared = [c for c in local_runs.columns if c not in NOT_COMPARED]
    a = local_runs[compared].sort_values(RUN_KEY).reset_index(drop=True)
    b = on_cluster[compared].sort_values(RUN_KEY).reset_index(drop=True)
    assert len(a) == len(b) > 0
    # the same seeds on the same CPU give the same numbers, to the last bit
    pd.testing.assert_frame_equal(a, b, check_exact=True)
