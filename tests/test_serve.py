"""`patchbay serve` (the devtools API over run directories) and `patchbay-serve` (the results
server CI pushes to)."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

import patchbay_core as pb
from patchbay_core.capture import Capture, capture_path
from patchbay_core.devtools import runs
from patchbay_core.devtools.server import make_app, parse_bind
from patchbay_core.serve import ServeConfig, make_serve_app, parse_size

pytestmark = pytest.mark.anyio
KEY = "s3cret-key"
RUN_JSON = {"project": "demo", "branch": "feature/x", "commit": "0123456789abcdef", "pr": 7,
            "pr_url": "https://example.invalid/pr/7", "title": "Make it faster", "created_at": "2026-01-01T00:00:00Z"}


async def make_lab_run(outdir: Path, *, label: str = "served") -> Path:
    """A real lab's run directory: routers, devices, events, a node log record and a capture."""
    async with pb.Lab(pb.LabOpts(label=label, outdir=outdir)) as lab:
        dc = await lab.add_router("dc").build()
        home = await lab.add_router("home").nat(pb.Nat.HOME).build()
        server = await lab.add_device("server").iface("eth0", dc).build()
        laptop = await lab.add_device("laptop").iface("eth0", home).build()
        run_dir = lab.outdir
        cap = await Capture.start(server.ns_fd, "server", "eth0", capture_path(run_dir, "device", "server", "eth0"))
        await laptop.ping(server.ip, count=2)
        await cap.stop()
        record = {"ts": 1.0e9, "level": "INFO", "logger": "app._events.Ready", "message": "ready", "node": "server",
                  "kind": "device", "thread": "MainThread"}
        (run_dir / "device.server.log.jsonl").write_text(json.dumps(record) + "\n")
        (run_dir / "device.server.events.jsonl").write_text(json.dumps(record) + "\n")
        (run_dir / "results.json").write_text(json.dumps({"sim": label, "steps": [
            {"id": "iperf", "duration": "2.0", "down_bytes": "50000000", "latency_ms": None, "up_bytes": None}]}))
    return run_dir


def tarball(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root, arcname=".")
    return buf.getvalue()


def evil_tarball(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = tarfile.TarInfo("fine/events.jsonl")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"{}\n"))
        bad = tarfile.TarInfo({"dotdot": "../x", "absolute": "/etc/x", "nested": "fine/../../x"}.get(kind, "link"))
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "fine/events.jsonl"
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 3
        else:
            bad.size = 4
        tar.addfile(bad, io.BytesIO(b"evil") if bad.isreg() else None)
    return buf.getvalue()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    app = make_serve_app(tmp_path / "store", ServeConfig(accept_push=True, api_key=KEY, max_upload=200_000))
    async with TestClient(TestServer(app)) as client:
        yield client


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/gzip"}


def stored(store: Path) -> list[str]:
    """What the store holds besides its (empty) staging directory."""
    return sorted([p.name for p in store.iterdir() if p.name != ".incoming"]
                  + [f".incoming/{p.name}" for p in (store / ".incoming").iterdir()])


# ---- the results server ----------------------------------------------------------------------


async def test_a_push_with_the_key_is_stored_listed_and_browsable(server: TestClient[Any, Any],
                                                                  tmp_path: Path) -> None:
    run_dir = await make_lab_run(tmp_path / "testdir")
    (tmp_path / "testdir" / "run.json").write_text(json.dumps(RUN_JSON))
    resp = await server.post("/api/push/demo", data=tarball(tmp_path / "testdir"), headers=auth())
    assert resp.status == 200, await resp.text()
    inv = (await resp.json())["invocation"]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", inv)
    listing = await (await server.get("/api/invocations")).json()
    assert [(i["project"], i["id"], i["run_json"]["branch"]) for i in listing["invocations"]] == [
        ("demo", inv, "feature/x")]
    info = await (await server.get(f"/api/inv/{inv}")).json()
    assert info["prefix"] == f"demo/{inv}"
    found = (await (await server.get("/api/runs", params={"prefix": info["prefix"]})).json())["runs"]
    assert [r["id"] for r in found] == [f"demo/{inv}/{run_dir.name}"]
    detail = await (await server.get("/api/run", params={"run": found[0]["id"]})).json()
    assert sorted(d["name"] for d in detail["state"]["devices"]) == ["laptop", "server"]
    assert detail["captures"][0]["path"] == "device.server.eth0.pcapng"
    page = await (await server.get("/runs")).text()
    assert f"#/inv/{inv}" in page and "feature/x" in page and "Make it faster" in page
    assert (await server.get("/api/inv/20990101-000000-deadbeef")).status == 404


