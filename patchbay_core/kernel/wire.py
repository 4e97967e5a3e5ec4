"""Link conditions in the kernel: the C wire (userspace link emulator) through cffi, and the
netlink side of the netem backend (batches with IFB links, tc dumps)."""

from __future__ import annotations

import errno
import itertools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ..errors import KernelFeatureMissing, NetlinkError
from . import rtnl
from .native import errbuf, ffi, home_netns_fd, lib, text
from .rtnl import _put


@dataclass(frozen=True)
class WireParams:
    latency_us: int = 0
    jitter_us: int = 0
    loss_ppm: int = 0
    loss_corr_ppm: int = 0
    reorder_ppm: int = 0
    duplicate_ppm: int = 0
    corrupt_ppm: int = 0
    queue_ms: int = 0
    rate_bps: int = 0


@dataclass(frozen=True)
class WireStats:
    rx: int
    tx: int
    dropped_loss: int
    dropped_queue: int
    duplicated: int
    corrupted: int
    reordered: int
    send_errors: int
    queued: int


class Wire:
    """One direction of one link: reads a TAP inside `ns_fd`, sends out of `out_ifindex`.
    Its threads are named "pbwire" (reading, deciding) and "pbwire-tx" (sending, once
    traffic is heavy)."""

    def __init__(self, ns_fd: int, tap_name: str, out_ifindex: int, mtu: int, seed: int, node: str) -> None:
        err, errlen = errbuf()
        self._w = lib.pb_wire_new(ns_fd, home_netns_fd(), tap_name.encode(), out_ifindex, mtu,
                                  seed & 0xFFFFFFFFFFFFFFFF, err, errlen)
        if self._w == ffi.NULL:
            message = text(err)
            if "/dev/net/tun" in message:
                raise KernelFeatureMissing(
                    "TUN/TAP devices (/dev/net/tun) for the wire link emulator",
                    f"{node}: {message}. Load the tun module, or run as root (/dev/net/tun is often 0600)",
                )
            raise NetlinkError("start a wire", 5, node=node, detail=message)
        self.tap_ifindex = int(lib.pb_wire_tap_ifindex(self._w))

    def set(self, params: WireParams) -> None:
        p = ffi.new("struct pb_wire_params *")
        for name, value in vars(params).items():
            setattr(p, name, value)
        lib.pb_wire_set(self._w, p)

    def stats(self) -> WireStats:
        s = ffi.new("struct pb_wire_stats *")
        lib.pb_wire_stats(self._w, s)
        return WireStats(**{name: int(getattr(s, name)) for name in WireStats.__dataclass_fields__})

    def close(self) -> None:
        if self._w is not None:
            lib.pb_wire_free(self._w)
            self._w = None


# ---- the netem backend's batches ---------------------------------------------------------

def send_tc(rtnl_fd: int, ops: Sequence[object], node: str) -> None:
    """Like `rtnl.send_batch`, for link-condition ops: `netops` and `netem.IfbLink`. A kernel
    without sch_netem or IFB gets a KernelFeatureMissing that says what to install."""
    rtnl.send_batch(rtnl_fd, ops, node, put=_put_tc,
                    explain=lambda op, err, detail: _missing_feature(op, err, detail, node))


def _put_tc(batch: object, op: object) -> int:
    from ..netem import IfbLink

    if isinstance(op, IfbLink):
        return int(lib.pb_batch_link_kind(batch, b"ifb", op.name.encode(), op.ifindex, 1))
    return _put(batch, op)  # type: ignore[arg-type]


def _missing_feature(op: object, err: int, detail: str, node: str) -> KernelFeatureMissing | None:
    from ..netem import IfbLink
    from ..netops import Qdisc

    if isinstance(op, Qdisc) and op.kind == "netem" and op.add and err == errno.ENOENT and "kind" in detail:
        return KernelFeatureMissing(
            "sch_netem (the kernel's network emulator qdisc)",
            f"{node}: {op.describe()}: the kernel answered {detail!r}. Install your distribution's "
            "kernel modules package (e.g. linux-modules-extra) and `modprobe sch_netem`, or use "
            "link_backend='wire' (or 'auto'): the userspace wire works on any kernel with /dev/net/tun.",
        )
    if isinstance(op, IfbLink) and err == errno.EOPNOTSUPP:
        return KernelFeatureMissing(
            "ifb (intermediate functional block devices, for per-device downloads on netem)",
            f"{node}: {op.describe()}: {detail or 'unknown device type'}. `modprobe ifb` (CONFIG_IFB), "
            "or use link_backend='wire' (or 'auto').",
        )
    return None


# ---- tc dumps --------------------------------------------------------------------------------

RTM_NEWQDISC, RTM_GETQDISC, RTM_NEWTFILTER, RTM_GETTFILTER = 36, 38, 44, 46
TCA_KIND, TCA_OPTIONS, TCA_STATS2 = 1, 2, 7
TCA_STATS_BASIC, TCA_STATS_QUEUE = 1, 3
TCA_BPF_ACT, TCA_BPF_OPS = 1, 5
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_BPF_LD_W_ABS, _BPF_JEQ_K = 0x20, 0x15
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_MIRRED_PARMS = 1, 2, 2
_TCMSG = struct.Struct("=BxxxiIII")


