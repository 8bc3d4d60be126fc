"""Registries by name, and the one loader that fills them: the built-in methods first, then
every plugin package's `lwr.plugins` entry point.

The ground floor, so any floor can look a name up: the config finds a method's section here
without importing the method, and the model factory finds a head or a variant here without
importing the methods package. What a registry holds is typed by the floor that fills it
(`lwrcli.methods.base.Method` for METHODS).

The built-in methods are loaded the way plugins are: by name, once, on first lookup. That is
the one import here that reaches up a floor, and it is a string on purpose (see
docs/architecture.md, 'How a method reaches the core').
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from lwrcli.errors import UserError, did_you_mean

T = TypeVar("T")
PLUGIN_GROUP = "lwr.plugins"
BUILTIN_METHODS = "lwrcli.methods"


class Registry(Generic[T]):
    """name -> entry for one kind of thing (methods, backbone families, tuning methods, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        # Where each entry came from: 'lwrcli' or the plugin's entry point name.
        self.origin: dict[str, str] = {}

    def register(self, name: str, entry: T, origin: str | None = None) -> T:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} '{name}' is already registered (by {self.origin[name]}); "
                "choose another name"
            )
        self._entries[name] = entry
        self.origin[name] = origin or _current_origin
        return entry

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise LookupError(
                f"unknown {self.kind} '{name}'.{did_you_mean(name, self._entries)} "
                f"Known: {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        load_plugins()
        return list(self._entries)

    def values(self) -> list[T]:
        load_plugins()
        return list(self._entries.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# name -> Method (lwrcli.methods.base): every loss, head, model variant and training trick.
METHODS: Registry[Any] = Registry("method")

_state = {"loaded": False, "loading": False}
_current_origin = "lwrcli"


def load_plugins(entry_points: Callable[[], list[Any]] | None = None) -> None:
    """Register the built-in methods, then each installed plugin (once per process).

    A plugin is a package that declares, in its pyproject.toml,

        [project.entry-points."lwr.plugins"]
        my_methods = "my_package.lwr_plugin:register"

    where `register()` (no arguments) calls lwr's register functions. A plugin that fails to
    load or to register stops lwr with one paragraph naming it (exit status 2)."""
    global _current_origin
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        importlib.import_module(BUILTIN_METHODS).register_builtin()
        for ep in (entry_points or _plugin_entry_points)():
            _current_origin = f"plugin '{ep.name}' ({ep.value})"
            try:
                register = ep.load()
                if not callable(register):
                    raise TypeError(f"{ep.value} is not a function")
                register()
            except Exception as exc:  # any failure inside someone else's package
                raise UserError(
                    f"The lwr plugin '{ep.name}' ({ep.value}, entry point group "
                    f"'{PLUGIN_GROUP}') failed to load: {type(exc).__name__}: {exc}. Fix or "
                    f"uninstall the package that declares it (pip uninstall "
                    f"{_distribution(ep)})."
                ) from None
            finally:
                _current_origin = "lwrcli"
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def _plugin_entry_points() -> list[Any]:
    return sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)


def _distribution(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "<the plugin's package>"
