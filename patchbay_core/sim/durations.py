"""Durations as sims write them: "500ms", "30s", "2m"."""

from __future__ import annotations

import re

from .model import Where

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
MAX_SECONDS = 7 * 24 * 3600.0  # a week: far beyond any sim, stops a typo from waiting forever


def parse_duration(value: object, where: Where) -> float:
    """Seconds of a duration string ("<n>ms", "<n>s" or "<n>m")."""
    text = value if isinstance(value, str) else None
    match = _DURATION.fullmatch(text) if text is not None else None
    if match is None:
        got = repr(value) if isinstance(value, str) else f"{type(value).__name__} {value!r}"
        hint = ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = f' (a number needs a unit: "{value}s")'
        elif text is not None and re.fullmatch(r"\s*\d+(\.\d+)?\s*[a-zA-Z]+\s*", text):
            hint = " (units: ms, s, m)"
        raise where.error(f'expected a duration such as "500ms", "30s" or "2m", got {got}{hint}')
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_SECONDS:
        raise where.error(f"duration {text!r} is longer than a week; sims wait at most {int(MAX_SECONDS)}s")
    return seconds


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
