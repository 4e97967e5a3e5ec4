"""The Lab: owns namespaces, threads and processes of one topology, and builds it.

Building a node happens in two steps:
1. plan (caller's thread, under the lab lock): check the request, pick addresses and
   interface indexes, reserve the name. Mistakes raise TopologyError before anything exists.
2. make (the lab's kernel thread): create the namespace, send one netlink batch per namespace
   touched, apply nft rules. A failure undoes what this step made and releases the plan, so
   nothing of a failed node remains.
Closing ends node threads, kills the lab's processes (its PID namespace), closes every
namespace fd and waits until the kernel has removed them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import resource
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Any

import anyio

from . import diagnostics, ipv6, link_shaping, netplan, nodelog, nptv6, router_rules, sampler
from .builders import DeviceBuilder, RouterBuilder
from .capture import DEFAULT_SNAPLEN, Capture, capture_path
from .diagnostics import MappingEntry
from .dns import LabNames, check_ip, check_name
from .errors import NetlinkError, NftError, NodeGone, PatchbayError, TopologyError
from .execution import NodeRuntime
from .firewall import Firewall, FirewallConfig
from .futures import wait_future
from .handles import Device, Ix, Region, Router
from .kernel.namespace import NetNs
from .kernel.nat64 import Nat64Translator
from .kernel.nsfactory import NamespaceFactory
from .kernel.worker import KernelWorker
from .nat import Nat, NatConfig, NatV6Mode
from .nat64 import Nat64Config, steering_ruleset, tun_routes
from .netops import Addr, LinkDel, LinkSet, Route, VethPair
from .netplan import AddressPool, IxPort, Lan, LanPlug, PoolExhausted, Uplink
from .opts import Ipv6Dad, Ipv6Provisioning, LabOpts
from .outdir import LabOutput
from .plugins import lookup_preset
from .processes import ExitWatcher, Spawner
from .regions import DEFAULT_LATENCIES, DEFAULT_REGIONS, RegionLink, first_hops, link_addresses
from .rewire import Rewiring
from .routers import IpSupport, Pool, RouterPreset, RouterSpec
from .rules import PortForward, RuleContext
from .topology import (
    DeviceIfaceState,
    DeviceState,
    ForwardState,
    IxState,
    NodeState,
    RegionLinkState,
    RegionState,
    RouterConfig,
    RouterState,
    ns_of,
)
from .userns import ping_group_range

_ns = ns_of

log = logging.getLogger(__name__)

TEARDOWN_TIMEOUT_S = 10.0
NAT64_TUN = "nat64"
NAT64_PORTS = (1024, 65535)  # the translator's own address: all of its ports are the translator's
_lab_numbers = itertools.count(1)


class Lab:
    """A lab: `async with Lab(LabOpts(...)) as lab:` or `lab = await Lab.create(opts)`."""

    def __init__(self, opts: LabOpts | None = None) -> None:
        self.opts = opts or LabOpts()
        self.label = self.opts.label or f"lab{next(_lab_numbers)}"
        self._lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._ids = itertools.count(1)
        self._nodes: dict[str, NodeState] = {}
        self._routers: dict[str, RouterState] = {}
        self._devices: dict[str, DeviceState] = {}
        self._pools = netplan.PoolCounters()
        self._ix = IxState(kind="ix", name="ix", id=0, router_slots=netplan.ix_router_slots())
        self._kernel: KernelWorker | None = None
        self._factory: NamespaceFactory | None = None
        self._regions: dict[str, RegionState] = {}
        self._region_links = 0
        self._spawner: Spawner | None = None
        self._output: LabOutput | None = None
        self._ping_range = ping_group_range()
        self._shaper = link_shaping.LinkShaper(self.opts.seed, self.opts.link_backend)
        self._default_emulation = link_shaping.emulation_from_env()
        self._names = LabNames(self.label)
        self._rewire = Rewiring(self)
        self._captures: set[Capture] = set()
        self._advertiser: sampler.PeriodicSampler | None = None
        self._node_logs: nodelog.NodeLogRouter | None = None
        self._sampler: sampler.PeriodicSampler | None = None
        self._exits: ExitWatcher | None = None
        self._last_counters: dict[str, dict[str, tuple[int, int, int, int]]] = {}
        self._dad = self.opts.ipv6_dad is Ipv6Dad.ENABLED
        self._ra_driven = self.opts.ipv6_provisioning is Ipv6Provisioning.RA_DRIVEN
        self._ix_v6 = False

    # ---- life cycle ------------------------------------------------------------------------

    @classmethod
    async def create(cls, opts: LabOpts | None = None) -> Lab:
        lab = cls(opts)
        await lab.start()
        return lab

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Make the IX namespace and the output directory."""
        if self._started:
            return
        # What can be wrong with the options is checked before anything exists. "auto" cannot
        # be wrong: it probes the kernel for netem only when a first link condition needs it.
        if self.opts.link_backend != "auto":
            link_shaping.check_backend(self.opts.link_backend, self.opts.seed)
        outdir = self.opts.resolved_outdir()
        if outdir is not None:
            try:
                self._output = LabOutput(outdir, self.label)
            except OSError as exc:
                raise PatchbayError(f"cannot write the lab's output under {outdir.path}: {exc.strerror}") from exc
        self._started = True
        _raise_fd_limit()
        _grow_fd_table()
        self._kernel = KernelWorker(self.label)
        try:
            with anyio.CancelScope(shield=True):
                await self._kernel.run(self._make_ix)
        except BaseException as exc:
            with self._lock:
                self._closed = True
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_sync)
            if isinstance(exc, NetlinkError) and exc.errno == errno.EPERM:
                raise PatchbayError(
                    "creating a network namespace was refused (EPERM): run as root, or call "
                    "patchbay_core.init_userns() before any thread starts"
                ) from exc
            raise
        self._event("lab_created", None, label=self.label)
        if self._output is not None:
            self._node_logs = nodelog.router()
            self._watch_node_log(self._ix)
            interval = sampler.interval_from_env()
            if interval > 0:
                self._sampler = sampler.PeriodicSampler(self.label, interval, self._sample_counters)
        if self._ra_driven:
            # Routers advertise again before hosts' routes expire (the RA lifetime is 1800 s).
            self._advertiser = sampler.PeriodicSampler(self.label, ipv6.READVERTISE_S, self._readvertise)
        self._write_state()

    def _make_ix(self) -> None:
        ns = NetNs.create("ix", netplan.ix_sysctls(self._ping_range), stay=True)
        try:
            # Where br_netfilter is loaded (Docker hosts), it would send every frame crossing
            # the IX bridge through the IP hooks: the IX is a plain switch. Per namespace, and
            # only there when the module is.
            with contextlib.suppress(PatchbayError):
                ns.write_sysctls(netplan.IX_BRIDGE_NO_NETFILTER)
            self._ix.bridge_ifindex = self._ix.alloc_ifindex()
            ns.apply(netplan.ix_ops(self._ix.bridge_ifindex))
        except BaseException:
            ns.close()
            raise
        self._ix.ns = ns
        self._ix.alive = True
        self._factory = NamespaceFactory(self.label, ns.fd, netplan.base_sysctls(self._ping_range))

    async def close(self) -> None:
        """End everything of the lab. Safe to call twice."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        """End node threads, then processes, then wires and namespaces; each step runs even
        when an earlier one failed."""
        with self._lock:
            nodes = [*self._devices.values(), *self._routers.values(),
                     *(region.router for region in self._regions.values()), self._ix]
            for node in nodes:
                node.alive = False
        try:
            with self._lock:
                captures = list(self._captures)
            for cap in captures:  # a capture's socket holds its namespace: stop it first
                with _logged("stopping a packet capture"):
                    cap.stop_sync()
            for periodic in (self._sampler, self._advertiser):
                if periodic is not None:
                    with _logged("stopping a periodic job"):
                        periodic.close()
            for node in nodes:
                if node.runtime is not None:
                    with _logged(f"stopping {node.label}'s threads"):
                        node.runtime.close()
            if self._spawner is not None:
                with _logged("ending the lab's processes"):
                    self._spawner.close()
            if self._exits is not None:
                with _logged("stopping the exit watcher"):
                    self._exits.close()
            for node in nodes:
                self._forget_node_log(node)
            with _logged("removing the lab's name files"):
                self._names.close()
            if self._kernel is not None:
                try:
                    self._kernel.call(self._teardown, nodes)
                finally:
                    self._kernel.stop()
        finally:
            self._event("lab_closed", None)
            if self._output is not None:
                self._output.close()

    def _new_netns(self, node: str, sysctls: dict[str, str]) -> NetNs:
        assert self._factory is not None
        return self._factory.take(node, sysctls)

    def _teardown(self, nodes: list[NodeState]) -> None:
        """Close every namespace; wait until the kernel removed them: the IX holds nothing but
        its bridge (router ports and LAN lowers go when their router's namespace goes)."""
        self._shaper.close()
        if self._factory is not None:
            self._factory.close()
        for node in nodes:
            if isinstance(node, RouterState):
                with _logged(f"stopping {node.label}'s NAT64 translator"):
                    self._stop_nat64(node)
            if node is not self._ix and node.ns is not None:
                node.ns.close()
        ix_ns = self._ix.ns
        if ix_ns is None:
            return
        deadline = time.monotonic() + TEARDOWN_TIMEOUT_S
        keep = (netplan.LOOPBACK_IFINDEX, self._ix.bridge_ifindex)
        while True:
            ports = [link for link in ix_ns.links() if link.ifindex not in keep]
            if not ports:
                break
            if time.monotonic() > deadline:
                log.warning(
                    "lab %s: %d link(s) still in the IX after %.0fs; something outside the "
                    "lab still holds a namespace (a thread or process started in a node?)",
                    self.label, len(ports), TEARDOWN_TIMEOUT_S,
                )
                break
            time.sleep(0.002)
        ix_ns.close()

    def _check_open(self) -> KernelWorker:
        if self._closed:
            raise PatchbayError(f"lab {self.label!r} is closed")
        if not self._started or self._kernel is None:
            raise PatchbayError(f"lab {self.label!r} is not started: use `async with Lab(...)` or Lab.create()")
        return self._kernel

    def __del__(self) -> None:
        if self._started and not self._closed:
            warnings.warn(f"lab {self.label!r} was never closed: use `async with Lab(...)` or `await lab.close()`",
                          ResourceWarning, stacklevel=1)

    # ---- public accessors ------------------------------------------------------------------

    def add_router(self, name: str) -> RouterBuilder:
        return RouterBuilder(self, name)

    def add_device(self, name: str) -> DeviceBuilder:
        return DeviceBuilder(self, name)

    @property
    def ix(self) -> Ix:
        return Ix(self, self._ix)

    @property
    def outdir(self) -> Any:
        return self._output.path if self._output else None

    def routers(self) -> list[Router]:
        with self._lock:
            return [Router(self, s) for s in self._routers.values() if s.alive]

    def devices(self) -> list[Device]:
        with self._lock:
            return [Device(self, s) for s in self._devices.values() if s.alive]

    def router(self, name: str) -> Router:
        with self._lock:
            state = self._routers.get(name)
        if state is None or not state.alive:
            raise TopologyError(f"no router named {name!r} in lab {self.label!r}", node=name)
        return Router(self, state)

    def device(self, name: str) -> Device:
        with self._lock:
            state = self._devices.get(name)
        if state is None or not state.alive:
            raise TopologyError(f"no device named {name!r} in lab {self.label!r}", node=name)
        return Device(self, state)

    @classmethod
    async def load(cls, path: str | os.PathLike[str], opts: LabOpts | None = None) -> Lab:
        """A lab built from a topology TOML file (see docs/topology.md); closed again if the
        file or the build fails."""
        from .topofile import load_lab

        return await load_lab(path, opts)

    async def remove_device(self, device: Device | str) -> None:
        """End a device: its code, its processes, its interfaces. Its handles raise NodeGone."""
        await self._rewire.remove_device(self._resolve_device(device, "remove_device"))

    async def remove_router(self, router: Router | str) -> None:
        """End a router; refused (naming them) while devices or routers hang on it."""
        await self._rewire.remove_router(self._resolve_router(router, "remove_router", "router"))

    def _resolve_device(self, ref: Device | str, field: str) -> DeviceState:
        if isinstance(ref, Device):
            if ref._lab is not self:
                raise TopologyError(f"device {ref.name!r} belongs to another lab", node=ref.name, field=field)
            state = ref._state
        else:
            found = self._devices.get(str(ref))
            if found is None:
                known = ", ".join(self._devices) or "none"
                raise TopologyError(f"unknown device {ref!r} (devices: {known})", node=str(ref), field=field)
            state = found
        if not state.alive:
            raise TopologyError("was removed already", node=state.name, field=field)
        return state

    # ---- packet capture -------------------------------------------------------------------

    async def capture_all(self) -> list[Capture]:
        """Capture every interface of every device and router (pcapng files in the outdir)."""
        with self._lock:
            nodes: list[tuple[NodeState, list[str]]] = [(d, list(d.ifaces)) for d in self._devices.values() if d.alive]
            nodes += [(r, [i.name for i in Router(self, r).interfaces()]) for r in self._routers.values() if r.alive]
        return [await self._capture(node, iface) for node, ifaces in nodes for iface in ifaces]

    async def _capture(self, state: NodeState, iface: str, snaplen: int = DEFAULT_SNAPLEN,
                       path: str | os.PathLike[str] | None = None) -> Capture:
        self._check_open()
        if path is None:
            if self._output is None:
                raise PatchbayError(f"{state.label}: a capture needs an outdir (LabOpts(outdir=...) or "
                                    "PATCHBAY_OUTDIR), or path=")
            path = capture_path(self._output.path, state.kind, state.name, iface)

        def stopped(cap: Capture) -> None:
            with self._lock:
                self._captures.discard(cap)
            self._event("capture_stopped", state.name, iface=iface, path=cap.path.name, packets=cap.packets,
                        dropped=cap.dropped)

        cap = await Capture.start(_ns(state).fd, state.name, iface, path, snaplen=snaplen, on_stop=stopped)
        with self._lock:
            self._captures.add(cap)
        self._event("capture_started", state.name, iface=iface, path=cap.path.name)
        return cap

    # ---- names ----------------------------------------------------------------------------

    def dns_entry(self, name: str, ip: str | IPv4Address | IPv6Address) -> None:
        """Resolve `name` to `ip` in every node (its /etc/hosts), now and for nodes made later."""
        self._names.add_lab_entry(check_name(name, "lab"), check_ip(ip, "lab", "dns_entry"))
        self._event("dns_entry_added", None, name=name, ip=str(ip))

    def set_nameserver(self, ip: str | IPv4Address | IPv6Address) -> None:
        """The nameserver every node's /etc/resolv.conf names (a server inside the lab)."""
        self._names.set_nameserver(check_ip(ip, "lab", "set_nameserver"))
        self._event("nameserver_set", None, ip=str(ip))

    # ---- routers ---------------------------------------------------------------------------

    async def _build_router(self, builder: RouterBuilder, *, region_router: bool = False) -> Router:
        with self._lock:
            state = self._plan_router(builder, region_router=region_router)

        def make() -> None:
            self._make_router(state)
            state.alive = True
            if self._regions and not region_router:
                self._reroute_regions()

        await self._settle(make, lambda: self._unplan_router(state))
        self._watch_node_log(state)
        self._event("region_added" if region_router else "router_added", state.name, **state.snapshot())
        if state.uplink is not None:
            self._event("iface_added", state.name, iface=state.uplink.iface, ip=_str(state.uplink.ip),
                        upstream=state.parent.name if state.parent else "ix")
        self._write_state()
        return Router(self, state)

    def _plan_router(self, builder: RouterBuilder, *, region_router: bool = False) -> RouterState:
        name, s = builder.name, builder.settings
        self._check_new_name(name)
        spec = self._router_spec(s.preset, name)
        nat = _resolve_nat(s.nat if s.nat is not None else spec.nat, name)
        firewall = _resolve_firewall(s.firewall if s.firewall is not None else spec.firewall, name)
        ip_support = s.ip_support or spec.ip_support or IpSupport.V4_ONLY
        nat_v6 = s.nat_v6 or spec.nat_v6 or NatV6Mode.NONE
        if nat is not None and ip_support is IpSupport.V6_ONLY:
            raise TopologyError("an IPv6-only router has no IPv4 LAN to NAT: drop .nat() (NAT64 is .nat_v6(NAT64))",
                                node=name, field="nat")
        if nat_v6 is not NatV6Mode.NONE and ip_support is IpSupport.V4_ONLY:
            raise TopologyError(f"nat_v6 {nat_v6.value} needs IPv6 downstream: use ip_support DUAL_STACK or V6_ONLY",
                                node=name, field="nat_v6")
        # The pool: asked for, else the preset's, else the NAT model's, else public unless NATed.
        pool = s.pool or spec.pool or (nat.downstream_pool if nat else None) or (Pool.PRIVATE if nat else Pool.PUBLIC)
        mtu = _check_mtu(s.mtu, name)
        downlink = link_shaping.limits_of(s.downlink_condition, name, "downlink_condition")
        forwards = {}
        for proto, port, device, device_port in s.port_forwards:
            fwd = _check_forward(proto, port, device, device_port, name)
            if (fwd.proto, fwd.port) in forwards:
                raise TopologyError(f"{proto} port {port} is forwarded twice", node=name, field="port_forward")
            forwards[(fwd.proto, fwd.port)] = fwd
        if s.isolated and s.upstream is not None:
            raise TopologyError("an isolated router has no upstream; drop .isolated() or .upstream()",
                                node=name, field="upstream")
        parent = self._resolve_router(s.upstream, name, "upstream") if s.upstream is not None else None
        if (parent is not None and parent.config is not None and parent.config.nat_v6 is NatV6Mode.NPTV6
                and ip_support is not IpSupport.V4_ONLY):
            raise TopologyError(f"router {parent.name!r} translates only its own IPv6 prefix (NPTv6); an IPv6 "
                                "router behind it would have no way back: use V4_ONLY here, or MASQUERADE there",
                                node=name, field="upstream")
        if s.region is not None:
            if s.upstream is not None or s.isolated:
                raise TopologyError("a router in a region hangs off the region; drop .upstream()/.isolated()",
                                    node=name, field="region")
            parent = self._resolve_region(s.region, name).router

        has_v4, has_v6 = ip_support is not IpSupport.V6_ONLY, ip_support is not IpSupport.V4_ONLY
        cidr = self._pick_downstream_cidr(s.downstream_cidr, pool, nat is not None, parent, name) if has_v4 else None
        cidr6 = self._pick_downstream_cidr6(pool, name) if has_v6 else None
        state = RouterState(
            kind="router", name=name, id=next(self._ids), parent=parent, forwards=forwards,
            auto_pool=s.downstream_cidr is None,
            config=RouterConfig(
                nat=nat, nat_v6=nat_v6, firewall=firewall, ip_support=ip_support, pool=pool,
                mtu=mtu, block_icmp_frag_needed=s.block_icmp_frag_needed, isolated=s.isolated,
            ),
            downlink=downlink,
        )
        state.lan = Lan(lower_name=f"l{state.id}", lower_ifindex=self._ix.alloc_ifindex(),
                        ifindex=state.alloc_ifindex(), pool=AddressPool(cidr) if cidr else None, mtu=mtu,
                        pool6=AddressPool(cidr6) if cidr6 else None, dad=self._dad)
        try:
            if nat_v6 is NatV6Mode.NPTV6:
                assert isinstance(cidr6, IPv6Network)
                state.npt_prefix6 = self._pick_npt_prefix(cidr6, name)
            if not s.isolated:
                state.uplink = self._plan_router_uplink(state, parent)
            if nat_v6 is NatV6Mode.NAT64:
                self._plan_nat64(state, parent, s.nat64_timeouts)
            if forwards and (state.uplink is None or state.uplink.ip is None or state.pool is None):
                raise TopologyError("port forwards need IPv4 on the router's WAN and LAN", node=name,
                                    field="port_forward")
        except BaseException:
            if state.uplink is not None:
                self._release_uplink(state)
            if s.downstream_cidr is None and cidr is not None:
                self._pools.release(cidr)
            if cidr6 is not None:
                self._pools.release(cidr6)
            raise
        state.pool_routes = self._plan_pool_routes(state)
        self._nodes[name] = state
        if not region_router:
            self._routers[name] = state
        if parent is not None:
            parent.children.append(state)
        return state

    def _router_spec(self, preset: RouterPreset | str | None, node: str) -> RouterSpec:
        if preset is None:
            return RouterSpec()
        key = preset.value if isinstance(preset, RouterPreset) else preset
        spec = lookup_preset("router", key, node=node, field="preset")
        assert isinstance(spec, RouterSpec)
        return spec

    def _pick_downstream_cidr(self, requested: IPv4Network | str | None, pool: Pool, nat: bool,
                              parent: RouterState | None, node: str) -> IPv4Network:
        """The router's pool. Automatic pools avoid every range in use. An explicit one may
        overlap only another NATed LAN outside its own chain (two homes on 192.168.1.0/24):
        never the IX, a routed pool, or a pool it sits behind."""
        in_use: list[IPv4Network | IPv6Network] = [netplan.IX_CIDR]
        in_use += [r.pool.cidr for r in self._all_routers() if r.pool]
        if requested is None:
            try:
                return self._pools.next_cidr(pool.value, in_use)
            except IndexError:
                raise TopologyError(f"no {pool.value} downstream pool left", node=node, field="pool") from None
        try:
            cidr = ip_network(str(requested))
        except ValueError as exc:
            raise TopologyError(f"{requested!r} is not a network: {exc}", node=node, field="downstream_cidr") from None
        if not isinstance(cidr, IPv4Network) or cidr.prefixlen > 30:
            raise TopologyError(f"{cidr} must be an IPv4 network of /30 or larger", node=node, field="downstream_cidr")
        chain = set()
        hop = parent
        while hop is not None:
            chain.add(hop.name)
            hop = hop.parent
        for other in self._all_routers():
            if other.pool is None or not cidr.overlaps(other.pool.cidr):  # type: ignore[arg-type]
                continue
            assert other.config is not None
            if not nat or other.config.nat is None or other.name in chain:
                raise TopologyError(f"{cidr} overlaps {other.pool.cidr} of router {other.name!r}", node=node,
                                    field="downstream_cidr")
        if cidr.overlaps(netplan.IX_CIDR):
            raise TopologyError(f"{cidr} overlaps the IX {netplan.IX_CIDR}", node=node, field="downstream_cidr")
        return cidr

    def _plan_nat64(self, state: RouterState, parent: RouterState | None, timeouts: dict[str, int]) -> None:
        """NAT64 maps clients onto an IPv4 address of the router's own, next to its WAN address
        on the same network: the translator owns that address's whole port space, so it never
        meets the router's NAT44 mappings or its own sockets."""
        uplink = state.uplink
        if uplink is None or uplink.ip is None or uplink.subnet is None:
            raise TopologyError("NAT64 needs an IPv4 uplink (an upstream with IPv4)", node=state.name, field="nat_v6")
        pool = self._ix.router_slots if parent is None else parent.pool
        assert pool is not None and state.lan is not None
        try:
            ip = pool.allocate()
        except PoolExhausted:
            raise TopologyError(f"no IPv4 address left in {uplink.subnet} for the NAT64 pool", node=state.name,
                                field="nat_v6") from None
        assert isinstance(ip, IPv4Address)
        state.nat64_ip = ip
        try:
            state.nat64_config = Nat64Config(
                pool4=(ip,), udp_ports=NAT64_PORTS, tcp_ports=NAT64_PORTS, icmp_ids=NAT64_PORTS,
                udp_timeout=timeouts.get("udp", 300), tcp_established_timeout=timeouts.get("tcp_established", 7200),
                icmp_timeout=timeouts.get("icmp", 60),
                mtu4=uplink.mtu or netplan.DEFAULT_MTU, mtu6=state.lan.mtu or netplan.DEFAULT_MTU,
            )
        except ValueError as exc:
            pool.release(ip)
            state.nat64_ip = None
            raise TopologyError(str(exc), node=state.name, field="nat64_timeouts") from None

    def _start_nat64(self, state: RouterState, ns: NetNs) -> None:
        """Kernel thread: the translator on a TUN in the router, the NAT64 prefix routed into
        it, its address on the WAN (so neighbours find it), and replies steered to it."""
        config, uplink = state.nat64_config, state.uplink
        assert config is not None and uplink is not None and uplink.subnet is not None and state.nat64_ip
        ns.apply([Addr(uplink.ifindex, uplink.iface, state.nat64_ip, uplink.subnet.prefixlen)])
        translator = Nat64Translator(config, node=state.name)
        try:
            tun_ifindex = translator.start(ns.fd, NAT64_TUN)
            ns.apply(tun_routes(config.prefix, tun_ifindex, NAT64_TUN))
            ns.nft(steering_ruleset(config, uplink.iface, NAT64_TUN))
        except BaseException:
            translator.close()
            raise
        state.nat64 = translator

    def _release_uplink(self, state: RouterState) -> None:
        """Give back the addresses a router's plan took on its parent's network (or the IX)."""
        uplink = state.uplink
        assert uplink is not None
        if state.parent is not None and state.parent.lan is not None:
            if uplink.ip is not None and state.parent.pool is not None:
                state.parent.pool.release(uplink.ip)
            if uplink.v6 is not None and state.parent.pool6 is not None:
                state.parent.pool6.release(uplink.v6.ip)
            if state.nat64_ip is not None and state.parent.pool is not None:
                state.parent.pool.release(state.nat64_ip)
        else:
            self._ix.router_slots.release(uplink.ip)
            if state.nat64_ip is not None:
                self._ix.router_slots.release(state.nat64_ip)
        state.nat64_ip = None

    def _pick_downstream_cidr6(self, pool: Pool, node: str) -> IPv6Network:
        """Public pools are GUA-like (2001:db8:1:N::/64), private ones ULA (fd10:0:0:N::/64)."""
        kind = "public6" if pool is Pool.PUBLIC else "private6"
        try:
            cidr = self._pools.next_cidr(kind)
        except IndexError:
            raise TopologyError(f"no {kind} IPv6 downstream pool left", node=node, field="pool") from None
        assert isinstance(cidr, IPv6Network)
        return cidr

    def _pick_npt_prefix(self, inside: IPv6Network, node: str) -> IPv6Network:
        outside = nptv6.neutral_prefix(inside)
        for other in self._all_routers():
            if other.npt_prefix6 == outside:
                raise TopologyError(f"NPTv6 prefix {outside} is taken by router {other.name!r}", node=node,
                                    field="nat_v6")
        return outside

    def _all_routers(self) -> list[RouterState]:
        return [*self._routers.values(), *(region.router for region in self._regions.values())]

    def _plan_router_uplink(self, state: RouterState, parent: RouterState | None) -> Uplink:
        """The router's WAN: on the IX, or on its parent's LAN, with the address families both
        sides have (a router keeps an IPv4 uplink for NAT64 even when its LAN is IPv6-only)."""
        cfg = state.config
        assert cfg is not None and state.lan is not None
        wants_v4 = cfg.ip_support is not IpSupport.V6_ONLY or cfg.nat_v6 is NatV6Mode.NAT64
        wants_v6 = cfg.ip_support is not IpSupport.V4_ONLY
        if parent is None:
            try:
                ip = self._ix.router_slots.allocate()
            except PoolExhausted:
                raise TopologyError(f"the IX {netplan.IX_CIDR} has no address left for another router",
                                    node=state.name) from None
            assert isinstance(ip, IPv4Address)
            v6 = netplan.V6Plug(netplan.ix6_address(ip), netplan.IX6_CIDR, netplan.IX6_GATEWAY, self._dad) \
                if wants_v6 else None
            return IxPort(
                port_name=f"r{state.id}", port_ifindex=self._ix.alloc_ifindex(),
                bridge_ifindex=self._ix.bridge_ifindex, iface="ix", ifindex=state.alloc_ifindex(), ip=ip, v6=v6,
            )
        assert parent.lan is not None and parent.config is not None
        pool4 = parent.lan.pool if wants_v4 else None
        pool6 = parent.lan.pool6 if wants_v6 else None
        if pool4 is None and pool6 is None:
            raise TopologyError(f"router {parent.name!r} ({parent.config.ip_support.value}) offers no address "
                                f"family this {cfg.ip_support.value} router uses", node=state.name, field="upstream")
        ip4 = ip6 = None
        try:
            if pool4 is not None:
                ip4 = pool4.allocate()
            if pool6 is not None:
                ip6 = pool6.allocate()
        except PoolExhausted as exc:
            if ip4 is not None and pool4 is not None:
                pool4.release(ip4)
            raise TopologyError(f"router {parent.name!r} has no address left in {exc}", node=state.name,
                                field="upstream") from None
        # A router's MTU is its downstream network's; its uplink is on its parent's network.
        return LanPlug(
            iface="wan", ifindex=state.alloc_ifindex(), lower_ifindex=parent.lan.lower_ifindex,
            ip=ip4, subnet=pool4.cidr if pool4 else None, gateway=pool4.gateway if pool4 else None,  # type: ignore[arg-type]
            mtu=parent.config.mtu,
            v6=netplan.V6Plug(ip6, pool6.cidr, pool6.gateway, self._dad) if pool6 and ip6 else None,  # type: ignore[arg-type]
        )

    def _plan_pool_routes(self, state: RouterState) -> list[tuple[NodeState, Any, Any]]:
        """Where this router's pools must be routed: up the chain until a router translates.
        IPv4: its pool unless it NATs. IPv6: its pool (GUA or ULA alike: a lab is one site),
        or under NPTv6 the outside prefix; nothing under masquerade."""
        assert state.config is not None
        routes: list[tuple[NodeState, Any, Any]] = []
        if state.pool is not None and state.config.nat is None:
            routes += self._routes_up(state, state.pool.cidr, lambda hop: hop.uplink.ip,
                                      lambda hop: hop.config.nat is not None)
        nat_v6 = state.config.nat_v6
        prefix6 = state.npt_prefix6 if nat_v6 is NatV6Mode.NPTV6 else None
        if nat_v6 in (NatV6Mode.NONE, NatV6Mode.NAT64) and state.pool6 is not None:
            prefix6 = state.pool6.cidr
        if prefix6 is not None:
            routes += self._routes_up(state, prefix6, lambda hop: hop.uplink.v6.ip if hop.uplink.v6 else None,
                                      lambda hop: hop.config.nat_v6 in (NatV6Mode.NPTV6, NatV6Mode.MASQUERADE))
        return routes

    def _routes_up(self, state: RouterState, cidr: Any, via_of: Callable[[Any], Any],
                   translates: Callable[[Any], bool]) -> list[tuple[NodeState, Any, Any]]:
        routes: list[tuple[NodeState, Any, Any]] = []
        hop: RouterState = state
        while hop.uplink is not None:
            via = via_of(hop)
            if via is None or via.version != cidr.version:
                break  # the chain has no uplink of this family further up
            owner: NodeState = hop.parent if hop.parent is not None else self._ix
            routes.append((owner, cidr, via))
            if hop.parent is None:
                break
            hop = hop.parent
            if translates(hop):
                break
        return routes

    def _unplan_router(self, state: RouterState) -> None:
        self._nodes.pop(state.name, None)
        self._routers.pop(state.name, None)
        if state.parent is not None:
            with contextlib.suppress(ValueError):
                state.parent.children.remove(state)
        if state.uplink is not None:
            self._release_uplink(state)
        if state.pool is not None and state.auto_pool:
            self._pools.release(state.pool.cidr)
        if state.pool6 is not None:
            self._pools.release(state.pool6.cidr)

    def _make_router(self, state: RouterState) -> None:
        """Kernel thread: the router's namespace, its uplink and LAN (made from the IX), its
        addresses and default route, the routes toward its pool, and its rules."""
        assert state.config is not None and state.lan is not None
        sysctls = {**netplan.forwarding_sysctls(self._ping_range), **router_rules.conntrack_sysctls(state.config.nat)}
        if state.has_v6:
            sysctls |= netplan.ipv6_sysctls(forwarding=True, dad=self._dad, accept_ra=False)
            if isinstance(state.uplink, IxPort) and state.uplink.v6 is not None:
                self._enable_ix_v6()
        if state.parent is not None and isinstance(state.uplink, LanPlug):
            # Its uplink address, and its NAT64 translator's next to it.
            self._lan_host_added(state.parent, 1 + (state.nat64_ip is not None))
        state.nat_shared = state.nat_shared or bool(state.forwards)
        ns = self._new_netns(state.name, sysctls)
        rules: router_rules.PendingRules | None = None
        try:
            # The rules go in on a thread of their own while this one wires the router: nft
            # needs no link to exist (rules match interfaces by name).
            parts = self._rule_parts(state)
            rules = router_rules.PendingRules(ns, parts)
            # One batch for the IX (links, and the route toward our pool when the IX holds
            # one), one for the router, one for each router up the chain holding a route.
            ix_ops = [*(state.uplink.ix_ops(ns) if state.uplink else []), *state.lan.ix_ops(ns)]
            ix_ops += [netplan.pool_route(cidr, via) for owner, cidr, via in state.pool_routes if owner is self._ix]
            _ns(self._ix).apply(ix_ops)
            ops = [netplan.loopback_up(), *state.lan.router_ops()]
            if state.uplink is not None:
                ops += state.uplink.node_ops(default_route=True)
            ns.apply(ops)
            for owner, cidr, via in state.pool_routes:
                if owner is not self._ix:
                    _ns(owner).apply([netplan.pool_route(cidr, via)])
            rules.wait()
            state.tables = {part.table: part.family for part in parts}
            state.nat_author, state.nat_written = router_rules.nat_author(parts), state.config.nat
            if state.config.nat_v6 is NatV6Mode.NAT64:
                self._start_nat64(state, ns)
            if self._dad and state.has_v6:
                ipv6.wait_dad(ns)
            if state.downlink is not None:
                self._shaper.set(("downlink", state.name), ns, state.lan.ifindex, netplan.LAN_IFACE,
                                 link_shaping.DOWNLINK_PRIO, None, state.downlink, state.lan.mtu)
        except BaseException:
            if rules is not None:  # done with the namespace before it goes
                with contextlib.suppress(BaseException):
                    rules.wait()
            self._shaper.drop_node(ns.inode)
            self._stop_nat64(state)
            # Take back routes held elsewhere and the IX ends of our links now (they would go
            # with the namespace, but only once the kernel gets to it).
            for owner, cidr, via in state.pool_routes:
                with contextlib.suppress(PatchbayError):
                    _ns(owner).apply([netplan.pool_route(cidr, via, add=False)])
            for index, name in self._ix_links_of(state):
                with contextlib.suppress(PatchbayError):
                    _ns(self._ix).apply([LinkDel(index, name)])
            ns.close()
            raise
        state.ns = ns

    @staticmethod
    def _stop_nat64(state: RouterState) -> None:
        """Kernel thread: end a router's translator (its TUN holds the namespace)."""
        if state.nat64 is not None:
            state.nat64.close()
            state.nat64 = None

    def _enable_ix_v6(self) -> None:
        """Kernel thread: IPv6 on the IX bridge, once, when the first IPv6 router plugs in."""
        if self._ix_v6:
            return
        ix = _ns(self._ix)
        ix.write_sysctls(netplan.iface_ipv6_sysctls(netplan.IX_BRIDGE, dad=self._dad))
        ix.apply(netplan.ix6_ops(self._ix.bridge_ifindex, dad=self._dad))
        if self._dad:
            ipv6.wait_dad(ix)
        self._ix_v6 = True

    @staticmethod
    def _ix_links_of(state: RouterState) -> list[tuple[int, str]]:
        links = []
        if isinstance(state.uplink, IxPort):
            links.append((state.uplink.port_ifindex, state.uplink.port_name))
        if state.lan is not None:
            links.append((state.lan.lower_ifindex, state.lan.lower_name))
        return links

    def _rule_context(self, state: RouterState) -> RuleContext:
        # list() copies at once: the event loop may add a forward while this reads them.
        forwards = tuple(f for f in list(state.forwards.values()) if f.device_ip is not None)
        uplink_v6 = state.uplink.v6 if state.uplink else None
        return RuleContext(
            router=state.name, table="", wan_iface=state.uplink_name or "", lan_iface=netplan.LAN_IFACE,
            wan_ip=state.uplink.ip if state.uplink else None,
            lan_cidr=state.pool.cidr if state.pool else None,  # type: ignore[arg-type]
            wan_ip6=uplink_v6.ip if uplink_v6 else None,
            lan_cidr6=state.pool6.cidr if state.pool6 else None,  # type: ignore[arg-type]
            npt_prefix6=state.npt_prefix6,
            port_forwards=tuple(PortForward(f.proto, f.port, f.device_ip, f.device_port)  # type: ignore[arg-type]
                                for f in forwards),
            reserved_ports=tuple(state.forwards),
            shared_lan=state.nat_shared,
        )

    def _rule_parts(self, state: RouterState) -> list[router_rules.RulePart]:
        """Every nft table the router needs now: NAT and firewall from plugins, core extras."""
        cfg = state.config
        assert cfg is not None
        ctx = self._rule_context(state)
        parts = []
        if cfg.nat is not None:
            parts.append(router_rules.nat_part(cfg.nat, ctx))
        if cfg.nat_v6 in (NatV6Mode.NPTV6, NatV6Mode.MASQUERADE):
            parts.append(router_rules.nat6_part(cfg.nat_v6, ctx))
        if cfg.firewall is not None:
            parts.append(router_rules.firewall_part(cfg.firewall, ctx))
        if state.uplink is not None and state.forwards:
            parts.append(router_rules.portfwd_part(ctx))
        if cfg.block_icmp_frag_needed:
            parts.append(router_rules.pmtu_part())
        return parts

    # ---- routers at runtime ---------------------------------------------------------------

    async def _router_set_nat(self, state: RouterState, value: Nat | NatConfig | str) -> None:
        nat = _resolve_nat(value, state.name)
        assert state.config is not None
        old = state.config
        with self._lock:
            state.config = replace(old, nat=nat)
            affected = [r for r in self._routers.values() if r is state or _is_below(r, state)]
            new_routes = {r.name: self._plan_pool_routes(r) for r in affected}
        def apply() -> None:
            if nat is None and state.parent is not None:
                # Its hosts now reach the NAT above it as they are.
                self._lan_host_added(state.parent, state.lan_hosts)
            self._reapply(state, {router_rules.NAT_TABLE, router_rules.PORTFWD_TABLE})

        try:
            await self._check_open().run(apply)
        except BaseException:
            state.config = old
            raise
        await self._check_open().run(self._reroute, affected, new_routes)
        self._event("nat_changed", state.name, nat=_describe(nat))
        self._write_state()

    async def _router_set_firewall(self, state: RouterState, value: Firewall | FirewallConfig | str) -> None:
        firewall = _resolve_firewall(value, state.name)
        assert state.config is not None
        old = state.config
        state.config = replace(old, firewall=firewall)
        try:
            await self._check_open().run(self._reapply, state, {router_rules.FIREWALL_TABLE})
        except BaseException:
            state.config = old
            raise
        self._event("firewall_changed", state.name, firewall=_describe(firewall))
        self._write_state()

    async def _router_flush_nat(self, state: RouterState) -> None:
        def flush() -> None:
            self._reapply(state, {router_rules.NAT_TABLE})  # empties the mapping maps
            _ns(state).flush_conntrack()

        await self._check_open().run(flush)
        self._event("nat_state_flushed", state.name)

    def _reapply(self, state: RouterState, tables: set[str]) -> None:
        """Kernel thread: replace `tables` of a router with what its config asks for now."""
        assert state.config is not None
        parts = [part for part in self._rule_parts(state) if part.table in tables]
        router_rules.apply(_ns(state), parts, replace={t: f for t, f in state.tables.items() if t in tables})
        if router_rules.NAT_TABLE in tables:
            _ns(state).write_sysctls(router_rules.conntrack_sysctls(state.config.nat))
            state.nat_author, state.nat_written = router_rules.nat_author(parts), state.config.nat
        state.tables = {t: f for t, f in state.tables.items() if t not in tables} | {p.table: p.family for p in parts}

    def _lan_host_added(self, router: RouterState, count: int = 1) -> None:
        """Kernel thread: `count` more addresses are about to appear on `router`'s LAN. A
        router that does not translate passes them on: they reach the NAT above it as they are."""
        while router is not None:
            router.lan_hosts += count
            if router.lan_hosts >= 2:
                self._share_lan(router)
            if router.config is None or router.config.nat is not None:
                return
            router = router.parent  # type: ignore[assignment]

    def _share_lan(self, router: RouterState) -> None:
        """Kernel thread: two hosts may now want one external port of `router` (a second address
        on its LAN, or a port forward). Its NAT gets what its plugin adds for that, once; a NAT
        table written later includes it (RuleContext.shared_lan)."""
        if router.nat_shared:
            return
        if router.nat_written is not None and router_rules.NAT_TABLE in router.tables:
            # The config that wrote the table: a set_nat_mode may have planned the next one.
            part = router_rules.nat_shared_part(router.nat_written, self._rule_context(router), router.nat_author)
            if part is not None:
                router_rules.apply(_ns(router), [part])
        router.nat_shared = True

    def _reroute(self, routers: list[RouterState], new_routes: dict[str, list[Any]]) -> None:
        """Kernel thread: make pool routes match each router's (new) NAT situation."""
        for router in routers:
            old, new = router.pool_routes, new_routes[router.name]
            for owner, cidr, via in old:
                if (owner, cidr, via) not in new:
                    with contextlib.suppress(PatchbayError):
                        _ns(owner).apply([netplan.pool_route(cidr, via, add=False)])
            for owner, cidr, via in new:
                if (owner, cidr, via) not in old:
                    _ns(owner).apply([netplan.pool_route(cidr, via)])
            router.pool_routes = new

    async def _router_add_forward(self, state: RouterState, proto: str, port: int, device: Device | str,
                                  device_port: int | None) -> None:
        fwd = _check_forward(proto, port, device, device_port, state.name)
        if (fwd.proto, fwd.port) in state.forwards:
            raise TopologyError(f"{fwd.proto} port {fwd.port} is already forwarded", node=state.name,
                                field="port_forward")
        if state.uplink is None:
            raise TopologyError("an isolated router has no WAN address to forward from", node=state.name,
                                field="port_forward")
        target = self._devices.get(fwd.device)
        iface = next((i for i in target.ifaces.values() if i.router is state), None) if target else None
        if target is None or not target.alive or iface is None:
            raise TopologyError(f"device {fwd.device!r} has no interface on this router", node=state.name,
                                field="port_forward")
        if iface.ip is None or state.uplink.ip is None:
            raise TopologyError("port forwards need IPv4 on the router's WAN and the device", node=state.name,
                                field="port_forward")
        fwd.device_ip = iface.ip
        state.forwards[(fwd.proto, fwd.port)] = fwd

        def install() -> None:
            self._share_lan(state)  # the forwarded device's own outbound may want that port
            self._install_forward(state, fwd)
            self._reserve_port(state, fwd, reserve=True)

        try:
            await self._check_open().run(install)
        except BaseException:
            del state.forwards[(fwd.proto, fwd.port)]
            raise
        self._event("port_forward_added", state.name, proto=fwd.proto, port=fwd.port, device=fwd.device,
                    device_port=fwd.device_port)

    def _install_forward(self, state: RouterState, fwd: ForwardState) -> None:
        if router_rules.PORTFWD_TABLE not in state.tables:
            self._reapply(state, {router_rules.PORTFWD_TABLE})
            return
        element = router_rules.forward_element(PortForward(fwd.proto, fwd.port, fwd.device_ip, fwd.device_port))  # type: ignore[arg-type]
        _ns(state).nft(f"add element ip {router_rules.PORTFWD_TABLE} forwards {{ {element} }}")

    async def _router_remove_forward(self, state: RouterState, proto: str, port: int) -> None:
        fwd = state.forwards.get((str(proto).lower(), port))
        if fwd is None:
            known = ", ".join(f"{p}/{n}" for p, n in state.forwards) or "none"
            raise TopologyError(f"no forward of {proto} port {port} (forwards: {known})", node=state.name,
                                field="port_forward")

        def uninstall() -> None:
            self._uninstall_forward(state, fwd)
            self._reserve_port(state, fwd, reserve=False)

        await self._check_open().run(uninstall)
        del state.forwards[(fwd.proto, fwd.port)]
        self._event("port_forward_removed", state.name, proto=fwd.proto, port=fwd.port)

    def _uninstall_forward(self, state: RouterState, fwd: ForwardState) -> None:
        if fwd.device_ip is not None and router_rules.PORTFWD_TABLE in state.tables:
            element = router_rules.forward_element(PortForward(fwd.proto, fwd.port, fwd.device_ip, fwd.device_port))
            _ns(state).nft(f"delete element ip {router_rules.PORTFWD_TABLE} forwards {{ {element} }}")

    def _reserve_port(self, state: RouterState, fwd: ForwardState, *, reserve: bool) -> None:
        """Keep the NAT table's `reserved` set (see RuleContext) equal to the forwarded ports."""
        if router_rules.NAT_TABLE not in state.tables:
            return
        verb = "add" if reserve else "delete"
        try:
            _ns(state).nft(f"{verb} element ip {router_rules.NAT_TABLE} reserved {{ {fwd.proto} . {fwd.port} }}")
        except NftError as exc:
            if exc.errno != errno.ENOENT:  # a NAT plugin without the set: nothing to keep
                raise

    def _retarget_forwards(self, device: str, router: RouterState, old_ip: IPv4Address,
                           new_ip: IPv4Address | None) -> None:
        """Kernel thread: forwards of `router` to `device` at `old_ip` now go to `new_ip` (None:
        the device left; they wait until it comes back)."""
        for fwd in router.forwards.values():
            if fwd.device == device and fwd.device_ip == old_ip:
                self._uninstall_forward(router, fwd)
                fwd.device_ip = new_ip
                if new_ip is not None:
                    self._install_forward(router, fwd)

    def _resolve_forwards_for(self, device: DeviceState) -> None:
        """Kernel thread: forwards that named this device before it existed get its address."""
        for iface in device.ifaces.values():
            router = iface.router
            for fwd in router.forwards.values():
                if (fwd.device == device.name and fwd.device_ip is None and router.uplink is not None
                        and iface.ip is not None):
                    fwd.device_ip = iface.ip
                    try:
                        self._install_forward(router, fwd)
                    except BaseException:
                        fwd.device_ip = None
                        raise

    async def _router_mappings(self, state: RouterState) -> list[MappingEntry]:
        wan = state.uplink.ip if state.uplink else None

        def read() -> list[MappingEntry]:
            entries = diagnostics.nat_mappings(_ns(state), wan)
            if state.nat64 is not None:
                entries += [MappingEntry(f"nat64-{b.proto}", b.v6, b.v4, b.remote, round(b.expires_s))  # type: ignore[arg-type]
                            for b in state.nat64.bindings()]
            return entries

        return await self._check_open().run(read)

    async def _router_counters(self, state: RouterState) -> dict[str, int]:
        def read() -> dict[str, int]:
            counts = router_rules.named_counters(_ns(state))
            if state.nat64 is not None:
                counts |= state.nat64.router_counters()
            return counts

        return await self._check_open().run(read)

    async def dump_diagnostics(self, path: str | os.PathLike[str]) -> Path:
        """Write, for the IX and every router and device, one text file: addresses, links with
        counters, routes, the nft ruleset with counters and the conntrack table."""
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        with self._lock:
            nodes = [n for n in (self._ix, *self._all_routers(), *self._devices.values()) if n.alive]
        await self._check_open().run(diagnostics.write_all, nodes, target)
        return target

    # ---- regions --------------------------------------------------------------------------

    async def add_region(self, name: str) -> Region:
        """A region: routers placed in it (`RouterBuilder.region`) are far from other regions'."""
        if name in self._regions:
            raise TopologyError(f"duplicate region name {name!r}", node=name, field="region")
        builder = RouterBuilder(self, f"region-{name}")
        router = await self._build_router(builder, region_router=True)
        self._regions[name] = RegionState(name, router._state)
        return Region(self, name)

    async def add_default_regions(self) -> dict[str, Region]:
        """Five continents' regions, linked with realistic one-way latencies (`regions.py`)."""
        made = {name: await self.add_region(name) for name in DEFAULT_REGIONS}
        for (a, b), latency in DEFAULT_LATENCIES.items():
            await self.link_regions(made[a], made[b], RegionLink.good(latency))
        return made

    def _resolve_region(self, ref: Region | str, node: str) -> RegionState:
        name = ref.name if isinstance(ref, Region) else str(ref)
        region = self._regions.get(name)
        if region is None:
            known = ", ".join(self._regions) or "none yet"
            raise TopologyError(f"unknown region {name!r} (regions: {known})", node=node, field="region")
        return region

    async def link_regions(self, a: Region | str, b: Region | str, link: RegionLink) -> None:
        ra, rb = self._resolve_region(a, "link_regions"), self._resolve_region(b, "link_regions")
        if ra is rb or rb.name in ra.links:
            raise TopologyError(f"regions {ra.name!r} and {rb.name!r} are the same or already linked",
                                node="link_regions")
        link_limits = link.limits()
        link_shaping.check(link_limits, f"{ra.name}-{rb.name}", "link")
        ip_a, ip_b = link_addresses(self._region_links)
        self._region_links += 1
        state = RegionLinkState(ra.name, rb.name, ra.router.alloc_ifindex(), rb.router.alloc_ifindex(), ip_a, ip_b,
                                link_limits)

        def make() -> None:
            ns_a, ns_b = _ns(ra.router), _ns(rb.router)
            name_a, name_b = f"rg{rb.router.id}", f"rg{ra.router.id}"
            ns_a.apply([VethPair(name_a, state.ifindex_a, name_b, state.ifindex_b, ns_b),
                        Addr(state.ifindex_a, name_a, ip_a, 30)])
            ns_b.apply([LinkSet(state.ifindex_b, name_b, up=True), Addr(state.ifindex_b, name_b, ip_b, 30)])
            self._shaper.set(("region", ra.name, rb.name), ns_a, state.ifindex_a, name_a, 1, None, link_limits)
            self._shaper.set(("region", rb.name, ra.name), ns_b, state.ifindex_b, name_b, 1, None, link_limits)
            ra.links[rb.name] = rb.links[ra.name] = state
            self._reroute_regions()

        await self._check_open().run(make)
        self._event("regions_linked", None, a=ra.name, b=rb.name, latency_ms=link.latency_ms)

    async def break_region_link(self, a: Region | str, b: Region | str) -> None:
        """Cut the link: traffic reroutes through other regions, or is dropped if none is left."""
        await self._set_region_link(a, b, broken=True)

    async def restore_region_link(self, a: Region | str, b: Region | str) -> None:
        await self._set_region_link(a, b, broken=False)

    async def _set_region_link(self, a: Region | str, b: Region | str, *, broken: bool) -> None:
        ra, rb = self._resolve_region(a, "region_link"), self._resolve_region(b, "region_link")
        link = ra.links.get(rb.name)
        if link is None:
            raise TopologyError(f"regions {ra.name!r} and {rb.name!r} are not linked", node="region_link")

        def apply() -> None:
            link.broken = broken
            # Down, the link also loses what its wires still hold: a break is immediate.
            _ns(ra.router).apply([LinkSet(link.ifindex_a, f"rg{rb.router.id}", up=not broken)])
            _ns(rb.router).apply([LinkSet(link.ifindex_b, f"rg{ra.router.id}", up=not broken)])
            self._reroute_regions()

        await self._check_open().run(apply)
        self._event("region_link_broken" if broken else "region_link_restored", None, a=ra.name, b=rb.name)

    def _reroute_regions(self) -> None:
        """Kernel thread: in every region, route the other regions' prefixes along the path of
        least latency over unbroken links, or blackhole them."""
        prefixes: dict[str, list[IPv4Network]] = {}
        for name, region in self._regions.items():
            assert region.router.pool is not None
            owned = [region.router.pool.cidr]
            # Region links are IPv4: v6 prefixes behind a region stay within it (for now).
            for router in self._routers.values():
                owned += [cidr for owner, cidr, _via in router.pool_routes if owner is region.router
                          and cidr.version == 4]
            prefixes[name] = owned
        graph = {name: {other: float(link.limits.latency_ms) + 0.001 for other, link in region.links.items()
                        if not link.broken} for name, region in self._regions.items()}
        for name, region in self._regions.items():
            hops = first_hops(graph, name)
            wanted: dict[IPv4Network, IPv4Address | None] = {}
            for other in self._regions:
                if other == name:
                    continue
                via = region.links[hops[other]].end(name)[2] if other in hops else None
                for cidr in prefixes[other]:
                    wanted[cidr] = via
            ops = [Route(cidr, via, add=True, replace=True, blackhole=via is None)
                   for cidr, via in wanted.items() if region.routes.get(cidr, "missing") != via]
            ops += [Route(cidr, add=False) for cidr in region.routes if cidr not in wanted]
            _ns(region.router).apply(ops)
            region.routes = wanted

    # ---- link conditions -----------------------------------------------------------------

    def _shape(self, device: DeviceState, iface: DeviceIfaceState) -> None:
        """Kernel thread: make the wires of one device interface match its limits."""
        assert device.ns is not None
        self._shaper.set(("up", device.name, iface.name), device.ns, iface.ifindex, iface.name, 1, None, iface.up,
                         iface.attachment.mtu)
        router = iface.router
        assert router.lan is not None
        if iface.down is not None and not iface.down_prio:
            iface.down_prio = router.next_prio
            router.next_prio += 1
        down = link_shaping.stack(iface.down, router.downlink) if iface.down is not None else None
        # What the router sends to the device: packets to its addresses, IPv4 and IPv6.
        dsts = tuple(a for a in (iface.ip, iface.ip6) if a is not None)
        self._shaper.set(("down", device.name, iface.name), _ns(router), router.lan.ifindex, netplan.LAN_IFACE,
                         iface.down_prio, dsts, down, router.lan.mtu)

    def _unshape(self, device: DeviceState, iface: DeviceIfaceState) -> None:
        """Kernel thread: take away both wires of a device interface (before its link goes)."""
        self._shaper.set(("up", device.name, iface.name), _ns(device), iface.ifindex, iface.name, 1, None, None)
        self._shaper.set(("down", device.name, iface.name), _ns(iface.router), 0, "", 0, None, None)

    async def _set_link_condition(self, device: DeviceState, iface_name: str, condition: object,
                                  direction: str) -> None:
        if direction not in ("up", "down", "both"):
            raise TopologyError(f"direction {direction!r} is not 'up', 'down' or 'both'", node=device.name,
                                field="direction")
        iface = device.ifaces.get(iface_name)
        if iface is None:
            raise TopologyError(f"no interface {iface_name!r} (has: {', '.join(device.ifaces) or 'none'})",
                                node=device.name, field="iface")
        limits = link_shaping.limits_of(condition, device.name, f"link_condition({iface_name!r})")  # type: ignore[arg-type]
        old = (iface.up, iface.down)
        if direction in ("up", "both"):
            iface.up = limits
        if direction in ("down", "both"):
            iface.down = limits
        try:
            await self._check_open().run(self._shape, device, iface)
        except BaseException:
            iface.up, iface.down = old
            raise
        self._event("link_condition_changed", device.name, iface=iface_name, direction=direction,
                    condition=repr(condition) if condition is not None else None)
        self._write_state()

    async def _set_downlink(self, router: RouterState, condition: object) -> None:
        limits = link_shaping.limits_of(condition, router.name, "downlink_condition")  # type: ignore[arg-type]

        def apply() -> None:
            assert router.lan is not None
            router.downlink = limits
            self._shaper.set(("downlink", router.name), _ns(router), router.lan.ifindex, netplan.LAN_IFACE,
                             link_shaping.DOWNLINK_PRIO, None, limits, router.lan.mtu)
            for device in self._devices.values():
                for iface in device.ifaces.values():
                    if iface.router is router and iface.down is not None and device.alive:
                        self._shape(device, iface)

        await self._check_open().run(apply)
        self._event("link_condition_changed", router.name, iface=netplan.LAN_IFACE, direction="down",
                    condition=repr(condition) if condition is not None else None)

    def _link_stats(self, key: tuple[str, ...]) -> Any:
        return self._check_open().call(self._shaper.stats, key)

    # ---- devices ---------------------------------------------------------------------------

    async def _build_device(self, builder: DeviceBuilder) -> Device:
        with self._lock:
            state = self._plan_device(builder)

        def make() -> None:
            self._make_device(state)
            try:
                self._resolve_forwards_for(state)
            except BaseException:
                self._unmake_device(state)
                raise
            state.alive = True

        await self._settle(make, lambda: self._unplan_device(state))
        self._watch_node_log(state)
        self._event("device_added", state.name, **state.snapshot())
        for iface in state.ifaces.values():
            self._event("iface_added", state.name, iface=iface.name, ip=_str(iface.ip), ip6=_str(iface.ip6),
                        router=iface.router.name, default=iface.name == state.default_iface)
        self._write_state()
        return Device(self, state)

    def _plan_device(self, builder: DeviceBuilder) -> DeviceState:
        name = builder.name
        self._check_new_name(name)
        mtu = _check_mtu(builder.mtu_value, name)
        state = DeviceState(kind="device", name=name, id=next(self._ids), mtu=mtu)
        try:
            for request in builder.ifaces:
                field = f"iface({request.name!r})"
                netplan.check_ifname(request.name, node=name, field=field)
                if request.name in state.ifaces:
                    raise TopologyError(f"interface {request.name!r} given twice", node=name, field=field)
                router = self._resolve_router(request.router, name, field)
                up = link_shaping.limits_of(request.condition, name, field)
                if request.condition is None:
                    up = self._default_emulation
                attachment = self._plan_plug(state, request.name, router, field, ifindex=state.alloc_ifindex())
                state.ifaces[request.name] = DeviceIfaceState(request.name, router, attachment, up=up)
            default = builder.default_via_name
            if default is not None and default not in state.ifaces:
                raise TopologyError(f"default_via names {default!r}, which is not one of its interfaces "
                                    f"({', '.join(state.ifaces) or 'none'})", node=name, field="default_via")
            state.default_iface = default or next(iter(state.ifaces), None)
        except BaseException:
            self._release_device_addresses(state)
            raise
        self._nodes[name] = self._devices[name] = state
        for iface in state.ifaces.values():
            iface.router.children.append(state)
        return state

    def _plan_plug(self, device: DeviceState, iface: str, router: RouterState, field: str, *,
                   ifindex: int) -> LanPlug:
        """Addresses on `router`'s LAN for one of the device's interfaces: IPv4, IPv6 or both,
        as the LAN has them."""
        assert router.lan is not None and router.config is not None
        pool, pool6 = router.lan.pool, router.lan.pool6
        ip = ip6 = None
        try:
            ip = pool.allocate() if pool is not None else None
            ip6 = pool6.allocate() if pool6 is not None else None
        except PoolExhausted as exc:
            if ip is not None and pool is not None:
                pool.release(ip)
            raise TopologyError(f"router {router.name!r} has no address left in {exc}", node=device.name,
                                field=field) from None
        v6 = netplan.V6Plug(ip6, pool6.cidr, pool6.gateway, self._dad) if pool6 and ip6 else None  # type: ignore[arg-type]
        return LanPlug(iface=iface, ifindex=ifindex, lower_ifindex=router.lan.lower_ifindex, ip=ip,  # type: ignore[arg-type]
                       subnet=pool.cidr if pool else None, gateway=pool.gateway if pool else None,  # type: ignore[arg-type]
                       mtu=_min_mtu(device.mtu, router.config.mtu), v6=v6)

    @staticmethod
    def _release_plug(router: RouterState, plug: LanPlug) -> None:
        if plug.ip is not None and router.pool is not None:
            router.pool.release(plug.ip)
        if plug.v6 is not None and router.pool6 is not None:
            router.pool6.release(plug.v6.ip)

    def _release_device_addresses(self, state: DeviceState) -> None:
        for iface in state.ifaces.values():
            self._release_plug(iface.router, iface.attachment)

    def _unplan_device(self, state: DeviceState) -> None:
        self._nodes.pop(state.name, None)
        self._devices.pop(state.name, None)
        self._release_device_addresses(state)
        for iface in state.ifaces.values():
            with contextlib.suppress(ValueError):
                iface.router.children.remove(state)

    def _make_device(self, state: DeviceState) -> None:
        """Kernel thread: the device's namespace and one macvlan per interface on its router's LAN."""
        for iface in state.ifaces.values():
            if iface.attachment.ip is not None:
                self._lan_host_added(iface.router)
        sysctls = netplan.base_sysctls(self._ping_range)
        has_v6 = any(i.attachment.v6 for i in state.ifaces.values())
        if has_v6:
            sysctls |= self._device_v6_sysctls()
        ns = self._new_netns(state.name, sysctls)
        try:
            _ns(self._ix).apply([op for iface in state.ifaces.values() for op in iface.attachment.ix_ops(ns)])
            ops = [netplan.loopback_up()]
            for iface in state.ifaces.values():
                ops += iface.attachment.node_ops(default_route=iface.name == state.default_iface,
                                                 v6_route=not self._ra_driven)
            ns.apply(ops)
            state.ns = ns
            for iface in state.ifaces.values():
                self._shape(state, iface)
            if has_v6 and self._dad:
                ipv6.wait_dad(ns)
            if has_v6 and self._ra_driven and state.default_iface is not None:
                self._ra_default_route(state, state.ifaces[state.default_iface])
        except BaseException:
            self._shaper.drop_node(ns.inode)
            ns.close()  # its macvlans go with it
            state.ns = None
            raise

    def _readvertise(self) -> None:
        """Advertiser thread: every device's default router sends its RA again."""
        def send() -> None:
            for device in list(self._devices.values()):
                iface = device.ifaces.get(device.default_iface or "")
                if device.alive and iface is not None and iface.attachment.v6 and iface.admin_up:
                    router = iface.router
                    assert router.lan is not None
                    with contextlib.suppress(OSError, PatchbayError):
                        ipv6.send_router_advertisement(_ns(router), router.lan.ifindex, iface.attachment.v6.ll,
                                                       router.lan.mtu)

        self._check_open().call(send)

    def _device_v6_sysctls(self) -> dict[str, str]:
        values = netplan.ipv6_sysctls(forwarding=False, dad=self._dad, accept_ra=self._ra_driven)
        if self._ra_driven:
            # Only the default interface takes a default route from its router's RA.
            values["net.ipv6.conf.default.accept_ra_defrtr"] = "0"
        return values

    def _ra_default_route(self, device: DeviceState, iface: DeviceIfaceState) -> None:
        """Kernel thread, RA-driven labs: the device's default IPv6 route comes from a router
        advertisement of the interface's router (see `ipv6.py`)."""
        plug = iface.attachment
        router = iface.router
        if plug.v6 is None or router.lan is None or not iface.admin_up:
            return
        ns = _ns(device)
        ns.write_sysctls({f"net.ipv6.conf.{iface.name}.accept_ra_defrtr": "1"})
        self._event("rs_sent", device.name, iface=iface.name, to="ff02::2")
        route, sent = ipv6.advertise_until_learnt(_ns(router), router.lan.ifindex, ns, iface.ifindex, plug.v6.ll,
                                                  router.lan.mtu)
        self._event("ra_sent", router.name, iface=netplan.LAN_IFACE, to=str(plug.v6.ll), device=device.name,
                    router_ll=str(netplan.ROUTER_LINK_LOCAL), count=sent)
        self._event("ra_route_installed", device.name, iface=iface.name, via=str(route.via))

    # ---- shared helpers --------------------------------------------------------------------

    async def _settle(self, make: Callable[[], None], unplan: Callable[[], None]) -> None:
        """Run a node's kernel job. The job itself un-plans the node when it fails, and so does a
        job cancelled before it started: whatever the caller does meanwhile (cancelled, timed
        out), the lab's records match the kernel."""

        def job() -> None:
            try:
                make()
            except BaseException:
                with self._lock:
                    unplan()
                raise

        fut = self._check_open().submit(job)

        def never_ran(done: Future[None]) -> None:
            if done.cancelled():
                with self._lock:
                    unplan()

        fut.add_done_callback(never_ran)
        with anyio.CancelScope(shield=True):
            await wait_future(fut)

    def _unmake_device(self, state: DeviceState) -> None:
        """Kernel thread: undo a made device (its namespace, wires and forwards)."""
        if state.ns is not None:
            for iface in state.ifaces.values():
                with contextlib.suppress(PatchbayError):  # its link may be gone already
                    self._unshape(state, iface)
            self._shaper.drop_node(state.ns.inode)
            state.ns.close()
            state.ns = None

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() or c == "/" for c in name):
            raise TopologyError("a node name must be a non-empty string without whitespace or '/'", node=str(name))
        if any(c in name for c in "=,\n"):
            raise TopologyError("a node name may not contain '=', ',' or a newline", node=name)
        if name == "ix":
            raise TopologyError("'ix' is the name of the lab's internet exchange; pick another", node=name)
        if name in self._nodes:
            raise TopologyError(f"duplicate name: a {self._nodes[name].kind} named {name!r} already exists",
                                node=name)

    def _resolve_router(self, ref: Router | str, node: str, field: str) -> RouterState:
        if isinstance(ref, Router):
            if ref._lab is not self:
                raise TopologyError(f"router {ref.name!r} belongs to another lab", node=node, field=field)
            state = ref._state
        else:
            state = self._routers.get(str(ref))  # type: ignore[assignment]
            if state is None:
                known = ", ".join(self._routers) or "none yet"
                raise TopologyError(f"unknown router {ref!r} (routers: {known})", node=node, field=field)
        if not state.alive:
            raise TopologyError(f"router {state.name!r} is not built (or was removed)", node=node, field=field)
        return state

    def _runtime(self, state: NodeState) -> NodeRuntime:
        with self._lock:
            if not state.alive:
                raise NodeGone(state.label)  # removed meanwhile
            if state.runtime is None:
                assert state.ns is not None
                state.runtime = NodeRuntime(state.name, state.ns.fd, self._names.mount_ns(state.name))
            return state.runtime

    def _spawn_command(self, state: NodeState, argv: Sequence[str], popen_kw: dict[str, Any]) -> Future[Any]:
        # The spawner and the exit watcher are made by the kernel thread: a thread inherits its
        # maker's namespaces, and these must not hold a node's (the caller may be node code).
        # (Not by the spawner thread either: in the lab's PID namespace it cannot start threads.)
        if self._spawner is None:
            spawner_made = self._check_open().call(Spawner, self.label, _ns(self._ix).fd)
            with self._lock:
                if self._spawner is None and not self._closed:
                    self._spawner, spawner_made = spawner_made, None
            if spawner_made is not None:
                spawner_made.close()
        if self._output is not None and self._exits is None:
            exits = self._check_open().call(ExitWatcher, self.label)
            with self._lock:
                if self._exits is None and not self._closed:
                    self._exits, exits = exits, None
            if exits is not None:
                exits.close()
        with self._lock:
            if self._closed:
                raise PatchbayError(f"lab {self.label!r} is closed")
            if not state.alive:
                raise NodeGone(state.label)
            spawner = self._spawner
            assert spawner is not None
        assert state.ns is not None
        kwargs = dict(popen_kw)
        opened = []
        if self._output is not None:
            for stream in ("stdout", "stderr"):
                if kwargs.get(stream) is None:
                    log_file = open(self._output.node_log(state.kind, state.name, stream), "ab")  # noqa: SIM115
                    opened.append(log_file)
                    kwargs[stream] = log_file
        fut = spawner.submit(state.ns.fd, self._names.mount_ns(state.name), state.name, argv, kwargs)

        def after(done: Future[subprocess.Popen[Any]]) -> None:
            for log_file in opened:
                log_file.close()
            if done.exception() is None:
                child = done.result()
                self._event("command_spawned", state.name, argv=list(argv), pid=child.pid)
                if self._output is not None:
                    self._watch_exit(state, list(argv), child)

        fut.add_done_callback(after)
        return fut

    def _watch_exit(self, state: NodeState, argv: list[str], child: subprocess.Popen[Any]) -> None:
        started = time.monotonic()
        with self._lock:
            exits = self._exits
        if exits is None:
            return

        def exited(code: int | None) -> None:
            self._event("command_exited", state.name, argv=argv, pid=child.pid, exit_status=code,
                        duration_s=round(time.monotonic() - started, 6))

        exits.watch(child, exited)

    def _watch_node_log(self, node: NodeState) -> None:
        """Logging records emitted inside the node go to its log files (see nodelog.py)."""
        if self._node_logs is not None and self._output is not None and node.ns is not None:
            self._node_logs.add(node.ns.inode, node.kind, node.name,
                                self._output.node_file(node.kind, node.name, "log.jsonl"),
                                self._output.node_file(node.kind, node.name, "events.jsonl"))

    def _forget_node_log(self, node: NodeState) -> None:
        if self._node_logs is not None and node.ns is not None:
            self._node_logs.remove(node.ns.inode)

    def _sample_counters(self) -> None:
        """Sampler thread: one `packet_counters` event per node whose interfaces moved."""
        def sample() -> list[tuple[str, dict[str, tuple[int, int, int, int]]]]:
            with self._lock:
                nodes = [n for n in (self._ix, *self._all_routers(), *self._devices.values())
                         if n.alive and n.ns is not None]
            changed = []
            for node in nodes:
                assert node.ns is not None
                now = {link.name: (link.rx_packets, link.tx_packets, link.rx_bytes, link.tx_bytes)
                       for link in node.ns.links() if link.name != "lo"}
                if now != self._last_counters.get(node.name):
                    self._last_counters[node.name] = now
                    changed.append((node.name, now))
            return changed

        for name, counters in self._check_open().call(sample):
            self._event("packet_counters", name, ifaces={
                iface: {"rx_packets": c[0], "tx_packets": c[1], "rx_bytes": c[2], "tx_bytes": c[3]}
                for iface, c in counters.items()})

    def _event(self, kind: str, node: str | None, **fields: Any) -> None:
        if self._output is not None:
            self._output.event(kind, node, **fields)

    def _write_state(self) -> None:
        if self._output is None:
            return
        with self._lock:
            state = {
                "label": self.label,
                "closed": self._closed,
                "ix": {"cidr": str(netplan.IX_CIDR), "gateway": str(netplan.IX_GATEWAY)},
                "routers": [r.snapshot() for r in self._routers.values() if r.alive],
                "devices": [d.snapshot() for d in self._devices.values() if d.alive],
            }
        with self._state_lock:
            self._output.write_state(state)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Close goes on when one step fails; the failure is logged, not swallowed silently."""
    try:
        yield
    except Exception:
        log.exception("lab close: %s failed", what)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _is_below(router: RouterState, ancestor: RouterState) -> bool:
    parent = router.parent
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False


def _describe(value: object) -> object:
    return None if value is None else {k: getattr(v, "value", v) for k, v in vars(value).items()}


def _resolve_nat(value: Nat | NatConfig | str | None, node: str) -> NatConfig | None:
    if value is None or value is Nat.NONE or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, NatConfig):
        return value
    name = value.value if isinstance(value, Nat) else str(value)
    config = lookup_preset("nat", name, node=node, field="nat")
    assert isinstance(config, NatConfig)
    return config


def _resolve_firewall(value: Firewall | FirewallConfig | str | None, node: str) -> FirewallConfig | None:
    if value is None or value is Firewall.NONE or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, FirewallConfig):
        return None if value == FirewallConfig() else value
    name = value.value if isinstance(value, Firewall) else str(value)
    config = lookup_preset("firewall", name, node=node, field="firewall")
    assert isinstance(config, FirewallConfig)
    return config


def _check_forward(proto: str, port: int, device: Device | str, device_port: int | None, node: str) -> ForwardState:
    proto = str(proto).lower()
    if proto not in ("tcp", "udp"):
        raise TopologyError(f"port forwards are tcp or udp, not {proto!r}", node=node, field="port_forward")
    for value in (port, device_port if device_port is not None else port):
        if not isinstance(value, int) or not 1 <= value <= 65535:
            raise TopologyError(f"port {value!r} is not in 1..65535", node=node, field="port_forward")
    name = device.name if isinstance(device, Device) else str(device)
    return ForwardState(proto, port, name, device_port if device_port is not None else port)


def _check_mtu(mtu: int | None, node: str) -> int:
    if mtu is None:
        return 0
    if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise TopologyError(f"mtu {mtu!r} is out of range (68 to 65535)", node=node, field="mtu")
    return mtu


def _min_mtu(a: int, b: int) -> int:
    return min(x for x in (a, b) if x) if (a or b) else 0


# fd slots a lab's process gets at once: ~250 nodes' worth (a node holds 2-4 fds).
FD_TABLE_SLOTS = 1024


def _grow_fd_table(slots: int = FD_TABLE_SLOTS) -> None:
    """Grow the process's fd table to `slots` now. The kernel doubles it as fds are opened,
    and in a process with threads each growth waits for an RCU grace period (expand_files):
    a lab of 100 nodes would wait four times, a few ms each, on its kernel thread and its
    namespace factory while it builds. Done before the lab's threads exist, it waits for
    nothing; the table never shrinks."""
    with contextlib.suppress(OSError):
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.close(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, slots - 1))
        finally:
            os.close(fd)


def _raise_fd_limit() -> None:
    """Each node holds a few fds (namespace, netlink socket); big labs need more than 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
