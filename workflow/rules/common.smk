# Helpers: validate the configuration before any job starts and expand the grid.

import functools
import os

import yaml

os.environ.setdefault("SLABBENCH_ROOT", workflow.basedir)

from slabbench.config import STACK_FILE, ConfigError, experiment_methods, experiment_seeds, load_yaml, method_plugin, run_dir, stack_jobs, validate

try:
    for path in workflow.configfiles:  # Snakemake's own loader keeps a repeated key's last value
        load_yaml(path)  # ConfigError naming the line where a key repeats in one mapping
    CONFIG = validate(config)
except (ConfigError, yaml.YAMLError) as err:
    raise WorkflowError(str(err)) from None
# how often a training job saves its state (slabbench.checkpoint), read by the job from its
# environment: neither a param nor the script's code, both rerun triggers (changing it retrains nothing)
os.environ.update(SLABBENCH_CHECKPOINT_MINUTES=str(CONFIG.get("checkpoint_minutes", 10)))

# training jobs: (experiment, method, stack index) -> the run specs that job trains
# plain dicts: Snakemake compares a job's params by their repr (a changed repr reruns the job)
JOBS = {(e, m, str(i)): [s.to_dict() for s in specs] for (e, m, i), specs in stack_jobs(CONFIG).items()}
EXPERIMENTS = list(CONFIG["experiments"])
STACK_FILES = [STACK_FILE.format(experiment=e, method=m, stack=i) for e, m, i in JOBS]
RUN_DIRS = [run_dir(s) for specs in JOBS.values() for s in specs]
# experiments that get a figure of spike-and-slab inclusion probabilities
PIP_EXPERIMENTS = [e for e in EXPERIMENTS if "spike_slab" in experiment_methods(CONFIG, e)]


wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_-]*",
    method="[a-z][a-z0-9_]*",
    stack="[0-9]+",


def stack_specs(wildcards):
    return JOBS[(wildcards.experiment, wildcards.method, wildcards.stack)]


def spec_of(wildcards):
    return stack_specs(wildcards)[0]


def stacks_of(experiment, method):
    """The stack files of one experiment x method."""
    return [STACK_FILE.format(experiment=e, method=m, stack=i) for e, m, i in JOBS if (e, m) == (experiment, method)]


def from_basedir(path):
    """``path`` (relative to the Snakefile's folder) relative to the working directory: Snakemake
    records inputs as given, and a relative path keeps a moved or copied checkout (with its
    results/ and .snakemake/) from rerunning every job for a changed set of input files."""
    return os.path.relpath(os.path.join(workflow.basedir, path))


def plugin_files(wildcards):
    spec = spec_of(wildcards)
    # plugin files live beside the Snakefile, whatever the working directory
    return [from_basedir(f"methods/{method_plugin(spec)}.py"), from_basedir(f"datasets/{spec['dataset']}.py")]


@functools.lru_cache(maxsize=None)
def _uses_gpu(device):
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device == "cuda"


# a training job on a GPU declares gpu=1; the profile's `resources: gpu` caps concurrent GPU jobs
# (the device is the experiment's own `device`, else the global one: see run_specs)
def gpu_count(wildcards):
    return 1 if _uses_gpu(spec_of(wildcards)["device"]) else 0


# memory (MB) a training job asks of a cluster: a CUDA process maps about 2 GB of host memory
def train_mem_mb(wildcards):
    return 6000 if gpu_count(wildcards) else 2000


# the paper's frozen data (workflow/rules/paper.smk)
PAPER_DATA = ["paper/data/runs.csv", "paper/data/provenance.json"]
PAPER_ARTEFACTS = ["paper/data/artefacts.json", "paper/data/pips.npz", "paper/data/features.csv"]


def paper_inputs(wildcards):
    """The script of one output, the shared helpers and the frozen data (the artefact files
    where they exist: a table frozen before they were kept has none)."""
    return {"script": from_basedir(f"paper/{wildcards.name}.py"), "common": from_basedir("paper/_common.py"),
            "data": PAPER_DATA + [f for f in PAPER_ARTEFACTS if os.path.exists(f)]}
