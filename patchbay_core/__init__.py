"""patchbay: realistic networks out of Linux network namespaces, with real code inside.

    import patchbay_core as pb

    async with pb.Lab(pb.LabOpts(label="demo")) as lab:
        dc = await lab.add_router("dc").build()
        srv = await lab.add_device("server").iface("eth0", dc).build()
"""

from . import nat64
from .builders import DeviceBuilder, RouterBuilder
from .diagnostics import MappingEntry
from .errors import (
    KernelFeatureMissing,
    NetlinkError,
    NftError,
    NodeGone,
    PatchbayError,
    SimError,
    TopologyError,
    UsernsUnavailable,
)
from .firewall import Firewall, FirewallConfig
from .handles import Device, DeviceIface, Ix, Region, Router, RouterIface
from .hookspecs import hookimpl
from .lab import Lab
from .link import LinkCondition, LinkLimits
from .nat import Nat, NatConfig, NatFiltering, NatMapping, NatV6Mode
from .opts import Ipv6Dad, Ipv6Provisioning, LabOpts, OutDir
from .ping import PingResult
from .processes import NodeProcess
from .reflector import Reflector
from .regions import RegionLink
from .routers import IpSupport, Pool, RouterPreset, RouterSpec
from .rules import PortForward, RuleContext
from .userns import init_userns

__all__ = [
    "Device",
    "DeviceBuilder",
    "DeviceIface",
    "Firewall",
    "FirewallConfig",
    "IpSupport",
    "Ipv6Dad",
    "Ipv6Provisioning",
    "Ix",
    "KernelFeatureMissing",
    "Lab",
    "LabOpts",
    "LinkCondition",
    "LinkLimits",
    "MappingEntry",
    "Nat",
    "NatConfig",
    "NatFiltering",
    "NatMapping",
    "NatV6Mode",
    "NetlinkError",
    "NftError",
    "NodeGone",
    "NodeProcess",
    "OutDir",
    "PatchbayError",
    "PingResult",
    "Pool",
    "PortForward",
    "Reflector",
    "Region",
    "RegionLink",
    "Router",
    "RouterBuilder",
    "RouterIface",
    "RouterPreset",
    "RouterSpec",
    "RuleContext",
    "SimError",
    "TopologyError",
    "UsernsUnavailable",
    "hookimpl",
    "init_userns",
    "nat64",
]
