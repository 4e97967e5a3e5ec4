"""Calls into the compiled C core with Python errors and Python types."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping

from .._native import ffi, lib  # type: ignore[import-not-found]
from ..errors import NetlinkError, NftError

__all__ = ["ffi", "home_netns_fd", "lib", "sysctl_text"]

_ERRLEN = 512


class _ThreadHome(threading.local):
    fd: int = -1


_home = _ThreadHome()


def home_netns_fd() -> int:
    """The network namespace the calling thread lives in, opened once per thread.

    C functions that step into a lab namespace come back to this one.
    """
    if _home.fd < 0:
        fd = lib.pb_open_thread_netns()
        if fd < 0:
            raise NetlinkError("open /proc/thread-self/ns/net", -fd)
        _home.fd = fd
    return _home.fd


def close_home_netns_fd() -> None:
    """Forget the calling thread's home fd (call before the thread ends)."""
    if _home.fd >= 0:
        os.close(_home.fd)
        _home.fd = -1


def sysctl_text(values: Mapping[str, str]) -> bytes:
    """`{"net.ipv4.ip_forward": "1"}` -> b"net/ipv4/ip_forward=1\\n" for the C core."""
    return "".join(f"{key.replace('.', '/')}={value}\n" for key, value in values.items()).encode()


def errbuf() -> tuple[object, int]:
    return ffi.new("char[]", _ERRLEN), _ERRLEN


def text(buf: object) -> str:
    return ffi.string(buf).decode(errors="replace")  # type: ignore[no-any-return]


def netns_new(sysctls: Mapping[str, str], node: str, *, stay: bool = False) -> tuple[int, int]:
    """Create a namespace configured with `sysctls`; returns (namespace fd, rtnetlink fd).

    With stay=True the calling thread remains inside it: it becomes the thread's home.
    """
    ns_fd = ffi.new("int *")
    rtnl_fd = ffi.new("int *")
    err, errlen = errbuf()
    home = -1 if stay else home_netns_fd()
    rc = lib.pb_netns_new(home, sysctl_text(sysctls), ns_fd, rtnl_fd, err, errlen)
    if rc:
        raise NetlinkError("create network namespace", -rc, node=node, detail=text(err))
    if stay:
        close_home_netns_fd()  # the thread's home changed
    return ns_fd[0], rtnl_fd[0]


def mntns_new(binds: Mapping[str, str], node: str) -> int:
    """A mount namespace in which each `source: target` file is bind-mounted; returns its fd."""
    fd = ffi.new("int *")
    err, errlen = errbuf()
    text_binds = "".join(f"{src}={dst}\n" for src, dst in binds.items()).encode()
    rc = lib.pb_mntns_new(text_binds, fd, err, errlen)
    if rc:
        raise NetlinkError("create the node's mount namespace", -rc, node=node, detail=text(err))
    return int(fd[0])


def mntns_enter(fd: int, node: str) -> None:
    """Move the calling thread into mount namespace `fd`, keeping its working directory."""
    rc = lib.pb_mntns_enter(fd)
    if rc:
        raise NetlinkError("enter the node's mount namespace", -rc, node=node)


def sysctl_write(ns_fd: int, values: Mapping[str, str], node: str) -> None:
    err, errlen = errbuf()
    rc = lib.pb_sysctl_write(ns_fd, home_netns_fd(), sysctl_text(values), err, errlen)
    if rc:
        raise NetlinkError("write sysctl", -rc, node=node, detail=text(err))


def sysctl_read(ns_fd: int, key: str, node: str) -> str:
    out = ffi.new("char[]", 4096)
    rc = lib.pb_sysctl_read(ns_fd, home_netns_fd(), key.replace(".", "/").encode(), out, 4096)
    if rc:
        raise NetlinkError(f"read sysctl {key}", -rc, node=node)
    return text(out).strip()


def netlink_socket_in(ns_fd: int, protocol: int, node: str) -> int:
    fd = lib.pb_netlink_socket_in(ns_fd, home_netns_fd(), protocol)
    if fd < 0:
        raise NetlinkError(f"open netlink socket (protocol {protocol})", -fd, node=node)
    return int(fd)


