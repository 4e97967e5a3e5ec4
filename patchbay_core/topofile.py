"""Topology files: a lab described in TOML (`[[router]]`, `[device.NAME.IFACE]`, `[region.NAME]`).

Parsing and building are kept apart so that a wrong file is refused before anything exists:

- `parse_topology` (pure, no kernel) checks every key and value, expands `count`, pairs
  counted devices with counted routers, orders routers parents first and returns plain
  dataclasses. Every mistake is a TopologyError naming the file, the line (best effort: the
  line of the key in the source text) and the key path, and saying what is expected.
- `build_topology` builds a parsed topology into a lab the caller owns: regions and their
  links, routers in dependency order, devices, then the devices' initial impairments.
- `load_lab` does both for a file and owns the lab it makes: on any failure it closes it.

The sim runner reuses this for inline topologies: it passes its already-parsed document (and
its text, for line numbers) and names the tables that are its own in `other_keys`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import os
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .errors import TopologyError
from .firewall import FirewallConfig
from .link import LinkCondition
from .nat import NatConfig, NatFiltering, NatMapping, NatV6Mode
from .netplan import check_ifname
from .regions import RegionLink
from .routers import IpSupport, Pool

if TYPE_CHECKING:
    from .handles import Device, Region, Router
    from .lab import Lab
    from .opts import LabOpts

__all__ = [
    "BuiltTopology",
    "DeviceDef",
    "IfaceDef",
    "Origin",
    "PortForwardDef",
    "RegionLinkDef",
    "RouterDef",
    "Topology",
    "build_topology",
    "load_lab",
    "open_topology",
    "parse_topology",
    "read_topology",
]

E = TypeVar("E", bound=enum.Enum)
C = TypeVar("C")
KeyPath = tuple[str | int, ...]  # a key path: ("router", 0, "nat"), ("device", "client", "eth0")

TOP_KEYS = ("router", "device", "region")
ROUTER_KEYS = ("name", "count", "preset", "nat", "nat_v6", "nat64_timeouts", "firewall", "ip_support", "upstream",
               "region", "pool", "downstream_cidr", "mtu", "block_icmp_frag_needed", "isolated", "downlink",
               "port_forward")
DEVICE_KEYS = ("count", "default_via", "mtu")  # every other key of a device is an interface table
IFACE_KEYS = ("gateway", "impair")
REGION_KEYS = ("latencies",)
REGION_LINK_KEYS = ("latency_ms", "jitter_ms", "loss_pct", "rate_kbit")
NAT_KEYS = ("preset", *(f.name for f in dataclasses.fields(NatConfig)))
FIREWALL_KEYS = ("preset", "block_inbound", "allow_tcp_ports", "allow_udp_ports")
FORWARD_KEYS = ("proto", "port", "device", "device_port")
NAT64_TIMEOUT_KEYS = ("udp", "tcp_established", "icmp")
MAX_COUNT = 65536  # far beyond any address pool; stops a typo from expanding forever

# Lab fields of TopologyError raised while building -> the key of the file they come from.
_ROUTER_FIELD_KEYS = {"downlink_condition": "downlink"}


# ---- what a parsed file is ------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where something was written: the file, its line (best effort) and the key path."""

    file: str | None
    line: int | None
    key: str

    def error(self, message: str) -> TopologyError:
        return TopologyError(message, file=self.file, line=self.line, key=self.key)


@dataclass
class PortForwardDef:
    proto: str
    port: int
    device: str  # an instance name (counted devices are paired already)
    device_port: int | None
    origin: Origin


@dataclass
class RouterDef:
    """One router to build (one instance of a counted `[[router]]`). None: not set."""

    name: str
    origin: Origin  # the [[router]] table
    keys: dict[str, Origin] = field(default_factory=dict)  # where each key given was written
    group: str | None = None  # base name of a counted router
    index: int | None = None  # its index in the group
    preset: str | None = None
    nat: str | NatConfig | None = None  # a preset name ("none" included) or a config
    nat_v6: NatV6Mode | None = None
    nat64_timeouts: dict[str, int] | None = None
    firewall: str | FirewallConfig | None = None
    ip_support: IpSupport | None = None
    upstream: str | None = None  # an instance name
    region: str | None = None
    pool: Pool | None = None
    downstream_cidr: IPv4Network | None = None
    mtu: int | None = None
    block_icmp_frag_needed: bool = False
    isolated: bool = False
    downlink: LinkCondition | None = None
    port_forwards: list[PortForwardDef] = field(default_factory=list)


@dataclass
class IfaceDef:
    name: str
    gateway: str  # a router instance name
    impair: LinkCondition | None
    origin: Origin  # the [device.NAME.IFACE] table
    keys: dict[str, Origin] = field(default_factory=dict)


@dataclass
class DeviceDef:
    name: str
    origin: Origin  # the [device.NAME] table
    ifaces: list[IfaceDef]
    keys: dict[str, Origin] = field(default_factory=dict)
    group: str | None = None
    index: int | None = None
    default_via: str | None = None
    mtu: int | None = None


@dataclass
class RegionLinkDef:
    a: str
    b: str
    link: RegionLink
    origin: Origin


