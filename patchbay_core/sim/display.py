"""What `patchbay run` shows while it runs and when it is done.

On a terminal: a live `rich` view (every sim, its current step, elapsed time). Otherwise (CI
logs, pipes): one plain line per event. Both end with the same summary table.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from .durations import format_seconds
from .output import RunOutput, SimRecord

STATUS_MARK = {"pending": "·", "running": "▶", "ok": "✓", "error": "✗", "interrupted": "!"}


def _metric(values: list[float | None], digits: int, low: bool = False) -> str:
    found = [v for v in values if v is not None]
    if not found:
        return "-"
    return f"{(min(found) if low else max(found)):.{digits}f}"


def _sims(n: int) -> str:
    return f"{n} sim" if n == 1 else f"{n} sims"


def summary_rows(output: RunOutput) -> list[dict[str, str]]:
    rows = []
    for r in output.records:
        rows.append({
            "sim": r.name,
            "status": r.status,
            "steps": f"{r.steps_done}/{r.steps_total}",
            "time": format_seconds((r.runtime_ms or 0) / 1000) if r.started else "-",
            "down MB/s": _metric([s.down_mb_s() for s in r.results], 2),
            "up MB/s": _metric([s.up_mb_s() for s in r.results], 2),
            "latency ms": _metric([s.latency() for s in r.results], 1, low=True),
        })
    return rows


def plain_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    lines = ["  ".join(h.ljust(widths[h]) for h in headers).rstrip()]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in headers).rstrip() for r in rows]
    return "\n".join(lines)


def failures(output: RunOutput) -> list[str]:
    out = []
    for r in output.records:
        if r.status == "ok":
            continue
        message = (r.error or {}).get("message") or r.status
        out.append(f"{r.name}: {message}")
        out += [f"{r.name}: warning: {w}" for w in r.warnings]
    return out


def headline(output: RunOutput) -> str:
    c = output.counts()
    total = len(output.records)
    state = {"done": "done", "interrupted": "INTERRUPTED", "running": "running"}[output.status]
    return (f"patchbay run {output.name}: {state}: {c['ok']}/{total} ok, {c['error']} failed"
            + (f", {c['interrupted']} interrupted" if c["interrupted"] else "")
            + f" in {format_seconds(time.time() - output.started)}")


class PlainDisplay:
    """One line per event: sim started, step started, sim finished."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self._seen: dict[int, tuple[str, int | None]] = {}
        self._started = False

    def update(self, output: RunOutput) -> None:
        if not self._started:
            self._started = True
            self._print(f"patchbay run {output.name}: {_sims(len(output.records))}, output in {output.root}")
        for i, r in enumerate(output.records):
            state = (r.status, r.step_index)
            if self._seen.get(i) == state:
                continue
            self._seen[i] = state
            if r.status == "running" and r.step_index is not None:
                self._print(f"[{r.name}] step {r.steps_done + 1}/{r.steps_total}: {r.step_label}")
            elif r.status in ("ok", "error", "interrupted"):
                self._print(self._finished(r))

    def _finished(self, r: SimRecord) -> str:
        took = format_seconds((r.runtime_ms or 0) / 1000)
        if r.status == "ok":
            return f"[{r.name}] ok in {took}"
        message = (r.error or {}).get("message", "")
        word = "FAILED" if r.status == "error" else "INTERRUPTED"
        return f"[{r.name}] {word} after {took}: {message}"

    def stop(self, output: RunOutput) -> None:
        self._print("")
        self._print(plain_table(summary_rows(output)))
        problems = failures(output)
        if problems:
            self._print("")
            for line in problems:
                self._print(line)
        self._print("")
        self._print(headline(output))
        self._print(f"results: {output.root}")

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class RichDisplay:
    """A live table on a terminal, redrawn a few times a second."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._live: Any = None
        self._output: RunOutput | None = None

    def update(self, output: RunOutput) -> None:
        # The live view redraws itself from the output's state; the first update starts it.
        if self._live is None:
            self._start(output)

    def _start(self, output: RunOutput) -> None:
        from rich.live import Live

        self._output = output
        self.console.print(f"[bold]patchbay run[/] {output.name}: {_sims(len(output.records))}, output in "
                           f"{output.root}", highlight=False)
        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=True)
        self._live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        output = self._output
        table = Table(box=None, pad_edge=False)
        for col in ("", "sim", "step", "elapsed"):
            table.add_column(col)
        if output is None:
            return table
        colors = {"ok": "green", "error": "red", "interrupted": "yellow", "running": "cyan", "pending": "dim"}
        for r in output.records:
            if r.status == "running":
                step = f"{r.steps_done + 1}/{r.steps_total} {r.step_label or ''}"
            elif r.status == "pending":
                step = "waiting"
            else:
                step = (r.error or {}).get("message", "").splitlines()[0][:100] if r.error else "done"
            elapsed = format_seconds((r.runtime_ms or 0) / 1000) if r.started else ""
            color = colors.get(r.status, "")
            table.add_row(Text(STATUS_MARK.get(r.status, "?"), style=color), Text(r.name), Text(step), elapsed)
        return Group(Text(headline(output), style="bold"), table)

    def stop(self, output: RunOutput) -> None:
        from rich.table import Table
        from rich.text import Text

        if self._live is not None:
            self._live.stop()
        rows = summary_rows(output)
        table = Table(title="summary", title_justify="left")
        colors = {"ok": "green", "error": "red", "interrupted": "yellow"}
        if rows:
            for col in rows[0]:
                table.add_column(col, justify="right" if "/s" in col or "ms" in col else "left")
            for row in rows:
                color = colors.get(row["status"], "")
                table.add_row(*[Text(v, style=color if k == "status" else "") for k, v in row.items()])
        self.console.print(table)
        for line in failures(output):
            self.console.print(Text(line, style="red"))
        self.console.print(headline(output), highlight=False)
        self.console.print(f"results: {output.root}", highlight=False)


def make_display(out: IO[str] | None = None) -> PlainDisplay | RichDisplay:
    stream = out or sys.stdout
    if stream.isatty():
        return RichDisplay()
    return PlainDisplay(stream)
