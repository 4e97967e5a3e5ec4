"""`patchbay lab up | exec | shell | down | ls`: a lab held by a daemon, poked at from the shell."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import alive, processes_in

TOPOS = Path(__file__).parent / "topos"


class LiveLab:
    """Runs `patchbay lab ...` with a state directory of the test's own."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {**os.environ, "PATCHBAY_LAB_DIR": str(state), "SHELL": "/bin/sh"}
        self.name = f"t-{uuid.uuid4().hex[:8]}"  # also unique in thread and node labels

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "patchbay_core.cli", "lab", *args], input=stdin, text=True,
                              capture_output=True, env=self.env, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "patchbay_core.cli", "lab", *args], text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env)

    def info(self) -> dict:
        return json.loads((self.state / f"{self.name}.json").read_text())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveLab]:
    ll = LiveLab(tmp_path / "labs")
    yield ll
    # Whatever the test did, no daemon of it outlives it.
    for info in ll.state.glob("*.json"):
        pid = json.loads(info.read_text())["pid"]
        ll.run("down", "--name", info.stem)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _daemons_named(name: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"patchbay_core.livelab" in argv and name.encode() in argv:
            pids.append(int(proc.name))
    return pids


def _wait_gone(pattern: bytes, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _processes_with(pattern):
            return True
        time.sleep(0.05)
    return False


def _processes_with(pattern: bytes) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if pattern in (proc / "cmdline").read_bytes() and alive(int(proc.name)):
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def test_up_exec_shell_down(live: LiveLab) -> None:
    up = live.run("up", str(TOPOS / "small.toml"), "--name", live.name)
    assert up.returncode == 0, up.stderr
    info = live.info()
    addresses = {n["name"]: [i["addr"] for i in n["ifaces"]] for n in info["nodes"]}
    for node, addrs in addresses.items():  # every node and its addresses are printed
        assert re.search(rf"^  (router|device)\s+{node}\s+.*{re.escape(addrs[0])}", up.stdout, re.M), up.stdout
    assert re.search(r"device\s+laptop\s+eth0 10\.0\.1\.2/24 via home", up.stdout)

    ls = live.run("ls")
    assert ls.returncode == 0 and re.search(rf"^{live.name}\s+{info['pid']}\s+2\s+2\b", ls.stdout, re.M), ls.stdout

    # The command runs inside the node: its interfaces, not the host's or the router's.
    dev = live.run("exec", "--name", live.name, "laptop", "--", "cat", "/proc/net/dev")
    assert dev.returncode == 0, dev.stderr
    ifaces = {line.split(":")[0].strip() for line in dev.stdout.splitlines()[2:]}
    assert ifaces == {"lo", "eth0"}
    router = live.run("exec", "--name", live.name, "home", "--", "cat", "/proc/net/dev")
    assert {line.split(":")[0].strip() for line in router.stdout.splitlines()[2:]} == {"lo", "ix", "lan"}
    # Without --name: the only lab up.
    assert live.run("exec", "server", "--", "true").returncode == 0

    # The child's exit status, its stderr, and stdin passed through.
    status = live.run("exec", "--name", live.name, "laptop", "--", "sh", "-c", "read x; echo \"<$x>\" >&2; exit 7",
                      stdin="hello\n")
    assert (status.returncode, status.stderr) == (7, "<hello>\n")
    missing = live.run("exec", "--name", live.name, "laptop", "--", "no-such-command")
    assert missing.returncode == 127 and "cannot run 'no-such-command' in node 'laptop'" in missing.stderr
    nobody = live.run("exec", "--name", live.name, "nobody", "--", "true")
    assert nobody.returncode != 0 and "has no node 'nobody'; nodes: dc, home, server, laptop, ix" in nobody.stderr

    # A shell fed on stdin: commands run in the node; its exit status comes back.
    sh = live.run("shell", "--name", live.name, "laptop", stdin="echo node=$PATCHBAY_NODE\ncat /proc/net/dev\nexit 3\n")
    assert sh.returncode == 3, sh.stderr
    assert "node=laptop" in sh.stdout and "eth0:" in sh.stdout and "ix:" not in sh.stdout

    # Every namespace of the lab, as its processes see them.
    inodes = set()
    for node in addresses:
        out = live.run("exec", "--name", live.name, node, "--", "readlink", "/proc/self/ns/net")
        inodes.add(int(out.stdout.strip()[5:-1]))
    assert len(inodes) == 4
    # A background job started by exec lives on in the lab (until the lab goes down).
    bg = live.run("exec", "--name", live.name, "server", "--", "sh", "-c", "sleep 876.5 >/dev/null 2>&1 &")
    assert bg.returncode == 0 and _processes_with(b"sleep\x00876.5")

    down = live.run("down", "--name", live.name)
    assert down.returncode == 0 and f"lab '{live.name}' is down" in down.stdout
    assert not alive(info["pid"])
    assert processes_in(inodes) == []  # no namespace of the lab is left
    assert _wait_gone(b"sleep\x00876.5")
    assert list(live.state.iterdir()) == []  # no socket, lock, info or log file
    again = live.run("exec", "--name", live.name, "laptop", "--", "true")
    assert again.returncode != 0 and f"no lab named '{live.name}' is up" in again.stderr


def test_interrupted_exec_ends_its_command(live: LiveLab) -> None:
    assert live.run("up", str(TOPOS / "small.toml"), "--name", live.name).returncode == 0
    marker = f"{time.time() % 1000:.3f}"
    # Ctrl-C reaches the command (its trap runs and decides the status).
    client = live.popen("exec", "--name", live.name, "laptop", "--", "sh", "-c",
                        f"trap 'echo got INT; exit 9' INT; sleep {marker}")
    deadline = time.monotonic() + 10
    while not _processes_with(f"sleep\x00{marker}".encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.send_signal(signal.SIGINT)
    out, _ = client.communicate(timeout=10)
    assert client.returncode == 9 and "got INT" in out
    # A client that dies (even by SIGKILL) takes its command along.
    client = live.popen("exec", "--name", live.name, "laptop", "--", "sh", "-c", f"exec sleep {marker}1")
    deadline = time.monotonic() + 10
    while not _processes_with(f"sleep\x00{marker}1".encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep\x00{marker}1".encode())
    client.kill()
    client.wait()
    assert _wait_gone(f"sleep\x00{marker}1".encode())
    assert live.run("exec", "--name", live.name, "laptop", "--", "true").returncode == 0  # the lab is still fine


def test_a_broken_file_fails_up_cleanly(live: LiveLab) -> None:
    broken = live.run("up", str(TOPOS / "broken.toml"), "--name", live.name)
    assert broken.returncode != 0
    assert f"{TOPOS / 'broken.toml'}:7: device.client.eth0.gateway: unknown router 'dcc'" in broken.stderr
    assert _daemons_named(live.name) == []
    assert not live.state.exists() or list(live.state.iterdir()) == []
    # A file that checks but cannot be built (the daemon finds out): the same, cleanly.
    halfway = live.run("up", str(TOPOS / "halfway.toml"), "--name", live.name)
    assert halfway.returncode != 0
    assert "halfway.toml:10: device.peer.eth0: device 'peer-1': router 'tiny' has no address left" in halfway.stderr
    assert _daemons_named(live.name) == []
    assert list(live.state.iterdir()) == []
    assert live.run("ls").stdout.strip() == "no lab is up"


def test_one_lab_per_name_and_dead_daemons_are_cleaned(live: LiveLab) -> None:
    assert live.run("up", str(TOPOS / "small.toml"), "--name", live.name).returncode == 0
    twice = live.run("up", str(TOPOS / "small.toml"), "--name", live.name)
    assert twice.returncode != 0 and f"lab '{live.name}' is up already" in twice.stderr
    pid = live.info()["pid"]
    os.kill(pid, signal.SIGKILL)  # the lab dies with its daemon; its files stay behind
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (live.state / f"{live.name}.sock").exists()
    assert live.run("ls").stdout.strip() == "no lab is up"  # found dead, cleaned
    assert list(live.state.iterdir()) == []
    up = live.run("up", str(TOPOS / "small.toml"), "--name", live.name)
    assert up.returncode == 0, up.stderr
    assert live.run("down").returncode == 0
    assert list(live.state.iterdir()) == []


def test_shell_on_a_terminal_gets_a_pseudo_terminal(live: LiveLab) -> None:
    import pty
    import select

    assert live.run("up", str(TOPOS / "small.toml"), "--name", live.name).returncode == 0
    pid, fd = pty.fork()
    if pid == 0:  # the child: `patchbay lab shell` on a terminal
        os.execve(sys.executable, [sys.executable, "-m", "patchbay_core.cli", "lab", "shell", "--name", live.name,
                                   "laptop"], live.env)
    seen = b""

    def expect(text: bytes, timeout: float = 10.0) -> None:
        """Wait for `text` in what the terminal shows from now on."""
        nonlocal seen
        start = len(seen)
        deadline = time.monotonic() + timeout
        while text not in seen[start:]:
            assert time.monotonic() < deadline, f"no {text!r} in {seen[start:]!r}"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    try:
        expect(b"[laptop]# ")  # the prompt names the node
        os.write(fd, b"tty; echo node=$PATCHBAY_NODE; sleep 30\r")
        expect(b"node=laptop\r\n")
        assert re.search(rb"/dev/pts/\d+", seen)  # a terminal of its own, not ours
        time.sleep(0.3)
        os.write(fd, b"\x03")  # Ctrl-C stops the sleep inside the shell, not the shell
        expect(b"[laptop]# ", timeout=5)
        os.write(fd, b"echo still-here; exit 4\r")
        expect(b"still-here")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 4
