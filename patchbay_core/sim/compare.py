"""`patchbay compare RUN_A RUN_B`: throughput and latency of every step, side by side; a
regression (B worse than A by more than the threshold) makes the exit status non-zero.

A run is a run directory (`.patchbay-work/sim-…`), a work directory (its `latest` run), a
sim directory, or a `combined-results.json` / `results.json` file. Steps are matched by sim
name and step id. Worse means: less throughput (down or up MB/s), more latency, a step of A
missing in B, or a sim that passed in A and did not in B.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PatchbayError
from .results import StepResult

# metric name -> (how to read it, whether higher is better, the change below which it is noise)
METRICS = {
    "down MB/s": (StepResult.down_mb_s, True, 0.1),
    "up MB/s": (StepResult.up_mb_s, True, 0.1),
    "latency ms": (StepResult.latency, False, 1.0),
}


class CompareError(PatchbayError):
    """A run to compare has no results, or the threshold is not a percentage."""


@dataclass
class RunData:
    label: str
    steps: dict[tuple[str, str], StepResult] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # sim -> ok / error / interrupted


@dataclass
class Row:
    sim: str
    step: str
    metric: str
    a: float | None
    b: float | None
    verdict: str  # ok, better, worse, missing, new, failed

    @property
    def change_pct(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return (self.b - self.a) / abs(self.a) * 100


def parse_threshold(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text or "")
    if m is None:
        raise CompareError(f"--max-regression takes a percentage such as 10% or 2.5, not {text!r}")
    return float(m.group(1))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path}: {exc}") from None


def load_run(path: str | Path) -> RunData:
    p = Path(path)
    if p.is_dir() and (p / "latest").exists() and not (p / "combined-results.json").exists():
        p = (p / "latest").resolve()
    data = RunData(label=p.name if p.is_dir() else f"{p.parent.name}/{p.name}")
    if p.is_file():
        doc = _read_json(p)
        if isinstance(doc, dict) and "runs" in doc:
            _add_combined(data, doc)
        else:
            _add_results(data, doc, None)
    elif (p / "combined-results.json").is_file():
        _add_combined(data, _read_json(p / "combined-results.json"))
        manifest = p / "manifest.json"
        if manifest.is_file():
            for sim in _read_json(manifest).get("simulations", []):
                if isinstance(sim, dict) and "sim" in sim:
                    data.status[str(sim["sim"])] = str(sim.get("status"))
    elif (p / "results.json").is_file():
        _add_results(data, _read_json(p / "results.json"), _status_of(p))
    elif p.is_dir():
        for sub in sorted(p.iterdir()):
            if (sub / "results.json").is_file():
                _add_results(data, _read_json(sub / "results.json"), _status_of(sub))
    else:
        raise CompareError(f"{path}: no such run directory or results file")
    if not data.steps and not data.status:
        raise CompareError(f"{path}: no results found (expected a run directory of patchbay run, or a "
                           "combined-results.json / results.json)")
    return data


def _status_of(sim_dir: Path) -> str | None:
    if (sim_dir / "sim.json").is_file():
        status = _read_json(sim_dir / "sim.json").get("status")
        return str(status) if status else None
    return None


def _add_combined(data: RunData, doc: Any) -> None:
    for run in doc.get("runs", []) if isinstance(doc, dict) else []:
        if isinstance(run, dict):
            _add_results(data, run, run.get("status"))


def _add_results(data: RunData, doc: Any, status: str | None) -> None:
    if not isinstance(doc, dict):
        raise CompareError("a results file must hold {\"sim\": ..., \"steps\": [...]}")
    sim = str(doc.get("sim", ""))
    if status:
        data.status[sim] = status
    for step in doc.get("steps", []):
        if isinstance(step, dict):
            record = StepResult.from_json(step)
            data.steps[(sim, record.id)] = record


def compare(a: RunData, b: RunData, max_regression: float) -> list[Row]:
    rows: list[Row] = []
    for sim, status in a.status.items():
        if status == "ok" and sim in b.status and b.status[sim] != "ok":
            rows.append(Row(sim, "-", f"status {b.status[sim]}", None, None, "failed"))
    for (sim, sid), ra in a.steps.items():
        rb = b.steps.get((sim, sid))
        for metric, (read, higher_better, noise) in METRICS.items():
            va = read(ra)
            if va is None:
                continue
            vb = read(rb) if rb is not None else None
            if vb is None:
                rows.append(Row(sim, sid, metric, va, None, "missing"))
                continue
            row = Row(sim, sid, metric, va, vb, "ok")
            change = row.change_pct
            if change is not None and abs(vb - va) >= noise:
                worse = -change if higher_better else change
                if worse > max_regression:
                    row.verdict = "worse"
                elif worse < -max_regression:
                    row.verdict = "better"
            rows.append(row)
    for (sim, sid), rb in b.steps.items():
        if (sim, sid) not in a.steps:
            for metric, (read, _, _) in METRICS.items():
                if read(rb) is not None:
                    rows.append(Row(sim, sid, metric, None, read(rb), "new"))
    return rows


def regressions(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.verdict in ("worse", "missing", "failed")]


def render(a: RunData, b: RunData, rows: list[Row], max_regression: float) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = [["sim", "step", "metric", f"A ({a.label})", f"B ({b.label})", "change", "verdict"]]
    for r in rows:
        change = r.change_pct
        table.append([r.sim, r.step, r.metric, num(r.a), num(r.b), "-" if change is None else f"{change:+.1f}%",
                      r.verdict.upper() if r.verdict in ("worse", "missing", "failed") else r.verdict])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    bad = regressions(rows)
    lines.append("")
    if bad:
        lines.append(f"{len(bad)} regression{'s' if len(bad) != 1 else ''} beyond {max_regression:g}% (B worse "
                     "than A)")
    else:
        lines.append(f"no regression beyond {max_regression:g}%")
    return "\n".join(lines)
