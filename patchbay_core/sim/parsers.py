"""Output parsers of run and spawn steps: `text`, `ndjson`, `json`.

- text: per line, as it comes; only `regex` captures.
- ndjson: per line; `regex` on the raw line first, else the line as JSON with `match`/`pick`.
- json: `regex` per line as it comes; `pick` (and `match`) once, on the whole output of the
  capture's pipe, after the process exited.
Every value found updates the capture (the latest wins).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .model import CaptureSpec

_MISSING = object()


def render(value: Any) -> str:
    """A JSON value as a capture string: strings as they are, everything else as JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def pick(doc: Any, path: str) -> Any:
    """`.end.sum_received.bytes` into a parsed JSON value; numeric segments index arrays."""
    current = doc
    for segment in path.split("."):
        if not segment:
            continue
        if isinstance(current, list) and segment.isdigit():
            index = int(segment)
            if index >= len(current):
                return _MISSING
            current = current[index]
        elif isinstance(current, Mapping) and segment in current:
            current = current[segment]
        else:
            return _MISSING
    return current


def _guards_hold(doc: Any, guards: Mapping[str, str]) -> bool:
    if not guards:
        return True
    if not isinstance(doc, Mapping):
        return False
    for key, expected in guards.items():
        if key not in doc:
            return False
        actual = doc[key]
        text = actual if isinstance(actual, str) else "true" if actual is True else "false" if actual is False \
            else render(actual)
        if text != expected:
            return False
    return True


def from_json(doc: Any, spec: CaptureSpec) -> str | None:
    if spec.pick is None or not _guards_hold(doc, spec.match):
        return None
    value = pick(doc, spec.pick)
    return None if value is _MISSING else render(value)


def from_regex(line: str, spec: CaptureSpec) -> str | None:
    if spec.regex is None:
        return None
    m = spec.regex.search(line)
    if m is None:
        return None
    if m.re.groups >= 1 and m.group(1) is not None:
        return m.group(1)
    return m.group(0)


class OutputParser:
    """Feeds a process's output lines to its step's captures; `record(name, value)` gets what is found."""

    def __init__(self, parser: str, captures: Mapping[str, CaptureSpec], record: Callable[[str, str], None]) -> None:
        self.parser = parser
        self.captures = captures
        self.record = record
        self._texts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._json_pipes = {c.pipe for c in captures.values() if c.pick is not None} if parser == "json" else set()

    def line(self, pipe: str, line: str) -> None:
        if pipe in self._json_pipes:
            self._texts[pipe].append(line)
        parsed: Any = _MISSING
        for name, spec in self.captures.items():
            if spec.pipe != pipe:
                continue
            value = from_regex(line, spec)
            if value is None and self.parser == "ndjson" and spec.pick is not None:
                if parsed is _MISSING:
                    parsed = _parse_line(line)
                if parsed is not _MISSING:
                    value = from_json(parsed, spec)
            if value is not None:
                self.record(name, value)

    def finish(self) -> list[str]:
        """After the process exited: the json parser's picks. Returns warnings."""
        warnings = []
        for pipe in sorted(self._json_pipes):
            text = "\n".join(self._texts[pipe]).strip()
            try:
                doc = json.loads(text)
            except ValueError as exc:
                snippet = text[:80] + ("..." if len(text) > 80 else "")
                warnings.append(f"parser = \"json\": the {pipe} is not one JSON document ({exc}): {snippet!r}")
                continue
            for name, spec in self.captures.items():
                if spec.pipe == pipe and spec.pick is not None:
                    value = from_json(doc, spec)
                    if value is not None:
                        self.record(name, value)
        return warnings


def _parse_line(line: str) -> Any:
    text = line.strip()
    if not text.startswith(("{", "[")):
        return _MISSING
    try:
        return json.loads(text)
    except ValueError:
        return _MISSING
