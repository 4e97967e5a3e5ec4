"""A network namespace held by file descriptor, with its rtnetlink socket and nft context."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..netops import NetOp
from . import conntrack, native, rtnl

# Interface indexes we hand out ourselves, so one batch can create a link and configure it.
# Start well above what a fresh namespace may already hold (lo, fallback tunnel devices).
FIRST_IFINDEX = 16


class NetNs:
    """One network namespace. Closing it drops our references; the kernel removes the
    namespace (and every link, route and rule in it) when the last reference goes."""

    __slots__ = ("_ct_fd", "_next_ifindex", "_nft", "fd", "inode", "node", "rtnl_fd")

    def __init__(self, node: str, fd: int, rtnl_fd: int) -> None:
        self.node = node
        self.fd = fd
        self.rtnl_fd = rtnl_fd
        self.inode = os.fstat(fd).st_ino
        self._nft: native.NftContext | None = None
        self._ct_fd = -1
        self._next_ifindex = FIRST_IFINDEX

    @classmethod
    def create(cls, node: str, sysctls: Mapping[str, str], *, stay: bool = False) -> NetNs:
        """Make a namespace on the calling thread, configured from inside with `sysctls`.
        With stay=True the thread remains inside: the namespace becomes its home."""
        fd, rtnl_fd = native.netns_new(sysctls, node, stay=stay)
        return cls(node, fd, rtnl_fd)

    def alloc_ifindex(self) -> int:
        index = self._next_ifindex
        self._next_ifindex += 1
        return index

    def apply(self, ops: Sequence[NetOp]) -> None:
        rtnl.send_batch(self.rtnl_fd, ops, self.node)

    def write_sysctls(self, values: Mapping[str, str]) -> None:
        native.sysctl_write(self.fd, values, self.node)

    def read_sysctl(self, key: str) -> str:
        return native.sysctl_read(self.fd, key, self.node)

    def nft(self, command: str, *, json: bool = False, check_only: bool = False) -> str:
        if self._nft is None:
            self._nft = native.NftContext(self.fd, self.node)
        return self._nft.run(self.fd, command, json=json, check_only=check_only)

    def nft_start(self, command: str) -> native.PendingNft:
        """Start `command` as one transaction on a C thread of its own; `nft_finish` waits for
        it (and must, before this namespace closes)."""
        return native.PendingNft(self.fd, self.node, self._nft, command)

    def nft_finish(self, pending: native.PendingNft) -> str:
        try:
            return pending.finish()
        finally:
            if pending.opened is not None:
                if self._nft is None:
                    self._nft = pending.opened
                else:  # one was opened here meanwhile
                    pending.opened.close()

    def _ctnetlink(self) -> int:
        if self._ct_fd < 0:
            self._ct_fd = native.netlink_socket_in(self.fd, conntrack.NETLINK_NETFILTER, self.node)
        return self._ct_fd

    def conntrack(self) -> list[conntrack.ConntrackEntry]:
        return conntrack.dump(self._ctnetlink(), self.node)

    def flush_conntrack(self) -> None:
        conntrack.flush(self._ctnetlink(), self.node)

    def links(self) -> list[rtnl.LinkInfo]:
        return rtnl.dump_links(self.rtnl_fd, self.node)

    def addrs(self) -> list[rtnl.AddrInfo]:
        return rtnl.dump_addrs(self.rtnl_fd, self.node)

    def routes(self) -> list[rtnl.RouteInfo]:
        return rtnl.dump_routes(self.rtnl_fd, self.node)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self._nft is not None:
            self._nft.close()
            self._nft = None
        for fd in (self._ct_fd, self.rtnl_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.rtnl_fd = self._ct_fd = -1
