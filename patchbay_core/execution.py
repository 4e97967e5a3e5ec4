"""Where a node's code runs: threads that live inside the node's network namespace.

Per node, made lazily on first use:
- an event-loop thread (asyncio) for `spawn`: the loop, its default executor (used by
  `getaddrinfo` and `run_in_executor`) and anyio's worker threads are all started from this
  thread after it entered the namespace, and a new thread inherits its creator's namespace;
- a sync worker thread for `run_sync`;
- one fresh thread per `spawn_thread`.
Each thread enters the namespace with setns(2) before running anything, so every socket made
there belongs to the node. It also enters the node's mount namespace (see `dns.py`), where
/etc/hosts and /etc/resolv.conf are the lab's: name lookups from the node's code see the lab's
names. (A thread in its own mount namespace keeps its own working directory: a later
`os.chdir` of the main thread does not reach node threads.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import NetlinkError, NodeGone
from .kernel.native import lib, mntns_enter

T = TypeVar("T")
log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_STOP = object()


def enter_netns(fd: int, node: str) -> None:
    rc = lib.pb_setns(fd, CLONE_NEWNET)
    if rc:
        raise NetlinkError("setns into the node's network namespace", -rc, node=node)


def enter_node(ns_fd: int, mnt_fd: int, node: str) -> None:
    """Move the calling thread into the node: its network and its mount namespace."""
    enter_netns(ns_fd, node)
    mntns_enter(mnt_fd, node)


class NodeRuntime:
    """The threads of one node. `close()` ends them all."""

    def __init__(self, node: str, ns_fd: int, mnt_fd: int) -> None:
        self.node = node
        self._ns_fd = ns_fd
        self._mnt_fd = mnt_fd
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._sync_queue: queue.SimpleQueue[Any] | None = None
        self._sync_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._closed = False

    # ---- event loop -----------------------------------------------------------------------

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise NodeGone(self.node)
            if self._loop is None:
                ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
                thread = threading.Thread(
                    target=self._loop_main, args=(ready,), name=f"patchbay-loop-{self.node}", daemon=True
                )
                thread.start()
                self._loop = ready.result()
                self._loop_thread = thread
            return self._loop

    def _loop_main(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        try:
            enter_node(self._ns_fd, self._mnt_fd, self.node)
            loop = asyncio.new_event_loop()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        asyncio.set_event_loop(loop)
        ready.set_result(loop)
        try:
            loop.run_forever()
        finally:
            _drain_loop(loop, self.node)

    def submit_coro(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` as a task on the node's loop.

        The task starts in a fresh contextvars context: the caller's (its sniffio library,
        its task-local state) belongs to another event loop and must not leak into the node.
        """
        loop = self.loop()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if fut.cancelled():
                coro.close()
                return
            try:
                task = loop.create_task(coro)
            except BaseException as exc:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    fut.set_exception(exc)
                return
            task.add_done_callback(lambda t: _settle(fut, t))
            # The caller gave up (cancelled): cancel the task on its loop.
            fut.add_done_callback(lambda f: f.cancelled() and _call_soon(loop, task.cancel))

        loop.call_soon_threadsafe(start, context=contextvars.Context())
        return fut

    def on_loop_thread(self) -> bool:
        return self._loop_thread is not None and threading.current_thread() is self._loop_thread

    # ---- sync worker ----------------------------------------------------------------------

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        if self._sync_thread is not None and threading.current_thread() is self._sync_thread:
            return fn(*args)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:  # put under the lock: never behind the stop marker
            self._sync_worker_queue().put((fut, fn, args))
        return fut.result()

    def _sync_worker_queue(self) -> queue.SimpleQueue[Any]:
        """The sync worker's queue, started on first use (call with the lock held)."""
        if self._closed:
            raise NodeGone(self.node)
        if self._sync_queue is None:
            q: queue.SimpleQueue[Any] = queue.SimpleQueue()
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._sync_main, args=(q, ready), name=f"patchbay-sync-{self.node}", daemon=True
            )
            thread.start()
            ready.result()
            self._sync_queue, self._sync_thread = q, thread
        return self._sync_queue

    def _sync_main(self, q: queue.SimpleQueue[Any], ready: concurrent.futures.Future[None]) -> None:
        try:
            enter_node(self._ns_fd, self._mnt_fd, self.node)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while True:
            item = q.get()
            if item is _STOP:
                return
            fut, fn, args = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:
                    fut.set_exception(exc)

    # ---- dedicated threads ----------------------------------------------------------------

    def spawn_thread(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def main() -> None:
            try:
                enter_node(self._ns_fd, self._mnt_fd, self.node)
                if fut.set_running_or_notify_cancel():
                    fut.set_result(fn(*args))
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        with self._lock:
            if self._closed:
                raise NodeGone(self.node)
            thread = threading.Thread(target=main, name=f"patchbay-thread-{self.node}", daemon=True)
            self._threads.add(thread)
            thread.start()  # inside the lock: close() never joins a thread not yet started
        return fut

    # ---- shutdown -------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling its tasks), the sync worker, and wait for threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, loop_thread = self._loop, self._loop_thread
            sync_queue, sync_thread = self._sync_queue, self._sync_thread
            threads = list(self._threads)
        current = threading.current_thread()
        if loop is not None and loop_thread is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            if loop_thread is not current:
                loop_thread.join(timeout)
        if sync_queue is not None and sync_thread is not None:
            sync_queue.put(_STOP)
            if sync_thread is not current:
                sync_thread.join(timeout)
        for thread in threads:
            if thread is not current:
                thread.join(timeout)
                if thread.is_alive():
                    log.warning("%s: a spawn_thread function is still running after the lab closed", self.node)


def _settle(fut: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    """Copy a finished task's outcome to the caller's future (unless the caller cancelled)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if task.cancelled():
            fut.cancel()
        elif task.exception() is not None:
            fut.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            fut.set_result(task.result())


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop already closed
        loop.call_soon_threadsafe(fn)


def _drain_loop(loop: asyncio.AbstractEventLoop, node: str) -> None:
    """Cancel what still runs on a node's loop, then close it and its executor."""
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=5.0))
            if pending:
                log.warning("%s: %d task(s) ignored cancellation at lab close", node, len(pending))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
