"""Handles users hold: Device, Router, Ix. Cheap to copy; they point at the lab's records.

Every execution method runs inside the node's own network namespace. Once the node is gone
(removed, or its lab closed), methods raise NodeGone and address properties return None.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import NodeGone, TopologyError
from .futures import wait_future
from .netplan import ROUTER_LINK_LOCAL
from .ping import PingResult, ping
from .processes import NodeProcess
from .reflector import Reflector, start_reflector
from .topology import DeviceState, IxState, NodeState, RouterState

if TYPE_CHECKING:
    from .capture import Capture
    from .diagnostics import MappingEntry
    from .firewall import Firewall, FirewallConfig
    from .kernel.wire import WireStats
    from .lab import Lab
    from .link import LinkCondition, LinkLimits
    from .nat import Nat, NatConfig

T = TypeVar("T")


class NodeHandle:
    """What every node can do: run code and commands inside its namespace."""

    __slots__ = ("_lab", "_state")

    def __init__(self, lab: Lab, state: NodeState) -> None:
        self._lab = lab
        self._state = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeHandle) and other._state is self._state

    def __hash__(self) -> int:
        return id(self._state)

    def __repr__(self) -> str:
        gone = "" if self._state.alive else " (gone)"
        return f"<{type(self).__name__} {self._state.name!r}{gone}>"

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def ns_fd(self) -> int:
        """The network namespace's file descriptor, for users who want setns(2) themselves."""
        return self._alive().ns.fd  # type: ignore[union-attr]

    def _alive(self) -> NodeState:
        if not self._state.alive:
            raise NodeGone(self._state.label)
        return self._state

    async def spawn(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(handle, *args)` on the node's event loop; return its result or raise its error."""
        runtime = self._lab._runtime(self._alive())
        coro = fn(self, *args)
        if not inspect.iscoroutine(coro):
            raise TypeError(f"{self._state.label}: spawn() needs an async function; {fn!r} returned "
                            f"{type(coro).__name__} (use run_sync() for plain functions)")
        return await wait_future(runtime.submit_coro(coro))

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the node's sync worker and wait for it (keep it short)."""
        return self._lab._runtime(self._alive()).run_sync(fn, *args)

    def spawn_thread(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run `fn(*args)` on a new OS thread inside the namespace."""
        return self._lab._runtime(self._alive()).spawn_thread(fn, *args)

    async def spawn_command(self, argv: Sequence[str], **popen_kw: Any) -> NodeProcess:
        """Start a command inside the node; returns an `anyio.abc.Process`."""
        fut = self._lab._spawn_command(self._alive(), argv, popen_kw)
        return NodeProcess(await wait_future(fut))

    def spawn_command_sync(self, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the node; returns a `subprocess.Popen`."""
        return self._lab._spawn_command(self._alive(), argv, popen_kw).result()

    async def spawn_reflector(self, bind: tuple[str | IPv4Address | IPv6Address, int]) -> Reflector:
        """Start a UDP echo server bound to `bind` = (host, port)."""
        host, port = bind
        return await self.spawn(lambda _h: start_reflector((str(host), port)))

    async def ping(self, dst: str | IPv4Address | IPv6Address, count: int = 1, timeout: float = 2.0,
                   interval: float = 0.2) -> PingResult:
        """ICMP echo to `dst` from inside the node (no `ping` binary needed); `interval`
        seconds between echoes."""
        return await self.spawn(lambda _h: ping(dst, count, timeout, interval))


@dataclass(frozen=True)
class DeviceIface:
    """A snapshot of one device interface."""

    name: str
    ip: IPv4Address | None
    ip6: IPv6Address | None
    ll6: IPv6Address | None
    router: Router
    prefixlen: int
    gateway: IPv4Address | None
    link_up: bool = True
    extra_ips: tuple[IPv4Interface | IPv6Interface, ...] = ()
    gateway6: IPv6Address | None = None


@dataclass(frozen=True)
class RouterIface:
    """A snapshot of one router interface ("ix"/"wan" uplink, "lan" downstream)."""

    name: str
    ip: IPv4Address | None
    ip6: IPv6Address | None
    ll6: IPv6Address | None
    prefixlen: int


class Device(NodeHandle):
    __slots__ = ()
    _state: DeviceState

    @property
    def ip(self) -> IPv4Address | None:
        """IPv4 address of the default interface."""
        if not self._state.alive or self._state.default_iface is None:
            return None
        return self._state.ifaces[self._state.default_iface].ip

    @property
    def ip6(self) -> IPv6Address | None:
        """IPv6 address (global or ULA) of the default interface."""
        if not self._state.alive or self._state.default_iface is None:
            return None
        return self._state.ifaces[self._state.default_iface].ip6

    def default_iface(self) -> DeviceIface:
        state = self._alive()
        assert isinstance(state, DeviceState)
        if state.default_iface is None:
            raise TopologyError("has no interfaces", node=state.name)
        return self.iface(state.default_iface)

    def iface(self, name: str) -> DeviceIface:
        state = self._alive()
        assert isinstance(state, DeviceState)
        if name not in state.ifaces:
            known = ", ".join(state.ifaces) or "none"
            raise TopologyError(f"no interface {name!r} (has: {known})", node=state.name)
        i = state.ifaces[name]
        plug = i.attachment
        return DeviceIface(
            name=i.name, ip=i.ip, ip6=i.ip6, ll6=plug.v6.ll if plug.v6 else None, router=Router(self._lab, i.router),
            prefixlen=plug.subnet.prefixlen if plug.subnet else 0, gateway=plug.gateway, link_up=i.admin_up,
            extra_ips=tuple(i.extra_ips), gateway6=plug.v6.gateway if plug.v6 else None,
        )

    async def set_link_condition(self, iface: str, condition: LinkCondition | LinkLimits | str | dict | None,
                                 direction: str = "up") -> None:
        """Impair what the interface sends ("up"), receives ("down") or both; None clears the
        direction(s) given and leaves the other as it was."""
        await self._lab._set_link_condition(self._alive(), iface, condition, direction)  # type: ignore[arg-type]

    async def replug_iface(self, iface: str, router: Router | str) -> IPv4Address:
        """Move `iface` to another router (a new address from its pool, routes fixed); returns
        the new address."""
        return await self._lab._rewire.replug_iface(self._device(), iface, router)

    async def set_default_route(self, iface: str) -> None:
        """Route everything off-link through `iface` (a Wi-Fi -> cellular hand-off, a VPN)."""
        await self._lab._rewire.set_default_route(self._device(), iface)

    async def link_down(self, iface: str) -> None:
        """Take the link down: everything sent to or from it is lost until `link_up`."""
        await self._lab._rewire.set_link(self._device(), iface, up=False)

    async def link_up(self, iface: str) -> None:
        await self._lab._rewire.set_link(self._device(), iface, up=True)

    async def renew_ip(self, iface: str) -> IPv4Address:
        """A new address on the same network; the old one is gone. Returns the new one."""
        return await self._lab._rewire.renew_ip(self._device(), iface)

    async def add_iface(self, name: str, router: Router | str,
                        condition: LinkCondition | LinkLimits | str | dict | None = None) -> DeviceIface:
        await self._lab._rewire.add_iface(self._device(), name, router, condition)
        return self.iface(name)

    async def remove_iface(self, name: str) -> None:
        """Unplug and delete an interface (not the last one)."""
        await self._lab._rewire.remove_iface(self._device(), name)

    async def add_ip(self, iface: str, ip_with_prefix: str) -> IPv4Interface:
        """A secondary address on `iface`, e.g. "10.8.0.2/24"."""
        return await self._lab._rewire.add_ip(self._device(), iface, ip_with_prefix)

    def dns_entry(self, name: str, ip: str | IPv4Address | IPv6Address) -> None:
        """Resolve `name` to `ip` in this device only (shadows a lab-wide entry of that name)."""
        from .dns import check_ip, check_name

        state = self._device()
        self._lab._names.add_node_entry(state.name, check_name(name, state.name),
                                        check_ip(ip, state.name, "dns_entry"))
        self._lab._event("dns_entry_added", state.name, name=name, ip=str(ip))

    async def capture(self, iface: str, *, snaplen: int = 262144,
                      path: str | os.PathLike[str] | None = None) -> Capture:
        """Capture `iface` (both directions) into a pcapng file: `<outdir>/device.<name>.<iface>.pcapng`
        unless `path` says where; `await capture.stop()` finishes it (the lab's close does too)."""
        if iface not in self._device().ifaces:
            raise TopologyError(f"no interface {iface!r} (has: {', '.join(self._device().ifaces)})",
                                node=self.name, field="capture")
        return await self._lab._capture(self._alive(), iface, snaplen, path)

    def _device(self) -> DeviceState:
        state = self._alive()
        assert isinstance(state, DeviceState)
        return state

    def link_stats(self, iface: str, direction: str = "up") -> WireStats | None:
        """Counters of the wire shaping this interface's direction (None: not shaped)."""
        return self._lab._link_stats((direction, self._alive().name, iface))

    def ifaces(self) -> list[DeviceIface]:
        return [self.iface(name) for name in self._alive().ifaces]  # type: ignore[attr-defined]


class Router(NodeHandle):
    __slots__ = ()
    _state: RouterState

    @property
    def uplink_ip(self) -> IPv4Address | None:
        """The router's WAN address (on the IX, or in its upstream router's pool)."""
        if not self._state.alive or self._state.uplink is None:
            return None
        return self._state.uplink.ip

    @property
    def uplink_ip6(self) -> IPv6Address | None:
        """The router's WAN IPv6 address (None when its uplink has no IPv6)."""
        uplink = self._state.uplink
        if not self._state.alive or uplink is None or uplink.v6 is None:
            return None
        return uplink.v6.ip

    @property
    def downstream_cidr6(self) -> IPv6Network | None:
        pool = self._state.pool6
        return pool.cidr if pool and self._state.alive else None  # type: ignore[return-value]

    @property
    def gateway_ip6(self) -> IPv6Address | None:
        """The router's IPv6 address on its downstream network."""
        pool = self._state.pool6
        return pool.gateway if pool and self._state.alive else None  # type: ignore[return-value]

    @property
    def npt_prefix6(self) -> IPv6Network | None:
        """Under NPTv6: the outside prefix its downstream prefix maps onto."""
        return self._state.npt_prefix6 if self._state.alive else None

    @property
    def downstream_cidr(self) -> IPv4Network | None:
        pool = self._state.pool
        return pool.cidr if pool and self._state.alive else None

    @property
    def gateway_ip(self) -> IPv4Address | None:
        """The router's address on its downstream network."""
        pool = self._state.pool
        return pool.gateway if pool and self._state.alive else None

    def iface(self, name: str) -> RouterIface:
        for iface in self.interfaces():
            if iface.name == name:
                return iface
        known = ", ".join(i.name for i in self.interfaces())
        raise TopologyError(f"no interface {name!r} (has: {known})", node=self._state.name)

    async def set_nat_mode(self, nat: Nat | NatConfig | str) -> None:
        """Swap the NAT (new flows only; `flush_nat_state()` drops existing mappings)."""
        await self._lab._router_set_nat(self._alive(), nat)  # type: ignore[arg-type]

    async def set_downlink_condition(self, condition: LinkCondition | LinkLimits | str | dict | None) -> None:
        """Impair what the router sends to its devices (None: clean)."""
        await self._lab._set_downlink(self._alive(), condition)  # type: ignore[arg-type]

    async def set_firewall(self, firewall: Firewall | FirewallConfig | str) -> None:
        await self._lab._router_set_firewall(self._alive(), firewall)  # type: ignore[arg-type]

    async def flush_nat_state(self) -> None:
        """Forget every NAT mapping and conntrack entry of this router."""
        await self._lab._router_flush_nat(self._alive())  # type: ignore[arg-type]

    async def nat_mappings(self) -> list[MappingEntry]:
        """The router's NAT mappings, live from conntrack and the NAT's mapping state."""
        return await self._lab._router_mappings(self._alive())  # type: ignore[arg-type]

    async def counters(self) -> dict[str, int]:
        """Packets counted by the router's named nft rules (e.g. "nat.inbound_dropped")."""
        return await self._lab._router_counters(self._alive())  # type: ignore[arg-type]

    async def add_port_forward(
        self, proto: str, port: int, device: Device | str, device_port: int | None = None
    ) -> None:
        """Unsolicited `proto` traffic to the router's WAN `port` goes to `device` (any filtering)."""
        await self._lab._router_add_forward(self._alive(), proto, port, device, device_port)  # type: ignore[arg-type]

    async def remove_port_forward(self, proto: str, port: int) -> None:
        await self._lab._router_remove_forward(self._alive(), proto, port)  # type: ignore[arg-type]

    def interfaces(self) -> list[RouterIface]:
        state = self._alive()
        assert isinstance(state, RouterState)
        out = []
        uplink = state.uplink
        if uplink is not None:
            v6 = uplink.v6
            out.append(RouterIface(uplink.iface, uplink.ip, v6.ip if v6 else None, v6.ll if v6 else None,
                                   uplink.subnet.prefixlen if uplink.subnet else 0))
        lan = state.lan
        if lan is not None:
            out.append(RouterIface(lan.iface, lan.pool.gateway if lan.pool else None,  # type: ignore[arg-type]
                                   lan.pool6.gateway if lan.pool6 else None,  # type: ignore[arg-type]
                                   ROUTER_LINK_LOCAL if lan.pool6 else None, lan.pool.prefixlen if lan.pool else 0))
        return out


class Region:
    """A region of the lab (see `Lab.add_region`)."""

    __slots__ = ("_lab", "name")

    def __init__(self, lab: Lab, name: str) -> None:
        self._lab = lab
        self.name = name

    def __repr__(self) -> str:
        return f"<Region {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Region) and other._lab is self._lab and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Ix(NodeHandle):
    """The lab's internet exchange: the namespace every top-level router plugs into."""

    __slots__ = ()
    _state: IxState

    @property
    def gateway_ip(self) -> IPv4Address:
        from .netplan import IX_GATEWAY

        return IX_GATEWAY

    @property
    def cidr(self) -> IPv4Network:
        from .netplan import IX_CIDR

        return IX_CIDR
