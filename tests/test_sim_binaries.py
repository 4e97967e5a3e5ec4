"""`[[binary]]` in every mode (path, fetch from a local HTTP server with .tar.gz unpacking, cargo
build of a git repo / source directory / the workspace, target) and `[[prepare]]`; a binary
that cannot be had fails its sim naming the [[binary]] table."""

from __future__ import annotations

import functools
import http.server
import io
import json
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sims.helpers import run, sim_text

pytestmark = pytest.mark.anyio

SCRIPT = "#!/bin/sh\necho \"{word} $1\"\n"
SAY = '[step.captures.said]\nregex = "(.*)"\n'


def said(result_root: Path, step: str = "s") -> str:
    return json.loads((result_root / "t" / "sim.json").read_text())["captures"][f"{step}.said"]


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1 (the host: the runner fetches before the lab exists)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_path_next_to_the_sim_file(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "greet.sh").write_text(SCRIPT.format(word="hi"))
    text = sim_text(f'[[binary]]\nname = "greet"\npath = "tools/greet.sh"\n'
                    f'[[step]]\nid = "s"\ndevice = "a"\ncmd = ["sh", "${{binary.greet}}", "there"]\n{SAY}')
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error
    assert said(result.output.root) == "hi there"


async def test_missing_binary_fails_the_sim_at_its_binary_table(tmp_path: Path) -> None:
    text = sim_text('[[binary]]\nname = "relay"\npath = "bin/iroh-relay"\n'
                    '[[step]]\ndevice = "a"\ncmd = ["${binary.relay}"]\n')
    result = await run(tmp_path, text)
    (record,) = result.records
    assert record.status == "error" and record.error["phase"] == "binaries"
    assert record.error["key"] == "binary[0]" and record.error["line"] == text.splitlines().index("[[binary]]") + 1
    assert "binary 'relay': no file at 'bin/iroh-relay'" in record.error["message"]


async def test_fetch_a_tar_gz_and_a_plain_file(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    www, url = http_dir
    data = SCRIPT.format(word="unpacked").encode()
    with tarfile.open(www / "hello.tar.gz", "w:gz") as tar:
        for name, body, mode in (("hello-1.0/bin/hello", data, 0o755), ("hello-1.0/README", b"read me", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), mode
            tar.addfile(info, io.BytesIO(body))
    (www / "tool.sh").write_text(SCRIPT.format(word="plain"))
    text = sim_text(f"""
        [[binary]]
        name = "hello"
        url = "{url}/hello.tar.gz"
        [[binary]]
        name = "tool"
        url = "{url}/tool.sh"
        [[step]]
        id = "s"
        device = "a"
        cmd = ["${{binary.hello}}", "1"]
        {SAY}
        [[step]]
        id = "p"
        device = "a"
        cmd = ["${{binary.tool}}", "2"]
        [step.captures.said]
        regex = "(.*)"
    """)
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error
    assert said(result.output.root) == "unpacked 1" and said(result.output.root, "p") == "plain 2"
    assert (result.output.root / ".binaries" / "hello" / "unpacked" / "hello-1.0" / "bin" / "hello").is_file()


async def test_fetch_failure_names_the_url(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    _www, url = http_dir
    text = sim_text(f'[[binary]]\nname = "x"\nurl = "{url}/nope.tar.gz"\n'
                    '[[step]]\ndevice = "a"\ncmd = ["${binary.x}"]\n')
    result = await run(tmp_path, text)
    error = result.records[0].error
    assert error["phase"] == "binaries" and error["key"] == "binary[0]"
    assert f"cannot fetch {url}/nope.tar.gz: HTTP Error 404" in error["message"]


def make_crate(root: Path) -> Path:
    """A dependency-free crate (builds offline): a bin `hello` and an example `hi`, in a git repo."""
    (root / "src").mkdir(parents=True)
    (root / "examples").mkdir()
    (root / "Cargo.toml").write_text('[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n')
    (root / "src" / "main.rs").write_text(
        'fn main() { println!("hello {}", std::env::args().nth(1).unwrap_or_default()); }\n')
    (root / "examples" / "hi.rs").write_text('fn main() { println!("example hi"); }\n')
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "crate"], check=True)
    return root


async def test_cargo_builds_of_a_repo_a_source_dir_and_the_workspace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGO_NET_OFFLINE", "true")
    crate = make_crate(tmp_path / "crate")
    monkeypatch.chdir(crate)  # the project workspace
    text = sim_text(f"""
        [[binary]]
        name = "from-repo"
        repo = "{crate}"
        bin = "hello"
        [[binary]]
        name = "hello"
        mode = "build"
        path = "{crate}"
        [[binary]]
        name = "hi"
        example = "hi"
        [[step]]
        id = "s"
        device = "a"
        cmd = ["${{binary.from-repo}}", "repo"]
        {SAY}
        [[step]]
        id = "d"
        device = "a"
        cmd = ["${{binary.hello}}", "dir"]
        [step.captures.said]
        regex = "(.*)"
        [[step]]
        id = "e"
        device = "a"
        cmd = ["${{binary.hi}}"]
        [step.captures.said]
        regex = "(.*)"
    """)
    result = await run(tmp_path / "sims", text)
    assert result.ok, result.records[0].error
    root = result.output.root
    assert said(root) == "hello repo" and said(root, "d") == "hello dir" and said(root, "e") == "example hi"
    assert (tmp_path / "sims" / "work" / ".cargo-target" / "release" / "hello").is_file()
    assert (root / ".binaries" / "from-repo" / "src" / "Cargo.toml").is_file()


async def test_prepare_then_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGO_NET_OFFLINE", "true")
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)
    crate = make_crate(tmp_path / "crate")
    monkeypatch.chdir(crate)
    steps = f"""
        [[binary]]
        name = "hi"
        mode = "target"
        example = "hi"
        [[step]]
        id = "s"
        device = "a"
        cmd = ["${{binary.hi}}"]
        {SAY}
    """
    result = await run(tmp_path / "sims", sim_text(steps))  # not built yet
    error = result.records[0].error
    assert error["phase"] == "binaries" and error["key"] == "binary[0]"
    assert "target/release/examples/hi does not exist; build it first" in error["message"]
    result = await run(tmp_path / "sims", sim_text('[[prepare]]\nexamples = ["hi"]\nbins = ["hello"]\n' + steps))
    assert result.ok, result.records[0].error
    assert said(result.output.root) == "example hi" and (crate / "target" / "release" / "hello").is_file()
