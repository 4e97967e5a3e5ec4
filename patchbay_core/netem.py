"""The netem backend: link conditions as kernel qdiscs, encoded by hand as iproute2's tc does.

Pure: this module turns `LinkLimits` into the bytes and the netlink operations the kernel
needs; `link_shaping` sends them. Where each condition goes (the same attachment points as
the wire's, see `link_shaping`):

- an attachment that is its interface's only one (a device's upload, a region link): a netem
  qdisc as the interface's root (`tc qdisc replace dev IF root handle 5042: netem ...`);
- the attachments that share a router's `lan` (each device's download, the router's
  downlink): the same clsact egress filter the wire uses (to the device's addresses, or
  everything at the lowest priority) redirects into an IFB device of their own whose root is
  the netem qdisc; the IFB hands the packets back to `lan`, where the filter's action is
  skipped (the kernel marks re-injected packets), and they leave shaped. One netem per
  device: kernels with the 2025 check "netem: cannot mix duplicating netems with other netems
  in tree" (6.16, stable backports such as 6.12.50) refuse a duplicating netem on an
  interface that holds another, as a classful root with a netem class per device would.

TCA_OPTIONS of a netem qdisc is `struct tc_netem_qopt` followed by netem's own attributes
(not nested): TCA_NETEM_CORR, TCA_NETEM_REORDER, TCA_NETEM_CORRUPT, TCA_NETEM_LOSS (nested),
TCA_NETEM_RATE64, TCA_NETEM_RATE, TCA_NETEM_PRNG_SEED, in the order tc sends them. Times
in `tc_netem_qopt` are psched ticks (/proc/net/psched, read the way iproute2's tc_core_init
does); probabilities are fractions of 2**32 - 1.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .link import LinkLimits
from .netops import CLSACT, LinkDel, Qdisc, Redirect
from .netplan import redirect_ops

UINT32_MAX = 0xFFFFFFFF
TC_H_ROOT = 0xFFFFFFFF
NETEM_HANDLE = 0x50420000  # "5042:", the handle of every netem qdisc we make
QDISC_KIND = "netem"  # tests on kernels without netem put a qdisc they have in its place

# linux/pkt_sched.h
TCA_NETEM_CORR, TCA_NETEM_REORDER, TCA_NETEM_CORRUPT, TCA_NETEM_LOSS = 1, 3, 4, 5
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64, TCA_NETEM_PRNG_SEED = 6, 8, 10, 11, 14
NETEM_LOSS_GE = 2
NLA_F_NESTED = 0x8000

# A rate no link reaches: netem keeps packets in order only when it has a rate (each leaves
# no earlier than the one queued before it), and the wire's jitter never reorders.
ORDER_KEEPING_RATE = 1 << 62  # bytes/s: a 64 KiB packet takes 0 ns
QUEUE_MS = 200  # as the wire: the bottleneck holds this much time at its rate
LIMIT_MIN, LIMIT_MAX = 1000, 100_000  # packets in a netem qdisc (tc's default is 1000)
PACKET_BYTES = 1500  # to turn a queue in time at a rate into netem's limit in packets


# ---- psched ticks --------------------------------------------------------------------------

@dataclass(frozen=True)
class Psched:
    """/proc/net/psched: t2us, us2t, clock_res (and hz) in hex."""

    t2us: int
    us2t: int
    clock_res: int

    @property
    def tick_in_usec(self) -> float:
        # iproute2 tc_core_init(): a 1 GHz clock means t2us is us2t; ticks per microsecond.
        t2us = self.us2t if self.clock_res == 1_000_000_000 else self.t2us
        return t2us / self.us2t * (self.clock_res / 1_000_000)

    def ticks(self, usec: int) -> int:
        """tc_core_time2tick(): microseconds to ticks, truncated as C's conversion does."""
        return int(usec * self.tick_in_usec)

    @classmethod
    def parse(cls, text: str) -> Psched:
        fields = [int(f, 16) for f in text.split()]
        return cls(t2us=fields[0], us2t=fields[1], clock_res=fields[2])


@functools.cache
def psched() -> Psched:
    with open("/proc/net/psched") as f:
        return Psched.parse(f.read())


