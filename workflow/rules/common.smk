# Helpers: validate the configuration before any job starts and expand the grid.

import functools
import os

os.environ.setdefault("SLABBENCH_ROOT", workflow.basedir)

from slabbench.config import ConfigError, experiment_methods, experiment_seeds, run_dir, run_specs, validate

try:
    CONFIG = validate(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

SPECS = {(s["experiment"], s["method"], str(s["seed"])): s for s in run_specs(CONFIG)}
EXPERIMENTS = list(CONFIG["experiments"])
RUN_DIRS = [run_dir(s) for s in SPECS.values()]
# experiments that get a figure of spike-and-slab inclusion probabilities
PIP_EXPERIMENTS = [e for e in EXPERIMENTS if "spike_slab" in experiment_methods(CONFIG, e)]


wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_-]*",
    method="[a-z][a-z0-9_]*",
    seed="[0-9]+",


def spec_of(wildcards):
    return SPECS[(wildcards.experiment, wildcards.method, wildcards.seed)]


def plugin_files(wildcards):
    spec = spec_of(wildcards)
    base = workflow.basedir  # plugin files live beside the Snakefile, whatever the working directory
    return [f"{base}/methods/{spec['method']}.py", f"{base}/datasets/{spec['dataset']}.py"]


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