@dataclass(frozen=True, slots=True)
class QdiscInfo:
    ifindex: int
    handle: int
    parent: int
    kind: str
    options: bytes
    bytes: int
    packets: int
    qlen: int
    drops: int
    requeues: int


@dataclass(frozen=True, slots=True)
class FilterInfo:
    prio: int
    protocol: int
    kind: str
    ipv4_dst: IPv4Address | None  # the destination it matches, if any
    target_ifindex: int  # where its mirred action redirects (0: none)
    ipv6_dst: IPv6Address | None = None


def _tc_dump(rtnl_fd: int, msg_type: int, ifindex: int, parent: int, node: str) -> bytes:
    out = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    rc = lib.pb_tc_dump(rtnl_fd, msg_type, ifindex, parent, out, out_len)
    if rc:
        raise NetlinkError("dump tc objects", -rc, node=node)
    try:
        return bytes(ffi.buffer(out[0], out_len[0]))
    finally:
        lib.pb_free(out[0])


def _messages(buf: bytes, mtype: int) -> Iterator[memoryview]:
    """The payloads of the dump's messages of type `mtype`."""
    return (body for kind, body in rtnl._messages(buf) if kind == mtype)


def _attrs(view: memoryview) -> dict[int, memoryview]:
    return rtnl._attrs(view, 0)


def _cstr(raw: memoryview | bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode()


def _kind(attrs: dict[int, memoryview]) -> str:
    return _cstr(attrs.get(TCA_KIND, b""))


def dump_qdiscs(rtnl_fd: int, node: str, ifindex: int = 0) -> list[QdiscInfo]:
    """The qdiscs of a namespace (of one interface when `ifindex`), with their counters."""
    out = []
    for body in _messages(_tc_dump(rtnl_fd, RTM_GETQDISC, ifindex, 0, node), RTM_NEWQDISC):
        _family, index, handle, parent, _info = _TCMSG.unpack_from(body)
        if ifindex and index != ifindex:
            continue
        a = _attrs(body[_TCMSG.size :])
        nbytes = packets = qlen = drops = requeues = 0
        if TCA_STATS2 in a:
            stats = _attrs(a[TCA_STATS2])
            if TCA_STATS_BASIC in stats:
                nbytes, packets = struct.unpack_from("=QI", stats[TCA_STATS_BASIC])
            if TCA_STATS_QUEUE in stats:
                qlen, _backlog, drops, requeues, _over = struct.unpack_from("=5I", stats[TCA_STATS_QUEUE])
        out.append(QdiscInfo(index, handle, parent, _kind(a), bytes(a.get(TCA_OPTIONS, b"")), nbytes, packets,
                             qlen, drops, requeues))
    return out


def _program_destination(ops: memoryview) -> tuple[IPv4Address | None, IPv6Address | None]:
    """The destination a redirect's classic BPF program compares (see csrc/rtnl.c): the word
    it loads from offset 30 (IPv4), or the four from 38 on (IPv6), each followed by a jeq."""
    program = [_SOCK_FILTER.unpack_from(ops, off) for off in range(0, len(ops), _SOCK_FILTER.size)]
    compared: dict[int, int] = {}
    for (code, _jt, _jf, k), (next_code, _njt, _njf, value) in itertools.pairwise(program):
        if code == _BPF_LD_W_ABS and next_code == _BPF_JEQ_K:
            compared[k] = value
    if 30 in compared:
        return IPv4Address(compared[30]), None
    if all(off in compared for off in (38, 42, 46, 50)):
        return None, IPv6Address(b"".join(struct.pack("!I", compared[off]) for off in (38, 42, 46, 50)))
    return None, None


def dump_filters(rtnl_fd: int, ifindex: int, parent: int, node: str) -> list[FilterInfo]:
    """The redirect filters (cls_bpf, with their destinations) under `parent` of one
    interface, e.g. clsact egress."""
    out = []
    for body in _messages(_tc_dump(rtnl_fd, RTM_GETTFILTER, ifindex, parent, node), RTM_NEWTFILTER):
        _family, _index, _handle, _parent, info = _TCMSG.unpack_from(body)
        a = _attrs(body[_TCMSG.size :])
        kind = _kind(a)
        if kind != "bpf" or TCA_OPTIONS not in a:
            continue
        opts = _attrs(a[TCA_OPTIONS])
        if TCA_BPF_OPS not in opts:
            continue  # the classifier's head, not a program
        dst, dst6 = _program_destination(opts[TCA_BPF_OPS])
        target = 0
        for act in _attrs(opts.get(TCA_BPF_ACT, memoryview(b""))).values():
            act_attrs = _attrs(act)
            if _cstr(act_attrs.get(TCA_ACT_KIND, b"")) == "mirred":
                parms = _attrs(act_attrs[TCA_ACT_OPTIONS])[TCA_MIRRED_PARMS]
                target = struct.unpack_from("=IIiiiiI", parms)[6]  # tc_gen (index..bindcnt), eaction, ifindex
        out.append(FilterInfo(prio=info >> 16, protocol=struct.unpack("!H", struct.pack("=H", info & 0xFFFF))[0],
                              kind=kind, ipv4_dst=dst, target_ifindex=target, ipv6_dst=dst6))
    return out
