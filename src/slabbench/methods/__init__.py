"""Namespace for method plugins: one file per method in the repository's ``methods/``."""

from slabbench._plugins import plugin_dir as _plugin_dir

_dir = _plugin_dir("methods")
if _dir is not None and _dir not in __path__:
    __path__.append(_dir)
