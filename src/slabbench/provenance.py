"""Provenance recorded in every run record: versions, git commit, device."""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess

import numpy
import torch

import slabbench
from slabbench._plugins import repo_root

log = logging.getLogger(__name__)

#: folders whose untracked files make a checkout dirty (tracked files count anywhere)
CODE_FOLDERS = ("src", "methods", "datasets", "workflow", "Snakefile")


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the repository, or ("unknown", False) outside a git checkout.  Dirty:
    a tracked file differs from the commit, or a file under :data:`CODE_FOLDERS` is untracked
    (ignored files, such as ``__pycache__``, are not).

    ``$SLABBENCH_GIT_COMMIT``, when set, names the commit instead (dirty False): for a copy of a
    clean tree sent to another machine, whose ``.git`` may be missing or stale."""
    env = os.environ.get("SLABBENCH_GIT_COMMIT")
    root = repo_root()
    found = ("unknown", False)  # outside a checkout (git would answer for whatever holds the cwd)
    if root is not None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                    check=True).stdout.strip()
            changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                     capture_output=True, text=True, check=True).stdout
            # a new, uncommitted plugin or module (docs/extending.md's first step) is code the
            # commit lacks; an untracked config or notes file elsewhere is not
            new = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_FOLDERS],
                                 cwd=root, capture_output=True, text=True, check=True).stdout
            found = (commit, bool(changed.strip() or new.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    if env:
        if found[0] not in ("unknown", env):
            log.warning("SLABBENCH_GIT_COMMIT=%s overrides the checkout's HEAD %s (dirty: %s) in the provenance",
                        env, found[0], found[1])
        return env, False
    return found


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU a run used, as specific as the machine tells: its model name (Linux
    ``/proc/cpuinfo``; else :func:`platform.processor`, else the architecture) and the vector
    instruction set torch's CPU kernels dispatch to, e.g. ``"AMD EPYC (AVX512)"``.  Two x86_64
    machines can give different numbers for the same run (kernels of another instruction set
    round differently, and 100,000 training steps grow the difference): the record says which."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    # the processor's name first (x86, some ARM kernels; MIPS), the board's (ARM) last
    model = next((fields[k] for k in ("model name", "cpu model", "Model") if k in fields), "")
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({capability})" if capability else model


def provenance(device: torch.device) -> dict:
    commit, dirty = git_commit()
    info = {
        "slabbench": slabbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
    }
    return info
