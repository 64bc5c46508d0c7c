"""The real workflow on one experiment of the tiny grid of .test/config.yaml, interrupted: a run stopped by SIGTERM
or SIGKILL resumes with only the missing jobs, a second run in the same folder is refused, and
train jobs save their state as often as the config says."""

import os
import signal
import subprocess
import time

from conftest import one_experiment_config, planned_jobs, snakemake, snakemake_command, verify_stacks


def wait_for_job_after(workdir, finished: int) -> None:
    """Until ``finished`` stacks are written and the next train job has started (its log exists):
    with one core Snakemake starts a job only after recording the previous one as finished."""
    runs, logs = workdir / "results" / "runs", workdir / "results" / "logs" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and not (len(list(runs.rglob("stack-*.json"))) >= finished
                                          and len(list(logs.rglob("*.log"))) > len(list(runs.rglob("stack-*.json")))):
        time.sleep(0.05)


def test_killed_run_resumes_with_only_the_missing_jobs(tmp_path):
    """SIGTERM to Snakemake once the second of three train jobs runs: Snakemake lets that job
    finish and starts no other, nothing half-written is left, and the rerun trains only the
    stack that is missing, then builds everything downstream."""
    methods = ("dense", "magnitude", "spike_slab")
    config = one_experiment_config(tmp_path, methods)
    proc = subprocess.Popen(snakemake_command(tmp_path, "--cores", "1", config=config),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "results" / "runs"
    wait_for_job_after(tmp_path, finished=1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    done = {p: p.stat().st_mtime_ns for p in runs.rglob("stack-*.json")}
    # Snakemake's graceful stop: the running job (the second) finishes, no other starts
    assert len(done) == 2, f"{len(done)} of {len(methods)} stacks finished"
    # nothing half-written is left behind: every record file parses
    for p in runs.rglob("metrics.jsonl"):
        assert all(line.startswith("{") for line in p.read_text().splitlines())
    assert planned_jobs(tmp_path, config)["train"] == 1
    snakemake(tmp_path, "--cores", "2", config=config)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stacks were not redone
    assert len(list(runs.rglob("metrics.jsonl"))) == 2 * len(methods) and planned_jobs(tmp_path, config) == {}


def test_second_invocation_in_the_same_folder_is_refused(tmp_path):
    """Two `snakemake` runs in one folder: the second refuses (Snakemake's directory lock), the
    first finishes every run intact."""
    config = one_experiment_config(tmp_path)
    first = subprocess.Popen(snakemake_command(tmp_path, "--cores", "1", config=config),
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
    proc = subprocess.Popen(snakemake_command(tmp_path, "--cores", "1", config=config),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = tmp_path / "results" / "runs"
    wait_for_job_after(tmp_path, finished=2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = {p: p.stat().st_mtime_ns for p in verify_stacks(tmp_path)}
    assert len(done) == 2, "the kill should land in the third train job"
    locked = snakemake(tmp_path, "--cores", "1", config=config, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(tmp_path, "--unlock", config=config)
    assert planned_jobs(tmp_path, config)["train"] == 1
    # the rerun of the train jobs alone (what follows them is the SIGTERM test's)
    stacks = [f"results/runs/sim-tiny/{m}/stack-0.json" for m in methods]
    snakemake(tmp_path, "--cores", "2", *stacks, config=config)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stacks were not redone
    assert len(verify_stacks(tmp_path)) == len(methods) and "train" not in planned_jobs(tmp_path, config)
    assert len(list(runs.rglob("metrics.jsonl"))) == 2 * len(methods)


def test_train_jobs_save_their_state_as_often_as_the_config_says(tmp_path):
    """``checkpoint_minutes`` reaches the train jobs (0: a save every epoch, slabbench.checkpoint),
    a finished job leaves no checkpoint, and changing the interval retrains nothing."""
    config = one_experiment_config(tmp_path, ("spike_slab",))
    # the train job alone: what follows it does not read checkpoints
    snakemake(tmp_path, "results/runs/sim-tiny/spike_slab/stack-0.json", "--cores", "1", "--config", "checkpoint_minutes=0",
              config=config)
    log = (tmp_path / "results" / "logs" / "train" / "sim-tiny" / "spike_slab" / "stack-0.log").read_text()
    # 5 training epochs, 1 fine-tuning epoch
    assert log.count("checkpoint written: results/checkpoints/sim-tiny/spike_slab/stack-0.pt (") == 6, log[-2000:]
    assert "(sim-tiny/spike_slab: stack 0: after epoch 5 of 5)" in log
    assert "(sim-tiny/spike_slab fine-tuning: stack 0: after epoch 1 of 1)" in log
    assert not list((tmp_path / "results" / "checkpoints").rglob("*.pt"))
    assert "train" not in planned_jobs(tmp_path, config)
