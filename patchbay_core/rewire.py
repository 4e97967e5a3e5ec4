"""Changing a built lab under running code: replug, default route, link down/up, new and
extra addresses, interfaces added and removed, devices and routers removed.

Every change follows the lab's rule: check and plan under the lab lock (mistakes raise
TopologyError before anything changes), then do the kernel work on the lab's kernel thread
in as few netlink batches as it takes; when that fails, what was already changed is put back
and the plan released. Each change emits an event and rewrites state.json.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_interface
from typing import TYPE_CHECKING

from . import ipv6, netplan
from .errors import PatchbayError, TopologyError
from .netops import Addr, LinkDel, LinkSet, NetOp, Route
from .netplan import LanPlug, PoolExhausted
from .processes import kill_processes_in
from .topology import DeviceIfaceState, DeviceState, NodeState, RouterState, ns_of

if TYPE_CHECKING:
    from .handles import Router
    from .lab import Lab

log = logging.getLogger(__name__)


class Rewiring:
    """The lab's runtime topology changes (the handles' replug_iface, link_down, ... land here)."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab

    # ---- device interfaces ------------------------------------------------------------------

    async def replug_iface(self, device: DeviceState, name: str, router: Router | str) -> IPv4Address:
        """Move interface `name` onto another router's LAN: same interface name, a new address
        from the new router's pool, the default route (if it is the default) via the new
        gateway, its link conditions and secondary addresses kept."""
        lab = self._lab
        field = f"replug_iface({name!r})"
        with lab._lock:
            iface = _iface(device, name)
            target = lab._resolve_router(router, device.name, field)
            if target is iface.router:
                raise TopologyError(f"{name} is already plugged into router {target.name!r}", node=device.name,
                                    field=field)
            new_plug = lab._plan_plug(device, name, target, field, ifindex=device.alloc_ifindex())
        old_router, old_plug = iface.router, iface.attachment

        def apply() -> None:
            self._unplug(device, iface)
            try:
                self._plug(device, iface, target, new_plug)
            except BaseException:
                with contextlib.suppress(PatchbayError):
                    self._unplug(device, iface)
                    self._plug(device, iface, old_router, old_plug)
                raise

        try:
            await lab._check_open().run(apply)
        except BaseException:
            with lab._lock:
                lab._release_plug(target, new_plug)
            raise
        with lab._lock:
            lab._release_plug(old_router, old_plug)
            _unlink_child(old_router, device)
        lab._event("iface_replugged", device.name, iface=name, **{"from": old_router.name}, to=target.name,
                   old_ip=_str(old_plug.ip), ip=_str(new_plug.ip), ip6=_str(new_plug.v6.ip if new_plug.v6 else None))
        lab._write_state()
        return new_plug.ip  # type: ignore[return-value]

    async def add_iface(self, device: DeviceState, name: str, router: Router | str, condition: object) -> None:
        lab = self._lab
        field = f"add_iface({name!r})"
        netplan.check_ifname(name, node=device.name, field=field)
        with lab._lock:
            if name in device.ifaces:
                raise TopologyError(f"interface {name!r} exists already", node=device.name, field=field)
            target = lab._resolve_router(router, device.name, field)
            from .link_shaping import limits_of

            up = limits_of(condition, device.name, field) if condition is not None else lab._default_emulation  # type: ignore[arg-type]
            plug = lab._plan_plug(device, name, target, field, ifindex=device.alloc_ifindex())
            iface = DeviceIfaceState(name, target, plug, up=up)
            device.ifaces[name] = iface
            becomes_default = device.default_iface is None
            if becomes_default:
                device.default_iface = name

        def apply() -> None:
            try:
                self._plug(device, iface, target, plug)
            except BaseException:
                with contextlib.suppress(PatchbayError):
                    self._unplug(device, iface)
                raise

        try:
            await lab._check_open().run(apply)
        except BaseException:
            with lab._lock:
                device.ifaces.pop(name, None)
                if becomes_default:
                    device.default_iface = None
                lab._release_plug(target, plug)
            raise
        lab._event("iface_added", device.name, iface=name, ip=_str(plug.ip), router=target.name,
                   default=device.default_iface == name)
        lab._write_state()

    async def remove_iface(self, device: DeviceState, name: str) -> None:
        lab = self._lab
        with lab._lock:
            iface = _iface(device, name)
            if len(device.ifaces) == 1:
                raise TopologyError(f"{name} is the device's last interface; remove the device instead "
                                    "(lab.remove_device)", node=device.name, field=f"remove_iface({name!r})")
            was_default = device.default_iface == name
            new_default = next(n for n in device.ifaces if n != name) if was_default else device.default_iface

        def apply() -> None:
            self._unplug(device, iface)
            with lab._lock:
                del device.ifaces[name]  # gone from the kernel: routes are worked out without it
            if new_default != device.default_iface:
                device.default_iface = new_default
                self._route_default(device)

        await lab._check_open().run(apply)
        with lab._lock:
            lab._release_plug(iface.router, iface.attachment)
            _unlink_child(iface.router, device)
        lab._event("iface_removed", device.name, iface=name, router=iface.router.name)
        if was_default:
            lab._event("default_route_changed", device.name, iface=new_default, previous=name)
        lab._write_state()

    async def set_default_route(self, device: DeviceState, name: str) -> None:
        """Send everything not on a local network out of `name`, via its router."""
        lab = self._lab
        with lab._lock:
            _iface(device, name)
        old = device.default_iface

        def apply() -> None:
            device.default_iface = name
            try:
                self._route_default(device)
            except BaseException:
                device.default_iface = old
                raise

        await lab._check_open().run(apply)
        lab._event("default_route_changed", device.name, iface=name, previous=old)
        lab._write_state()

    async def set_link(self, device: DeviceState, name: str, up: bool) -> None:
        """Administratively down (everything sent to or from it is lost) or up again."""
        lab = self._lab
        with lab._lock:
            iface = _iface(device, name)

        def apply() -> None:
            ns = ns_of(device)
            if up == iface.admin_up:
                return
            # Down, the kernel drops the routes through the link, and its IPv6 link-local
            # address (global ones stay: keep_addr_on_down); up, both come back.
            ops: list[NetOp] = [LinkSet(iface.ifindex, name, up=up)]
            v6 = iface.attachment.v6
            if up and v6 is not None:
                ops.append(Addr(iface.ifindex, name, v6.ll, 64, nodad=not lab._dad))
            ns.apply(ops)
            iface.admin_up = up
            if up and v6 is not None and lab._dad:
                ipv6.wait_dad(ns)
            if up and device.default_iface == name:
                self._route_default(device)

        await lab._check_open().run(apply)
        lab._event("link_up" if up else "link_down", device.name, iface=name)
        lab._write_state()

    async def renew_ip(self, device: DeviceState, name: str) -> IPv4Address:
        """A new address on the same network (a DHCP renewal that changed it); the old one is gone."""
        lab = self._lab
        field = f"renew_ip({name!r})"
        with lab._lock:
            iface = _iface(device, name)
            router = iface.router
            if router.pool is None or iface.ip is None:
                raise TopologyError(f"{name} has no IPv4 address to renew (an IPv6-only network)",
                                    node=device.name, field=field)
            try:
                new_ip = router.pool.allocate()
            except PoolExhausted:
                raise TopologyError(f"router {router.name!r} has no address left in {router.pool.cidr}",
                                    node=device.name, field=field) from None
        old_plug = iface.attachment
        assert old_plug.ip is not None and old_plug.subnet is not None and isinstance(new_ip, IPv4Address)
        new_plug = replace(old_plug, ip=new_ip)

        def apply() -> None:
            lab._lan_host_added(router)
            # The new address first: the interface never goes without one (the old one was the
            # primary; promote_secondaries lets the new one take its place).
            ops: list[NetOp] = [Addr(iface.ifindex, name, new_ip, old_plug.subnet.prefixlen),
                                Addr(iface.ifindex, name, old_plug.ip, old_plug.subnet.prefixlen, add=False)]
            if iface.admin_up and device.default_iface == name:
                ops += new_plug.default_routes(v6=False)
            ns_of(device).apply(ops)
            iface.attachment = new_plug
            lab._shape(device, iface)  # its download filter matches the address
            lab._retarget_forwards(device.name, router, old_plug.ip, new_ip)

        try:
            await lab._check_open().run(apply)
        except BaseException:
            with lab._lock:
                router.pool.release(new_ip)
            raise
        with lab._lock:
            router.pool.release(old_plug.ip)
        lab._event("ip_renewed", device.name, iface=name, old_ip=str(old_plug.ip), ip=str(new_ip))
        lab._write_state()
        return new_ip

    async def add_ip(self, device: DeviceState, name: str, ip_with_prefix: str) -> IPv4Interface | IPv6Interface:
        """A secondary address on the interface (e.g. a VPN's); it stays across replugs."""
        lab = self._lab
        field = f"add_ip({name!r})"
        with lab._lock:
            iface = _iface(device, name)
            try:
                address = ip_interface(str(ip_with_prefix))
            except ValueError:
                raise TopologyError(f"{ip_with_prefix!r} is not an IPv4 or IPv6 address with a prefix (e.g. "
                                    "'10.8.0.2/24')", node=device.name, field=field) from None
            if address in iface.extra_ips or address.ip in (iface.ip, iface.ip6):
                raise TopologyError(f"{name} already has {address}", node=device.name, field=field)

        def apply() -> None:
            if address.version == 4:
                lab._lan_host_added(iface.router)
            ns_of(device).apply([Addr(iface.ifindex, name, address.ip, address.network.prefixlen)])
            iface.extra_ips.append(address)

        await lab._check_open().run(apply)
        lab._event("ip_added", device.name, iface=name, ip=str(address))
        lab._write_state()
        return address

    # ---- removing nodes ----------------------------------------------------------------------

    async def remove_device(self, device: DeviceState) -> None:
        """End the device's code and processes, then its interfaces and namespace."""
        lab = self._lab
        with lab._lock:
            if not device.alive:
                raise TopologyError("is not in the lab (removed already?)", node=device.name)
            device.alive = False  # handles raise NodeGone from now on
        self._stop_node(device)
        lab._forget_node_log(device)

        def apply() -> None:
            # Best effort from here on: the device is gone for its users whatever fails, so
            # every step runs, and the namespace is closed last in any case.
            try:
                for iface in device.ifaces.values():
                    with _logged(f"{device.name}: unshape {iface.name}"):
                        lab._unshape(device, iface)
                    with _logged(f"{device.name}: drop forwards to {iface.name}"):
                        lab._retarget_forwards(device.name, iface.router, iface.ip, None)
                # Links explicitly: the namespace itself goes only once the kernel gets to it,
                # and the device's addresses may be handed out again at once.
                with _logged(f"{device.name}: delete its links"):
                    ns_of(device).apply([LinkDel(i.ifindex, i.name) for i in device.ifaces.values()])
            finally:
                lab._unmake_device(device)

        try:
            await lab._check_open().run(apply)
        finally:
            self._forget_device(device)
        lab._event("device_removed", device.name)
        lab._write_state()

    def _forget_device(self, device: DeviceState) -> None:
        lab = self._lab
        with lab._lock:
            for iface in device.ifaces.values():
                lab._release_plug(iface.router, iface.attachment)
                with contextlib.suppress(ValueError):
                    iface.router.children.remove(device)
            lab._nodes.pop(device.name, None)
            lab._devices.pop(device.name, None)
        lab._names.forget(device.name)

    async def remove_router(self, router: RouterState) -> None:
        """Remove a router nothing hangs on any more (devices and chained routers first)."""
        lab = self._lab
        with lab._lock:
            if not router.alive:
                raise TopologyError("is not in the lab (removed already?)", node=router.name)
            if router.children:
                names = ", ".join(f"{c.kind} {c.name!r}" for c in router.children)
                raise TopologyError(f"cannot be removed while {names} hang(s) on it: remove or replug them first",
                                    node=router.name)
            router.alive = False
        self._stop_node(router)
        lab._forget_node_log(router)

        def apply() -> None:
            lab._shaper.drop_node(ns_of(router).inode)
            lab._stop_nat64(router)
            for owner, cidr, via in router.pool_routes:
                with contextlib.suppress(PatchbayError):
                    ns_of(owner).apply([netplan.pool_route(cidr, via, add=False)])
            ix_links = [LinkDel(index, name) for index, name in lab._ix_links_of(router)]
            if ix_links:
                ns_of(lab._ix).apply(ix_links)
            if router.parent is not None and router.uplink is not None:
                with contextlib.suppress(PatchbayError):
                    ns_of(router).apply([LinkDel(router.uplink.ifindex, router.uplink.iface)])
            ns_of(router).close()
            router.ns = None

        await lab._check_open().run(apply)
        with lab._lock:
            lab._unplan_router(router)
        if lab._regions:
            await lab._check_open().run(lab._reroute_regions)
        lab._names.forget(router.name)
        lab._event("router_removed", router.name)
        lab._write_state()

    def _stop_node(self, node: NodeState) -> None:
        """End the node's threads and every process living in its namespace (also those still
        queued at the spawner when the node was marked gone: they are forked first)."""
        if node.runtime is not None:
            node.runtime.close()
            node.runtime = None
        spawner = self._lab._spawner
        if spawner is not None:
            spawner.barrier()
        if node.ns is not None:
            kill_processes_in(node.ns.inode)

    # ---- kernel-thread helpers -----------------------------------------------------------------

    def _unplug(self, device: DeviceState, iface: DeviceIfaceState) -> None:
        """Take an interface off its router: its wires, forwards to it, the link itself."""
        lab = self._lab
        lab._unshape(device, iface)
        lab._retarget_forwards(device.name, iface.router, iface.ip, None)
        ns_of(device).apply([LinkDel(iface.ifindex, iface.name)])

    def _plug(self, device: DeviceState, iface: DeviceIfaceState, router: RouterState, plug: LanPlug) -> None:
        """Put an interface on `router`'s LAN with `plug`'s address, in the state it had (up or
        down, default route or not, secondary addresses, link conditions)."""
        lab = self._lab
        ns = ns_of(device)
        if plug.ip is not None:
            lab._lan_host_added(router, 1 + sum(x.version == 4 for x in iface.extra_ips))
        if plug.v6 is not None:
            # A device that had no IPv6 yet (its routers were IPv4-only) gets it from this link on.
            ns.write_sysctls(lab._device_v6_sysctls())
        ns_of(lab._ix).apply(plug.ix_ops(ns))
        iface.router, iface.attachment, iface.down_prio = router, plug, 0
        ops: list[NetOp] = plug.addr_ops()
        ops += [Addr(plug.ifindex, plug.iface, x.ip, x.network.prefixlen) for x in iface.extra_ips]
        if iface.admin_up:
            ops.insert(0, LinkSet(plug.ifindex, plug.iface, up=True))
        ns.apply(ops)
        if plug.v6 is not None and lab._dad and iface.admin_up:
            ipv6.wait_dad(ns)
        if device not in router.children:
            router.children.append(device)
        if iface.admin_up and device.default_iface == iface.name:
            self._route_default(device)
        lab._shape(device, iface)
        lab._resolve_forwards_for(device)

    def _route_default(self, device: DeviceState) -> None:
        """The kernel's default routes match `device.default_iface` (none while it is down):
        IPv4 via the router; IPv6 via its global address, or learnt from its router
        advertisement in RA-driven labs."""
        lab = self._lab
        ns = ns_of(device)
        iface = device.ifaces[device.default_iface] if device.default_iface else None
        if iface is None or not iface.admin_up or iface.ip is None:
            with contextlib.suppress(PatchbayError):
                ns.apply([Route(None, add=False)])
        if lab._ra_driven or iface is None or not iface.admin_up or iface.ip6 is None:
            for other in device.ifaces.values():
                if other.ip6 is not None and other is not iface and lab._ra_driven and other.admin_up:
                    ns.write_sysctls({f"net.ipv6.conf.{other.name}.accept_ra_defrtr": "0"})
            with contextlib.suppress(PatchbayError):
                ns.apply([Route(None, v6=True, add=False)])
        if iface is None or not iface.admin_up:
            return
        ns.apply(iface.attachment.default_routes(v6=not lab._ra_driven))
        if lab._ra_driven:
            lab._ra_default_route(device, iface)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """A step of a removal that may fail without stopping the others (logged, not raised)."""
    try:
        yield
    except Exception:
        log.exception("%s failed", what)


def _iface(device: DeviceState, name: str) -> DeviceIfaceState:
    iface = device.ifaces.get(name)
    if iface is None:
        raise TopologyError(f"no interface {name!r} (has: {', '.join(device.ifaces) or 'none'})", node=device.name)
    return iface


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _unlink_child(router: RouterState, device: DeviceState) -> None:
    """The device leaves the router's children once no interface of it is on that router."""
    if all(i.router is not router for i in device.ifaces.values()):
        with contextlib.suppress(ValueError):
            router.children.remove(device)