# ---- TCA_OPTIONS ---------------------------------------------------------------------------

def percent(pct: float) -> int:
    """iproute2's set_percent(): rint(fraction * UINT32_MAX) (Python's round is rint's)."""
    return min(UINT32_MAX, max(0, round(pct / 100.0 * UINT32_MAX)))


def nla(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


@dataclass(frozen=True)
class NetemOptions:
    """What one netem qdisc does, in tc's terms (`tc qdisc add ... netem OPTIONS`).

    `loss_corr_pct` is tc's `loss P CORR` (TCA_NETEM_CORR); `gemodel` is tc's `loss gemodel
    P R 1-H 1-K` in percent (TCA_NETEM_LOSS); give one or neither."""

    latency_us: int = 0
    jitter_us: int = 0
    limit: int = 1000
    loss_pct: float = 0.0
    loss_corr_pct: float = 0.0
    gemodel: tuple[float, float, float, float] | None = None
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0
    corrupt_pct: float = 0.0
    rate_bytes: int = 0  # bytes/s; 0: none
    seed: int | None = None  # TCA_NETEM_PRNG_SEED (Linux 6.3+; older kernels ignore it)


def encode(opts: NetemOptions, clock: Psched) -> bytes:
    """The TCA_OPTIONS payload tc would send for `opts`."""
    gap = 1 if opts.reorder_pct else 0  # tc: reordering needs a gap; 1 makes every packet a candidate
    latency, jitter = clock.ticks(opts.latency_us), clock.ticks(opts.jitter_us)
    out = struct.pack("=6I", min(latency, UINT32_MAX), opts.limit, percent(opts.loss_pct), gap,
                      percent(opts.duplicate_pct), min(jitter, UINT32_MAX))
    if opts.loss_corr_pct:
        out += nla(TCA_NETEM_CORR, struct.pack("=3I", 0, percent(opts.loss_corr_pct), 0))
    if opts.reorder_pct:
        out += nla(TCA_NETEM_REORDER, struct.pack("=2I", percent(opts.reorder_pct), 0))
    if opts.corrupt_pct:
        out += nla(TCA_NETEM_CORRUPT, struct.pack("=2I", percent(opts.corrupt_pct), 0))
    if opts.gemodel is not None:
        p, r, one_minus_h, one_minus_k = opts.gemodel
        # tc takes "1-h" (loss in the bad state) and sends h = UINT32_MAX - pct(1-h).
        ge = struct.pack("=4I", percent(p), percent(r), UINT32_MAX - percent(one_minus_h), percent(one_minus_k))
        out += nla(TCA_NETEM_LOSS | NLA_F_NESTED, nla(NETEM_LOSS_GE, ge))
    if opts.rate_bytes:
        wide = opts.rate_bytes >= 1 << 32
        if wide:
            out += nla(TCA_NETEM_RATE64, struct.pack("=Q", opts.rate_bytes))
        # struct tc_netem_rate: rate (bytes/s, ~0 when RATE64 carries it), packet and cell overheads
        out += nla(TCA_NETEM_RATE, struct.pack("=IiIi", UINT32_MAX if wide else opts.rate_bytes, 0, 0, 0))
    # Beyond 32-bit ticks (~275 s here) tc gives up; the kernel (4.15+) takes nanoseconds.
    if latency > UINT32_MAX or jitter > UINT32_MAX:
        out += nla(TCA_NETEM_LATENCY64, struct.pack("=q", opts.latency_us * 1000))
        out += nla(TCA_NETEM_JITTER64, struct.pack("=q", opts.jitter_us * 1000))
    if opts.seed is not None:
        out += nla(TCA_NETEM_PRNG_SEED, struct.pack("=Q", opts.seed & 0xFFFFFFFFFFFFFFFF))
    return out


def options_for(limits: LinkLimits, seed: int | None = None) -> NetemOptions:
    """The netem equivalent of what the wire does with `limits`.

    Loss correlation is the wire's two-state Markov chain, which is netem's Gilbert-Elliott
    model with all losses in the bad state (1-h = 100 %) and none in the good (1-k = 0):
    p = P(good -> bad) = loss (1 - corr), r = P(bad -> good) = (1 - loss)(1 - corr).
    (TCA_NETEM_CORR's loss correlation leans each draw towards the previous one instead.)
    """
    loss, corr = limits.loss_pct / 100.0, limits.loss_correlation_pct / 100.0
    gemodel = None
    loss_pct = limits.loss_pct
    if loss and corr:
        gemodel = (100.0 * loss * (1.0 - corr), 100.0 * (1.0 - loss) * (1.0 - corr), 100.0, 0.0)
        loss_pct = 0.0
    rate_bytes = limits.rate_kbit * 1000 // 8
    if not rate_bytes and limits.jitter_ms:
        rate_bytes = ORDER_KEEPING_RATE
    return NetemOptions(
        latency_us=limits.latency_ms * 1000, jitter_us=limits.jitter_ms * 1000, limit=limit_for(limits),
        loss_pct=loss_pct, gemodel=gemodel, duplicate_pct=limits.duplicate_pct, reorder_pct=limits.reorder_pct,
        corrupt_pct=limits.corrupt_pct, rate_bytes=rate_bytes, seed=seed,
    )


def limit_for(limits: LinkLimits) -> int:
    """netem bounds its queue (delayed packets included) in packets. With a rate: what the link
    holds in flight over latency + jitter plus the wire's 200 ms bottleneck queue; without:
    generous (the wire holds whatever is delayed)."""
    if not limits.rate_kbit:
        return LIMIT_MAX
    seconds = (limits.latency_ms + limits.jitter_ms + QUEUE_MS) / 1000.0
    packets = math.ceil(limits.rate_kbit * 1000 / 8 * seconds / PACKET_BYTES)
    return min(LIMIT_MAX, max(LIMIT_MIN, packets))


# ---- where the qdiscs go -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IfbLink:
    """An IFB device, up, made in the sending namespace with our own index."""

    name: str
    ifindex: int

    def describe(self) -> str:
        return f"create ifb {self.name}"


def netem_qdisc(ifindex: int, label: str, options: bytes, kind: str | None = None) -> Qdisc:
    """The root netem of an interface: created, or changed in place when it is there (tc's
    `qdisc replace` with our handle keeps what the qdisc holds)."""
    return Qdisc(ifindex, label, kind or QDISC_KIND, handle=NETEM_HANDLE, parent=TC_H_ROOT, options=options,
                 replace=True)


def root_ops(ifindex: int, label: str, options: bytes, *, kind: str | None = None) -> list[Qdisc]:
    """An attachment that owns its interface's egress: netem as its root."""
    return [netem_qdisc(ifindex, label, options, kind)]


def root_removal(ifindex: int, label: str, *, kind: str | None = None) -> list[Qdisc]:
    return [Qdisc(ifindex, label, kind or QDISC_KIND, handle=NETEM_HANDLE, parent=TC_H_ROOT, add=False)]


def shared_ops(ifb: IfbLink, options: bytes, *, kind: str | None = None) -> list[IfbLink | Qdisc]:
    """The IFB of an attachment on a shared interface, with its netem (first batch)."""
    return [ifb, netem_qdisc(ifb.ifindex, ifb.name, options, kind)]


def shared_redirect(ifindex: int, label: str, prio: int, ifb: IfbLink,
                    dsts: IPv4Address | IPv6Address | tuple[IPv4Address | IPv6Address, ...] | None,
                    with_clsact: bool) -> list[Qdisc | Redirect]:
    """The filter sending the attachment's packets into its IFB (second batch, once the netem
    is in place: nothing is redirected into an unshaped IFB)."""
    ops: list[Qdisc | Redirect] = []
    if with_clsact:
        ops.append(Qdisc(ifindex, label, "clsact", handle=0xFFFF0000, parent=CLSACT))
    ops += redirect_ops(ifindex, label, prio, ifb.ifindex, dsts)
    return ops


def shared_removal(ifindex: int, label: str, prio: int, ifb: IfbLink) -> list[Redirect | LinkDel]:
    return [Redirect(ifindex, label, prio, add=False), LinkDel(ifb.ifindex, ifb.name)]
