"""`patchbay serve`: the devtools UI over the run directories below one root (aiohttp).

    GET /                         the UI (static/index.html; its modules under /static/)
    GET /api/runs[?prefix=P]      every run below the root (or below P), newest first
    GET /api/run?run=ID           one run: state.json, text files with their lines, captures, results
    GET /api/file?run=ID&path=F   a file of a run (pcapng captures as downloads)
    GET /api/stream?run=ID        server-sent events: lines appended, files added, state.json changed

The stream goes on from the offsets /api/run answered with (`since`, a JSON object of path ->
byte offset, and `state`, its stat key), so nothing is lost or shown twice between the two. The
file system is polled (every POLL_S); labs only ever append to their files or replace
state.json atomically.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import runs

STATIC = Path(__file__).resolve().parent / "static"
POLL_S = 0.3
HEARTBEAT_S = 15.0
ROOT_KEY: web.AppKey[Path] = web.AppKey("root", Path)
STREAMS_KEY: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams", set)
CONFIG_KEY: web.AppKey[dict[str, Any]] = web.AppKey("config", dict)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    # File reads go to a thread: a large log must not stall other requests or streams.
    return await asyncio.to_thread(fn, *args)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def api_config(request: web.Request) -> web.Response:
    return _json(request.app[CONFIG_KEY])


async def api_runs(request: web.Request) -> web.Response:
    root = request.app[ROOT_KEY]
    prefix = request.query.get("prefix", "")
    try:
        found = await _off_loop(runs.discover, root, prefix)
    except runs.RunNotFound:
        return _error(404, f"no such directory: {prefix}")
    return _json({"root": str(root), "runs": [r.as_json() for r in found]})


async def api_run(request: web.Request) -> web.Response:
    run_id = request.query.get("run")
    if run_id is None:
        return _error(400, "give ?run=ID (an id from /api/runs)")
    try:
        return _json(await _off_loop(runs.run_detail, request.app[ROOT_KEY], run_id))
    except runs.RunNotFound:
        return _error(404, f"no such run: {run_id}")


async def api_file(request: web.Request) -> web.StreamResponse:
    run_id = request.query.get("run", "")
    rel = request.query.get("path", "")
    root = request.app[ROOT_KEY].resolve()
    try:
        run_dir = runs.resolve_inside(root, run_id)
        path = runs.resolve_inside(run_dir, rel) if rel else run_dir
    except runs.RunNotFound:
        return _error(404, f"no such file: {run_id}/{rel}")
    if not path.is_file():
        return _error(404, f"no such file: {run_id}/{rel}")
    headers = {"Cache-Control": "no-cache"}
    if path.suffix == ".pcapng" or request.query.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        headers["Content-Type"] = "application/vnd.tcpdump.pcap" if path.suffix == ".pcapng" else \
            (mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    elif path.suffix in (".log", ".jsonl", ".md", ".txt", ".toml"):
        headers["Content-Type"] = "text/plain; charset=utf-8"
    return web.FileResponse(path, headers=headers)


async def api_stream(request: web.Request) -> web.StreamResponse:
    run_id = request.query.get("run")
    if run_id is None:
        return _error(400, "give ?run=ID")
    try:
        since = json.loads(request.query.get("since", "{}"))
        state_key = json.loads(request.query.get("state", "null"))
        if not isinstance(since, dict):
            raise ValueError("since")
        watcher = runs.RunWatcher(request.app[ROOT_KEY], run_id,
                                  {str(k): int(v) for k, v in since.items()}, state_key)
    except (ValueError, TypeError):
        return _error(400, "since must be a JSON object of path -> offset, state a stat key")
    except runs.RunNotFound:
        return _error(404, f"no such run: {run_id}")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: pass events through as they come
    })
    await response.prepare(request)
    task = asyncio.current_task()
    streams = request.app[STREAMS_KEY]
    if task is not None:
        streams.add(task)
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    try:
        await response.write(b"retry: 1000\n: stream open\n\n")
        while True:
            messages = await _off_loop(watcher.poll)
            for kind, data in messages:
                payload = json.dumps(data, default=str, separators=(",", ":"))
                await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())
                last_sent = loop.time()
            if loop.time() - last_sent > HEARTBEAT_S:
                await response.write(b": keep-alive\n\n")
                last_sent = loop.time()
            await asyncio.sleep(POLL_S)
    except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
        # The browser went away (or the server is stopping): the stream just ends.
        pass
    finally:
        if task is not None:
            streams.discard(task)
    return response


async def _cancel_streams(app: web.Application) -> None:
    for task in list(app[STREAMS_KEY]):
        task.cancel()


def make_app(root: str | os.PathLike[str], *, config: dict[str, Any] | None = None,
             extend: Callable[[web.Application], None] | None = None) -> web.Application:
    """The devtools app over `root`. `extend` may add routes (the results server does) before
    the static ones; `config` is what the UI reads at /api/config."""
    app = web.Application()
    app[ROOT_KEY] = Path(root).resolve()
    app[STREAMS_KEY] = set()
    app[CONFIG_KEY] = {"title": "patchbay devtools", "mode": "local", **(config or {})}
    app.on_shutdown.append(_cancel_streams)
    app.router.add_get("/", index)
    app.router.add_get("/api/config", api_config)
    app.router.add_get("/api/runs", api_runs)
    app.router.add_get("/api/run", api_run)
    app.router.add_get("/api/file", api_file)
    app.router.add_get("/api/stream", api_stream)
    if extend is not None:
        extend(app)
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


def parse_bind(text: str, default_port: int = 7117) -> tuple[str, int]:
    """"HOST:PORT", ":PORT", "PORT" or "[v6]:PORT" -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "127.0.0.1", text
    else:
        host, port = text, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad address {text!r}: the port must be a number (HOST:PORT)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"bad address {text!r}: port {number} is out of range")
    return host or "0.0.0.0", number


async def run_app(app: web.Application, host: str, port: int, *, ssl_context: Any = None,
                  on_ready: Callable[[str], Awaitable[None] | None] | None = None) -> None:
    """Serve until cancelled (Ctrl-C)."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    scheme = "https" if ssl_context is not None else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    actual_port = port
    if port == 0 and runner.addresses:
        actual_port = runner.addresses[0][1]  # the one the kernel picked
    url = f"{scheme}://{shown}:{actual_port}/"
    try:
        if on_ready is not None:
            result = on_ready(url)
            if asyncio.iscoroutine(result):
                await result
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
