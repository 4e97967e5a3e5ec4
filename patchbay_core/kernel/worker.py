"""The lab's kernel thread: every namespace, link, route and rule of a lab is made here.

One thread per lab serializes kernel work (so netlink sockets have one user and a batch is
never interleaved) and keeps the caller's event loop free. Namespaces are created by
unshare(2) on this thread. Its first job makes the lab's IX namespace and stays there: the IX
is the thread's home, to which it returns after each step into another namespace. (Without
root, a thread that left the host's namespace may not go back to it.)
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import PatchbayError
from ..futures import wait_future
from . import native

T = TypeVar("T")

_STOP = object()


class KernelWorker:
    def __init__(self, label: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name=f"patchbay-kernel-{label}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                fut, fn, args = item
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            native.close_home_netns_fd()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self.on_thread():
            # Already on the kernel thread (a job calling another): run inline.
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)
            return fut
        with self._lock:  # never behind the stop marker
            if self._stopped:
                raise PatchbayError("the lab is closed")
            self._queue.put((fut, fn, args))
        return fut

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the kernel thread and block until done."""
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the kernel thread; the caller's event loop stays free meanwhile."""
        return await wait_future(self.submit(fn, *args))

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(_STOP)
        if not self.on_thread():
            self._thread.join(timeout)
