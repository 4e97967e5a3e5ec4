"""Python `logging` records emitted by code running inside a node land in that node's files.

Users wire nothing: a lab with an output directory registers its nodes here, and one handler
on the root logger routes each record by the network namespace of the thread that emitted it
(every thread running a node's code lives in that node's namespace, including executor and
resolver threads the node's own threads started). Records go to `{kind}.{name}.log.jsonl`;
those of loggers whose name contains `_events.` also to `{kind}.{name}.events.jsonl`.

Which records: `PATCHBAY_LOG` when set, as comma-separated `level` or `logger=level`
directives (the longest matching logger prefix wins: `PATCHBAY_LOG=info,myapp.net=debug`);
otherwise whatever the root logger lets through (PATCHBAY_LOG lowers the levels of the loggers
it names, the root logger for a bare level, so those records are made at all: the process's
other handlers see them too unless their own level filters them). Records of the lab's own threads (kernel
worker, namespace factory, spawner) are not a node's and are left alone.

Record shape (one JSON object a line): ts (epoch seconds), level, logger, message, node, kind,
thread, and exc (the formatted traceback) when the record carries one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import IO

LOG_ENV = "PATCHBAY_LOG"
_INTERNAL_THREADS = ("patchbay-kernel-", "patchbay-nsfactory-", "patchbay-spawner-",
                     "patchbay-sampler-", "patchbay-exitwatch-")


def parse_directives(text: str) -> dict[str, int]:
    """`"info,myapp.net=debug"` -> {"": INFO, "myapp.net": DEBUG}; unknown levels raise ValueError."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, level = part.rpartition("=")
        value = logging.getLevelName(level.strip().upper())
        if not isinstance(value, int):
            raise ValueError(f"{LOG_ENV}: {level!r} is not a log level (debug, info, warning, error, critical)")
        out[name.strip()] = value
    return out


def _thread_netns() -> int | None:
    try:
        return int(os.readlink("/proc/thread-self/ns/net")[5:-1])
    except OSError:
        return None


class _NodeFiles:
    def __init__(self, kind: str, name: str, log_path: Path, events_path: Path) -> None:
        self.kind, self.name = kind, name
        self._log_path, self._events_path = log_path, events_path
        self._log: IO[str] | None = None
        self._events: IO[str] | None = None
        self._closed = False

    def write(self, line: str, *, event: bool) -> None:
        if self._closed:
            return  # the node went away while this record was on its way
        if self._log is None:
            self._log = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._log.write(line)
        self._log.flush()
        if event:
            if self._events is None:
                self._events = open(self._events_path, "a", encoding="utf-8")  # noqa: SIM115
            self._events.write(line)
            self._events.flush()

    def close(self) -> None:
        self._closed = True
        for f in (self._log, self._events):
            if f is not None:
                f.close()
        self._log = self._events = None


class NodeLogRouter(logging.Handler):
    """The one handler on the root logger; labs register their nodes' namespaces with it."""

    def __init__(self) -> None:
        super().__init__()
        self._nodes: dict[int, _NodeFiles] = {}
        self._lock_nodes = threading.Lock()
        self._directives: dict[str, int] = {}

    def configure(self, directives: dict[str, int]) -> None:
        """Make the loggers named by PATCHBAY_LOG emit what it asks for."""
        self._directives = directives
        for name, level in directives.items():
            logger = logging.getLogger(name or None)
            if logger.getEffectiveLevel() > level:
                logger.setLevel(level)

    def add(self, netns_inode: int, kind: str, name: str, log_path: Path, events_path: Path) -> None:
        with self._lock_nodes:
            self._nodes[netns_inode] = _NodeFiles(kind, name, log_path, events_path)

    def remove(self, netns_inode: int) -> None:
        with self._lock_nodes:
            files = self._nodes.pop(netns_inode, None)
            if files is not None:
                files.close()  # under the lock: no write is half-way through it

    def _wanted(self, record: logging.LogRecord) -> bool:
        if not self._directives:
            return True  # the root logger's level already decided
        name, best, level = record.name, -1, None
        for prefix, value in self._directives.items():
            if (not prefix or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), value
        return level is not None and record.levelno >= level

    def emit(self, record: logging.LogRecord) -> None:
        if not self._nodes or threading.current_thread().name.startswith(_INTERNAL_THREADS):
            return
        inode = _thread_netns()
        files = self._nodes.get(inode) if inode is not None else None
        if files is None or not self._wanted(record):
            return
        try:
            entry = {"ts": record.created, "level": record.levelname, "logger": record.name,
                     "message": record.getMessage(), "node": files.name, "kind": files.kind,
                     "thread": record.threadName}
            if record.exc_info:
                entry["exc"] = logging.Formatter().formatException(record.exc_info)
            line = json.dumps(entry, default=str) + "\n"
            with self._lock_nodes:
                files.write(line, event="_events." in record.name)
        except Exception:
            self.handleError(record)


_router: NodeLogRouter | None = None
_router_lock = threading.Lock()


def router() -> NodeLogRouter:
    """The process's router, installed on the root logger the first time a lab asks."""
    global _router
    with _router_lock:
        if _router is None:
            _router = NodeLogRouter()
            try:
                _router.configure(parse_directives(os.environ.get(LOG_ENV, "")))
            except ValueError as exc:
                warnings.warn(f"{exc}; node logs follow the root logger's level", stacklevel=3)
            logging.getLogger().addHandler(_router)
        return _router