@dataclass
class Topology:
    """A checked topology: routers parents first, devices in file order, counts expanded."""

    source: str | None
    routers: list[RouterDef]
    devices: list[DeviceDef]
    regions: dict[str, Origin]  # every region declared or named in latencies, in file order
    region_links: list[RegionLinkDef]
    router_groups: dict[str, list[str]]  # counted routers: base name -> instance names
    device_groups: dict[str, list[str]]  # counted devices: base name -> instance names

    def router(self, name: str) -> RouterDef:
        for r in self.routers:
            if r.name == name:
                return r
        raise KeyError(f"no router {name!r} in the topology")

    def device(self, name: str) -> DeviceDef:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(f"no device {name!r} in the topology")


@dataclass
class BuiltTopology:
    """What `build_topology` made, by name."""

    topology: Topology
    routers: dict[str, Router]
    devices: dict[str, Device]
    regions: dict[str, Region]


# ---- entry points ---------------------------------------------------------------------------


def read_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and check a topology file (no kernel)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TopologyError(f"cannot read the topology file: {reason}", file=str(path)) from None
    return parse_topology(text, source=path)


def parse_topology(
    data: str | Mapping[str, Any],
    *,
    source: str | os.PathLike[str] | None = None,
    text: str | None = None,
    other_keys: Collection[str] = (),
) -> Topology:
    """Check a topology (TOML text, or a document already parsed) and return it expanded.

    `source` names the file in errors; `text` is the source text of an already-parsed
    document, for line numbers; `other_keys` are top-level keys that belong to someone else
    (a sim file's `sim`, `step`, ...) and are left alone.
    """
    file = None if source is None else str(source)
    if isinstance(data, str):
        text = data
        try:
            doc: Mapping[str, Any] = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            message, line = _toml_error(exc)
            raise TopologyError(message, file=file or "<topology>", line=line) from None
    elif isinstance(data, Mapping):
        doc = data
    else:
        raise TypeError(f"parse_topology takes TOML text or a mapping, not {type(data).__name__}")
    return _Parser(file, text, other_keys).parse(doc)


async def build_topology(
    lab: Lab,
    topo: Topology | str | Mapping[str, Any],
    *,
    source: str | os.PathLike[str] | None = None,
    text: str | None = None,
) -> BuiltTopology:
    """Build a topology into `lab` (a Topology, or text/a mapping that is parsed first).

    Everything is checked before the first node is made. When building fails halfway (the
    kernel refuses, a pool runs out), what was built stays in the lab: the caller owns the
    lab and closes it. Errors name the file, line and key of the node that failed.
    """
    if not isinstance(topo, Topology):
        topo = parse_topology(topo, source=source, text=text)
    built = BuiltTopology(topo, {}, {}, {})
    for name, origin in topo.regions.items():
        with _reraised_at(origin, f"region {name!r}"):
            built.regions[name] = await lab.add_region(name)
    for rl in topo.region_links:
        with _reraised_at(rl.origin, f"regions {rl.a!r} and {rl.b!r}"):
            await lab.link_regions(rl.a, rl.b, rl.link)
    for r in topo.routers:
        built.routers[r.name] = await _build_router(lab, r)
    for d in topo.devices:
        builder = lab.add_device(d.name)
        for iface in d.ifaces:
            builder.iface(iface.name, iface.gateway)  # impairments come after setup
        if d.default_via is not None:
            builder.default_via(d.default_via)
        if d.mtu is not None:
            builder.mtu(d.mtu)
        with _reraised_at(d.origin, f"device {d.name!r}", d.keys, _device_field_keys(d)):
            built.devices[d.name] = await builder.build()
    for d in topo.devices:
        for iface in d.ifaces:
            if iface.impair is not None:
                with _reraised_at(iface.keys.get("impair", iface.origin), f"device {d.name!r}"):
                    await built.devices[d.name].set_link_condition(iface.name, iface.impair)
    return built


async def load_lab(path: str | os.PathLike[str], opts: LabOpts | None = None) -> Lab:
    """Make a lab from a topology file (`Lab.load`). The file is checked before the lab
    exists; when building fails the lab is closed, so nothing is left behind."""
    lab, _built = await open_topology(read_topology(path), opts, default_label=Path(path).stem)
    return lab


async def open_topology(topo: Topology, opts: LabOpts | None = None, *,
                        default_label: str | None = None) -> tuple[Lab, BuiltTopology]:
    """Create a lab and build `topo` into it; on any failure (or cancellation) the lab is
    closed before the error propagates."""
    import anyio

    from .lab import Lab
    from .opts import LabOpts

    if opts is None:
        opts = LabOpts(label=default_label)
    lab = await Lab.create(opts)
    try:
        built = await build_topology(lab, topo)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await lab.close()
        raise
    return lab, built


# ---- building -------------------------------------------------------------------------------


