"""rtnetlink: send a list of `netops` as one checked batch; parse dumps into plain records."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from ..errors import NetlinkError
from ..netops import (
    CLSACT_EGRESS,
    Addr,
    Bridge,
    IPAddress,
    LinkDel,
    LinkSet,
    Macvlan,
    NetOp,
    Qdisc,
    Redirect,
    Route,
    VethPair,
)
from .native import errbuf, ffi, lib, rtnl_dump, text

RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26


def _put(batch: object, op: NetOp) -> int:
    match op:
        case VethPair():
            return lib.pb_batch_veth(  # type: ignore[no-any-return]
                batch, op.name.encode(), op.ifindex, -1, op.master, op.mtu, 1,
                op.peer_name.encode(), op.peer_ifindex, op.peer_ns.fd, op.peer_mtu, 0,
            )
        case Macvlan():
            return lib.pb_batch_macvlan(  # type: ignore[no-any-return]
                batch, op.name.encode(), op.ifindex, op.ns.fd, op.lower, op.mtu, op.mac or ffi.NULL
            )
        case Bridge():
            return lib.pb_batch_bridge(batch, op.name.encode(), op.ifindex, op.mtu, 1)  # type: ignore[no-any-return]
        case LinkSet():
            up = -1 if op.up is None else int(op.up)
            master = -1 if op.master is None else op.master
            return lib.pb_batch_link_set(batch, op.ifindex, up, op.mtu, master)  # type: ignore[no-any-return]
        case LinkDel():
            return lib.pb_batch_link_del(batch, op.ifindex)  # type: ignore[no-any-return]
        case Addr():
            family = socket.AF_INET6 if op.ip.version == 6 else socket.AF_INET
            return lib.pb_batch_addr(  # type: ignore[no-any-return]
                batch, int(op.add), family, op.ifindex, op.ip.packed, op.prefixlen, int(op.ip.version == 6 and op.nodad)
            )
        case Route():
            v6 = op.v6 or (op.dst is not None and op.dst.version == 6) or (op.via is not None and op.via.version == 6)
            family = socket.AF_INET6 if v6 else socket.AF_INET
            dst = op.dst.network_address.packed if op.dst is not None else ffi.NULL
            dst_len = op.dst.prefixlen if op.dst is not None else 0
            via = op.via.packed if op.via is not None else ffi.NULL
            mode = 0 if not op.add else 2 if op.replace else 1
            return lib.pb_batch_route(  # type: ignore[no-any-return]
                batch, mode, family, dst, dst_len, via, op.oif, op.metric, int(op.blackhole)
            )
        case Qdisc():
            return lib.pb_batch_qdisc(  # type: ignore[no-any-return]
                batch, int(op.add), int(op.replace), op.ifindex, op.handle, op.parent,
                op.kind.encode(), op.options or ffi.NULL, len(op.options),
            )
        case Redirect():
            addr = op.ipv4_dst if op.ipv4_dst is not None else op.ipv6_dst
            if op.ipv4_dst is not None and op.ipv6_dst is not None:
                raise ValueError("a Redirect matches one destination: make one for each address")
            dst = addr.packed if addr is not None else ffi.NULL
            return lib.pb_batch_redirect(  # type: ignore[no-any-return]
                batch, int(op.add), op.ifindex, CLSACT_EGRESS, op.prio, dst, len(addr.packed) if addr else 0,
                op.target_ifindex,
            )
    raise TypeError(f"not a netlink op: {op!r}")


def send_batch(rtnl_fd: int, ops: Sequence[Any], node: str, *, put: Callable[[Any, Any], int] | None = None,
               explain: Callable[[Any, int, str], Exception | None] | None = None) -> None:
    """Send `ops` in order as one batch and check every ack.

    Raises NetlinkError naming the first failed operation, the node and the kernel's text.
    `put` adds an op to the batch (default: the `netops` encoder); `explain(op, errno,
    kernel_text)` may turn a failure into a better exception.
    """
    if not ops:
        return
    add = put or _put
    batch = lib.pb_batch_new()
    if batch == ffi.NULL:
        raise MemoryError("rtnetlink batch")
    try:
        for op in ops:
            rc = add(batch, op)
            if rc < 0:
                raise NetlinkError(op.describe(), -rc, node=node)
        failed = ffi.new("int *")
        ext, extlen = errbuf()
        rc = lib.pb_batch_send(batch, rtnl_fd, failed, ext, extlen)
        if rc:
            index = failed[0]
            op = ops[index] if 0 <= index < len(ops) else None
            detail = text(ext)
            better = explain(op, -rc, detail) if explain is not None else None
            if better is not None:
                raise better
            raise NetlinkError(op.describe() if op is not None else "rtnetlink batch", -rc, node=node, detail=detail)
    finally:
        lib.pb_batch_free(batch)


# ---- dumps -------------------------------------------------------------------------------

_NLMSG_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


def _messages(buf: bytes) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(buf)
    off = 0
    while off + _NLMSG_HDR.size <= len(view):
        length, mtype, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(view, off)
        if length < _NLMSG_HDR.size:
            break
        yield mtype, view[off + _NLMSG_HDR.size : off + length]
        off += (length + 3) & ~3


def _attrs(view: memoryview, off: int) -> dict[int, memoryview]:
    out: dict[int, memoryview] = {}
    while off + _NLA.size <= len(view):
        length, atype = _NLA.unpack_from(view, off)
        if length < _NLA.size:
            break
        out[atype & 0x3FFF] = view[off + _NLA.size : off + length]
        off += (length + 3) & ~3
    return out


def _cstr(v: memoryview) -> str:
    return bytes(v).split(b"\0", 1)[0].decode(errors="replace")


def _u32(v: memoryview) -> int:
    return int(struct.unpack_from("=I", v)[0])


@dataclass(frozen=True, slots=True)
class LinkInfo:
    ifindex: int
    name: str
    up: bool
    mtu: int
    master: int
    kind: str
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, slots=True)
class AddrInfo:
    ifindex: int
    ip: IPAddress
    prefixlen: int
    scope: int
    flags: int = 0  # IFA_F_*: e.g. IFA_F_TENTATIVE while IPv6 DAD runs

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)


@dataclass(frozen=True, slots=True)
class RouteInfo:
    dst: str
    via: IPAddress | None
    oif: int
    table: int
    metric: int
    family: int
    proto: int = 0  # RTPROT_*: RTPROT_RA (9) for routes learnt from router advertisements


IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_STATS64 = 3, 4, 10, 18, 23
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_TENTATIVE, IFA_F_DADFAILED = 0x40, 0x08
RTPROT_RA = 9
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
IFF_UP = 1


def dump_links(rtnl_fd: int, node: str) -> list[LinkInfo]:
    links = []
    for mtype, body in _messages(rtnl_dump(rtnl_fd, RTM_GETLINK, socket.AF_UNSPEC, node)):
        if mtype != 16:  # RTM_NEWLINK
            continue
        _family, _type, index, flags, _change = _IFINFO.unpack_from(body)
        a = _attrs(body, _IFINFO.size)
        kind = ""
        if IFLA_LINKINFO in a:
            info = _attrs(a[IFLA_LINKINFO], 0)
            kind = _cstr(info[1]) if 1 in info else ""
        stats = struct.unpack_from("=4Q", a[IFLA_STATS64]) if IFLA_STATS64 in a else (0, 0, 0, 0)
        links.append(
            LinkInfo(
                ifindex=index,
                name=_cstr(a[IFLA_IFNAME]) if IFLA_IFNAME in a else "",
                up=bool(flags & IFF_UP),
                mtu=_u32(a[IFLA_MTU]) if IFLA_MTU in a else 0,
                master=_u32(a[IFLA_MASTER]) if IFLA_MASTER in a else 0,
                kind=kind,
                rx_packets=stats[0], tx_packets=stats[1], rx_bytes=stats[2], tx_bytes=stats[3],
            )
        )
    return links


def dump_addrs(rtnl_fd: int, node: str) -> list[AddrInfo]:
    out = []
    for mtype, body in _messages(rtnl_dump(rtnl_fd, RTM_GETADDR, socket.AF_UNSPEC, node)):
        if mtype != 20:  # RTM_NEWADDR
            continue
        family, prefixlen, flags, scope, index = _IFADDR.unpack_from(body)
        a = _attrs(body, _IFADDR.size)
        if IFA_FLAGS in a:
            flags = _u32(a[IFA_FLAGS])
        raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
        if raw is None:
            continue
        ip: IPAddress = IPv4Address(bytes(raw)) if family == socket.AF_INET else IPv6Address(bytes(raw))
        out.append(AddrInfo(ifindex=index, ip=ip, prefixlen=prefixlen, scope=scope, flags=flags))
    return out


def dump_routes(rtnl_fd: int, node: str, family: int = socket.AF_UNSPEC) -> list[RouteInfo]:
    out = []
    for mtype, body in _messages(rtnl_dump(rtnl_fd, RTM_GETROUTE, family, node)):
        if mtype != 24:  # RTM_NEWROUTE
            continue
        fam, dst_len, _src_len, _tos, table, proto, _scope, _rtype, _flags = _RTMSG.unpack_from(body)
        a = _attrs(body, _RTMSG.size)
        if RTA_TABLE in a:
            table = _u32(a[RTA_TABLE])
        dst = str(ip_network(f"{ip_address(bytes(a[RTA_DST]))}/{dst_len}")) if RTA_DST in a else "default"
        out.append(
            RouteInfo(
                dst=dst,
                via=ip_address(bytes(a[RTA_GATEWAY])) if RTA_GATEWAY in a else None,
                oif=_u32(a[RTA_OIF]) if RTA_OIF in a else 0,
                table=table,
                metric=_u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0,
                family=fam,
                proto=proto,
            )
        )
    return out
