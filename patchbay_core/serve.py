"""`patchbay-serve`: the results server. CI pushes a run directory as a tar.gz, the devtools UI
shows it (docs/serve.md).

    POST /api/push/{project}   Authorization: Bearer KEY; body: tar.gz  -> {"invocation": ID}
    GET  /runs                 every project's invocations, newest first (HTML)
    GET  /api/invocations      the same as JSON
    GET  /api/inv/{id}         one invocation: project, where its runs are, its run.json
    GET  /#/inv/{id}           the devtools UI over that invocation's runs
    ... and the devtools API (/api/runs, /api/run, /api/file, /api/stream) over every run stored.

Storage: `<run dir>/<project>/<invocation>/` holds what the tarball held, written only after
every member was checked: regular files and directories with relative names, nothing else (no
absolute paths, no `..`, no links, no devices). Retention deletes the oldest invocations until
the total is under the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import html
import json
import os
import re
import secrets
import shutil
import ssl
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web

from .devtools.server import make_app, parse_bind, run_app

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
INVOCATION_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
META = ".patchbay-serve.json"  # per invocation: project, created, size, run.json
INCOMING = ".incoming"  # extraction happens here, on the same file system as the store
MAX_MEMBERS = 200_000
EXPANSION = 20  # an upload may unpack to at most this many times --max-upload
STORE_KEY: web.AppKey[Store] = web.AppKey("store")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """"10G", "10GB", "500MB", "1.5GiB", "4096" -> bytes (K/M/G/T are powers of 1000, KiB/MiB/...
    of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"bad size {text!r}: write it like 500MB, 10G or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


class BadUpload(ValueError):
    """The tarball is refused (400); the message says which member and why."""


def check_member(member: tarfile.TarInfo) -> str | None:
    """The member's safe relative name (None for the archive's root "."), or BadUpload."""
    name = member.name
    if "\0" in name or "\\" in name:
        raise BadUpload(f"{name!r}: odd characters in the name")
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise BadUpload(f"{name!r}: absolute paths are not allowed")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise BadUpload(f"{name!r}: '..' is not allowed")
    if member.issym() or member.islnk():
        raise BadUpload(f"{name!r}: links are not allowed (symbolic or hard)")
    if not (member.isreg() or member.isdir()):
        raise BadUpload(f"{name!r}: only regular files and directories are allowed (not devices or FIFOs)")
    return "/".join(parts) if parts else None


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> None:
    """Unpack `archive` (tar, gzip'd or not) into the empty directory `dest`, after checking
    every member: nothing is written when one is refused."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            total = 0
            for member in tar:
                if len(members) >= MAX_MEMBERS:
                    raise BadUpload(f"more than {MAX_MEMBERS} members")
                name = check_member(member)
                total += member.size if member.isreg() else 0
                if total > max_bytes:
                    raise BadUpload(f"unpacks to more than {max_bytes} bytes")
                if name is not None:
                    members.append((name, member))
            for name, member in members:
                target = dest.joinpath(*name.split("/"))
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise BadUpload(f"{name!r}: cannot be read")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                # No setuid or the like, and no owner from the archive: ours, readable.
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    except tarfile.TarError as exc:
        raise BadUpload(f"not a readable tar.gz: {exc}") from None
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        raise BadUpload(f"members clash: {exc.filename}") from None


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


@dataclass
class Invocation:
    project: str
    id: str
    created: float
    size: int
    run_json: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {"project": self.project, "id": self.id, "prefix": f"{self.project}/{self.id}",
                "created": self.created,
                "created_at": datetime.fromtimestamp(self.created, UTC).isoformat(timespec="seconds"),
                "size": self.size, "run_json": self.run_json, "url": f"/#/inv/{self.id}"}


class Store:
    """Invocations under `<run dir>/<project>/<id>/`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        incoming = run_dir / INCOMING
        shutil.rmtree(incoming, ignore_errors=True)  # left by a crash mid-upload
        incoming.mkdir()
        self.lock = asyncio.Lock()

    def _load(self, project: str, inv_dir: Path) -> Invocation:
        meta_path = inv_dir / META
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if "size" not in meta:
            # Put there by hand, or by an older version: measure once and remember.
            meta = {"created": inv_dir.stat().st_mtime, "size": dir_size(inv_dir), "run_json": _run_json(inv_dir)}
            with contextlib.suppress(OSError):
                meta_path.write_text(json.dumps(meta), encoding="utf-8")
        return Invocation(project, inv_dir.name, float(meta.get("created", 0)), int(meta.get("size", 0)),
                          meta.get("run_json"))

    def invocations(self) -> list[Invocation]:
        out = []
        for project_dir in sorted(self.run_dir.iterdir()):
            if not project_dir.is_dir() or project_dir.name.startswith(".") or project_dir.is_symlink():
                continue
            for inv_dir in project_dir.iterdir():
                if inv_dir.is_dir() and not inv_dir.is_symlink() and INVOCATION_RE.match(inv_dir.name):
                    out.append(self._load(project_dir.name, inv_dir))
        out.sort(key=lambda i: i.created, reverse=True)
        return out

    def find(self, inv_id: str) -> Invocation | None:
        if not INVOCATION_RE.match(inv_id):
            return None
        for project_dir in self.run_dir.iterdir():
            inv_dir = project_dir / inv_id
            if project_dir.is_dir() and not project_dir.name.startswith(".") and inv_dir.is_dir():
                return self._load(project_dir.name, inv_dir)
        return None

    def add(self, project: str, archive: Path, max_bytes: int) -> Invocation:
        """Unpack into a fresh directory under .incoming/, then move it into place."""
        staging = Path(tempfile.mkdtemp(dir=self.run_dir / INCOMING))
        try:
            content = staging / "content"
            content.mkdir()
            safe_extract(archive, content, max_bytes)
            created = time.time()
            inv_id = f"{datetime.fromtimestamp(created, UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"
            meta = {"project": project, "created": created, "size": dir_size(content),
                    "run_json": _run_json(content)}
            (content / META).write_text(json.dumps(meta), encoding="utf-8")
            project_dir = self.run_dir / project
            project_dir.mkdir(exist_ok=True)
            os.rename(content, project_dir / inv_id)
            return Invocation(project, inv_id, created, meta["size"], meta["run_json"])  # type: ignore[arg-type]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def enforce_retention(self, limit: int, keep: str | None = None) -> list[str]:
        """Delete the oldest invocations until the total is at most `limit` (the one just
        pushed, `keep`, stays even if it alone is larger). Returns the ids deleted."""
        invs = self.invocations()
        total = sum(i.size for i in invs)
        deleted = []
        for inv in reversed(invs):  # oldest first
            if total <= limit:
                break
            if inv.id == keep:
                continue
            shutil.rmtree(self.run_dir / inv.project / inv.id, ignore_errors=True)
            total -= inv.size
            deleted.append(inv.id)
        return deleted


def _run_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ServeConfig:
    accept_push: bool = False
    api_key: str | None = None
    max_upload: int = 500 * 10**6
    retention: int | None = None


CONFIG_KEY: web.AppKey[ServeConfig] = web.AppKey("serve_config", ServeConfig)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _authorized(request: web.Request, key: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Constant time: the comparison must not tell how much of a guess was right.
    return hmac.compare_digest(token.strip().encode(), key.encode())


async def push(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    store = request.app[STORE_KEY]
    if not cfg.accept_push or not cfg.api_key:
        return _error(403, "this server does not accept pushes (start it with --accept-push --api-key KEY)")
    if not _authorized(request, cfg.api_key):
        return _error(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                      **{"WWW-Authenticate": 'Bearer realm="patchbay-serve"'})
    project = request.match_info["project"]
    if not PROJECT_RE.match(project):
        return _error(400, f"bad project name {project!r}: letters, digits, '.', '_' and '-', up to 100")
    if request.content_length is not None and request.content_length > cfg.max_upload:
        return _error(413, f"upload of {request.content_length} bytes is over the limit of {cfg.max_upload}")
    fd, tmp_name = tempfile.mkstemp(dir=store.run_dir / INCOMING, suffix=".tar.gz")
    tmp = Path(tmp_name)
    try:
        received = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.content.iter_chunked(1 << 16):
                received += len(chunk)
                if received > cfg.max_upload:
                    return _error(413, f"upload is over the limit of {cfg.max_upload} bytes")
                out.write(chunk)
        if not received:
            return _error(400, "empty upload: send the run directory as a tar.gz body")
        try:
            inv = await asyncio.to_thread(store.add, project, tmp, cfg.max_upload * EXPANSION)
        except BadUpload as exc:
            return _error(400, f"refused: {exc}; nothing was stored")
        if cfg.retention is not None:
            async with store.lock:
                await asyncio.to_thread(store.enforce_retention, cfg.retention, inv.id)
        return web.json_response({"invocation": inv.id, "project": project, "url": f"/#/inv/{inv.id}"})
    finally:
        tmp.unlink(missing_ok=True)


async def invocations(request: web.Request) -> web.Response:
    invs = await asyncio.to_thread(request.app[STORE_KEY].invocations)
    return web.json_response({"invocations": [i.as_json() for i in invs]})


async def invocation(request: web.Request) -> web.Response:
    inv = await asyncio.to_thread(request.app[STORE_KEY].find, request.match_info["id"])
    if inv is None:
        return _error(404, f"no invocation {request.match_info['id']!r}")
    return web.json_response(inv.as_json())


async def runs_index(request: web.Request) -> web.Response:
    invs = await asyncio.to_thread(request.app[STORE_KEY].invocations)
    by_project: dict[str, list[Invocation]] = {}
    for inv in invs:
        by_project.setdefault(inv.project, []).append(inv)
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>patchbay runs</title>",
             "<link rel='stylesheet' href='static/style.css'></head><body>",
             "<header><a class='brand' href='./'>patchbay</a><span>runs</span></header><main><div class='tab'>"]
    if not by_project:
        parts.append("<p class='message'>No runs pushed yet. See docs/serve.md for the CI step.</p>")
    for project, items in sorted(by_project.items()):
        parts.append(f"<h2 id='project-{esc(project)}'>{esc(project)}</h2><table class='grid'><thead><tr>"
                     "<th>invocation</th><th>when (UTC)</th><th>branch</th><th>commit</th><th>PR</th>"
                     "<th>title</th><th>size</th></tr></thead><tbody>")
        for inv in items:
            meta = inv.run_json or {}
            pr = meta.get("pr")
            pr_cell = (f"<a href='{esc(str(meta.get('pr_url') or ''))}'>#{esc(str(pr))}</a>"
                       if pr and meta.get("pr_url") else (esc(str(pr)) if pr else ""))
            parts.append(
                f"<tr class='invocation'><td><a href='./#/inv/{esc(inv.id)}'>{esc(inv.id)}</a></td>"
                f"<td>{esc(inv.as_json()['created_at'])}</td><td>{esc(str(meta.get('branch') or ''))}</td>"
                f"<td><code>{esc(str(meta.get('commit') or '')[:10])}</code></td><td>{pr_cell}</td>"
                f"<td>{esc(str(meta.get('title') or ''))}</td><td>{inv.size / 1e6:.1f} MB</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</div></main></body></html>")
    return web.Response(text="".join(parts), content_type="text/html")


def make_serve_app(run_dir: Path, cfg: ServeConfig) -> web.Application:
    store = Store(run_dir)

    def extend(app: web.Application) -> None:
        app[STORE_KEY] = store
        app[CONFIG_KEY] = cfg
        app.router.add_post("/api/push/{project}", push)
        app.router.add_get("/api/invocations", invocations)
        app.router.add_get("/api/inv/{id}", invocation)
        app.router.add_get("/runs", runs_index)

    # Uploads are streamed to disk by the push handler; other requests stay small.
    return make_app(run_dir, config={"title": "patchbay runs", "mode": "server"}, extend=extend)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "patchbay-serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchbay-serve", description="The patchbay results server: CI pushes "
                                "run directories (tar.gz), the devtools UI shows them. See docs/serve.md.")
    p.add_argument("--accept-push", action="store_true", help="enable POST /api/push/{project}")
    p.add_argument("--api-key", default=None,
                   help="the key pushes must send (Authorization: Bearer KEY); also read from $PATCHBAY_API_KEY")
    p.add_argument("--http-bind", default="0.0.0.0:8080", metavar="HOST:PORT",
                   help="listen address (default 0.0.0.0:8080; HTTPS there with --tls-cert/--tls-key)")
    p.add_argument("--data-dir", default=None, help="data directory (default ~/.local/share/patchbay-serve)")
    p.add_argument("--run-dir", default=None, help="where runs are stored (default DATA_DIR/runs)")
    p.add_argument("--retention", default=None, metavar="SIZE",
                   help="max total size of stored runs, e.g. 500MB or 10G; the oldest go first")
    p.add_argument("--max-upload", default="500MB", metavar="SIZE", help="largest accepted upload (default 500MB)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    return p


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get("PATCHBAY_API_KEY") or None
    if args.accept_push and not api_key:
        parser.error("--accept-push needs --api-key KEY (or $PATCHBAY_API_KEY)")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        max_upload = parse_size(args.max_upload)
        retention = parse_size(args.retention) if args.retention else None
        host, port = parse_bind(args.http_bind, default_port=8080)
    except ValueError as exc:
        parser.error(str(exc))
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    run_dir = Path(args.run_dir) if args.run_dir else data_dir / "runs"
    try:
        tls = ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except (OSError, ssl.SSLError) as exc:
        print(f"patchbay-serve: cannot load the TLS certificate/key: {exc}", file=sys.stderr)
        return 2
    cfg = ServeConfig(accept_push=args.accept_push, api_key=api_key, max_upload=max_upload, retention=retention)

    async def serve() -> None:
        app = make_serve_app(run_dir, cfg)
        if retention is not None:
            await asyncio.to_thread(app[STORE_KEY].enforce_retention, retention)

        def ready(url: str) -> None:
            push_note = "accepting pushes" if cfg.accept_push else "read-only (no --accept-push)"
            print(f"patchbay-serve: {url}runs  ({push_note}; runs in {run_dir})", flush=True)

        await run_app(app, host, port, ssl_context=tls, on_ready=ready)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"patchbay-serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
