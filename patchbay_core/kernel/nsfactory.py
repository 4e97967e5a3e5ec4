"""Namespaces made ahead of demand, on a thread of their own.

Creating a network namespace costs about half a millisecond of kernel time, as much as the
netlink work that wires a node. A factory thread keeps a couple of fresh namespaces ready so
the lab's kernel thread finds one waiting and the two kinds of work overlap on two cores.
Spares that were never used are closed with the lab.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping

from ..errors import NetlinkError, PatchbayError
from . import native
from .namespace import NetNs

CLONE_NEWNET = 0x40000000


class NamespaceFactory:
    def __init__(self, label: str, home_ns_fd: int, base_sysctls: Mapping[str, str], depth: int = 2) -> None:
        self._home_ns_fd = home_ns_fd
        self._base = dict(base_sysctls)
        self._depth = depth
        self._ready: collections.deque[NetNs] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._error: PatchbayError | None = None
        self._thread = threading.Thread(target=self._main, name=f"patchbay-nsfactory-{label}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            # Live in the lab's IX: without root a thread may not return to the host's namespace.
            rc = native.lib.pb_setns(self._home_ns_fd, CLONE_NEWNET)
            if rc:
                raise NetlinkError("namespace factory: enter the lab's IX namespace", -rc)
            while True:
                with self._cond:
                    while not self._stopped and len(self._ready) >= self._depth:
                        self._cond.wait()
                    if self._stopped:
                        return
                ns = NetNs.create("(spare)", self._base)
                with self._cond:
                    self._ready.append(ns)
                    self._cond.notify_all()
        except BaseException as exc:  # whatever it is, take() must not wait for it forever
            with self._cond:
                self._error = exc if isinstance(exc, PatchbayError) else PatchbayError(f"namespace factory: {exc!r}")
                self._cond.notify_all()
        finally:
            native.close_home_netns_fd()

    def take(self, node: str, sysctls: Mapping[str, str]) -> NetNs:
        """A fresh namespace for `node`, with `sysctls` (beyond the base ones) written."""
        with self._cond:
            while not self._ready and self._error is None and not self._stopped and self._thread.is_alive():
                self._cond.wait(0.5)
            ns = self._ready.popleft() if self._ready else None
            self._cond.notify_all()
        if ns is None:
            # The factory failed or stopped: make one here, so the caller sees the real error.
            return NetNs.create(node, {**self._base, **sysctls})
        ns.node = node
        extra = {k: v for k, v in sysctls.items() if self._base.get(k) != v}
        if extra:
            try:
                ns.write_sysctls(extra)
            except BaseException:
                ns.close()
                raise
        return ns

    def spare_inodes(self) -> set[int]:
        """Inodes of the namespaces waiting to be taken, once the factory is idle (for leak
        checks: no namespace is half-made while they are counted)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._ready) >= self._depth or self._stopped or self._error, 10)
            return {ns.inode for ns in self._ready}

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(10)
        with self._cond:
            while self._ready:
                self._ready.popleft().close()
