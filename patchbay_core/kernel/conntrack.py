"""Conntrack through ctnetlink: list and flush, parsed into plain records (no `conntrack`)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from ..errors import NetlinkError
from .native import ffi, lib
from .rtnl import _attrs, _messages

NETLINK_NETFILTER = 12
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT, CTA_MARK = 1, 2, 3, 4, 7, 8
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID = 1, 2, 3, 4
IPS_SEEN_REPLY, IPS_ASSURED, IPS_SRC_NAT, IPS_DST_NAT = 1 << 1, 1 << 2, 1 << 4, 1 << 5
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


@dataclass(frozen=True)
class Tuple:
    src: IPv4Address
    dst: IPv4Address
    sport: int
    dport: int


@dataclass(frozen=True)
class ConntrackEntry:
    proto: str
    original: Tuple
    reply: Tuple
    status: int
    timeout_s: int
    mark: int

    @property
    def src_nat(self) -> bool:
        return bool(self.status & IPS_SRC_NAT)

    @property
    def dst_nat(self) -> bool:
        return bool(self.status & IPS_DST_NAT)

    def describe(self) -> str:
        o, r = self.original, self.reply
        flags = [name for bit, name in ((IPS_SEEN_REPLY, "replied"), (IPS_ASSURED, "assured"),
                                        (IPS_SRC_NAT, "snat"), (IPS_DST_NAT, "dnat")) if self.status & bit]
        return (f"{self.proto:<5} {o.src}:{o.sport} -> {o.dst}:{o.dport}  reply {r.src}:{r.sport} -> "
                f"{r.dst}:{r.dport}  {','.join(flags) or '-'}  expires {self.timeout_s}s")


def _be16(v: memoryview) -> int:
    return int(struct.unpack("!H", v[:2])[0])


def _be32(v: memoryview) -> int:
    return int(struct.unpack("!I", v[:4])[0])


def _tuple(view: memoryview) -> tuple[str, Tuple]:
    a = _attrs(view, 0)
    ip = _attrs(a[CTA_TUPLE_IP], 0)
    proto = _attrs(a[CTA_TUPLE_PROTO], 0)
    num = proto[CTA_PROTO_NUM][0]
    sport = _be16(proto[CTA_PROTO_SRC_PORT]) if CTA_PROTO_SRC_PORT in proto else 0
    dport = _be16(proto[CTA_PROTO_DST_PORT]) if CTA_PROTO_DST_PORT in proto else 0
    if CTA_PROTO_ICMP_ID in proto:
        sport = dport = _be16(proto[CTA_PROTO_ICMP_ID])
    src = ip_address(bytes(ip[CTA_IP_V4_SRC]))
    dst = ip_address(bytes(ip[CTA_IP_V4_DST]))
    return PROTO_NAMES.get(num, str(num)), Tuple(src, dst, sport, dport)  # type: ignore[arg-type]


def parse(buf: bytes) -> list[ConntrackEntry]:
    entries = []
    for _mtype, body in _messages(buf):
        a = _attrs(body, 4)  # after struct nfgenmsg
        if CTA_TUPLE_ORIG not in a or CTA_TUPLE_REPLY not in a:
            continue
        orig_ip = _attrs(_attrs(a[CTA_TUPLE_ORIG], 0)[CTA_TUPLE_IP], 0)
        if CTA_IP_V4_SRC not in orig_ip:
            continue  # IPv6 entries come with the IPv6 work
        proto, original = _tuple(a[CTA_TUPLE_ORIG])
        _, reply = _tuple(a[CTA_TUPLE_REPLY])
        entries.append(ConntrackEntry(
            proto=proto, original=original, reply=reply,
            status=_be32(a[CTA_STATUS]) if CTA_STATUS in a else 0,
            timeout_s=_be32(a[CTA_TIMEOUT]) if CTA_TIMEOUT in a else 0,
            mark=_be32(a[CTA_MARK]) if CTA_MARK in a else 0,
        ))
    return entries


def dump(ct_fd: int, node: str) -> list[ConntrackEntry]:
    out = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    rc = lib.pb_ct_dump(ct_fd, socket.AF_INET, out, out_len)
    if rc:
        raise NetlinkError("list conntrack entries", -rc, node=node)
    try:
        return parse(bytes(ffi.buffer(out[0], out_len[0])))
    finally:
        lib.pb_free(out[0])


def flush(ct_fd: int, node: str) -> None:
    rc = lib.pb_ct_flush(ct_fd, socket.AF_INET)
    if rc:
        raise NetlinkError("flush conntrack", -rc, node=node)
