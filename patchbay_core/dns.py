"""Names inside a lab: /etc/hosts and /etc/resolv.conf as every node sees them.

Each node gets a mount namespace of its own (made lazily, the first time code or a command
runs in the node) in which two files of the lab are bind-mounted over the host's:
- `hosts.<node>`: localhost, the lab-wide entries (`Lab.dns_entry`) and the node's own
  (`Device.dns_entry`), which shadow lab-wide entries of the same name;
- `resolv.conf`: the lab's nameserver (`Lab.set_nameserver`), or none, so lookups of unknown
  names fail at once inside the lab instead of asking the host's resolver.
glibc reads both files on every lookup (resolv.conf when it changed), so entries added later
are seen at once: the files are rewritten in place (a bind mount holds the inode, a renamed
file would not be seen). The node's threads enter the mount namespace next to its network
namespace, children enter it before exec; the host's own files never change.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from .errors import TopologyError
from .kernel import native

HOSTS = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
_DIR_PREFIX = "patchbay-dns-"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")

IPAddress = IPv4Address | IPv6Address


def check_name(name: object, node: str) -> str:
    if not isinstance(name, str) or not _HOSTNAME.match(name):
        raise TopologyError(f"{name!r} is not a host name (letters, digits, '-', '_' and dots; up to 253 bytes)",
                            node=node, field="dns_entry")
    return name


def check_ip(ip: object, node: str, field: str) -> IPAddress:
    try:
        return ip_address(str(ip))
    except ValueError:
        raise TopologyError(f"{ip!r} is not an IPv4 or IPv6 address", node=node, field=field) from None


class LabNames:
    """The lab's name entries, its nameserver, and each node's view of them."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._lock = threading.Lock()
        self._lab_entries: dict[str, list[IPAddress]] = {}
        self._node_entries: dict[str, dict[str, list[IPAddress]]] = {}
        self._nameservers: list[IPAddress] = []
        self._dir: Path | None = None
        self._mount_ns: dict[str, int] = {}  # node -> mount namespace fd

    # ---- entries ------------------------------------------------------------------------

    def add_lab_entry(self, name: str, ip: IPAddress) -> None:
        with self._lock:
            _add(self._lab_entries, name, ip)
            for node in self._mount_ns:
                self._write_hosts(node)

    def add_node_entry(self, node: str, name: str, ip: IPAddress) -> None:
        with self._lock:
            _add(self._node_entries.setdefault(node, {}), name, ip)
            if node in self._mount_ns:
                self._write_hosts(node)

    def set_nameserver(self, ip: IPAddress) -> None:
        with self._lock:
            self._nameservers = [ip]
            if self._dir is not None:
                self._write_resolv_conf()

    def hosts_text(self, node: str) -> str:
        """What `node` reads in /etc/hosts."""
        own = self._node_entries.get(node, {})
        lines = [f"# patchbay lab {self._label}, node {node}: Lab.dns_entry and Device.dns_entry",
                 "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for entries in (own, {n: ips for n, ips in self._lab_entries.items() if n not in own}):
            lines += [f"{ip}\t{name}" for name, ips in entries.items() for ip in ips]
        return "\n".join(lines) + "\n"

    def resolv_conf_text(self) -> str:
        if not self._nameservers:
            return (f"# patchbay lab {self._label}: no nameserver (Lab.set_nameserver); unknown names fail at once\n"
                    "options timeout:1 attempts:1\n")
        return "".join(f"nameserver {ip}\n" for ip in self._nameservers)

    # ---- per-node mount namespaces --------------------------------------------------------

    def mount_ns(self, node: str) -> int:
        """The fd of `node`'s mount namespace, made on first use."""
        with self._lock:
            fd = self._mount_ns.get(node)
            if fd is None:
                directory = self._files_dir()
                self._write_hosts(node)
                binds = {str(directory / f"hosts.{node}"): HOSTS, str(directory / "resolv.conf"): RESOLV_CONF}
                # A host without the file (a dangling resolv.conf symlink) keeps its own view.
                fd = native.mntns_new({src: dst for src, dst in binds.items() if os.path.exists(dst)}, node)
                self._mount_ns[node] = fd
            return fd

    def forget(self, node: str) -> None:
        """The node was removed: close its mount namespace, drop its file and entries."""
        with self._lock:
            self._node_entries.pop(node, None)
            fd = self._mount_ns.pop(node, None)
            if fd is not None:
                os.close(fd)
                if self._dir is not None:
                    with contextlib.suppress(OSError):
                        (self._dir / f"hosts.{node}").unlink()

    def close(self) -> None:
        with self._lock:
            for fd in self._mount_ns.values():
                os.close(fd)
            self._mount_ns.clear()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def _files_dir(self) -> Path:
        if self._dir is None:
            base = Path("/run/patchbay") if os.geteuid() == 0 and os.access("/run", os.W_OK) else None
            if base is not None:
                base.mkdir(mode=0o755, exist_ok=True)
            parent = Path(tempfile.gettempdir()) if base is None else base
            _remove_stale_dirs(parent)
            self._dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=parent))
            self._dir.chmod(0o755)  # children that drop privileges still read their hosts file
            self._write_resolv_conf()
        return self._dir

    def _write_hosts(self, node: str) -> None:
        if self._dir is not None:
            _rewrite(self._dir / f"hosts.{node}", self.hosts_text(node))

    def _write_resolv_conf(self) -> None:
        assert self._dir is not None
        _rewrite(self._dir / "resolv.conf", self.resolv_conf_text())


def _add(entries: dict[str, list[IPAddress]], name: str, ip: IPAddress) -> None:
    ips = entries.setdefault(name, [])
    if ip not in ips:
        ips.append(ip)


def _rewrite(path: Path, text: str) -> None:
    """Write in place: bind mounts refer to the inode, so the file must stay the same one.
    Written over the old text, then cut to length: a reader never meets an empty file."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _remove_stale_dirs(parent: Path) -> None:
    """Files of labs whose process died (SIGKILL leaves them): remove them."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if not entry.name.startswith(_DIR_PREFIX):
                continue
            pid = entry.name[len(_DIR_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(entry, ignore_errors=True)
