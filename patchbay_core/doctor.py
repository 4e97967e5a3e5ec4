"""`patchbay doctor`: can this kernel host a lab, and what is missing?

Every check really does the thing in a throwaway network namespace (made on a short-lived
thread that stays inside it, so nothing touches the host's network) and reports what to
change when it fails.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import PatchbayError
from .kernel.namespace import NetNs
from .kernel.native import lib
from .netops import Bridge, LinkSet, Macvlan, Qdisc, VethPair
from .userns import has_net_admin, in_user_namespace

CLONE_NEWPID = 0x20000000


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def labs_can_run(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    @property
    def has_netem(self) -> bool:
        netem = next((c for c in self.checks if c.name == "netem qdisc"), None)
        return netem is not None and netem.ok

    @property
    def link_backend(self) -> str:
        return "netem" if self.has_netem else "wire"

    def render(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
            lines.append(f"{mark}  {c.name:<{width}}  {c.detail}")
        reason = ("sch_netem is present, but the netem backend is not built yet" if self.has_netem
                  else "sch_netem is missing")
        lines.append("")
        lines.append(f"link_backend=\"auto\" picks: wire ({reason}; the wire needs /dev/net/tun)")
        lines.append("labs can run here" if self.labs_can_run else "labs cannot run here: fix the FAIL lines above")
        return "\n".join(lines)


def _probe(name: str, fn: Callable[[], str | None], *, required: bool = True, hint: str = "") -> Check:
    try:
        detail = fn()
        return Check(name, True, detail or "works", required)
    except (PatchbayError, OSError) as exc:
        return Check(name, False, f"{exc}{hint}", required)


def _privileges() -> Check:
    if has_net_admin():
        where = "inside a user namespace (rootless)" if in_user_namespace() else "as root"
        return Check("privileges", True, f"CAP_NET_ADMIN and CAP_SYS_ADMIN {where}")
    return Check("privileges", False,
                 "no CAP_NET_ADMIN/CAP_SYS_ADMIN: run as root, or call patchbay_core.init_userns() "
                 "first (the CLI does this itself)")


def _kernel_checks() -> list[Check]:
    """Runs on its own thread, inside a throwaway namespace it never leaves."""
    checks = []
    try:
        probe = NetNs.create("doctor", {}, stay=True)
    except PatchbayError as exc:
        return [Check("network namespaces", False, f"{exc}. Needs CONFIG_NET_NS and CAP_SYS_ADMIN")]
    try:
        checks.append(Check("network namespaces", True, "unshare(CLONE_NEWNET) works"))
        other = NetNs.create("doctor-peer", {})
        try:
            checks.append(_probe("veth", lambda: probe.apply([VethPair("pbv0", 20, "pbv1", 20, other)]) or
                                 "veth pairs across namespaces"))
            checks.append(_probe("bridge", lambda: probe.apply([Bridge("pbbr0", 21)]) or None))
            checks.append(_probe("macvlan", lambda: probe.apply([
                VethPair("pbl0", 22, "pbl1", 22, other), Macvlan("pbm0", 23, 22, other)]) or
                "bridge-mode macvlans (LAN segments)"))
        finally:
            other.close()
        checks.append(_probe("nf_tables", lambda: probe.nft(
            "table ip pb_doctor {\n chain c {\n  type filter hook forward priority 0;\n"
            "  ct state established accept\n }\n}\n"
        ) or "libnftables transactions with conntrack matches"))
        probe.apply([LinkSet(1, "lo", up=True)])
        checks.append(_probe("netem qdisc", lambda: probe.apply([_netem_probe()]) or "tc netem available",
                             required=False, hint=" (optional: the wire backend stands in)"))
        checks.append(_probe("tbf qdisc", lambda: probe.apply([_tbf_probe()]) or "rate limits", required=False))
        rc = lib.pb_unshare(CLONE_NEWPID)
        checks.append(Check("PID namespaces", rc == 0,
                            "a lab's processes live and die together" if rc == 0 else os.strerror(-rc)))
    finally:
        probe.close()
    return checks


def _netem_probe() -> Qdisc:
    # struct tc_netem_qopt: latency, limit, loss, gap, duplicate, jitter (all u32)
    return Qdisc(1, "lo", "netem", options=struct.pack("=6I", 0, 1000, 0, 0, 0, 0))


def _tbf_probe() -> Qdisc:
    # TCA_OPTIONS { TCA_TBF_PARMS (1): struct tc_tbf_qopt } with rate and peakrate tc_ratespec
    # (linklayer ethernet), limit, buffer (ticks), mtu: 1 Mbit/s, only to see the kernel accept it.
    ratespec = struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 125_000)
    qopt = ratespec + struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 0) + struct.pack("=III", 10_000, 1_000_000, 1514)
    options = struct.pack("=HH", 4 + len(qopt), 1) + qopt
    return Qdisc(1, "lo", "tbf", options=options, replace=True)


def _tun() -> Check:
    path = "/dev/net/tun"
    if not os.path.exists(path):
        return Check("TUN device", False, f"{path} is missing (needed by NAT64); load the tun module", False)
    try:
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
        return Check("TUN device", True, f"{path} opens", False)
    except OSError as exc:
        mode = oct(os.stat(path).st_mode & 0o777)
        return Check("TUN device", False, f"{path} cannot be opened ({exc.strerror}, mode {mode}): NAT64 and "
                     "TUN-based features are unavailable for this user", False)


def run_checks() -> Report:
    checks = [_privileges()]
    if checks[0].ok:
        fut: concurrent.futures.Future[list[Check]] = concurrent.futures.Future()

        def worker() -> None:
            try:
                fut.set_result(_kernel_checks())
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=worker, name="patchbay-doctor", daemon=True).start()
        checks += fut.result(timeout=30)
    checks.append(_tun())
    return Report(checks)