async def test_a_wrong_or_missing_key_is_refused(server: TestClient[Any, Any], tmp_path: Path) -> None:
    body = evil_tarball("none")
    for headers in ({}, auth("wrong"), {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        resp = await server.post("/api/push/demo", data=body, headers=headers)
        assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    assert stored(tmp_path / "store") == []
    assert (await server.post("/api/push/bad name!", data=body, headers=auth())).status in (400, 404)


async def test_pushing_needs_accept_push(tmp_path: Path) -> None:
    app = make_serve_app(tmp_path / "store", ServeConfig(accept_push=False, api_key=KEY))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/api/push/demo", data=evil_tarball("none"), headers=auth())
        assert resp.status == 403 and "--accept-push" in (await resp.json())["error"]


async def test_an_oversize_upload_is_refused_with_413(server: TestClient[Any, Any], tmp_path: Path) -> None:
    big = os.urandom(300_000)
    resp = await server.post("/api/push/demo", data=big, headers=auth())
    assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(30):
            yield os.urandom(10_000)

    resp = await server.post("/api/push/demo", data=chunks(), headers=auth())
    assert resp.status == 413
    assert stored(tmp_path / "store") == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "nested", "symlink", "hardlink", "device"])
async def test_unsafe_tarballs_are_refused_and_nothing_is_written(server: TestClient[Any, Any], tmp_path: Path,
                                                                  kind: str) -> None:
    resp = await server.post("/api/push/demo", data=evil_tarball(kind), headers=auth())
    assert resp.status == 400, await resp.text()
    assert "nothing was stored" in (await resp.json())["error"]
    assert stored(tmp_path / "store") == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "store" / "x").exists()
    resp = await server.post("/api/push/demo", data=b"not a tarball at all", headers=auth())
    assert resp.status == 400


