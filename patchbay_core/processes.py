"""Child processes of a lab.

All of a lab's children are forked by one spawner thread. That thread first unshares a PID
namespace and forks its init (a reaper in the C core), so every child and everything it
forks (a shell's `&`, a daemon that double-forks) lives in that PID namespace. When the lab
closes, or its process dies even by SIGKILL, the init exits and the kernel kills the rest.
Before each fork the spawner enters the node's network namespace, so the child is born there;
the child enters the node's mount namespace (its /etc/hosts and /etc/resolv.conf) before exec.
Children also get PR_SET_PDEATHSIG, tied to the spawner thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import select
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

import anyio
import anyio.abc

from .errors import NetlinkError, PatchbayError
from .execution import CLONE_NEWNET
from .kernel import native
from .kernel.native import ffi, lib

_STOP = object()


class Spawner:
    """The lab's process factory and the owner of its PID namespace."""

    def __init__(self, label: str, home_ns_fd: int) -> None:
        self._home_ns_fd = home_ns_fd
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._children: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        self._lifeline_w = -1
        self._init_pid = -1
        self._closed = False
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name=f"patchbay-spawner-{label}", daemon=True
        )
        self._thread.start()
        ready.result()

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            # Live in the lab's IX namespace: a thread without root could not come back to
            # the host's after stepping into a node.
            rc = lib.pb_setns(self._home_ns_fd, CLONE_NEWNET)
            if rc:
                raise NetlinkError("spawner: enter the lab's IX namespace", -rc)
            self._start_pid_namespace()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        home = native.home_netns_fd()
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                fut, ns_fd, mnt_fd, node, argv, kwargs = item
                if not fut.set_running_or_notify_cancel():
                    continue
                if argv is None:  # a barrier: everything before it has been forked
                    fut.set_result(None)
                    continue
                try:
                    fut.set_result(self._fork(home, ns_fd, mnt_fd, node, argv, kwargs))
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            native.close_home_netns_fd()

    def _start_pid_namespace(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        init_pid = ffi.new("int *")
        rc = lib.pb_pidns_start(read_fd, init_pid)
        os.close(read_fd)
        if rc:
            os.close(write_fd)
            raise NetlinkError("start the lab's PID namespace", -rc)
        self._lifeline_w = write_fd
        self._init_pid = init_pid[0]

    def _fork(
        self, home: int, ns_fd: int, mnt_fd: int, node: str, argv: Sequence[str], kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        user_preexec: Callable[[], Any] | None = kwargs.pop("preexec_fn", None)

        def preexec() -> None:
            lib.pb_set_pdeathsig(signal.SIGKILL)
            rc = lib.pb_mntns_enter(mnt_fd)
            if rc:
                raise OSError(-rc, f"{node}: enter the node's mount namespace")
            if user_preexec is not None:
                user_preexec()

        rc = lib.pb_setns(ns_fd, CLONE_NEWNET)
        if rc:
            raise NetlinkError("setns before spawning a command", -rc, node=node)
        try:
            child = subprocess.Popen(argv, preexec_fn=preexec, **kwargs)
        finally:
            if lib.pb_setns(home, CLONE_NEWNET):
                raise PatchbayError("spawner thread could not return to its home namespace")
        with self._lock:
            self._children = [c for c in self._children if c.returncode is None]
            self._children.append(child)
        return child

    def barrier(self, timeout: float = 10.0) -> None:
        """Wait until every command submitted so far has been forked (or failed)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                return
            self._queue.put((fut, -1, -1, "", None, None))
        fut.result(timeout)

    def submit(
        self, ns_fd: int, mnt_fd: int, node: str, argv: Sequence[str], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[subprocess.Popen[Any]]:
        fut: concurrent.futures.Future[subprocess.Popen[Any]] = concurrent.futures.Future()
        with self._lock:  # never behind the stop marker
            if self._closed:
                raise PatchbayError("the lab is closed")
            self._queue.put((fut, ns_fd, mnt_fd, node, list(argv), kwargs))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """End every process of the lab, reap them, and stop the spawner thread."""
        with self._lock:
            self._closed = True
        if self._lifeline_w >= 0:
            # The init sees EOF, exits, and the kernel SIGKILLs the whole PID namespace.
            os.close(self._lifeline_w)
            self._lifeline_w = -1
        with self._lock:
            children = list(self._children)
            self._children.clear()
        for child in children:
            # Reap our direct children first: the init only finishes exiting once every
            # process of its namespace is reaped.
            with contextlib.suppress(Exception):
                child.kill()
            with contextlib.suppress(Exception):
                child.wait(timeout)
        if self._init_pid > 0:
            # The init exits on EOF; make sure even if something still held the pipe open.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._init_pid, 0)
            self._init_pid = -1
        with self._lock:
            self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class ExitWatcher:
    """Tells when the lab's children exit (for `command_exited` events) without reaping them:
    one thread polls their pidfds and reads each status with waitid(WNOWAIT), so the caller's
    own `wait()` still gets it."""

    def __init__(self, label: str) -> None:
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[subprocess.Popen[Any], Callable[[int | None], None]]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=f"patchbay-exitwatch-{label}", daemon=True)
        self._thread.start()

    def watch(self, child: subprocess.Popen[Any], on_exit: Callable[[int | None], None]) -> None:
        """Call `on_exit(returncode)` (on the watcher's thread) once `child` has exited."""
        try:
            fd = os.pidfd_open(child.pid)
        except OSError:
            on_exit(child.poll())  # gone and reaped already
            return
        with self._lock:
            if self._closed:
                os.close(fd)
                return
            self._watched[fd] = (child, on_exit)
            self._epoll.register(fd, select.EPOLLIN)

    def _main(self) -> None:
        while True:
            ready = [fd for fd, _mask in self._epoll.poll()]
            for fd in ready:
                if fd != self._wake_r:
                    self._report(fd)
            if self._wake_r in ready:
                return

    def _report(self, fd: int) -> None:
        with self._lock:
            child, on_exit = self._watched.pop(fd)
            self._epoll.unregister(fd)
        code: int | None
        try:
            info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOWAIT)
            code = None if info is None else (info.si_status if info.si_code == os.CLD_EXITED else -info.si_status)
        except ChildProcessError:
            code = child.returncode  # the caller reaped it first
        finally:
            os.close(fd)
        with contextlib.suppress(Exception):
            on_exit(code)

    def close(self) -> None:
        """Stop watching; children still running are not reported."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        with self._lock:
            left = list(self._watched.items())
            self._watched.clear()
        for fd, (child, on_exit) in left:
            os.close(fd)
            if child.returncode is not None:  # reaped by the lab's close meanwhile
                with contextlib.suppress(Exception):
                    on_exit(child.returncode)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._epoll.close()


def kill_processes_in(netns_inode: int) -> int:
    """SIGKILL every process living in the network namespace `netns_inode` (a node being
    removed: its commands and whatever they forked). Returns how many were signalled."""
    wanted, killed, me = f"net:[{netns_inode}]", 0, os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/net") == wanted:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return killed


# ---- an anyio Process over a Popen -------------------------------------------------------


class _PipeReceive(anyio.abc.ByteReceiveStream):
    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._fd = file.fileno()
        os.set_blocking(self._fd, False)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        self._file.close()


class _PipeSend(anyio.abc.ByteSendStream):
    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._fd = file.fileno()
        os.set_blocking(self._fd, False)

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            view = view[n:]

    async def aclose(self) -> None:
        self._file.close()


class NodeProcess(anyio.abc.Process):
    """A child running in a node, awaitable from asyncio or trio (waits on a pidfd)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self._pidfd = os.pidfd_open(popen.pid)
        self._stdin = _PipeSend(popen.stdin) if popen.stdin else None
        self._stdout = _PipeReceive(popen.stdout) if popen.stdout else None
        self._stderr = _PipeReceive(popen.stderr) if popen.stderr else None

    async def wait(self) -> int:
        while self.popen.poll() is None:
            await anyio.wait_readable(self._pidfd)
        self._close_pidfd()
        return self.popen.returncode

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def terminate(self) -> None:
        self.popen.terminate()

    def kill(self) -> None:
        self.popen.kill()

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def stdin(self) -> anyio.abc.ByteSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stderr

    async def aclose(self) -> None:
        for stream in (self._stdin, self._stdout, self._stderr):
            if stream is not None:
                await stream.aclose()
        try:
            await self.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                self.kill()
                await self.wait()
            raise

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close_pidfd()
