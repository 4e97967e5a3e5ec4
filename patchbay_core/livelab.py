"""A live lab to poke at: `patchbay lab up | exec | shell | down | ls`.

`lab up TOPO.toml` checks the file, then starts a daemon: a detached process in a session of
its own that builds the lab and holds it until `lab down` (or until it is killed: the lab's
namespaces and processes die with it, as with any lab). The daemon listens on a unix socket;
`lab exec` sends its request together with its own stdin/stdout/stderr (SCM_RIGHTS), and
the daemon starts the command inside the node on exactly those descriptors, so the command
lives in the lab's network and PID namespaces and dies with the lab. The daemon reports the
exit status; signals the client gets (Ctrl-C) are forwarded, and when the client goes away
the command's process group is killed. `lab shell` on a terminal gets a pseudo-terminal
made by the daemon (the master end is sent back), so job control and Ctrl-C work in it.

State lives in one directory: $PATCHBAY_LAB_DIR, else /run/patchbay/labs for root, else
$XDG_RUNTIME_DIR/patchbay/labs, else /tmp/patchbay-UID/labs. Per lab:
  NAME.lock  flock()ed by the daemon for its whole life: the test of whether the lab is up
  NAME.sock  the daemon's socket (SOCK_SEQPACKET, one JSON object a message)
  NAME.json  pid, topology, nodes and addresses (what `lab up` printed)
  NAME.log   the daemon's own output
Files of a daemon that died are found (the lock is free) and removed by the next command.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import traceback
import tty
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PatchbayError

if TYPE_CHECKING:
    from .handles import NodeHandle
    from .lab import Lab
    from .topofile import BuiltTopology

MAX_MESSAGE = 1 << 18  # a request carries the caller's environment
START_TIMEOUT_S = 300.0  # building a lab of thousands of nodes takes a while
DOWN_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 15.0
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LAB_GONE_EXIT = 255


# ---- the state directory --------------------------------------------------------------------


def state_dir() -> Path:
    if os.environ.get("PATCHBAY_LAB_DIR"):
        return Path(os.environ["PATCHBAY_LAB_DIR"])
    if os.geteuid() == 0:
        return Path("/run/patchbay/labs")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "patchbay" / "labs"
    return Path(f"/tmp/patchbay-{os.getuid()}/labs")


@dataclass(frozen=True)
class LabFiles:
    """The files of one live lab."""

    root: Path
    name: str

    @property
    def lock(self) -> Path:
        return self.root / f"{self.name}.lock"

    @property
    def sock(self) -> Path:
        return self.root / f"{self.name}.sock"

    @property
    def info(self) -> Path:
        return self.root / f"{self.name}.json"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def read_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info.read_text())
        except (OSError, ValueError):
            return None

    def remove_leftovers(self) -> None:
        """Only while holding the lock: the socket, info and log of a daemon that is gone."""
        for path in (self.sock, self.info, self.log):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise PatchbayError(f"lab name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-' (first a letter or "
                            "digit)")
    return name


def default_name(topology: str | os.PathLike[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(topology).stem).strip("-.") or "lab"
    return stem[:64]


def take_lock(path: Path) -> int | None:
    """flock() `path` without waiting: the fd, or None when a live daemon (or a starting one)
    holds it. Loops when the file was replaced under us (a lock file is unlinked while held)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def release_lock(files: LabFiles, fd: int) -> None:
    """Remove the lab's files, the lock file last (while still holding it), then let go."""
    files.remove_leftovers()
    with contextlib.suppress(FileNotFoundError):
        files.lock.unlink()
    os.close(fd)


def is_up(files: LabFiles) -> bool:
    """Whether a daemon holds the lab; files of a dead one are cleaned on the way."""
    if not files.lock.exists():  # a live daemon's lock file only goes when it ends
        return False
    fd = take_lock(files.lock)
    if fd is None:
        return True
    release_lock(files, fd)
    return False


def labs_up(root: Path | None = None) -> list[str]:
    root = root or state_dir()
    if not root.is_dir():
        return []
    names = sorted(p.name[:-5] for p in root.glob("*.lock"))
    return [n for n in names if is_up(LabFiles(root, n))]


