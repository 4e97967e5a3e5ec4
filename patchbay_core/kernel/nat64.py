"""The C NAT64 translator (csrc/nat64.c) through cffi.

A `Nat64Translator` is an engine: configuration, a bounded binding table, counters. Drive it
packet by packet with `process()` (tests, tools: no namespace, your clock), or `start()` its
thread over a TUN inside a router namespace (the fast path: no Python per packet). How a
router wires the TUN (routes, nft steering, sysctls) is in `patchbay_core.nat64`'s docstring;
`start()` sets the TUN's sysctls itself.

    tr = Nat64Translator(Nat64Config(pool4=(wan_ip,)), node="isp")
    ifindex = tr.start(router_ns.fd)          # TUN "nat64", thread running
    router_ns.apply(tun_routes(prefix, ifindex))
    router_ns.nft(steering_ruleset(tr.config, "wan"))
    ...
    tr.counters()["translated.v6_to_v4"], tr.bindings()
    tr.close()                                # thread stopped, TUN gone

Close the translator before expecting the router's namespace to go: the TUN's fd holds a
reference to it (as any socket made inside a namespace does).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType

from ..errors import KernelFeatureMissing, NetlinkError, PatchbayError
from ..nat64 import Nat64Config, tun_sysctls
from .native import errbuf, ffi, home_netns_fd, lib, sysctl_text, text

__all__ = ["Nat64Binding", "Nat64Config", "Nat64Result", "Nat64Translator", "now_ms"]

VNET_HDR_LEN = 10
_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
_TCP_STATES = {0: "opening", 1: "established", 2: "closing"}
# Room for what one packet can become: a 64 KiB packet cut into IPv6 fragments, or split in
# two GSO packets, each with a virtio-net header.
_OUT_CAP = 2 * 65600 + 64 * 64

_COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.pb_nat64_counter_name(i)).decode() for i in range(lib.pb_nat64_counter_count())
)
_REASON_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.pb_nat64_reason_name(i)).decode() for i in range(lib.pb_nat64_reason_count())
)


def now_ms() -> int:
    """The translator thread's clock (CLOCK_MONOTONIC, milliseconds)."""
    return int(lib.pb_nat64_now_ms())


@dataclass(frozen=True)
class Nat64Binding:
    """One binding: the v6 flow (address, port or echo identifier) and the v4 address/port it
    is mapped to; remote is the last IPv4 peer; expires_s from the time asked."""

    proto: str
    v6: tuple[IPv6Address, int]
    v4: tuple[IPv4Address, int]
    remote: tuple[IPv4Address, int]
    expires_s: float
    tcp_state: str | None


@dataclass(frozen=True)
class Nat64Result:
    """What one packet became: the packets to send (translated, IPv6 fragments of it, or the
    ICMP error the translator answers with) and why the input was dropped (None: translated).
    With vnet=True each packet begins with its 10-byte virtio-net header."""

    packets: list[bytes]
    reason: str | None


def _split(buf: bytes, vnet: bool) -> list[bytes]:
    """Cut the C side's concatenated output into packets by their own IP length fields."""
    out = []
    pos = 0
    hdr = VNET_HDR_LEN if vnet else 0
    while pos + hdr < len(buf):
        ip = pos + hdr
        if buf[ip] >> 4 == 6:
            length = 40 + int.from_bytes(buf[ip + 4 : ip + 6], "big")
        else:
            length = int.from_bytes(buf[ip + 2 : ip + 4], "big")
            if length == 0:  # only in a GSO packet over 64 KiB, which is never emitted
                length = len(buf) - ip
        out.append(bytes(buf[pos : ip + length]))
        pos = ip + length
    return out


