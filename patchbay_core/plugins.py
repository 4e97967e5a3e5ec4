"""The plugin manager: the built-in plugin, then third-party plugins from the `patchbay`
entry-point group, and lookups of presets by name."""

from __future__ import annotations

import functools
import importlib
from typing import TypeVar

import pluggy

from . import hookspecs
from .errors import TopologyError

BUILTIN_PLUGIN = "patchbay_plugins.builtin"
ENTRY_POINT_GROUP = "patchbay"

T = TypeVar("T")


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, made on first use."""
    pm = pluggy.PluginManager("patchbay")
    pm.add_hookspecs(hookspecs)
    pm.register(importlib.import_module(BUILTIN_PLUGIN), name=BUILTIN_PLUGIN)
    # The built-in plugin is also announced as an entry point; pluggy skips the duplicate
    # because it is registered under the same module object already.
    for dist_ep in _entry_points():
        if dist_ep.value == BUILTIN_PLUGIN:
            continue
        plugin = dist_ep.load()
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=dist_ep.name)
    return pm


def _entry_points() -> list:  # type: ignore[type-arg]
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _merged(results: list[dict[str, T]]) -> dict[str, T]:
    # pluggy calls the last-registered plugin first; apply in registration order so later
    # plugins override earlier ones.
    merged: dict[str, T] = {}
    for result in reversed(results):
        merged.update(result or {})
    return merged


def presets(kind: str) -> dict[str, object]:
    """All presets of a kind ("nat", "firewall", "router", "link") by name."""
    hook = getattr(plugin_manager().hook, f"patchbay_{kind}_presets")
    return _merged(hook())


def lookup_preset(kind: str, name: str, *, node: str | None = None, field: str | None = None) -> object:
    key = name.strip().lower().replace("_", "-")
    table = presets(kind)
    if key not in table:
        known = ", ".join(sorted(table)) or "none"
        raise TopologyError(f"unknown {kind} preset {name!r}; known: {known}", node=node, field=field)
    return table[key]
