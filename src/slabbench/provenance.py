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


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the repository, or ("unknown", False) outside a git checkout.

    ``$SLABBENCH_GIT_COMMIT``, when set, names the commit instead (dirty False): for a copy of a
    clean tree sent to another machine, whose ``.git`` may be missing or stale."""
    env = os.environ.get("SLABBENCH_GIT_COMMIT")
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True).stdout
        found = (commit, bool(status.strip()))
    except (OSError, subprocess.CalledProcessError, TypeError):
        found = ("unknown", False)
    if env:
        if found[0] not in ("unknown", env):
            log.warning("SLABBENCH_GIT_COMMIT=%s overrides the checkout's HEAD %s (dirty: %s) in the provenance",
                        env, found[0], found[1])
        return env, False
    return found


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