def resolve_name(name: str | None) -> LabFiles:
    """The lab a command means: the one named, or the only one up."""
    root = state_dir()
    if name is not None:
        files = LabFiles(root, check_name(name))
        if not is_up(files):
            others = labs_up(root)
            raise PatchbayError(f"no lab named {name!r} is up (labs up: {', '.join(others) or 'none'}); "
                                "start one with `patchbay lab up TOPO.toml`")
        return files
    up = labs_up(root)
    if not up:
        raise PatchbayError("no lab is up; start one with `patchbay lab up TOPO.toml`")
    if len(up) > 1:
        raise PatchbayError(f"{len(up)} labs are up ({', '.join(up)}); pick one with --name")
    return LabFiles(root, up[0])


# ---- messages -------------------------------------------------------------------------------


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _connect(files: LabFiles, timeout: float | None = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(str(files.sock))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise PatchbayError(f"lab {files.name!r} does not answer: it is still starting, or its daemon is "
                                "stuck (see `patchbay lab ls`; `patchbay lab down` ends it)") from None
        raise
    return sock


def _recv(sock: socket.socket, maxfds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (None: the peer closed) and the descriptors that came with it."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, maxfds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def request(files: LabFiles, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    with contextlib.closing(_connect(files, timeout)) as sock:
        sock.send(_encode(message))
        reply, _ = _recv(sock)
    if reply is None:
        raise PatchbayError(f"lab {files.name!r}: the daemon closed the connection without answering")
    return reply


# ---- lab up ---------------------------------------------------------------------------------


def up(topology: str | os.PathLike[str], name: str | None = None, outdir: str | None = None) -> int:
    """Check the file, start the daemon, wait until the lab is up, print its nodes."""
    from .topofile import read_topology

    read_topology(topology)  # a wrong file fails here: no daemon is started
    name = check_name(name or default_name(topology))
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = LabFiles(root, name)
    lock = take_lock(files.lock)
    if lock is None:
        info = files.read_info() or {}
        raise PatchbayError(f"lab {name!r} is up already (daemon pid {info.get('pid', '?')}, topology "
                            f"{info.get('topology', '?')}); `patchbay lab down --name {name}` first, or pick "
                            "another --name")
    files.remove_leftovers()
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    argv = [sys.executable, "-m", "patchbay_core.livelab", "--name", name, "--topology",
            str(Path(topology).resolve()), "--state-dir", str(root), "--lock-fd", str(lock),
            "--ready-fd", str(ready_w)]
    if outdir is not None:
        argv += ["--outdir", str(Path(outdir).resolve())]
    try:
        with open(files.log, "wb") as log:
            daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      pass_fds=(lock, ready_w), start_new_session=True)
    except BaseException:
        os.close(ready_r)
        os.close(ready_w)
        release_lock(files, lock)
        raise
    # The daemon holds the lock now (the same open file); ours goes.
    os.close(lock)
    os.close(ready_w)
    try:
        report = _read_report(ready_r, START_TIMEOUT_S)
    finally:
        os.close(ready_r)
    if report is not None and report.get("ok"):
        print(render_nodes(report))
        return 0
    # Failed: make sure the daemon is gone and nothing of it stays.
    try:
        daemon.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    log_text = ""
    with contextlib.suppress(OSError):
        log_text = files.log.read_text(errors="replace").strip()
    fd = take_lock(files.lock)
    if fd is not None:
        release_lock(files, fd)
    if report is None:
        tail = "\n".join(log_text.splitlines()[-15:])
        raise PatchbayError(f"lab {name!r}: the daemon exited while building the lab (status {daemon.returncode})"
                            + (f":\n{tail}" if tail else ""))
    raise PatchbayError(str(report.get("error")))


def _read_report(fd: int, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PatchbayError(f"the lab did not come up within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data) if data.strip() else None
    except ValueError:
        return None


def render_nodes(info: dict[str, Any]) -> str:
    name = info["name"]
    routers = [n for n in info["nodes"] if n["kind"] == "router"]
    devices = [n for n in info["nodes"] if n["kind"] == "device"]
    lines = [f"lab {name!r} is up: {len(routers)} routers, {len(devices)} devices (daemon pid {info['pid']}, "
             f"topology {info['topology']})"]
    width = max((len(n["name"]) for n in info["nodes"]), default=4)
    for node in info["nodes"]:
        addrs = "  ".join(f"{i['name']} {i['addr']}" + (f" via {i['router']}" if i.get("router") else "")
                          for i in node["ifaces"])
        extra = "  ".join(f"{k} {v}" for k, v in node.get("notes", {}).items())
        lines.append(f"  {node['kind']:<7} {node['name']:<{width}}  {addrs}" + (f"  ({extra})" if extra else ""))
    for link in info.get("region_links", []):
        lines.append(f"  region  {link['a']} <-> {link['b']}: {link['latency_ms']} ms one way")
    flag = f" --name {name}"
    lines.append(f"next: patchbay lab exec{flag} NODE -- CMD... | patchbay lab shell{flag} NODE | "
                 f"patchbay lab down{flag}")
    return "\n".join(lines)


def ls() -> int:
    root = state_dir()
    up_now = labs_up(root)
    if not up_now:
        print("no lab is up")
        return 0
    print(f"{'NAME':<20} {'PID':>7} {'ROUTERS':>7} {'DEVICES':>7}  {'UP FOR':>8}  TOPOLOGY")
    for name in up_now:
        info = LabFiles(root, name).read_info()
        if info is None:
            print(f"{name:<20} {'?':>7} {'':>7} {'':>7}  {'':>8}  (starting)")
            continue
        kinds = [n["kind"] for n in info["nodes"]]
        age = _age(time.time() - info.get("started", time.time()))
        print(f"{name:<20} {info['pid']:>7} {kinds.count('router'):>7} {kinds.count('device'):>7}  {age:>8}  "
              f"{info['topology']}")
    return 0


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---- lab down -------------------------------------------------------------------------------


def down(name: str | None = None) -> int:
    files = resolve_name(name)
    info = files.read_info() or {}
    pid = info.get("pid")
    pidfd = None
    if isinstance(pid, int):
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(pid)
    try:
        try:
            request(files, {"op": "down"}, timeout=DOWN_TIMEOUT_S)
        except (PatchbayError, OSError) as exc:
            if pidfd is None:
                raise PatchbayError(f"lab {files.name!r} does not answer and its daemon's pid is unknown: {exc}") \
                    from None
            # A stuck daemon: SIGTERM asks it to close the lab; SIGKILL below if it will not.
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if pidfd is not None and not select.select([pidfd], [], [], EXIT_TIMEOUT_S)[0]:
            # Killed, the daemon still takes its lab along: namespaces are only held by its fds.
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], EXIT_TIMEOUT_S)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    # Normally the daemon removed its files; after a kill they are ours to remove.
    for _ in range(100):
        fd = take_lock(files.lock)
        if fd is not None:
            release_lock(files, fd)
            break
        time.sleep(0.05)
    print(f"lab {files.name!r} is down")
    return 0


# ---- lab exec / lab shell -------------------------------------------------------------------


def exec_in(name: str | None, node: str, argv: Sequence[str], *, use_tty: bool = False,
            extra_env: dict[str, str] | None = None) -> int:
    """Run `argv` inside `node` with this process's stdin/stdout/stderr; its exit status."""
    if not argv:
        raise PatchbayError("lab exec: no command given; use `patchbay lab exec NODE -- CMD ...`")
    files = resolve_name(name)
    use_tty = use_tty and os.isatty(0) and os.isatty(1)
    env = {**os.environ, "PATCHBAY_LAB": files.name, "PATCHBAY_NODE": node, **(extra_env or {})}
    message: dict[str, Any] = {"op": "exec", "node": node, "argv": list(argv), "cwd": os.getcwd(), "env": env,
                               "tty": use_tty}
    if use_tty:
        message["winsize"] = list(_winsize(1))
    sock = _connect(files)
    try:
        if use_tty:
            sock.send(_encode(message))
        else:
            socket.send_fds(sock, [_encode(message)], [0, 1, 2])
        sock.settimeout(None)
        reply, fds = _recv(sock, maxfds=1)
        if reply is None:
            raise PatchbayError(f"lab {files.name!r} went down before the command started")
        if not reply.get("ok"):
            print(f"patchbay: {reply.get('error')}", file=sys.stderr)
            return int(reply.get("exit", 2))
        if use_tty:
            return _relay_tty(sock, fds[0])
        return _wait_exit(sock)
    finally:
        sock.close()


def shell(name: str | None, node: str) -> int:
    """An interactive shell inside `node` ($SHELL, else /bin/sh); a pseudo-terminal when
    this process has a terminal, plain stdin otherwise (commands may be piped in)."""
    argv = [os.environ.get("SHELL") or "/bin/sh"]
    prompt = f"[{node}]{'#' if os.geteuid() == 0 else '$'} "
    return exec_in(name, node, argv, use_tty=True, extra_env={"PS1": prompt})


def _exit_code(message: dict[str, Any]) -> int:
    if message.get("error"):
        print(f"patchbay: {message['error']}", file=sys.stderr)
    return int(message["exit"])


@contextlib.contextmanager
def _forwarded_signals(sock: socket.socket, signals: Sequence[int]) -> Iterator[None]:
    """While the command runs, signals this process gets go to the command's process group
    (a second Ctrl-C kills it, for commands that ignore the first)."""
    seen = {"int": 0}

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            seen["int"] += 1
        message = {"kill": True} if seen["int"] > 1 else {"signal": signum}
        with contextlib.suppress(OSError):
            sock.send(_encode(message))

    old = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _wait_exit(sock: socket.socket) -> int:
    with _forwarded_signals(sock, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)):
        while True:
            message, _ = _recv(sock)
            if message is None:
                print("patchbay: the lab went down (or its daemon died) while the command ran", file=sys.stderr)
                return LAB_GONE_EXIT
            if "exit" in message:
                return _exit_code(message)


