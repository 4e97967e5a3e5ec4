"""Running without root: an unprivileged user namespace in which we are uid 0.

`init_userns()` must run before the process starts any thread (unshare(2) refuses
CLONE_NEWUSER in a multi-threaded process). Inside, network and PID namespaces can be made;
the host's own network namespace stays out of reach.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UsernsUnavailable
from .kernel.native import errbuf, lib, text

_SYSCTLS = {
    "kernel.unprivileged_userns_clone": ("0", "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
    "kernel.apparmor_restrict_unprivileged_userns": (
        "1", "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    "user.max_user_namespaces": ("0", "sudo sysctl -w user.max_user_namespaces=15000"),
}


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def forbidding_sysctl() -> tuple[str, str, str] | None:
    """(sysctl, value, fix) of a setting by which this host forbids unprivileged user
    namespaces, if one is set."""
    for sysctl, (bad, fix) in _SYSCTLS.items():
        if _read_sysctl(sysctl) == bad:
            return sysctl, bad, fix
    return None


def _thread_count() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 1


def in_user_namespace() -> bool:
    """True when our uid map is not the host's identity map."""
    try:
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return first[:3] != ["0", "0", "4294967295"]


def has_net_admin() -> bool:
    """CAP_NET_ADMIN (bit 12) and CAP_SYS_ADMIN (bit 21) in our effective set."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
            return bool(caps & (1 << 12)) and bool(caps & (1 << 21))
    return False


def init_userns() -> None:
    """Enter an unprivileged user namespace (uid/gid 0 inside). A no-op when already privileged.

    Raises UsernsUnavailable naming the sysctl to change when the kernel forbids it.
    """
    if has_net_admin():
        return
    threads = _thread_count()
    if threads > 1:
        raise UsernsUnavailable(
            f"init_userns() must run before any thread starts; this process has {threads} threads "
            "(call it first thing in main, or in a conftest.py before plugins start threads)"
        )
    uid, gid = os.getuid(), os.getgid()
    err, errlen = errbuf()
    rc = lib.pb_userns_enter(uid, gid, err, errlen)
    if rc == 0:
        return
    code = -rc
    detail = text(err)
    forbidden = forbidding_sysctl()
    if forbidden is not None:
        sysctl, bad, fix = forbidden
        raise UsernsUnavailable(
            f"the kernel forbids unprivileged user namespaces: {sysctl} = {bad} ({detail}). Fix: {fix}",
            sysctl=sysctl,
        )
    if code == errno.ENOSPC:
        raise UsernsUnavailable(
            f"no user namespace left: user.max_user_namespaces is exhausted or 0 for this user namespace "
            f"({detail}). Fix: raise user.max_user_namespaces (e.g. sudo sysctl -w user.max_user_namespaces=15000)",
            sysctl="user.max_user_namespaces",
        )
    raise UsernsUnavailable(f"cannot enter a user namespace: {detail}")


def ping_group_range() -> str:
    """The widest net.ipv4.ping_group_range our gid map allows ("0 2147483647" as real root)."""
    try:
        fields = Path("/proc/self/gid_map").read_text().split()
        inside, count = int(fields[0]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return "0 0"
    last = min(inside + count - 1, 2147483647)
    return f"{inside} {last}"
