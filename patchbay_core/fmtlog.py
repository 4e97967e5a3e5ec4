"""`patchbay fmt-log FILE|- [-f]`: JSON-lines logs of a lab as a console handler prints them.

Two shapes of record are rendered (anything else passes through unchanged):

- node log records, `{kind}.{name}.log.jsonl` and `{kind}.{name}.events.jsonl`:
  `{"ts": 1733059941.977, "level": "INFO", "logger": "myapp.net", "message": "connected",
    "node": "laptop", "kind": "device", "thread": "MainThread", "exc": "Traceback ..."}`
  (`exc` only when there was one; any further keys are shown as `key=value`);
- the lab's `events.jsonl`: `{"ts": ..., "kind": "router_added", "node": "dc", ...fields}`.

    2026-12-01 14:32:21.977  INFO laptop  myapp.net: connected peer=198.18.1.2
    2026-12-01 14:32:21.981 EVENT dc      router_added nat=null pool=public
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import IO, Any

LOG_KEYS = ("ts", "level", "logger", "message", "node", "kind", "thread", "exc")
EVENT_KEYS = ("ts", "kind", "node")

RESET = "\x1b[0m"
DIM = "\x1b[2m"
BOLD = "\x1b[1m"
LEVEL_COLORS = {
    "TRACE": "\x1b[35m",
    "DEBUG": "\x1b[34m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "WARN": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
    "EVENT": "\x1b[36m",
}
LEVEL_WIDTH = 5  # "EVENT", "ERROR"; WARNING and CRITICAL run over, as in many consoles


def _time(ts: Any) -> str:
    try:
        moment = datetime.fromtimestamp(float(ts))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else json.dumps(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _fields(record: dict[str, Any], skip: Iterable[str]) -> str:
    # Nulls and a `name` that repeats the node say nothing: left out.
    skip = set(skip)
    return " ".join(f"{key}={_value(value)}" for key, value in record.items()
                    if key not in skip and value is not None and not (key == "name" and value == record.get("node")))


def is_log_record(record: dict[str, Any]) -> bool:
    return "message" in record and ("level" in record or "logger" in record)


def format_record(record: dict[str, Any], *, color: bool = False) -> str:
    """One record as console lines (a traceback adds indented lines)."""

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color and text else text

    stamp = paint(DIM, _time(record.get("ts")))
    node = record.get("node")
    node_text = "" if node in (None, "") else str(node)
    if is_log_record(record):
        level = str(record.get("level") or "INFO").upper()
        logger = str(record.get("logger") or "")
        head = f"{stamp} {paint(LEVEL_COLORS.get(level, ''), level.rjust(LEVEL_WIDTH))}"
        if node_text:
            head += f" {paint(BOLD, node_text)}"
        message = str(record.get("message", ""))
        line = f"{head}  {paint(DIM, logger + ':') if logger else ''}{' ' if logger else ''}{message}"
        extra = _fields(record, LOG_KEYS)
        if extra:
            line += " " + paint(DIM, extra)
        exc = record.get("exc")
        if exc:
            lines = str(exc).rstrip().split("\n")
            line += "\n" + "\n".join("    " + paint(LEVEL_COLORS["ERROR"], part) for part in lines)
        return line
    # A lab event: its kind stands where a log line has its message.
    kind = str(record.get("kind", "?"))
    head = f"{stamp} {paint(LEVEL_COLORS['EVENT'], 'EVENT')}"
    if node_text:
        head += f" {paint(BOLD, node_text)}"
    line = f"{head}  {paint(LEVEL_COLORS['EVENT'], kind)}"
    extra = _fields(record, EVENT_KEYS)
    if extra:
        line += " " + extra
    return line


def format_line(line: str, *, color: bool = False) -> str | None:
    """A raw line of a file as it should be shown (None: nothing to show)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return text  # not JSON (a stdout log, a partial line): shown as it is
    if not isinstance(record, dict) or not ("ts" in record and ("kind" in record or "message" in record)):
        return text
    return format_record(record, color=color)


def render(lines: Iterable[str], *, color: bool = False) -> Iterator[str]:
    for line in lines:
        out = format_line(line, color=color)
        if out is not None:
            yield out


def follow(path: str, *, interval: float = 0.2, stop_after: float | None = None) -> Iterator[str]:
    """The file's lines, then lines appended to it as they come (like `tail -f`); starts over
    when the file is truncated or replaced. A line is only yielded once it is complete."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    handle: IO[bytes] | None = None
    inode = None
    partial = b""
    try:
        while True:
            if handle is None:
                try:
                    handle = open(path, "rb")  # noqa: SIM115
                    inode = os.fstat(handle.fileno()).st_ino
                    partial = b""
                except FileNotFoundError:
                    handle = None
            if handle is not None:
                chunk = handle.read()
                if chunk:
                    partial += chunk
                    *complete, partial = partial.split(b"\n")
                    for line in complete:
                        yield line.decode("utf-8", errors="replace")
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    st = None
                if st is None or st.st_ino != inode or st.st_size < handle.tell():
                    handle.close()  # replaced or truncated: read it again from the start
                    handle = None
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(interval)
    finally:
        if handle is not None:
            handle.close()


def use_color(choice: str, stream: IO[str]) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "fmt-log", help="render a lab's .log.jsonl / events.jsonl as readable lines",
        description="Render the JSON-lines logs a lab writes ({kind}.{name}.log.jsonl, .events.jsonl, "
                    "events.jsonl) like a console log handler: time, level, node, logger, message.")
    parser.add_argument("file", metavar="FILE", nargs="?", default="-", help="a .jsonl file, or - for stdin")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing lines appended to FILE")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the output (auto: when stdout is a terminal and NO_COLOR is unset)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    color = use_color(args.color, sys.stdout)
    if args.file == "-":
        lines: Iterable[str] = sys.stdin
    elif args.follow:
        lines = follow(args.file)
    else:
        try:
            lines = open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            print(f"patchbay fmt-log: {args.file}: {exc.strerror}", file=sys.stderr)
            return 1
    try:
        for out in render(lines, color=color):
            print(out, flush=args.follow or args.file == "-")
    except KeyboardInterrupt:
        return 130 if not args.follow else 0
    except BrokenPipeError:
        # `patchbay fmt-log x | head`: the reader went away; say nothing.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    finally:
        close = getattr(lines, "close", None)
        if close is not None and lines is not sys.stdin:
            close()
    return 0
