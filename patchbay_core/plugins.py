"""The plugin manager: the built-in plugin, then third-party plugins from the `patchbay`
entry-point group, and lookups of presets by name."""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
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
    for name, value in entry_points(ENTRY_POINT_GROUP):
        if value == BUILTIN_PLUGIN:
            continue
        plugin = _load(value)
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=name)
    return pm


def entry_points(group: str, path: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, value) of the entry points in `group` of the distributions on `path` (sys.path),
    the first distribution of a name hiding later ones, as importlib.metadata has it.

    Read straight from each dist-info's (or egg-info's) entry_points.txt: importing
    importlib.metadata costs ~15 ms (email, zipfile, csv), which every process's first
    router would pay. Zipped distributions are not searched."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in sys.path if path is None else path:
        try:
            children = sorted(os.listdir(entry or "."))
        except OSError:  # a zip file, or a directory that is gone
            continue
        for child in children:
            stem, ext = os.path.splitext(child)
            if ext not in (".dist-info", ".egg-info"):
                continue
            dist = re.sub(r"[-_.]+", "_", stem.partition("-")[0]).lower()
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", child, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            found += _section(text, group)
    return found


def _section(text: str, group: str) -> list[tuple[str, str]]:
    """The `name = value` lines of an entry_points.txt's [group] section."""
    section, out = None, []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out


def _load(value: str) -> object:
    """What an entry point's "module:attr [extras]" names."""
    module, _, attr = value.split("[", 1)[0].partition(":")
    obj: object = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


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
