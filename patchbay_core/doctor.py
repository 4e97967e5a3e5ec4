"""`patchbay doctor`: can this kernel host a lab, and what is missing?

Every check really does the thing in a throwaway network namespace (made on a short-lived
thread that stays inside it, so nothing touches the host's network) and reports what to
change when it fails.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import netem
from .errors import KernelFeatureMissing, PatchbayError
from .kernel.namespace import NetNs
from .kernel.native import lib
from .kernel.wire import send_tc
from .link import LinkLimits
from .link_shaping import NetemSupport
from .netops import Bridge, LinkSet, Macvlan, Qdisc, VethPair
from .userns import forbidding_sysctl, has_net_admin, in_user_namespace

CLONE_NEWPID = 0x20000000
TUNSETIFF = 0x400454CA


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

    def _ok(self, name: str) -> bool:
        check = next((c for c in self.checks if c.name == name), None)
        return check is not None and check.ok

    @property
    def has_netem(self) -> bool:
        return self._ok("netem qdisc")

    @property
    def has_tun(self) -> bool:
        """The wire can make its TAP: /dev/net/tun opens, and (when checked) a TAP comes up."""
        tap = next((c for c in self.checks if c.name == "wire TAP"), None)
        return self._ok("TUN device") and (tap is None or tap.ok)

    @property
    def link_backend(self) -> str:
        """What link_backend="auto" picks here for a lab without a seed."""
        return "netem" if self.has_netem and self._ok("ifb") else "wire"

    def backend_lines(self) -> list[str]:
        tun = "ok" if self.has_tun else "not here (see the TUN device and wire TAP lines)"
        if self.link_backend == "netem":
            lines = ['link_backend="auto" picks: netem (sch_netem and ifb are here: conditions are kernel qdiscs)',
                     "  with LabOpts(seed=...) it picks wire: a seed forces the wire, the only backend whose "
                     "draws repeat per flow whatever else crosses the link",
                     f"  the wire (link_backend='wire', or any seeded lab) needs /dev/net/tun and a TAP: {tun}"]
            if not self.has_tun:
                lines.append("  so link conditions are unavailable on the wire backend here (seeded labs included)")
            return lines
        reason = "sch_netem is missing" if not self.has_netem else "sch_netem is here but ifb is missing"
        lines = [f'link_backend="auto" picks: wire ({reason}; with a seed it picks the wire too)',
                 f"  the wire needs /dev/net/tun and a TAP: {tun}"]
        if not self.has_tun:
            lines.append("  so link conditions are unavailable here: labs without link conditions can run; load the "
                         "tun module or run as root to have them")
        return lines

    def render(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
            lines.append(f"{mark}  {c.name:<{width}}  {c.detail}")
        lines.append("")
        lines += self.backend_lines()
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
        checks.append(_netem_check(probe))
        checks.append(_ifb_check(probe))
        checks.append(_probe("tbf qdisc", lambda: probe.apply([_tbf_probe()]) or "rate limits", required=False))
        checks.append(_tap_check())
        rc = lib.pb_unshare(CLONE_NEWPID)
        checks.append(Check("PID namespaces", rc == 0,
                            "a lab's processes live and die together" if rc == 0 else os.strerror(-rc)))
    finally:
        probe.close()
    return checks


def _netem_check(ns: NetNs) -> Check:
    """A netem root on lo, encoded as the netem backend does (delay 1 ms)."""
    options = netem.encode(netem.options_for(LinkLimits(latency_ms=1)), netem.psched())
    try:
        send_tc(ns.rtnl_fd, [netem.netem_qdisc(1, "lo", options)], ns.node)
    except KernelFeatureMissing:
        return Check("netem qdisc", False, "sch_netem is not in this kernel: install the kernel's modules package "
                     "(e.g. linux-modules-extra) and `modprobe sch_netem` (optional: the wire backend stands in)",
                     False)
    except PatchbayError as exc:
        return Check("netem qdisc", False, f"{exc} (optional: the wire backend stands in)", False)
    return Check("netem qdisc", True, "sch_netem: link conditions can be kernel qdiscs", False)


def _ifb_check(ns: NetNs) -> Check:
    return _probe("ifb", lambda: send_tc(ns.rtnl_fd, [netem.IfbLink("pbifb0", 30)], ns.node) or
                  "IFB devices: the netem backend's per-device downloads", required=False,
                  hint=" (optional: only the netem backend needs it)")


def probe_netem() -> NetemSupport:
    """Can the netem backend run here? Tried in a throwaway namespace on a thread of its own."""
    fut: concurrent.futures.Future[NetemSupport] = concurrent.futures.Future()

    def worker() -> None:
        try:
            probe = NetNs.create("netem-probe", {}, stay=True)
        except BaseException as exc:
            fut.set_result(NetemSupport(False, False, f"no network namespace: {exc}"))
            return
        try:
            probe.apply([LinkSet(1, "lo", up=True)])
            checks = [_netem_check(probe), _ifb_check(probe)]
            fut.set_result(NetemSupport(checks[0].ok, checks[1].ok, "; ".join(c.detail for c in checks)))
        except BaseException as exc:
            fut.set_exception(exc)
        finally:
            probe.close()

    threading.Thread(target=worker, name="patchbay-netem-probe", daemon=True).start()
    return fut.result(timeout=30)


def _tbf_probe() -> Qdisc:
    # TCA_OPTIONS { TCA_TBF_PARMS (1): struct tc_tbf_qopt } with rate and peakrate tc_ratespec
    # (linklayer ethernet), limit, buffer (ticks), mtu: 1 Mbit/s, only to see the kernel accept it.
    ratespec = struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 125_000)
    qopt = ratespec + struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 0) + struct.pack("=III", 10_000, 1_000_000, 1514)
    options = struct.pack("=HH", 4 + len(qopt), 1) + qopt
    return Qdisc(1, "lo", "tbf", options=options, replace=True)


def _tap_check() -> Check:
    """A TAP as the wire makes it (virtio-net headers), inside the probe namespace: it goes
    away with its file descriptor."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return Check("wire TAP", False, f"/dev/net/tun: {exc.strerror}", False)
    try:
        iff_tap, iff_no_pi, iff_vnet_hdr = 0x0002, 0x1000, 0x4000
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"pbtap0", iff_tap | iff_no_pi | iff_vnet_hdr))
        return Check("wire TAP", True, "a TAP with virtio-net headers: the wire's way in", False)
    except OSError as exc:
        return Check("wire TAP", False, f"TUNSETIFF refused ({exc.strerror}): the wire cannot make its TAP", False)
    finally:
        os.close(fd)


def _rootless() -> Check:
    """Whether unprivileged users could run labs (after init_userns()): the sysctls that forbid
    it, read without entering anything."""
    forbidden = forbidding_sysctl()
    if forbidden is not None:
        sysctl, bad, fix = forbidden
        return Check("user namespaces", False, f"unprivileged users cannot run labs: {sysctl} = {bad}. Fix: {fix}",
                     False)
    return Check("user namespaces", True, "unprivileged users can run labs (patchbay_core.init_userns())", False)


def _tun() -> Check:
    path = "/dev/net/tun"
    if not os.path.exists(path):
        return Check("TUN device", False, f"{path} is missing (needed by the wire link emulator and NAT64); "
                     "load the tun module", False)
    try:
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
        return Check("TUN device", True, f"{path} opens (the wire link emulator, NAT64)", False)
    except OSError as exc:
        mode = oct(os.stat(path).st_mode & 0o777)
        return Check("TUN device", False, f"{path} cannot be opened ({exc.strerror}, mode {mode}): the wire link "
                     "emulator, NAT64 and TUN-based features are unavailable for this user", False)


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
    checks.append(_rootless())
    return Report(checks)