class Nat64Translator:
    """A stateful NAT64 engine (RFC 6146 bindings, RFC 7915 translation)."""

    def __init__(self, config: Nat64Config, *, node: str = "nat64") -> None:
        self.config = config
        self.node = node
        c = ffi.new("struct pb_nat64_config *")
        c.prefix = list(config.prefix.network_address.packed)
        c.prefix_len = config.prefix.prefixlen
        c.pool4 = list(b"".join(a.packed for a in config.pool4).ljust(64, b"\0"))
        c.pool4_count = len(config.pool4)
        if config.self6 is not None:
            c.self6 = list(IPv6Address(config.self6).packed)
        c.udp_min, c.udp_max = config.udp_ports
        c.tcp_min, c.tcp_max = config.tcp_ports
        c.icmp_min, c.icmp_max = config.icmp_ids
        c.udp_timeout_s = config.udp_timeout
        c.tcp_est_timeout_s = config.tcp_established_timeout
        c.tcp_trans_timeout_s = config.tcp_transitory_timeout
        c.icmp_timeout_s = config.icmp_timeout
        c.max_bindings = config.max_bindings
        c.mtu4 = config.mtu4
        c.mtu6 = config.mtu6
        c.decrement_ttl = int(config.decrement_ttl)
        err, errlen = errbuf()
        engine = lib.pb_nat64_new(c, err, errlen)
        if engine == ffi.NULL:
            raise PatchbayError(f"{node}: NAT64 translator: {text(err)}")
        self._e = engine
        self._out = ffi.new("uint8_t[]", _OUT_CAP)
        self._reason = ffi.new("int *")
        self._out_lock = threading.Lock()  # the C engine locks itself; this guards _out
        self.tun_ifindex: int | None = None
        self.tun_name: str | None = None

    def _engine(self) -> object:
        if self._e is None:
            raise PatchbayError(f"{self.node}: the NAT64 translator is closed")
        return self._e

    # ---- direct calls ------------------------------------------------------------------

    def process(self, packet: bytes, now_ms: int, *, vnet: bool = False) -> Nat64Result:
        """Translate one IP packet at time now_ms (ms, any monotonic origin)."""
        with self._out_lock:
            n = lib.pb_nat64_process(self._engine(), packet, len(packet), self._out, _OUT_CAP, now_ms, int(vnet),
                                     self._reason)
            reason = int(self._reason[0])
            packets = _split(bytes(ffi.buffer(self._out, n)), vnet) if n > 0 else []
        return Nat64Result(packets, None if reason == 0 else _REASON_NAMES[reason])

    def process_batch(self, packets: list[bytes], now_ms: int) -> tuple[list[bytes], list[str | None]]:
        """Translate packets as the thread does one read round: each input and output begins
        with its virtio-net header, and consecutive UDP datagrams of one flow (one size, the
        last may be shorter) leave as one UDP GSO packet. Returns (outputs, reason per input)."""
        if not packets:
            return [], []
        lens = ffi.new("uint32_t[]", [len(p) for p in packets])
        reasons = ffi.new("int[]", len(packets))
        cap = sum(len(p) for p in packets) * 2 + _OUT_CAP
        out = ffi.new("uint8_t[]", cap)
        n = lib.pb_nat64_process_batch(self._engine(), b"".join(packets), lens, len(packets), out, cap, now_ms,
                                       reasons)
        if n < 0:
            raise PatchbayError(f"{self.node}: NAT64 batch output did not fit ({n})")
        verdicts = [None if reasons[i] == 0 else _REASON_NAMES[reasons[i]] for i in range(len(packets))]
        return _split(bytes(ffi.buffer(out, n)), True), verdicts

    def expire(self, now_ms: int | None = None) -> int:
        """Remove the bindings expired at now_ms (default: the thread's clock); how many."""
        return int(lib.pb_nat64_expire(self._engine(), now_ms if now_ms is not None else lib.pb_nat64_now_ms()))

    def set_timeouts(self, *, udp: int | None = None, tcp_established: int | None = None,
                     tcp_transitory: int | None = None, icmp: int | None = None) -> None:
        """New binding lifetimes in seconds (None keeps one); they apply from the next
        packet of each binding."""
        for value in (udp, tcp_established, tcp_transitory, icmp):
            if value is not None and value < 1:
                raise ValueError("NAT64 timeouts must be at least 1 s")
        lib.pb_nat64_set_timeouts(self._engine(), udp or 0, tcp_established or 0, tcp_transitory or 0, icmp or 0)

    # ---- observation -------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Every counter by name: "translated.v6_to_v4", "translated.v4_to_v6",
        "dropped.<reason>", "bindings" (current), "bindings.max", "icmp_errors.sent", ..."""
        values = ffi.new("uint64_t[]", len(_COUNTER_NAMES))
        n = lib.pb_nat64_counters(self._engine(), values, len(_COUNTER_NAMES))
        return {_COUNTER_NAMES[i]: int(values[i]) for i in range(n)}

    def router_counters(self) -> dict[str, int]:
        """The counters as a router reports them: "nat64.translated" (both directions),
        "nat64.dropped.<reason>" (non-zero ones), "nat64.<name>" for the rest."""
        counters = self.counters()
        out = {"nat64.translated": counters["translated.v6_to_v4"] + counters["translated.v4_to_v6"]}
        for name, value in counters.items():
            if not name.startswith("dropped.") or value:
                out[f"nat64.{name}"] = value
        return out

    def bindings(self, now_ms: int | None = None) -> list[Nat64Binding]:
        """The live bindings (diagnostics), expiry measured from now_ms (default: the clock)."""
        engine = self._engine()
        when = now_ms if now_ms is not None else lib.pb_nat64_now_ms()
        count = int(lib.pb_nat64_bindings(engine, when, ffi.NULL, 0))
        while True:
            buf = ffi.new("struct pb_nat64_binding[]", max(count, 1) + 16)
            got = int(lib.pb_nat64_bindings(engine, when, buf, max(count, 1) + 16))
            if got <= max(count, 1) + 16:
                break
            count = got
        out = []
        for i in range(got):
            b = buf[i]
            proto = int(b.proto)
            out.append(Nat64Binding(
                proto=_PROTO_NAMES.get(proto, str(proto)),
                v6=(IPv6Address(bytes(b.addr6)), int(b.port6)),
                v4=(IPv4Address(bytes(b.addr4)), int(b.port4)),
                remote=(IPv4Address(bytes(b.remote4)), int(b.remote_port)),
                expires_s=int(b.expires_ms) / 1000.0,
                tcp_state=_TCP_STATES.get(int(b.tcp_state)) if proto == 6 else None,
            ))
        return out

    # ---- the thread --------------------------------------------------------------------

    def start(self, ns_fd: int, tun_name: str = "nat64", *, sysctls: bool = True) -> int:
        """Make the TUN inside ns_fd and start translating; returns the TUN's ifindex.
        sysctls=True writes `tun_sysctls(tun_name)` for it before it comes up."""
        if "." in tun_name or "/" in tun_name or not 0 < len(tun_name) < 16:
            raise ValueError(f"TUN name {tun_name!r}: 1-15 characters, no '.' or '/'")
        err, errlen = errbuf()
        settings = sysctl_text(tun_sysctls(tun_name)) if sysctls else ffi.NULL
        rc = int(lib.pb_nat64_start(self._engine(), ns_fd, home_netns_fd(), tun_name.encode(), settings, err,
                                    errlen))
        if rc < 0:
            message = text(err)
            if "/dev/net/tun" in message:
                raise KernelFeatureMissing(
                    "TUN devices (/dev/net/tun) for the NAT64 translator",
                    f"{self.node}: {message}. Load the tun module, or run as root (/dev/net/tun is often 0600)",
                )
            raise NetlinkError("start the NAT64 translator", -rc, node=self.node, detail=message)
        self.tun_ifindex = rc
        self.tun_name = tun_name
        return rc

    @property
    def thread_id(self) -> int | None:
        """The translator thread's kernel tid (for /proc/self/task/<tid>/stat), or None."""
        if self._e is None:
            return None
        tid = int(lib.pb_nat64_thread_tid(self._e))
        return tid or None

    def stop(self) -> None:
        """Stop the thread; the TUN goes with its fd (and with it the translator's hold on the
        namespace). Bindings and counters stay."""
        if self._e is not None:
            lib.pb_nat64_stop(self._e)
        self.tun_ifindex = None

    def close(self) -> None:
        if self._e is not None:
            lib.pb_nat64_free(self._e)
            self._e = None
        self.tun_ifindex = None

    def __enter__(self) -> Nat64Translator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten translator must not leave its thread running.
        if getattr(self, "_e", None) is not None:
            self.close()
