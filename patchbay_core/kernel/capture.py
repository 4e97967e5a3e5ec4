"""Packet capture in the C core (csrc/capture.c): one interface of one namespace into a pcapng
file, written by a C thread ("pbcapture"), both directions, readable while it runs."""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from ..errors import NetlinkError, TopologyError
from .native import errbuf, ffi, home_netns_fd, lib, text

DEFAULT_SNAPLEN = 262144
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101


class PacketCapture:
    """A running capture: `PacketCapture.start(ns_fd, "eth0", "out.pcapng")`, then `.stop()`.

    `packets` counts the packets in the file so far, `dropped` those the kernel could not
    hand over (the ring was full: the file system or the CPU could not keep up)."""

    def __init__(self, handle: object, path: str, ifname: str, node: str | None) -> None:
        self._c = handle
        self._lock = threading.Lock()
        self._final: tuple[int, int, int, int, int] | None = None
        self.path = path
        self.ifname = ifname
        self.node = node
        self.linktype = int(lib.pb_capture_linktype(handle))

    @classmethod
    def start(cls, ns_fd: int, ifname: str, path: str | os.PathLike[str], snaplen: int = DEFAULT_SNAPLEN,
              *, node: str | None = None) -> PacketCapture:
        """Start capturing `ifname` of the namespace `ns_fd` into `path` (truncated if it
        exists). Raises TopologyError when the namespace has no such interface."""
        if not 0 < snaplen <= 1 << 20:
            raise ValueError(f"snaplen {snaplen} is out of range (1 .. {1 << 20})")
        where = f"{node}: " if node else ""
        if not ifname or len(ifname.encode()) > 15 or "/" in ifname:
            raise TopologyError(f"{ifname!r} is not an interface name (1 to 15 bytes, no '/')", node=node,
                                field="iface")
        err, errlen = errbuf()
        fspath = os.fspath(path)
        handle = lib.pb_capture_start(ns_fd, home_netns_fd(), ifname.encode(), os.fsencode(fspath), snaplen,
                                      err, errlen)
        if handle == ffi.NULL:
            message = text(err)
            if message.startswith("no interface named"):
                raise TopologyError(f"cannot capture {ifname!r}: {message}", node=node, field="iface")
            if message.startswith("open ") or message.startswith("write "):
                raise OSError(errno.EIO, f"{where}capture {ifname}: {message}")
            raise NetlinkError(f"start a packet capture on {ifname}", errno.EIO, node=node, detail=message)
        return cls(handle, fspath, ifname, node)

    def _stats(self) -> tuple[int, int, int, int, int]:
        with self._lock:
            if self._final is not None:
                return self._final
            s = ffi.new("struct pb_capture_stats *")
            lib.pb_capture_stats(self._c, s)
            return int(s.packets), int(s.bytes), int(s.dropped), int(s.write_errors), int(s.last_errno)

    @property
    def packets(self) -> int:
        return self._stats()[0]

    @property
    def bytes(self) -> int:
        return self._stats()[1]

    @property
    def dropped(self) -> int:
        return self._stats()[2]

    @property
    def running(self) -> bool:
        return self._final is None

    def stop(self) -> None:
        """Write every packet the kernel handed over, close the file and the socket (which
        releases the namespace). Safe to call twice. Raises OSError when writes failed."""
        with self._lock:
            if self._final is not None:
                return
            rc = int(lib.pb_capture_stop(self._c))
            s = ffi.new("struct pb_capture_stats *")
            lib.pb_capture_stats(self._c, s)
            self._final = (int(s.packets), int(s.bytes), int(s.dropped), int(s.write_errors), int(s.last_errno))
            lib.pb_capture_free(self._c)
            self._c = None
        if rc:
            raise OSError(-rc, f"capture {self.ifname} into {self.path}: {os.strerror(-rc)} "
                          f"({self._final[3]} write(s) failed; the file misses those packets)")

    def __del__(self) -> None:
        # A capture nobody stopped must not keep its thread (and the namespace) forever.
        if getattr(self, "_final", True) is None:
            with contextlib.suppress(Exception):
                self.stop()

    def __repr__(self) -> str:
        state = "running" if self._final is None else "stopped"
        return f"<PacketCapture {self.ifname} -> {self.path} {state}, {self.packets} packets>"