async def test_retention_keeps_the_total_under_the_limit(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = make_serve_app(store, ServeConfig(accept_push=True, api_key=KEY, max_upload=1_000_000, retention=250_000))
    ids = []
    async with TestClient(TestServer(app)) as client:
        for n in range(4):
            src = tmp_path / f"run{n}"
            src.mkdir()
            (src / "events.jsonl").write_text("{}\n")
            (src / "blob.bin").write_bytes(os.urandom(100_000))  # incompressible
            resp = await client.post("/api/push/demo", data=tarball(src), headers=auth())
            assert resp.status == 200
            ids.append((await resp.json())["invocation"])
        kept = [i["id"] for i in (await (await client.get("/api/invocations")).json())["invocations"]]
    total = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    assert total <= 250_000
    assert kept == ids[:1:-1]  # the two newest, newest first; the oldest went first


def test_sizes() -> None:
    assert parse_size("10G") == parse_size("10GB") == 10 * 10**9
    assert parse_size("500MB") == 500 * 10**6 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5k") == 1500 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="like 500MB"):
        parse_size("ten gigs")
    assert parse_bind("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_bind(":7117") == ("0.0.0.0", 7117) and parse_bind("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="port"):
        parse_bind("host:http")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


SERVE = [sys.executable, "-c", "import sys; from patchbay_core.serve import main; sys.exit(main())"]


async def test_the_cli_serves_https_and_reads_the_key_from_the_environment(tmp_path: Path) -> None:
    refused = subprocess.run([*SERVE, "--accept-push"], capture_output=True, text=True, timeout=30,
                             env={k: v for k, v in os.environ.items() if k != "PATCHBAY_API_KEY"})
    assert refused.returncode == 2 and "--api-key" in refused.stderr
    cert, key = self_signed(tmp_path)
    proc = subprocess.Popen([*SERVE, "--accept-push", "--http-bind", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                             "--tls-cert", str(cert), "--tls-key", str(key), "--retention", "10MB"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PATCHBAY_API_KEY": KEY})
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        url = re.search(r"(https://\S+/)runs", line).group(1)  # type: ignore[union-attr]
        ctx = ssl.create_default_context(cafile=str(cert))
        src = tmp_path / "src"
        src.mkdir()
        (src / "events.jsonl").write_text("{}\n")
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "api/push/proj", data=tarball(src), headers=auth(), ssl=ctx) as resp:
                assert resp.status == 200
                inv = (await resp.json())["invocation"]
            async with session.get(url + "runs", ssl=ctx) as resp:
                assert inv in await resp.text()
        assert (tmp_path / "d" / "runs" / "proj" / inv / "events.jsonl").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- the devtools API over a real lab ----------------------------------------------------


async def test_the_ui_api_serves_a_real_lab_run(tmp_path: Path) -> None:
    run_dir = await make_lab_run(tmp_path)
    async with TestClient(TestServer(make_app(tmp_path))) as client:
        listing = await (await client.get("/api/runs")).json()
        assert [(r["id"], r["kind"], r["label"]) for r in listing["runs"]] == [(run_dir.name, "lab", "served")]
        detail = await (await client.get("/api/run", params={"run": run_dir.name})).json()
        assert sorted(r["name"] for r in detail["state"]["routers"]) == ["dc", "home"]
        kinds = {json.loads(line)["kind"] for line in detail["texts"]["events.jsonl"]["lines"]}
        assert {"lab_created", "router_added", "device_added", "lab_closed"} <= kinds
        streams = {(f["node"], f["stream"]) for f in detail["files"]}
        assert {("server", "log"), ("server", "events"), (None, "lab")} <= streams
        assert detail["results"][0]["down_mb_s"] == pytest.approx(25.0)
        cap = await client.get("/api/file", params={"run": run_dir.name, "path": "device.server.eth0.pcapng"})
        assert cap.status == 200 and "attachment" in cap.headers["Content-Disposition"]
        assert (await cap.read())[:4] == b"\x0a\x0d\x0d\x0a"
        for bad in ("../x", "/etc/passwd", "a/../../x"):
            assert (await client.get("/api/file", params={"run": run_dir.name, "path": bad})).status == 404
            assert (await client.get("/api/run", params={"run": bad})).status == 404
        index = await client.get("/")
        assert index.status == 200 and "app.js" in await index.text()
        assert (await client.get("/static/app.js")).status == 200


async def test_the_stream_tells_appended_lines_and_state_changes_of_a_running_lab(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(label="live", outdir=tmp_path)) as lab:
        r = await lab.add_router("r").build()
        run_id = lab.outdir.name
        async with TestClient(TestServer(make_app(tmp_path))) as client:
            detail = await (await client.get("/api/run", params={"run": run_id})).json()
            since = {p: t["offset"] for p, t in detail["texts"].items()}
            params = {"run": run_id, "since": json.dumps(since), "state": json.dumps(detail["state_mtime"])}
            resp = await client.get("/api/stream", params=params)
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            await lab.add_device("late").iface("eth0", r).build()
            seen: dict[str, Any] = {}
            with anyio.fail_after(10):
                event = None
                while not ("state" in seen and "lines" in seen):
                    line = (await resp.content.readline()).decode().strip()
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event:
                        seen[event] = json.loads(line[6:])
            assert [d["name"] for d in seen["state"]["devices"]] == ["late"]
            assert seen["lines"]["path"] == "events.jsonl"
            assert all(json.loads(x)["node"] == "late" for x in seen["lines"]["lines"])
            resp.close()


def test_sim_runs_are_found_and_missing_files_are_tolerated(tmp_path: Path) -> None:
    work = tmp_path / ".patchbay-work"
    run = work / "sim-261201-120000"
    (run / "iperf-public" / "nodes" / "client").mkdir(parents=True)
    (run / "half-written").mkdir()
    (run / "half-written" / "sim.json").write_text('{"sim": "half')  # not JSON yet
    (run / "manifest.json").write_text(json.dumps({"status": "done", "simulations": [
        {"sim": "iperf-public", "sim_dir": "iperf-public", "status": "ok"}]}))
    (run / "combined-results.json").write_text(json.dumps({"runs": [{"sim": "iperf-public", "steps": [
        {"id": "iperf-run", "duration": "10.0", "down_bytes": "1000000000", "latency_ms": None, "up_bytes": None}]}]}))
    sim = run / "iperf-public"
    (sim / "sim.json").write_text(json.dumps({"sim": "iperf-public", "status": "ok"}))
    (sim / "nodes" / "client" / "stdout.log").write_text("connecting\n")
    (work / "latest").symlink_to(run.name)
    found = runs.discover(tmp_path)
    assert {(r.id, r.kind) for r in found} == {
        (".patchbay-work/sim-261201-120000", "simrun"), (".patchbay-work/sim-261201-120000/iperf-public", "sim"),
        (".patchbay-work/sim-261201-120000/half-written", "sim")}
    assert next(r for r in found if r.kind == "simrun").latest
    overview = runs.run_detail(tmp_path, ".patchbay-work/sim-261201-120000")
    assert overview["results"][0]["down_mb_s"] == pytest.approx(100.0) and overview["state"] is None
    one = runs.run_detail(tmp_path, ".patchbay-work/sim-261201-120000/iperf-public")
    assert one["texts"]["nodes/client/stdout.log"]["lines"] == ["connecting"]
    assert one["files"][0]["node"] == "client" and one["files"][0]["stream"] == "stdout"
    assert runs.run_detail(tmp_path, ".patchbay-work/sim-261201-120000/half-written")["sim"] is None


def test_patchbay_serve_cli(tmp_path: Path) -> None:
    (tmp_path / "lab1").mkdir()
    (tmp_path / "lab1" / "events.jsonl").write_text('{"ts": 1, "kind": "lab_created", "node": null}\n')
    cli = [sys.executable, "-c", "import sys; from patchbay_core.cli import main; sys.exit(main())"]
    missing = subprocess.run([*cli, "serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    env = {**os.environ, "PATCHBAY_OUTDIR": str(tmp_path)}
    proc = subprocess.Popen([*cli, "serve", "--testdir", "--bind", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"(http://\S+/)", line).group(1)  # type: ignore[union-attr]
        import urllib.request

        with urllib.request.urlopen(url + "api/runs", timeout=10) as answer:
            assert [r["id"] for r in json.load(answer)["runs"]] == ["lab1"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
