"""Provenance recorded in every run record: versions, git commit, device."""

from __future__ import annotations

import functools
import os
import platform
import subprocess

import numpy
import torch

import slabbench
from slabbench._plugins import repo_root


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the repository.  Outside a git checkout (a copy of the tree sent to
    another machine) the commit is taken from ``$SLABBENCH_GIT_COMMIT`` when set, else "unknown"."""
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError, TypeError):
        return os.environ.get("SLABBENCH_GIT_COMMIT", "unknown"), False


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
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
    }
    return info