def _winsize(fd: int) -> tuple[int, int, int, int]:
    try:
        return struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return (24, 80, 0, 0)


def _relay_tty(sock: socket.socket, master: int) -> int:
    """Copy between this terminal (raw) and the command's pseudo-terminal until it exits."""

    def resize(_signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *_winsize(1)))

    saved = termios.tcgetattr(0)
    old_winch = signal.signal(signal.SIGWINCH, resize)
    code: int | None = None
    drain_until = 0.0
    try:
        tty.setraw(0)
        with _forwarded_signals(sock, (signal.SIGTERM, signal.SIGHUP)):
            stdin_open, master_open = True, True
            while master_open:
                watch = [master] + ([sock] if code is None else []) + ([0] if stdin_open and code is None else [])
                # After the exit, only drain what is left (a background job may hold the terminal).
                timeout = None if code is None else min(0.2, drain_until - time.monotonic())
                if timeout is not None and timeout <= 0:
                    break
                ready, _, _ = select.select(watch, [], [], timeout)
                if not ready:
                    break
                if master in ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: every holder of the other end is gone
                        data = b""
                    if data:
                        _write_all(1, data)
                    else:
                        master_open = False
                if 0 in ready:
                    data = os.read(0, 65536)
                    if data:
                        _write_all(master, data)
                    else:
                        stdin_open = False
                if sock in ready:
                    message, _ = _recv(sock)
                    if message is None:
                        code = LAB_GONE_EXIT
                    elif "exit" in message:
                        code = int(message["exit"])
                    drain_until = time.monotonic() + 1.0
            if code is None:
                sock.settimeout(EXIT_TIMEOUT_S)
                with contextlib.suppress(OSError):
                    message, _ = _recv(sock)
                    code = int(message["exit"]) if message and "exit" in message else LAB_GONE_EXIT
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        os.close(master)
    if code == LAB_GONE_EXIT:
        print("patchbay: the lab went down (or its daemon died) while the shell ran", file=sys.stderr)
    return code if code is not None else LAB_GONE_EXIT


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---- the daemon -----------------------------------------------------------------------------


