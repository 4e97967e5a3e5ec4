"""Normalized step results (`[step.results]`) and what is computed from them.

A record keeps the captured strings as they were (`results.json` is exactly the book's shape);
throughput is computed: down_bytes / duration, where a duration written as an integer is
microseconds and one with a decimal point is seconds (the Rust runner's rule).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import RESULT_FIELDS, ResultsSpec

JSON_FIELDS = ("id", "duration", "down_bytes", "latency_ms", "up_bytes")  # the book's order


@dataclass
class StepResult:
    id: str
    duration: str | None = None
    up_bytes: str | None = None
    down_bytes: str | None = None
    latency_ms: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {f: getattr(self, f) for f in JSON_FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepResult:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(id=str(data.get("id", "")), **{f: text(f) for f in RESULT_FIELDS})

    def elapsed_s(self) -> float | None:
        if self.duration is None:
            return None
        text = self.duration.strip()
        if text.isdigit():
            return int(text) / 1_000_000
        try:
            return float(text)
        except ValueError:
            return None

    def _mb_s(self, raw: str | None) -> float | None:
        secs = self.elapsed_s()
        try:
            size = float(raw) if raw is not None else None
        except ValueError:
            return None
        if size is None or secs is None or secs <= 0:
            return None
        return size / (secs * 1_000_000)

    def down_mb_s(self) -> float | None:
        return self._mb_s(self.down_bytes)

    def up_mb_s(self) -> float | None:
        return self._mb_s(self.up_bytes)

    def latency(self) -> float | None:
        try:
            return float(self.latency_ms) if self.latency_ms is not None else None
        except ValueError:
            return None

    def computed(self) -> dict[str, float | None]:
        return {"elapsed_s": self.elapsed_s(), "down_mb_s": self.down_mb_s(), "up_mb_s": self.up_mb_s(),
                "latency_ms": self.latency()}


def collect(step_id: str, spec: ResultsSpec, values: Mapping[str, str]) -> StepResult | None:
    """The record of a step from the latest capture values; None when none of its fields has one."""
    record = StepResult(id=step_id)
    found = False
    for field, key in spec.keys().items():
        value = values.get(key)
        if value is not None:
            setattr(record, field, value)
            found = True
    return record if found else None


def results_json(sim: str, records: Sequence[StepResult]) -> str:
    return json.dumps({"sim": sim, "steps": [r.as_json() for r in records]}, indent=2) + "\n"


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def result_rows(records: Sequence[StepResult]) -> list[dict[str, str]]:
    return [{
        "id": r.id,
        "down_bytes": r.down_bytes or "",
        "elapsed_s": _fmt(r.elapsed_s(), 3),
        "mb_s": _fmt(r.down_mb_s(), 2),
        "up_bytes": r.up_bytes or "",
        "up_mb_s": _fmt(r.up_mb_s(), 2),
        "latency_ms": _fmt(r.latency(), 1),
    } for r in records]


def md_table(rows: Sequence[Mapping[str, str]], headers: Sequence[str]) -> str:
    """A markdown table of the columns that have a value somewhere."""
    active = [h for h in headers if any(row.get(h) for row in rows)]
    if not active:
        return ""
    lines = ["| " + " | ".join(active) + " |", "| " + " | ".join("-" * len(h) for h in active) + " |"]
    lines += ["| " + " | ".join(row.get(h, "").replace("|", "\\|") for h in active) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_md(sim: str, status: str, records: Sequence[StepResult], captures: Mapping[str, str]) -> str:
    out = [f"# {sim}", "", f"status: {status}", ""]
    rows = [{"sim": sim, **row} for row in result_rows(records)]
    table = md_table(rows, ["sim", "id", "down_bytes", "elapsed_s", "mb_s", "up_bytes", "up_mb_s", "latency_ms"])
    out += ["## Results", "", table or "(no step results)", ""]
    if captures:
        rows = [{"capture": k, "value": v if len(v) <= 80 else v[:77] + "..."} for k, v in captures.items()]
        out += ["## Captures", "", md_table(rows, ["capture", "value"])]
    return "\n".join(out).rstrip("\n") + "\n"
