"""Plugins: modules of the user's own packages that register students
(``dakd.models.register_model``) and loss terms (``dakd.loss_terms.register_term``).

Two ways name them, both imported once per process before a registry is read:

* installed: an entry point of the group ``dakd.plugins`` in the package's metadata (its value
  is the module), imported the first time any registry is read (:func:`load_installed`);
* named: the experiment's ``plugins: [module, ...]``, imported when a config is built from
  plain data (``dakd.config.from_dict``), so a driver, a Ray Tune trial process, a data-parallel
  rank and ``python -m dakd train`` each import them before they read the config's names.

A module that fails to import, or that registers a name which exists, is one
:class:`PluginError` line naming the module and the problem.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from importlib.metadata import entry_points

from dakd.config.build import ConfigError

#: The entry-point group an installed package lists its plugin modules under.
GROUP = "dakd.plugins"

_LOCK = threading.RLock()
_IMPORTED: set[str] = set()
_STATE = {"installed": False, "loading": False}


class PluginError(ConfigError):
    """A plugin module that cannot be imported or registers a name that exists."""


def import_plugin(module: str, origin: str = "plugins") -> None:
    """Import the plugin ``module`` once; ``origin`` says where it was named (in errors)."""
    with _LOCK:
        if module in _IMPORTED:
            return
        _IMPORTED.add(module)
        try:
            importlib.import_module(module)
        except Exception as err:
            _IMPORTED.discard(module)
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PluginError(f"plugin {module} ({origin}): {text}") from None


def installed_modules() -> list[tuple[str, str]]:
    """``(module, entry point name)`` of every installed plugin, sorted by name."""
    found = entry_points(group=GROUP)
    return sorted(((ep.module, ep.name) for ep in found), key=lambda pair: pair[1])


def load_installed() -> None:
    """Import every installed plugin (entry points of :data:`GROUP`) once per process."""
    with _LOCK:
        if _STATE["installed"] or _STATE["loading"]:
            return
        _STATE["loading"] = True
        try:
            for module, name in installed_modules():
                import_plugin(module, f"entry point {name!r} of {GROUP}")
            _STATE["installed"] = True
        finally:
            _STATE["loading"] = False


def load_plugins(modules: Iterable[str] = ()) -> None:
    """The installed plugins, then the named ``modules`` (a config's ``plugins``)."""
    load_installed()
    for module in modules:
        import_plugin(module)
