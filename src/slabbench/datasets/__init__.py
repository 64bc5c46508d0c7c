"""Namespace for dataset plugins: one file per dataset in the repository's ``datasets/``."""

from slabbench._plugins import plugin_dir as _plugin_dir

_dir = _plugin_dir("datasets")
if _dir is not None and _dir not in __path__:
    __path__.append(_dir)