class Daemon:
    """Holds one lab and serves exec and down requests over its socket."""

    def __init__(self, files: LabFiles, topology: str, lock_fd: int, outdir: str | None) -> None:
        self.files = files
        self.topology = topology
        self.lock_fd = lock_fd
        self.outdir = outdir
        self.lab: Lab | None = None
        self.built: BuiltTopology | None = None
        self.down_requests: list[socket.socket] = []
        self.info: dict[str, Any] = {}

    async def run(self, ready_fd: int) -> int:
        import anyio

        from .opts import LabOpts
        from .topofile import open_topology, read_topology

        try:
            topo = read_topology(self.topology)
            self.lab, self.built = await open_topology(topo, LabOpts(label=self.files.name, outdir=self.outdir))
        except Exception as exc:
            _report(ready_fd, {"ok": False, "error": str(exc)})
            return 1
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            listener.bind(str(self.files.sock))
            listener.listen(16)
            self.info = self.describe()
            self.files.info.write_text(json.dumps(self.info))
            _report(ready_fd, {"ok": True, **self.info})
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.watch_signals, stop)
                tg.start_soon(self.accept, listener, tg, stop)
                await stop.wait()
                tg.cancel_scope.cancel()  # ends every exec session: their commands are killed
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.files.sock.unlink()
            with anyio.CancelScope(shield=True):
                await self.lab.close()
            for conn in self.down_requests:
                with contextlib.suppress(OSError):
                    conn.send(_encode({"ok": True}))
                conn.close()
            release_lock(self.files, self.lock_fd)
        return 0

    def describe(self) -> dict[str, Any]:
        assert self.lab is not None and self.built is not None
        nodes: list[dict[str, Any]] = []
        for r in self.built.topology.routers:
            router = self.built.routers[r.name]
            ifaces = [{"name": i.name, "addr": f"{i.ip}/{i.prefixlen}"} for i in router.interfaces()]
            notes = {}
            if r.preset:
                notes["preset"] = r.preset
            if r.nat is not None:
                notes["nat"] = r.nat if isinstance(r.nat, str) else "custom"
            if r.firewall is not None:
                notes["firewall"] = r.firewall if isinstance(r.firewall, str) else "custom"
            if r.upstream:
                notes["upstream"] = r.upstream
            if r.region:
                notes["region"] = r.region
            nodes.append({"kind": "router", "name": r.name, "ifaces": ifaces, "notes": notes})
        for d in self.built.topology.devices:
            device = self.built.devices[d.name]
            ifaces = [{"name": i.name, "addr": f"{i.ip}/{i.prefixlen}", "router": i.router.name}
                      for i in device.ifaces()]
            notes = {"default": device.default_iface().name} if len(ifaces) > 1 else {}
            nodes.append({"kind": "device", "name": d.name, "ifaces": ifaces, "notes": notes})
        links = [{"a": rl.a, "b": rl.b, "latency_ms": rl.link.latency_ms} for rl in self.built.topology.region_links]
        return {"name": self.files.name, "pid": os.getpid(), "topology": self.topology, "started": time.time(),
                "nodes": nodes, "region_links": links}

    async def watch_signals(self, stop: Any) -> None:
        import anyio

        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for _ in signals:
                stop.set()
                return

    async def accept(self, listener: socket.socket, tg: Any, stop: Any) -> None:
        import anyio

        while True:
            await anyio.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(False)
            tg.start_soon(self.serve, conn, stop)

    async def serve(self, conn: socket.socket, stop: Any) -> None:
        import anyio

        keep = False
        try:
            await anyio.wait_readable(conn)
            message, fds = _recv(conn, maxfds=3)
            if message is None:
                return
            op = message.get("op")
            if op == "down":
                self.down_requests.append(conn)
                keep = True
                stop.set()
            elif op == "info":
                conn.send(_encode({"ok": True, **self.info}))
            elif op == "exec":
                await self.exec_session(conn, message, fds)
            else:
                conn.send(_encode({"ok": False, "error": f"unknown request {op!r}"}))
        except OSError:
            pass  # the client went away
        except Exception:
            # A bad request must not take the lab down; the daemon's log keeps the story.
            traceback.print_exc()
            with contextlib.suppress(OSError):
                conn.send(_encode({"ok": False, "error": "the lab daemon failed to serve the request (see its log)"}))
        finally:
            if not keep:
                conn.close()

    def node(self, name: str) -> NodeHandle:
        assert self.lab is not None
        if name == "ix":
            return self.lab.ix
        for handle in (*self.lab.devices(), *self.lab.routers()):
            if handle.name == name:
                return handle
        known = [h.name for h in (*self.lab.routers(), *self.lab.devices())]
        raise LookupError(f"lab {self.files.name!r} has no node {name!r}; nodes: {', '.join(known)}, ix")

    async def exec_session(self, conn: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        import anyio

        master = slave = -1
        proc = None
        try:
            node = self.node(str(message.get("node")))
            argv = [str(a) for a in message["argv"]]
            kwargs: dict[str, Any] = {"cwd": message.get("cwd") or "/", "env": message.get("env"),
                                      "start_new_session": True}  # its own group: signals go to all of it
            if message.get("tty"):
                master, slave = os.openpty()
                os.set_inheritable(master, False)
                fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *message.get("winsize", (24, 80, 0, 0))))
                kwargs |= {"stdin": slave, "stdout": slave, "stderr": slave, "preexec_fn": _take_terminal}
            else:
                if len(fds) != 3:
                    raise LookupError("an exec request carries the caller's stdin, stdout and stderr")
                kwargs |= {"stdin": fds[0], "stdout": fds[1], "stderr": fds[2]}
            try:
                proc = await node.spawn_command(argv, **kwargs)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) and exc.filename == message.get("cwd"):
                    text, code = f"no directory {exc.filename!r} here: {exc.strerror}", 126
                else:
                    code = 127 if isinstance(exc, FileNotFoundError) else 126
                    text = f"cannot run {argv[0]!r} in node {node.name!r}: {exc.strerror or exc}"
                conn.send(_encode({"ok": False, "error": text, "exit": code}))
                return
        except (LookupError, PatchbayError, KeyError, TypeError) as exc:
            conn.send(_encode({"ok": False, "error": str(exc).strip("'\"")}))
            return
        finally:
            for fd in (*fds, slave, master if proc is None else -1):  # the child has its own copies now
                if fd >= 0:
                    os.close(fd)
        try:
            if master >= 0:
                socket.send_fds(conn, [_encode({"ok": True, "pid": proc.pid})], [master])
                os.close(master)
                master = -1
            else:
                conn.send(_encode({"ok": True, "pid": proc.pid}))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.follow_client, conn, proc.pid, tg.cancel_scope)
                code = await proc.wait()
                tg.cancel_scope.cancel()
            with contextlib.suppress(OSError):
                conn.send(_encode({"exit": code if code >= 0 else 128 - code}))
        finally:
            if master >= 0:
                os.close(master)
            if proc.returncode is None:  # the client went away, or the lab goes down
                _kill_group(proc.pid, signal.SIGKILL)
                with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_TIMEOUT_S):
                    await proc.wait()

    async def follow_client(self, conn: socket.socket, pid: int, scope: Any) -> None:
        """Signals the client forwards go to the command's group; when the client is gone,
        the group is killed."""
        import anyio

        while True:
            await anyio.wait_readable(conn)
            try:
                message, _ = _recv(conn)
            except BlockingIOError:
                continue
            except OSError:
                message = None
            if message is None:
                _kill_group(pid, signal.SIGKILL)
                return
            if message.get("kill"):
                _kill_group(pid, signal.SIGKILL)
            elif isinstance(message.get("signal"), int):
                _kill_group(pid, message["signal"])


