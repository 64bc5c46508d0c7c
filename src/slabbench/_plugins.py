"""Locate the plugin folders (``methods/`` and ``datasets/``) of the repository.

The plugin folders are plain directories without ``__init__.py`` at the top of the
repository; :mod:`slabbench.methods` and :mod:`slabbench.datasets` extend their
``__path__`` to them.  The repository root is taken from ``SLABBENCH_ROOT`` when set,
else found by walking up from this file (editable install, the supported layout).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path | None:
    env = os.environ.get("SLABBENCH_ROOT")
    if env:
        return Path(env).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "methods").is_dir() and (parent / "datasets").is_dir() and (parent / "Snakefile").is_file():
            return parent
    return None


def plugin_dir(kind: str) -> str | None:
    root = repo_root()
    if root is None:
        return None
    folder = root / kind
    return str(folder) if folder.is_dir() else None