async def _build_router(lab: Lab, r: RouterDef) -> Router:
    b = lab.add_router(r.name)
    if r.preset is not None:  # first: what comes after overrides the preset
        b.preset(r.preset)
    if r.nat is not None:
        b.nat(r.nat)
    if r.nat_v6 is not None:
        b.nat_v6(r.nat_v6)
    if r.firewall is not None:
        b.firewall(r.firewall)
    if r.ip_support is not None:
        b.ip_support(r.ip_support)
    if r.upstream is not None:
        b.upstream(r.upstream)
    if r.region is not None:
        b.region(r.region)
    if r.pool is not None:
        b.pool(r.pool)
    if r.downstream_cidr is not None:
        b.downstream_cidr(r.downstream_cidr)
    if r.mtu is not None:
        b.mtu(r.mtu)
    if r.block_icmp_frag_needed:
        b.block_icmp_frag_needed()
    if r.isolated:
        b.isolated()
    if r.downlink is not None:
        b.downlink_condition(r.downlink)
    for fwd in r.port_forwards:
        b.port_forward(fwd.proto, fwd.port, fwd.device, fwd.device_port)
    if r.nat64_timeouts is not None:
        # Passed through for when the library has it; until then, say so at the key.
        method = getattr(b, "nat64_timeouts", None)
        if method is None:
            raise r.keys["nat64_timeouts"].error(
                f"router {r.name!r}: nat64_timeouts is not available in this version of patchbay")
        method(**r.nat64_timeouts)
    with _reraised_at(r.origin, f"router {r.name!r}", r.keys, _ROUTER_FIELD_KEYS):
        return await b.build()


def _device_field_keys(d: DeviceDef) -> dict[str, str]:
    keys = {f"iface({i.name!r})": i.name for i in d.ifaces}
    keys |= {f"link_condition({i.name!r})": i.name for i in d.ifaces}
    return keys