def _take_terminal() -> None:
    # In the child, after setsid(): the pseudo-terminal on fd 0 becomes its controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _report(fd: int, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        _write_all(fd, _encode(message))
    with contextlib.suppress(OSError):
        os.close(fd)


def daemon_main(argv: list[str] | None = None) -> int:
    """The daemon `lab up` starts: `python -m patchbay_core.livelab --name ... --lock-fd ...`."""
    parser = argparse.ArgumentParser(prog="patchbay-lab-daemon")
    parser.add_argument("--name", required=True)
    parser.add_argument("--topology", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--lock-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--outdir")
    args = parser.parse_args(argv)
    for fd in (args.lock_fd, args.ready_fd):
        os.set_inheritable(fd, False)  # commands started in the lab must not hold them
    files = LabFiles(Path(args.state_dir), args.name)
    try:
        from .userns import has_net_admin, init_userns

        # Before anything starts a thread: without root, labs need a user namespace.
        if os.geteuid() != 0 and not has_net_admin():
            init_userns()
    except PatchbayError as exc:
        _report(args.ready_fd, {"ok": False, "error": str(exc)})
        return 1
    import anyio

    daemon = Daemon(files, args.topology, args.lock_fd, args.outdir)
    return anyio.run(daemon.run, args.ready_fd)


if __name__ == "__main__":
    sys.exit(daemon_main())
