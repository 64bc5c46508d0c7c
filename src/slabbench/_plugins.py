"""Locate the plugin folders (``methods/`` and ``datasets/``) of the repository.

The plugin folders are plain directories without ``__init__.py`` at the top of the
repository; :mod:`slabbench.methods` and :mod:`slabbench.datasets` extend their
``__path__`` to them.  The repository root is taken from ``SLABBENCH_ROOT`` when set,
else found by walking up from this file (editable install, the supported layout).
"""

from __future__ import annotations

import os
from pathlib import Path


class RootError(RuntimeError):
    """``$SLABBENCH_ROOT`` names a folder that is not a slabbench checkout."""


def _is_checkout(folder: Path) -> bool:
    return (folder / "methods").is_dir() and (folder / "datasets").is_dir() and (folder / "Snakefile").is_file()


def repo_root() -> Path | None:
    """The checkout (``$SLABBENCH_ROOT``, else the folder above this file that holds ``methods/``,
    ``datasets/`` and ``Snakefile``), or None outside one.  A ``$SLABBENCH_ROOT`` that is not a
    checkout is an error naming it."""
    env = os.environ.get("SLABBENCH_ROOT")
    if env:
        root = Path(env).resolve()
        if not _is_checkout(root):
            raise RootError(f"SLABBENCH_ROOT={env!r} is not a slabbench checkout (a folder with methods/, datasets/ "
                               f"and Snakefile); point it at the checkout or unset it")
        return root
    for parent in Path(__file__).resolve().parents:
        if _is_checkout(parent):
            return parent
    return None


def plugin_dir(kind: str) -> str | None:
    root = repo_root()
    if root is None:
        return None
    folder = root / kind
    return str(folder) if folder.is_dir() else None
