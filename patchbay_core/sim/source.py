"""A TOML file of a sim (the sim itself or one it extends): its text, document and key lines."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The topology loader's scanner of key lines; the sim runner shares it so that both report
# lines the same way.
from ..topofile import _KeyLines
from .model import Where, sim_error

KeyPath = tuple[str | int, ...]


def render(path: KeyPath) -> str:
    """("step", 3, "captures", "size") -> step[3].captures.size"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out


@dataclass(eq=False)
class SourceFile:
    path: Path  # absolute
    name: str  # as errors show it
    text: str
    doc: dict[str, Any]
    lines: _KeyLines

    def at(self, path: KeyPath, step: str | None = None) -> Where:
        return Where(self.name, self.lines.line_of(path), render(path), step)


def display_name(path: Path) -> str:
    """The path relative to the working directory when it is below it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def parse_source(text: str, path: Path, name: str | None = None) -> SourceFile:
    name = name or display_name(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "syntax error"
        if where:
            reason += f" (column {where.group(2)})"
        raise sim_error(f"not valid TOML: {reason}", file=name, line=int(where.group(1)) if where else None) from None
    return SourceFile(path, name, text, doc, _KeyLines(text))


def read_source(path: Path, what: str = "sim file", where: Where | None = None) -> SourceFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = f"cannot read the {what} {display_name(path)}: {reason}"
        if where is not None:
            raise where.error(message) from None
        raise sim_error(message, file=display_name(path)) from None
    return parse_source(text, path)


def find_file(name: str, candidates: Sequence[Path], what: str, where: Where) -> Path:
    """The first candidate that exists; else an error listing where it looked."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(display_name(c) for c in candidates)
    raise where.error(f"{what} {name!r} not found (looked for {looked})")
