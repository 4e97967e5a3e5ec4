"""What a lab writes when it has an output directory: events.jsonl, state.json, node logs."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .opts import OutDir


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "lab"


class LabOutput:
    """The run directory of one lab. Thread-safe; every write is flushed."""

    def __init__(self, outdir: OutDir, label: str) -> None:
        if outdir.exact_dir:
            path = outdir.path
        else:
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
            path = outdir.path / f"{stamp}-{_safe(label)}"
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._events = open(path / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def event(self, kind: str, node: str | None = None, **fields: Any) -> None:
        record = {"ts": time.time(), "kind": kind, "node": node, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            if not self._events.closed:
                self._events.write(line + "\n")
                self._events.flush()

    def write_state(self, state: dict[str, Any]) -> None:
        data = json.dumps(state, default=str, indent=1)
        tmp = self.path / "state.json.tmp"
        with self._lock:
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, self.path / "state.json")

    def node_log(self, kind: str, name: str, stream: str) -> Path:
        """`{kind}.{name}.{stream}.log` (stream: stdout or stderr)."""
        return self.path / f"{kind}.{_safe(name)}.{stream}.log"

    def node_file(self, kind: str, name: str, suffix: str) -> Path:
        """`{kind}.{name}.{suffix}` (e.g. "log.jsonl", "events.jsonl")."""
        return self.path / f"{kind}.{_safe(name)}.{suffix}"

    def close(self) -> None:
        with self._lock:
            self._events.close()