def socket_in(ns_fd: int, family: int, kind: int, proto: int, node: str) -> int:
    """A socket of the namespace `ns_fd`, made from a thread living elsewhere."""
    fd = lib.pb_socket_in(ns_fd, home_netns_fd(), family, kind, proto)
    if fd < 0:
        raise NetlinkError(f"open socket ({family}, {kind}, {proto}) in the namespace", -fd, node=node)
    return int(fd)


def rtnl_dump(rtnl_fd: int, msg_type: int, family: int, node: str) -> bytes:
    out = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    rc = lib.pb_rtnl_dump(rtnl_fd, msg_type, family, out, out_len)
    if rc:
        raise NetlinkError(f"rtnetlink dump (type {msg_type})", -rc, node=node)
    try:
        return bytes(ffi.buffer(out[0], out_len[0]))
    finally:
        lib.pb_free(out[0])


class NftContext:
    """A libnftables context living in one namespace."""

    def __init__(self, ns_fd: int, node: str) -> None:
        self._node = node
        err = ffi.new("int *")
        self._ctx = lib.pb_nft_new(ns_fd, home_netns_fd(), err)
        if self._ctx == ffi.NULL:
            raise NftError("open a libnftables context in the namespace", err[0], node=node)

    @classmethod
    def adopt(cls, ctx: object, node: str) -> NftContext:
        """The context a PendingNft's thread opened."""
        context = cls.__new__(cls)
        context._node, context._ctx = node, ctx
        return context

    def run(self, ns_fd: int, command: str, *, json: bool = False, check_only: bool = False) -> str:
        """Run `command` as one transaction; check_only parses and validates without applying."""
        out = ffi.new("char **")
        err = ffi.new("char **")
        rc = lib.pb_nft_run(self._ctx, ns_fd, home_netns_fd(), command.encode(), int(json), int(check_only),
                            out, err)
        return _nft_result(rc, out[0], err[0], command, self._node)

    def close(self) -> None:
        if self._ctx is not None:
            lib.pb_nft_free(self._ctx)
            self._ctx = None


class PendingNft:
    """One nft transaction running on a C thread of its own (pb_nft_start), which never waits
    for the GIL: it runs at once, whatever Python code the caller goes on with. `finish()`
    must be called, once, before the namespace's fd closes."""

    def __init__(self, ns_fd: int, node: str, context: NftContext | None, command: str) -> None:
        self._node = node
        self._command = command
        self._had_context = context is not None
        self.opened: NftContext | None = None
        err = ffi.new("int *")
        ctx = context._ctx if context is not None else ffi.NULL
        self._job = lib.pb_nft_start(ctx, ns_fd, home_netns_fd(), command.encode(), err)
        if self._job == ffi.NULL:
            raise NftError("start an nft thread", err[0], node=node)

    def finish(self) -> str:
        """Wait for the transaction; nft's output, or NftError as `NftContext.run` raises.
        Either way a context the thread opened is left in `opened`, the caller's to keep."""
        job, self._job = self._job, None
        assert job is not None, "finish() called twice"
        ctx = ffi.new("struct pb_nft **")
        out = ffi.new("char **")
        err = ffi.new("char **")
        rc = lib.pb_nft_finish(job, ctx, out, err)
        if ctx[0] == ffi.NULL:
            raise NftError("open a libnftables context in the namespace", -rc, node=self._node)
        if not self._had_context:
            self.opened = NftContext.adopt(ctx[0], self._node)
        return _nft_result(rc, out[0], err[0], self._command, self._node)


def _nft_result(rc: int, out: object, err: object, command: str, node: str) -> str:
    output = _take(out)
    # Text runs from a memfd (see csrc/nft.c); name its lines plainly.
    message = re.sub(r"/proc/self/fd/\d+:", "line ", _take(err))
    if rc:
        first_line = command.strip().splitlines()[0] if command.strip() else "(empty)"
        raise NftError(f"nft transaction starting {first_line!r}", -rc, node=node, detail=message.strip())
    return output


def _take(ptr: object) -> str:
    if ptr == ffi.NULL:
        return ""
    try:
        return ffi.string(ptr).decode(errors="replace")  # type: ignore[no-any-return]
    finally:
        lib.pb_free(ptr)
