"""Labs without root: init_userns() then a two-node lab, as an unprivileged user."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
PACKAGES = ["patchbay_core", "patchbay_plugins", "anyio", "sniffio", "idna", "cffi", "_cffi_backend",
            "pluggy", "typing_extensions"]

ROOTLESS_LAB = textwrap.dedent(
    """
    import os, anyio
    import patchbay_core as pb

    assert os.getuid() == 65534
    pb.init_userns()

    async def main():
        async with pb.Lab() as lab:
            r = await lab.add_router("r").build()
            a = await lab.add_device("a").iface("eth0", r).build()
            b = await lab.add_device("b").iface("eth0", r).build()
            result = await a.ping(b.ip, count=2)
            proc = await a.spawn_command(["cat", "/proc/net/dev"], stdout=-1)
            listing = b""
            async for chunk in proc.stdout:
                listing += chunk
            await proc.wait()
            lab.dns_entry("b.lab", b.ip)  # names work too: the node's own mount namespace
            proc = await a.spawn_command(["getent", "hosts", "b.lab"], stdout=-1)
            named = (await proc.stdout.receive()).split()[0].decode()
            await proc.wait()
            print(result.received, b"eth0:" in listing, os.getuid(), named == str(b.ip))

    anyio.run(main)
    """
)

FORBIDDEN = textwrap.dedent(
    """
    import patchbay_core as pb
    try:
        pb.init_userns()
    except pb.UsernsUnavailable as err:
        print("sysctl:", err.sysctl)
        print("message:", err)
    else:
        print("no error")
    """
)


@pytest.fixture(scope="module")
def readable_pythonpath() -> Iterator[str]:
    """A copy of the packages a lab needs, readable by any user (the checkout may not be)."""
    root = Path(tempfile.mkdtemp(prefix="patchbay-rootless-", dir="/tmp"))
    try:
        for name in PACKAGES:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                continue
            origin = Path(spec.origin)
            if spec.submodule_search_locations:
                shutil.copytree(origin.parent, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, root / origin.name)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _python() -> str:
    python = os.path.realpath(sys.executable)
    if not python.startswith("/usr/"):
        pytest.fail(f"the rootless tests need a system Python an unprivileged user can run, not {python}")
    return python


def _host_forbids_userns() -> str | None:
    """The sysctl by which this host forbids unprivileged user namespaces, if it does (Ubuntu
    23.10 and later restrict them through AppArmor by default)."""
    for name, bad in (("kernel.apparmor_restrict_unprivileged_userns", "1"),
                      ("kernel.unprivileged_userns_clone", "0"), ("user.max_user_namespaces", "0")):
        path = Path("/proc/sys") / name.replace(".", "/")
        if path.exists() and path.read_text().strip() == bad:
            return name
    return None


def test_an_unprivileged_user_builds_a_lab_and_pings(readable_pythonpath: str) -> None:
    out = subprocess.run(
        [*NOBODY, _python(), "-c", ROOTLESS_LAB],
        env={"PYTHONPATH": readable_pythonpath, "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True, text=True, timeout=60, cwd="/tmp",
    )
    forbidding = _host_forbids_userns()
    if forbidding is not None:
        # Where the host forbids it, the user learns which sysctl to change.
        assert out.returncode != 0 and "UsernsUnavailable" in out.stderr and forbidding in out.stderr, out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "True", "0", "True"]


def test_a_forbidding_kernel_gets_an_error_naming_the_sysctl(readable_pythonpath: str) -> None:
    # A user namespace whose user.max_user_namespaces is 0 forbids nesting another one: the
    # situation of a kernel that forbids unprivileged user namespaces.
    script = (
        "echo 0 > /proc/sys/user/max_user_namespaces && "
        f"exec setpriv --inh-caps=-all --bounding-set=-all {_python()} -c \"$0\""
    )
    out = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script, FORBIDDEN],
        env={"PYTHONPATH": readable_pythonpath, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, cwd="/tmp",
    )
    assert out.returncode == 0, out.stderr
    assert "sysctl: user.max_user_namespaces" in out.stdout
    assert "sudo sysctl -w user.max_user_namespaces=" in out.stdout