@contextlib.contextmanager
def _reraised_at(origin: Origin, node: str, keys: Mapping[str, Origin] | None = None,
                 field_keys: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn a TopologyError of the lab (naming node and field) into one naming the file, the
    line and the key that asked for it."""
    try:
        yield
    except TopologyError as exc:
        if exc.key is not None:
            raise
        where, keys = origin, keys or {}
        if exc.field is not None:
            key = (field_keys or {}).get(exc.field, exc.field)
            # A field not in the file came from the router's preset.
            where = keys.get(key) or keys.get("preset") or origin
        raise where.error(f"{node}: {exc.message}") from exc


# ---- parsing --------------------------------------------------------------------------------


def _toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, int | None]:
    """tomllib's complaint as our message ("not valid TOML: ... (column C)") and its line."""
    where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
    reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "syntax error"
    if where:
        reason += f" (column {where.group(2)})"
    return f"not valid TOML: {reason}", int(where.group(1)) if where else None


def _render(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out


def describe_value(value: object) -> str:
    """A TOML value as an error message names it: its kind and the value."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__} ({value})"


def _choices(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _norm(value: str) -> str:
    return value.strip().lower().replace("_", "-")


@dataclass
class _Group:
    """A `[[router]]` or `[device.NAME]` before values are read: its name and count."""

    name: str
    path: KeyPath
    count: int | None  # None: not counted

    @property
    def instances(self) -> list[str]:
        return [self.name] if self.count is None else [f"{self.name}-{i}" for i in range(self.count)]

    def describe(self) -> str:
        if self.count is None:
            return self.name
        return f"{self.name}-0" if self.count == 1 else f"{self.name}-0..{self.name}-{self.count - 1}"


class _Parser:
    def __init__(self, file: str | None, text: str | None, other_keys: Collection[str]) -> None:
        self.file = file
        self.lines = _KeyLines(text) if text else None
        self.other_keys = set(other_keys)
        self.names: dict[str, tuple[str, KeyPath]] = {}  # node name -> (kind, where)
        self.bases: dict[str, tuple[str, KeyPath]] = {}  # base names of counted nodes
        self.router_groups: dict[str, _Group] = {}
        self.device_groups: dict[str, _Group] = {}
        self.regions: dict[str, Origin] = {}

    # -- errors and where things are

    def at(self, path: KeyPath) -> Origin:
        return Origin(self.file, self.lines.line_of(path) if self.lines else None, _render(path))

    def fail(self, path: KeyPath, message: str) -> NoReturn:
        raise self.at(path).error(message)

    def wrapped(self, path: KeyPath, exc: TopologyError, node: str | None = None) -> NoReturn:
        raise self.at(path).error(f"{node}: {exc.message}" if node else exc.message) from None

    # -- value checks

    def table(self, value: object, path: KeyPath, what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a table ({what}), got {describe_value(value)}")
        return value

    def keys(self, table: Mapping[str, Any], path: KeyPath, allowed: Sequence[str], what: str) -> None:
        for key in table:
            if key not in allowed:
                self.fail((*path, key), f"unknown key {key!r} in {what}{_did_you_mean(key, allowed)}; "
                                        f"valid keys: {_choices(allowed)}")

    def string(self, value: object, path: KeyPath, what: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string ({what}), got {describe_value(value)}")
        return value

    def boolean(self, value: object, path: KeyPath, what: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false ({what}), got {describe_value(value)}")
        return value

    def integer(self, value: object, path: KeyPath, what: str, lo: int | None = None, hi: int | None = None) -> int:
        # Numbers may come as strings: a sim's ${matrix.*} substitution only makes strings.
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            number = int(value)
        if number is None:
            self.fail(path, f"expected an integer ({what}), got {describe_value(value)}")
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = f"{lo} to {hi}" if lo is not None and hi is not None else f"at least {lo}" if lo is not None \
                else f"at most {hi}"
            self.fail(path, f"expected {what} from {bounds}, got {number}")
        return number

    def number(self, value: object, path: KeyPath, what: str) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        self.fail(path, f"expected a number ({what}), got {describe_value(value)}")

    def choice(self, cls: type[E], value: object, path: KeyPath, what: str,
               aliases: Mapping[str, E] | None = None) -> E:
        text = self.string(value, path, what)
        key = _norm(text)
        members = {m.value: m for m in cls} | {_norm(m.name): m for m in cls} | dict(aliases or {})
        if key not in members:
            valid = list(dict.fromkeys([*(m.value for m in cls), *(aliases or {})]))
            self.fail(path, f"unknown {what} {text!r}{_did_you_mean(key, valid)}; expected one of: {_choices(valid)}")
        return members[key]

    def node_name(self, value: object, path: KeyPath, what: str) -> str:
        name = self.string(value, path, what)
        if not name or any(c.isspace() or c == "/" for c in name):
            self.fail(path, f"{what} {name!r} must be non-empty, without whitespace or '/'")
        return name

    def count(self, table: Mapping[str, Any], path: KeyPath) -> int | None:
        if "count" not in table:
            return None
        value, cpath = table["count"], (*path, "count")
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                not re.fullmatch(r"\s*\d+\s*", str(value)) or not 1 <= int(value) <= MAX_COUNT:
            self.fail(cpath, f"count must be a positive integer (the number of instances, 1 to {MAX_COUNT}), "
                             f"got {describe_value(value)}")
        return int(value)

    def claim(self, group: _Group, kind: str) -> None:
        """Reserve a group's node names (and a counted group's base name, which references use)."""
        claims = [(n, self.names) for n in group.instances]
        if group.count is not None:
            claims.append((group.name, self.bases))
        for name, _table in claims:
            if name == "ix":
                self.fail(group.path, "'ix' is the name of the lab's internet exchange; pick another name")
            for table in (self.names, self.bases):
                if name in table:
                    other_kind, other = table[name]
                    line = self.lines.line_of(other) if self.lines else None
                    self.fail(group.path, f"duplicate name {name!r}: the {other_kind} at {_render(other)}"
                                          f"{f' (line {line})' if line else ''} has it already; node names (and "
                                          "the base names of counted nodes) are unique in a lab")
        for name, table in claims:
            table[name] = (kind, group.path)

    def link(self, value: object, path: KeyPath, node: str) -> LinkCondition:
        from .link_shaping import limits_of

        if not isinstance(value, (str, Mapping)):
            self.fail(path, f"expected a link condition: a preset name such as \"wifi\" or a table such as "
                            f"{{ latency_ms = 100 }}, got {describe_value(value)}")
        try:
            limits_of(value, node, "")  # checks names (plugin presets) and values, no kernel
            return LinkCondition.parse(value)
        except TopologyError as exc:
            self.wrapped(path, exc)
        except ValueError as exc:  # a bad field of an inline table
            self.fail(path, str(exc))

    def preset(self, kind: str, value: str, path: KeyPath) -> object:
        from .plugins import lookup_preset

        try:
            return lookup_preset(kind, value)
        except TopologyError as exc:
            self.wrapped(path, exc)

    def preset_base(self, spec: Mapping[str, Any], path: KeyPath, kind: str, what: str, cls: type[C]) -> C:
        """What a `nat`/`firewall` table starts from: the preset its `preset` key names, else cls()."""
        if "preset" not in spec:
            return cls()
        name = self.string(spec["preset"], (*path, "preset"), f"the {what} preset to start from")
        base = self.preset(kind, name, (*path, "preset"))
        assert isinstance(base, cls)
        return base

    def reference(self, value: object, path: KeyPath, kind: str, groups: Mapping[str, _Group],
                  me: _Group, index: int | None, my_kind: str) -> str:
        """A node named by another: an instance name, or a counted group paired by index."""
        ref = self.string(value, path, f"the name of a {kind}")
        group = groups.get(ref)
        if group is not None and group.count is not None:
            if me.count is None:
                self.fail(path, f"{kind} {ref!r} has count = {group.count} ({group.describe()}); name one of them, "
                                f"or give {my_kind} {me.name!r} count = {group.count} to pair them by index")
            if me.count != group.count:
                self.fail(path, f"{my_kind} {me.name!r} has count = {me.count} but {kind} {ref!r} has count = "
                                f"{group.count}: a counted {my_kind} is paired with a counted {kind} by index "
                                f"({me.name}-i with {ref}-i), so the counts must match")
            return f"{ref}-{index}"
        if any(ref in g.instances for g in groups.values()):
            return ref
        listing = [g.describe() for g in groups.values()]
        names = list(dict.fromkeys([*groups, *(n for g in groups.values() for n in g.instances)]))
        self.fail(path, f"unknown {kind} {ref!r}{_did_you_mean(ref, names)}; {kind}s in this file: "
                        f"{_choices(listing)}")

    # -- the document

    def parse(self, doc: Mapping[str, Any]) -> Topology:
        for key in doc:
            if key not in TOP_KEYS and key not in self.other_keys:
                self.fail((key,), f"unknown top-level key {key!r}{_did_you_mean(key, TOP_KEYS)}; a topology has "
                                  "[[router]] tables, [device.NAME.IFACE] tables and [region.NAME] tables")
        routers_raw = doc.get("router", [])
        if not isinstance(routers_raw, list):
            self.fail(("router",), "expected an array of tables ([[router]] with name = ...), got "
                                   f"{describe_value(routers_raw)}")
        devices_raw = self.table(doc.get("device", {}), ("device",), "[device.NAME.IFACE] tables")
        regions_raw = self.table(doc.get("region", {}), ("region",), "[region.NAME] tables")

        # Names first: references may point forward (order in the file does not matter).
        router_tables = self.router_names(routers_raw)
        device_tables = self.device_names(devices_raw)
        region_links = self.parse_regions(regions_raw)
        for region in self.regions:
            taken = self.names.get(f"region-{region}") or self.bases.get(f"region-{region}")
            if taken is not None:
                self.fail(taken[1], f"{taken[0]} name 'region-{region}' is taken by region {region!r}'s own "
                                    "router; pick another name")

        devices = [d for path, table in device_tables for d in self.parse_device(path, table)]
        by_name = {d.name: d for d in devices}
        routers = [r for path, table in router_tables for r in self.parse_router(path, table)]
        for r in routers:
            for fwd in r.port_forwards:
                target = by_name[fwd.device]
                if not any(i.gateway == r.name for i in target.ifaces):
                    gateways = sorted({i.gateway for i in target.ifaces})
                    raise fwd.origin.error(f"router {r.name!r} forwards to device {fwd.device!r}, which has no "
                                           f"interface on it (its gateways: {_choices(gateways)})")
        return Topology(
            source=self.file,
            routers=self.in_dependency_order(routers),
            devices=devices,
            regions=self.regions,
            region_links=region_links,
            router_groups={g.name: g.instances for g in self.router_groups.values() if g.count is not None},
            device_groups={g.name: g.instances for g in self.device_groups.values() if g.count is not None},
        )

    def router_names(self, raw: list[Any]) -> list[tuple[KeyPath, Mapping[str, Any]]]:
        tables = []
        for i, value in enumerate(raw):
            path: KeyPath = ("router", i)
            table = self.table(value, path, "a [[router]] table with name = ...")
            self.keys(table, path, ROUTER_KEYS, "a [[router]] table")
            if "name" not in table:
                self.fail(path, "a [[router]] needs a name: name = \"...\"")
            name = self.node_name(table["name"], (*path, "name"), "router name")
            group = _Group(name, path, self.count(table, path))
            self.claim(group, "router")
            self.router_groups[name] = group
            tables.append((path, table))
        return tables

    def device_names(self, raw: Mapping[str, Any]) -> list[tuple[KeyPath, Mapping[str, Any]]]:
        tables = []
        for name, value in raw.items():
            path: KeyPath = ("device", name)
            table = self.table(value, path, f"[device.{name}] with interface tables such as [device.{name}.eth0]")
            self.node_name(name, path, "device name")
            group = _Group(name, path, self.count(table, path))
            self.claim(group, "device")
            self.device_groups[name] = group
            tables.append((path, table))
        return tables

    def parse_regions(self, raw: Mapping[str, Any]) -> list[RegionLinkDef]:
        links: dict[frozenset[str], RegionLinkDef] = {}
        for name, value in raw.items():
            path: KeyPath = ("region", name)
            table = self.table(value, path, "[region.NAME] with latencies = { other = ms }")
            self.node_name(name, path, "region name")
            self.keys(table, path, REGION_KEYS, f"[region.{name}]")
            self.regions.setdefault(name, self.at(path))
            lat_path = (*path, "latencies")
            latencies = self.table(table.get("latencies", {}), lat_path, "other region = one-way latency in ms")
            for other, spec in latencies.items():
                lpath = (*lat_path, other)
                self.node_name(other, lpath, "region name")
                if other == name:
                    self.fail(lpath, f"region {name!r} lists itself; latencies name the other regions")
                link = self.region_link(spec, lpath)
                self.regions.setdefault(other, self.at(lpath))
                pair = frozenset((name, other))
                earlier = links.get(pair)
                if earlier is None:
                    links[pair] = RegionLinkDef(name, other, link, self.at(lpath))
                elif earlier.link != link:
                    line = f" (line {earlier.origin.line})" if earlier.origin.line else ""
                    self.fail(lpath, f"{_describe_link(link)} conflicts with {earlier.origin.key} = "
                                     f"{_describe_link(earlier.link)}{line}; give the link once, or the same value "
                                     "on both sides")
                # The same value from both sides is one link, not two.
        return list(links.values())

    def region_link(self, spec: object, path: KeyPath) -> RegionLink:
        from .link_shaping import check

        if isinstance(spec, Mapping):
            self.keys(spec, path, REGION_LINK_KEYS, "a region link")
            if "latency_ms" not in spec:
                self.fail(path, "a region link table needs latency_ms")
            link = RegionLink(
                latency_ms=self.integer(spec["latency_ms"], (*path, "latency_ms"), "one-way latency in ms", 0),
                jitter_ms=self.integer(spec.get("jitter_ms", 0), (*path, "jitter_ms"), "jitter in ms", 0),
                loss_pct=self.number(spec.get("loss_pct", 0.0), (*path, "loss_pct"), "loss in percent"),
                rate_kbit=self.integer(spec.get("rate_kbit", 0), (*path, "rate_kbit"), "rate in kbit/s", 0),
            )
        else:
            link = RegionLink.good(self.integer(spec, path, "one-way latency in ms", 0))
        try:
            check(link.limits(), "region link", "")
        except TopologyError as exc:
            self.wrapped(path, exc)
        return link

    def parse_router(self, path: KeyPath, table: Mapping[str, Any]) -> list[RouterDef]:
        group = self.router_groups[table["name"]]
        name = group.name
        keys = {key: self.at((*path, key)) for key in table}
        base = RouterDef(name=name, origin=self.at(path), keys=keys)
        node = f"router {name!r}"
        if "preset" in table:
            base.preset = self.string(table["preset"], (*path, "preset"), "a router preset name")
            self.preset("router", base.preset, (*path, "preset"))
        if "nat" in table:
            base.nat = self.nat(table["nat"], (*path, "nat"))
        if "nat_v6" in table:
            base.nat_v6 = self.choice(NatV6Mode, table["nat_v6"], (*path, "nat_v6"), "IPv6 NAT mode")
        if "nat64_timeouts" in table:
            tpath = (*path, "nat64_timeouts")
            spec = self.table(table["nat64_timeouts"], tpath, "{ udp = s, tcp_established = s, icmp = s }")
            self.keys(spec, tpath, NAT64_TIMEOUT_KEYS, "nat64_timeouts")
            base.nat64_timeouts = {k: self.integer(v, (*tpath, k), f"{k} binding lifetime in seconds", 1)
                                   for k, v in spec.items()}
        if "firewall" in table:
            base.firewall = self.firewall(table["firewall"], (*path, "firewall"))
        if "ip_support" in table:
            base.ip_support = self.choice(IpSupport, table["ip_support"], (*path, "ip_support"), "ip_support")
        if "region" in table:
            rpath = (*path, "region")
            base.region = self.string(table["region"], rpath, "a region name")
            if base.region not in self.regions:
                known = list(self.regions)
                self.fail(rpath, f"unknown region {base.region!r}{_did_you_mean(base.region, known)}; regions in "
                                 f"this file: {_choices(known)} (declare it with [region.{base.region}])")
            if "upstream" in table or table.get("isolated") is True:
                self.fail(rpath, f"{node}: a router in a region hangs off the region's router; drop upstream/"
                                 "isolated, or drop region")
        if "pool" in table:
            base.pool = self.choice(Pool, table["pool"], (*path, "pool"), "pool")
        if "downstream_cidr" in table:
            cpath = (*path, "downstream_cidr")
            text = self.string(table["downstream_cidr"], cpath, "an IPv4 network such as \"10.9.0.0/24\"")
            try:
                cidr = ip_network(text)
            except ValueError as exc:
                self.fail(cpath, f"{text!r} is not a network: {exc}")
            if not isinstance(cidr, IPv4Network) or cidr.prefixlen > 30:
                self.fail(cpath, f"{cidr} must be an IPv4 network of /30 or larger")
            base.downstream_cidr = cidr
        if "mtu" in table:
            base.mtu = self.integer(table["mtu"], (*path, "mtu"), "mtu", 68, 65535)
        if "block_icmp_frag_needed" in table:
            base.block_icmp_frag_needed = self.boolean(table["block_icmp_frag_needed"],
                                                       (*path, "block_icmp_frag_needed"), "block_icmp_frag_needed")
        if "isolated" in table:
            base.isolated = self.boolean(table["isolated"], (*path, "isolated"), "isolated: no uplink")
            if base.isolated and "upstream" in table:
                self.fail((*path, "isolated"), f"{node}: an isolated router has no upstream; drop one of them")
        if "downlink" in table:
            base.downlink = self.link(table["downlink"], (*path, "downlink"), name)
        forwards = self.forward_tables(table.get("port_forward"), (*path, "port_forward"))

        out = []
        for index, instance in enumerate(group.instances):
            r = dataclasses.replace(base, name=instance, port_forwards=[])
            if group.count is not None:
                r.group, r.index = name, index
            if "upstream" in table:
                r.upstream = self.reference(table["upstream"], (*path, "upstream"), "router", self.router_groups,
                                            group, r.index, "router")
            for fpath, spec in forwards:
                device = self.reference(spec["device"], (*fpath, "device"), "device", self.device_groups, group,
                                        r.index, "router")
                r.port_forwards.append(PortForwardDef(spec["proto"], spec["port"], device, spec["device_port"],
                                                      self.at(fpath)))
            out.append(r)
        return out

    def nat(self, value: object, path: KeyPath) -> str | NatConfig:
        if isinstance(value, str):
            if _norm(value) != "none":
                self.preset("nat", value, path)
            return value
        spec = self.table(value, path, "a NAT preset name such as \"home\", or a table of NatConfig fields")
        self.keys(spec, path, NAT_KEYS, "a nat table")
        config = self.preset_base(spec, path, "nat", "NAT", NatConfig)
        changes: dict[str, Any] = {}
        for key, raw in spec.items():
            kpath = (*path, key)
            if key == "mapping":
                changes[key] = self.choice(NatMapping, raw, kpath, "NAT mapping", {
                    "endpoint-dependent": NatMapping.ADDRESS_AND_PORT_DEPENDENT,
                    "symmetric": NatMapping.ADDRESS_AND_PORT_DEPENDENT})
            elif key == "filtering":
                changes[key] = self.choice(NatFiltering, raw, kpath, "NAT filtering")
            elif key == "hairpin":
                changes[key] = self.boolean(raw, kpath, "hairpin")
            elif key == "downstream_pool":
                changes[key] = self.choice(Pool, raw, kpath, "pool")
            elif key != "preset":
                changes[key] = self.integer(raw, kpath, f"{key} in seconds", 1)
        return dataclasses.replace(config, **changes)

    def firewall(self, value: object, path: KeyPath) -> str | FirewallConfig:
        if isinstance(value, str):
            if _norm(value) != "none":
                self.preset("firewall", value, path)
            return value
        spec = self.table(value, path, "a firewall preset name such as \"block-inbound\", or a table with "
                                       "block_inbound, allow_tcp_ports, allow_udp_ports")
        self.keys(spec, path, FIREWALL_KEYS, "a firewall table")
        config = self.preset_base(spec, path, "firewall", "firewall", FirewallConfig)
        changes: dict[str, Any] = {}
        if "block_inbound" in spec:
            changes["block_inbound"] = self.boolean(spec["block_inbound"], (*path, "block_inbound"), "block_inbound")
        for key in ("allow_tcp_ports", "allow_udp_ports"):
            if key in spec:
                ports = spec[key]
                if not isinstance(ports, list):
                    self.fail((*path, key),
                              f"expected an array of ports such as [80, 443], got {describe_value(ports)}")
                changes[key] = tuple(self.integer(p, (*path, key, i), "a port", 1, 65535) for i, p in enumerate(ports))
        return dataclasses.replace(config, **changes)

    def forward_tables(self, value: object, path: KeyPath) -> list[tuple[KeyPath, dict[str, Any]]]:
        if value is None:
            return []
        items = [value] if isinstance(value, Mapping) else value
        if not isinstance(items, list):
            self.fail(path, f"expected port forward tables ([[router.port_forward]] or an array of "
                            f"{{ proto, port, device }}), got {describe_value(value)}")
        out = []
        for i, item in enumerate(items):
            fpath = (*path, i) if not isinstance(value, Mapping) else path
            spec = self.table(item, fpath, "{ proto = \"udp\", port = 5000, device = \"name\", device_port = 9000 }")
            self.keys(spec, fpath, FORWARD_KEYS, "a port forward")
            for required in ("proto", "port", "device"):
                if required not in spec:
                    self.fail(fpath, f"a port forward needs {required} (keys: proto, port, device, device_port)")
            proto = self.string(spec["proto"], (*fpath, "proto"), "\"tcp\" or \"udp\"").lower()
            if proto not in ("tcp", "udp"):
                self.fail((*fpath, "proto"), f"port forwards are \"tcp\" or \"udp\", not {spec['proto']!r}")
            out.append((fpath, {
                "proto": proto,
                "port": self.integer(spec["port"], (*fpath, "port"), "a port", 1, 65535),
                "device": spec["device"],  # checked per router instance (pairing by index)
                "device_port": None if "device_port" not in spec else
                self.integer(spec["device_port"], (*fpath, "device_port"), "a port", 1, 65535),
            }))
        return out

    def parse_device(self, path: KeyPath, table: Mapping[str, Any]) -> list[DeviceDef]:
        group = self.device_groups[str(path[1])]
        name = group.name
        keys = {key: self.at((*path, key)) for key in table}
        iface_specs: list[tuple[str, KeyPath, Mapping[str, Any]]] = []
        for key, value in table.items():
            if key in DEVICE_KEYS:
                continue
            kpath = (*path, key)
            if not isinstance(value, Mapping):
                self.fail(kpath, f"unknown key {key!r} in [device.{name}]{_did_you_mean(key, DEVICE_KEYS)}; device "
                                 f"keys: {_choices(DEVICE_KEYS)}; interfaces are tables: [device.{name}.eth0] "
                                 "gateway = \"router\"")
            try:
                check_ifname(key, node=name, field="")
            except TopologyError as exc:
                self.wrapped(kpath, exc)
            self.keys(value, kpath, IFACE_KEYS, f"interface [device.{name}.{key}]")
            if "gateway" not in value:
                self.fail(kpath, f"interface {key!r} of device {name!r} needs gateway = \"router\"")
            iface_specs.append((key, kpath, value))
        if not iface_specs:
            self.fail(path, f"device {name!r} has no interface; add one: [device.{name}.eth0] gateway = \"router\"")
        default_via = None
        if "default_via" in table:
            dpath = (*path, "default_via")
            default_via = self.string(table["default_via"], dpath, "the name of one of its interfaces")
            names = [spec[0] for spec in iface_specs]
            if default_via not in names:
                self.fail(dpath, f"default_via names {default_via!r}, which is not an interface of device {name!r}"
                                 f"{_did_you_mean(default_via, names)} (its interfaces: {_choices(names)})")
        mtu = self.integer(table["mtu"], (*path, "mtu"), "mtu", 68, 65535) if "mtu" in table else None
        impairs = {iname: self.link(spec["impair"], (*kpath, "impair"), name)
                   for iname, kpath, spec in iface_specs if "impair" in spec}

        out = []
        for index, instance in enumerate(group.instances):
            ifaces = []
            for iname, kpath, spec in iface_specs:
                gateway = self.reference(spec["gateway"], (*kpath, "gateway"), "router", self.router_groups, group,
                                         index if group.count is not None else None, "device")
                ifaces.append(IfaceDef(iname, gateway, impairs.get(iname), self.at(kpath),
                                       {k: self.at((*kpath, k)) for k in spec}))
            d = DeviceDef(name=instance, origin=self.at(path), ifaces=ifaces, keys=keys, default_via=default_via,
                          mtu=mtu)
            if group.count is not None:
                d.group, d.index = name, index
            out.append(d)
        return out

    def in_dependency_order(self, routers: list[RouterDef]) -> list[RouterDef]:
        """Parents before children, otherwise file order; an upstream cycle is an error."""
        by_name = {r.name: r for r in routers}
        done: set[str] = set()
        order: list[RouterDef] = []
        for r in routers:
            chain: list[str] = []
            current: str | None = r.name
            while current is not None and current not in done:
                if current in chain:
                    cycle = [*chain[chain.index(current):], current]
                    first = by_name[cycle[0]]
                    raise first.keys["upstream"].error(
                        f"routers form an upstream cycle: {' -> '.join(cycle)}; one of them must plug into the "
                        "IX (no upstream) or into a region")
                chain.append(current)
                current = by_name[current].upstream
            for name in reversed(chain):
                done.add(name)
                order.append(by_name[name])
        return order


def _describe_link(link: RegionLink) -> str:
    if link == RegionLink.good(link.latency_ms):
        return f"{link.latency_ms} ms"
    return repr(link)


# ---- line numbers ---------------------------------------------------------------------------


class _KeyLines:
    """Best-effort line numbers of key paths in TOML text.

    A small scanner over text tomllib already accepted: it follows table headers, arrays of
    tables (counting their index), dotted keys, inline tables and arrays, and skips strings
    and comments. `line_of` answers for the longest known prefix of a path.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        self._text = text
        self._pos = 0
        self._line = 1
        self._arrays: dict[KeyPath, int] = {}
        with contextlib.suppress(IndexError, ValueError):  # best effort: keep what was found
            self._document()

    def line_of(self, path: KeyPath) -> int | None:
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    # -- scanning

    def _peek(self, n: int = 1) -> str:
        return self._text[self._pos:self._pos + n]

    def _advance(self, n: int = 1) -> None:
        self._line += self._text.count("\n", self._pos, self._pos + n)
        self._pos += n

    def _skip(self, newlines: bool) -> None:
        while self._pos < len(self._text):
            c = self._text[self._pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self._advance()
            elif c == "#":
                end = self._text.find("\n", self._pos)
                self._advance((len(self._text) if end < 0 else end) - self._pos)
            else:
                return

    def _record(self, path: KeyPath, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self._pos >= len(self._text):
                return
            line = self._line
            if self._peek(2) == "[[":
                self._advance(2)
                table = self._resolve(self._key(), array=True)
                self._record(table, line)
                self._advance(2)  # "]]"
            elif self._peek() == "[":
                self._advance()
                table = self._resolve(self._key(), array=False)
                self._record(table, line)
                self._advance()  # "]"
            else:
                path = (*table, *self._key())
                self._record(path, line)
                self._skip(newlines=False)
                self._advance()  # "="
                self._skip(newlines=False)
                self._value(path)

    def _resolve(self, keys: list[str], array: bool) -> KeyPath:
        path: KeyPath = ()
        for i, key in enumerate(keys):
            path = (*path, key)
            last = i == len(keys) - 1
            if last and array:
                index = self._arrays.get(path, -1) + 1
                self._arrays[path] = index
                path = (*path, index)
            elif path in self._arrays:
                path = (*path, self._arrays[path])
        return path

    def _key(self) -> list[str]:
        parts = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c in "\"'":
                parts.append(self._string_value())
            else:
                start = self._pos
                text = self._text
                while self._pos < len(text) and (text[self._pos].isalnum() or text[self._pos] in "_-"):
                    self._pos += 1
                if self._pos == start:
                    raise ValueError("no key")
                parts.append(self._text[start:self._pos])
            self._skip(newlines=False)
            if self._peek() != ".":
                return parts
            self._advance()

    def _string_value(self) -> str:
        quote = self._peek()
        if self._peek(3) == quote * 3:
            end = self._text.find(quote * 3, self._pos + 3)
            if quote == '"':
                while end > 0 and self._text[end - 1] == "\\":  # an escaped quote, not the end
                    end = self._text.find(quote * 3, end + 1)
            if end < 0:
                raise ValueError("unterminated string")
            while self._text[end + 3:end + 4] == quote:  # up to two quotes may end the content
                end += 1
            raw = self._text[self._pos + 3:end]
            self._advance(end + 3 - self._pos)
            return raw
        self._advance()
        start = self._pos
        while self._text[self._pos] != quote:
            if quote == '"' and self._text[self._pos] == "\\":
                self._pos += 1
            self._pos += 1
        raw = self._text[start:self._pos]
        self._advance()
        if quote == '"' and "\\" in raw:
            raw = tomllib.loads(f'k = "{raw}"')["k"]
        return raw

    def _value(self, path: KeyPath) -> None:
        c = self._peek()
        if c in "\"'":
            self._string_value()
        elif c == "{":
            self._advance()
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self._advance()
                    return
                line = self._line
                key_path = (*path, *self._key())
                self._record(key_path, line)
                self._skip(newlines=False)
                self._advance()  # "="
                self._skip(newlines=False)
                self._value(key_path)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance()
        elif c == "[":
            self._advance()
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._advance()
                    return
                self._record((*path, index), self._line)
                self._value((*path, index))
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance()
                index += 1
        else:
            start = self._pos
            while self._pos < len(self._text) and self._text[self._pos] not in ",]}\r\n#":
                self._pos += 1
            if self._pos == start:
                raise ValueError("no value")
