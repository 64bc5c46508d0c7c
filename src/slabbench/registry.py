"""Discovery of plugins: ``methods/*.py`` and ``datasets/*.py`` (one file each, no
``__init__.py``), reached through the ``slabbench.methods`` / ``slabbench.datasets``
namespaces.  Names are file stems; they become path parts, so they are validated."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re

from slabbench import datasets as _datasets_pkg
from slabbench import methods as _methods_pkg
from slabbench.api import Dataset, Method, PluginError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_KINDS = {"method": (_methods_pkg, Method), "dataset": (_datasets_pkg, Dataset)}


class UnknownPlugin(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def available(kind: str) -> list[str]:
    """Sorted names of the discovered plugins of ``kind`` ("method" or "dataset")."""
    pkg, _ = _KINDS[kind]
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if NAME_RE.match(m.name))


def misnamed(kind: str) -> str:
    """For an unknown-plugin message: "" or a sentence naming the files of ``kind`` that are not
    read because their names break the rule (a file whose name starts with ``_`` is a helper and
    is not named)."""
    pkg, _ = _KINDS[kind]
    bad = sorted(m.name + ("/" if m.ispkg else ".py") for m in pkgutil.iter_modules(pkg.__path__)
                 if not NAME_RE.match(m.name) and not m.name.startswith("_"))
    if not bad:
        return ""
    return (f" (not read: {', '.join(bad)}: a {kind} file's name is lowercase letters, digits and _, starting with a "
            f"letter)")


def _load(kind: str, name: str):
    pkg, base = _KINDS[kind]
    names = available(kind)
    if not isinstance(name, str) or name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownPlugin(f"unknown {kind} {name!r}{hint}; have {', '.join(names)}{misnamed(kind)}")
    module = importlib.import_module(f"{pkg.__name__}.{name}")
    attr = "Method" if kind == "method" else "Dataset"
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{kind} file {module.__file__} must define `{attr}`, a subclass of slabbench.api.{base.__name__}")
    cls.name = name
    return cls


def method_class(name: str) -> type[Method]:
    return _load("method", name)


def dataset_class(name: str) -> type[Dataset]:
    return _load("dataset", name)
