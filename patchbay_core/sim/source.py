"""A TOML file of a sim (the sim itself or one it extends): its text, document and key lines."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The topology loader's scanner of key lines, its spelling of key paths (("step", 3, "captures",
# "size") -> step[3].captures.size) and of TOML syntax errors; the sim runner shares them so that
# both report lines, keys and syntax errors the same way.
from ..topofile import KeyPath, _KeyLines, _render, _toml_error
from .model import Where, sim_error


@dataclass(eq=False)
class SourceFile:
    path: Path  # absolute
    name: str  # as errors show it
    text: str
    doc: dict[str, Any]
    lines: _KeyLines

    def at(self, path: KeyPath, step: str | None = None) -> Where:
        return Where(self.name, self.lines.line_of(path), _render(path), step)


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
        message, line = _toml_error(exc)
        raise sim_error(message, file=name, line=line) from None
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
