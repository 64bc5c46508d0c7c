import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slabbench.config import load_yaml

ROOT = Path(__file__).resolve().parents[1]
#: where tiny_spec's runs train: cpu, or cuda to repeat the equivalence tests on a GPU
#: (benchmarks/gpu_checks.sh); the default suite never needs a GPU
TEST_DEVICE = os.environ.get("SLABBENCH_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def default_config() -> dict:
    return copy.deepcopy(load_yaml(ROOT / "config" / "config.yaml"))


def tiny_spec(method: str = "dense", dataset: str = "simulation", **over) -> dict:
    """A resolved run spec that trains in well under a second."""
    spec = dict(
        experiment="tiny", dataset=dataset, dataset_params={"p": 8, "n_train": 64, "n_val": 32, "n_test": 64} if dataset == "simulation" else {},
        model="mlp", model_params={"hidden": [6, 4]}, method=method, method_params={}, seed=0,
        sparsities=[0.5, 0.9], epochs=2, batch_size=32, lr=1e-2, noise_sd=1.0, finetune_epochs=1,
        finetune_lr_factor=0.1, device=TEST_DEVICE,
    )
    spec.update(over)
    return spec


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Job counts from the "Job stats" table of a Snakemake dry run ({} when nothing is to be done)."""
    counts, table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
        elif table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


#: what a checkout needs to run a grid with its own Snakefile (the package itself comes from the
#: editable install)
CHECKOUT = ["Snakefile", "environment.yml", "workflow", "config", "methods", "datasets", "profiles", ".test"]


def copy_checkout(dest: Path, keep_dates: bool) -> Path:
    """Copy the checkout's workflow files (:data:`CHECKOUT`) into ``dest``: with their file dates
    (``keep_dates``, as ``cp -a``) or with new ones (as a fresh clone has)."""
    import shutil

    copy = shutil.copy2 if keep_dates else shutil.copy
    dest.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "results"), copy_function=copy)
        else:
            copy(src, dest / name)
    return dest


def paper_script(name: str):
    """paper/<name>.py as a module (its drawing functions; the script part runs only as __main__)."""
    import importlib.util
    import sys

    folder = str(ROOT / "paper")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the scripts import paper/_common.py as `_common`
    spec = importlib.util.spec_from_file_location(f"paper_{name}", ROOT / "paper" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_fsyncs(monkeypatch, note) -> list:
    """Make slabbench.io's fsync append ``note(path)`` (path a Path) to the returned list, then
    flush as before."""
    import slabbench.io as io
    seen, real = [], io._fsync

    def fsync(path):
        seen.append(note(Path(path)))
        real(path)

    monkeypatch.setattr(io, "_fsync", fsync)
    return seen


# --- the workflow on the tiny grid of .test/config.yaml (test_workflow.py, test_interruptions.py) ----

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
TEST_CONFIG = ROOT / ".test" / "config.yaml"


def snakemake_command(workdir: Path, *args: str, config: Path = TEST_CONFIG) -> list[str]:
    """The command line of Snakemake on ``config`` in ``workdir`` (for a run started in the background)."""
    return [*SNAKEMAKE, "--configfile", str(config), "--directory", str(workdir), *args]


def snakemake(workdir: Path, *args: str, config: Path = TEST_CONFIG, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_command(workdir, *args, config=config), capture_output=True, text=True, timeout=timeout)
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


def one_experiment_config(folder: Path, methods: tuple[str, ...] = ("dense", "magnitude"), name: str = "one.yaml") -> Path:
    """The .test grid with its simulation experiment and ``methods`` only (one train job each),
    written to ``folder / name``."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["experiments"] = {"sim-tiny": cfg["experiments"]["sim-tiny"]}
    cfg["methods"] = list(methods)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path
