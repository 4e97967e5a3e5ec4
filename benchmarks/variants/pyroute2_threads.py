"""(c) pyroute2 at its best: no fork per namespace. One thread creates each namespace with
unshare(2), opens an IPRoute socket inside it and returns; every request then goes through
those sockets (pyroute2 sends one request and waits for its answer each time)."""

from __future__ import annotations

import ctypes
import os
import sys
import time

from pyroute2 import IPRoute

from variants.instrument import wait_until_only

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def sysctl(key: str, value: str) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def netns(home: int | None, forward: bool) -> tuple[int, IPRoute]:
    if libc.unshare(CLONE_NEWNET):
        raise OSError(ctypes.get_errno(), "unshare")
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    ipr = IPRoute()
    sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    if forward:
        sysctl("net.ipv4.ip_forward", "1")
    if home is not None and libc.setns(home, CLONE_NEWNET):
        raise OSError(ctypes.get_errno(), "setns")
    return fd, ipr


def main(n: int) -> None:
    started = time.perf_counter()
    ix_fd, ix = netns(None, True)  # this thread stays in the IX
    ix.link("set", index=1, state="up")
    ix.link("add", ifname="br-ix", kind="bridge", br_forward_delay=0)
    br = ix.link_lookup(ifname="br-ix")[0]
    ix.link("set", index=br, state="up")
    ix.addr("add", index=br, address="198.18.0.1", prefixlen=24)
    nodes = []
    for i in range(n):
        pool = f"198.18.{i + 1}" if i < 255 else f"198.19.{i - 255}"
        wan = f"198.18.0.{10 + i}"
        rfd, r = netns(ix_fd, True)
        ix.link("add", ifname=f"r{i}", kind="veth", peer={"ifname": "ix", "net_ns_fd": rfd})
        port = ix.link_lookup(ifname=f"r{i}")[0]
        ix.link("set", index=port, master=br, state="up")
        ix.link("add", ifname=f"l{i}", kind="veth", mtu=65535, peer={"ifname": "lan", "net_ns_fd": rfd})
        lower = ix.link_lookup(ifname=f"l{i}")[0]
        ix.link("set", index=lower, state="up")
        ix.route("add", dst=f"{pool}.0/24", gateway=wan)
        r.link("set", index=1, state="up")
        r_ix, r_lan = r.link_lookup(ifname="ix")[0], r.link_lookup(ifname="lan")[0]
        r.link("set", index=r_ix, state="up")
        r.link("set", index=r_lan, state="up")
        r.addr("add", index=r_ix, address=wan, prefixlen=24)
        r.addr("add", index=r_lan, address=f"{pool}.1", prefixlen=24)
        r.route("add", dst="default", gateway="198.18.0.1")
        dfd, d = netns(ix_fd, False)
        ix.link("add", ifname="eth0", kind="macvlan", link=lower, macvlan_mode="bridge", net_ns_fd=dfd)
        d.link("set", index=1, state="up")
        eth0 = d.link_lookup(ifname="eth0")[0]
        d.link("set", index=eth0, state="up")
        d.addr("add", index=eth0, address=f"{pool}.2", prefixlen=24)
        d.route("add", dst="default", gateway=f"{pool}.1")
        nodes += [(rfd, r), (dfd, d)]
    built = time.perf_counter()
    for fd, ipr in nodes:
        ipr.close()
        os.close(fd)
    wait_until_only(ix.fileno())
    closed = time.perf_counter()
    print(f"{(built - started) * 1e3:.2f} {(closed - built) * 1e3:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
