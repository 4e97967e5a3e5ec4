"""(b) The same topology made by `ip` subprocess calls: one process per command, named
namespaces (`ip netns add`), sysctls through `ip netns exec ... sysctl`. This is how tools that
shell out build labs. With --nat every router is a HOME NAT: its private pool, and the same
ruleset patchbay_core applies, loaded with one `ip netns exec R nft -f FILE` per router."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from variants.instrument import rtnl_socket_in, wait_until_only


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def home_nat_ruleset(wan: str, lan_cidr: str) -> str:
    from ipaddress import ip_address, ip_network

    import patchbay_core as pb
    from patchbay_core.plugins import presets
    from patchbay_core.rules import RuleContext
    from patchbay_plugins.nat_rules import nat_ruleset

    ctx = RuleContext(router="r", table="pb_nat", wan_iface="ix", lan_iface="lan", wan_ip=ip_address(wan),
                      lan_cidr=ip_network(lan_cidr))
    config = presets("nat")[pb.Nat.HOME.value]
    return nat_ruleset(config, ctx)  # type: ignore[arg-type]


def main(n: int, nat: bool) -> None:
    tag = f"pbb{os.getpid()}"
    ix = f"{tag}-ix"
    started = time.perf_counter()
    ip("netns", "add", ix)
    subprocess.run(["ip", "netns", "exec", ix, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.default.disable_ipv6=1"], check=True)
    ip("-n", ix, "link", "set", "lo", "up")
    ip("-n", ix, "link", "add", "br-ix", "type", "bridge", "forward_delay", "0")
    ip("-n", ix, "link", "set", "br-ix", "up")
    ip("-n", ix, "addr", "add", "198.18.0.1/24", "dev", "br-ix")
    names = []
    for i in range(n):
        r, d = f"{tag}-r{i}", f"{tag}-d{i}"
        names += [r, d]
        pool = f"198.18.{i + 1}" if i < 255 else f"198.19.{i - 255}"
        if nat:
            pool = f"10.0.{i + 1}"
        wan = f"198.18.0.{10 + i}"
        ip("netns", "add", r)
        subprocess.run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        ip("-n", ix, "link", "add", f"r{i}", "type", "veth", "peer", "name", "ix", "netns", r)
        ip("-n", ix, "link", "set", f"r{i}", "master", "br-ix", "up")
        ip("-n", ix, "link", "add", f"l{i}", "mtu", "65535", "type", "veth", "peer", "name", "lan", "netns", r)
        ip("-n", ix, "link", "set", f"l{i}", "up")
        if not nat:
            ip("-n", ix, "route", "add", f"{pool}.0/24", "via", wan)
        ip("-n", r, "link", "set", "lo", "up")
        ip("-n", r, "link", "set", "ix", "up")
        ip("-n", r, "link", "set", "lan", "up")
        ip("-n", r, "addr", "add", f"{wan}/24", "dev", "ix")
        ip("-n", r, "addr", "add", f"{pool}.1/24", "dev", "lan")
        ip("-n", r, "route", "add", "default", "via", "198.18.0.1")
        if nat:
            rules = f"/tmp/{tag}-r{i}.nft"
            with open(rules, "w") as f:
                f.write(home_nat_ruleset(wan, f"{pool}.0/24"))
            subprocess.run(["ip", "netns", "exec", r, "nft", "-f", rules], check=True)
            os.unlink(rules)
        ip("netns", "add", d)
        subprocess.run(["ip", "netns", "exec", d, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
                       check=True)
        ip("-n", ix, "link", "add", "link", f"l{i}", "name", "eth0", "netns", d, "type", "macvlan", "mode", "bridge")
        ip("-n", d, "link", "set", "lo", "up")
        ip("-n", d, "link", "set", "eth0", "up")
        ip("-n", d, "addr", "add", f"{pool}.2/24", "dev", "eth0")
        ip("-n", d, "route", "add", "default", "via", f"{pool}.1")
    built = time.perf_counter()
    ix_fd = os.open(f"/run/netns/{ix}", os.O_RDONLY)
    probe = rtnl_socket_in(ix_fd)
    for name in names:
        ip("netns", "del", name)
    wait_until_only(probe)
    closed = time.perf_counter()
    os.close(probe)
    os.close(ix_fd)
    ip("netns", "del", ix)
    print(f"{(built - started) * 1e3:.2f} {(closed - built) * 1e3:.2f}")


if __name__ == "__main__":
    sizes = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    main(sizes[0], "--nat" in sys.argv)
