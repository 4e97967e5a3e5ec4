"""Nothing of a lab outlives it: not on close, not when its process is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

import patchbay_core as pb
from tests.helpers import alive, netns_inodes_of_process, processes_in

pytestmark = pytest.mark.anyio

CHILD = textwrap.dedent(
    """
    import json, os, sys, anyio
    import patchbay_core as pb

    async def main():
        lab = await pb.Lab.create(pb.LabOpts(label="doomed"))
        r = await lab.add_router("r").build()
        d = await lab.add_device("d").iface("eth0", r).build()
        assert (await d.ping(r.gateway_ip)).received == 1
        # A command that leaves a daemon behind: the grandchild double-forks into its own session.
        p = d.spawn_command_sync(["sh", "-c", "setsid sh -c 'sleep 1000 & sleep 1000' & sleep 1000"])
        await anyio.sleep(0.3)
        await d.spawn(lambda h: anyio.sleep(0))  # start the node's event-loop thread too
        nodes = [lab._ix, *lab._routers.values(), *lab._devices.values()]
        print(json.dumps({"inodes": [n.ns.inode for n in nodes], "child": p.pid}), flush=True)
        await anyio.sleep(1000)

    anyio.run(main)
    """
)


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


async def test_sigkilled_lab_leaves_no_namespace_link_or_process() -> None:
    links_before = host_links()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = await anyio.to_thread.run_sync(child.stdout.readline)
        info = json.loads(line)
        inodes = set(info["inodes"])
        assert len(inodes) == 3
        lab_processes = set(processes_in(inodes))
        # The lab's process (threads in node namespaces, fds), the shell, its sleeps, the daemon.
        assert child.pid in lab_processes and info["child"] in lab_processes
        assert len(lab_processes) >= 5
        assert host_links() == links_before  # nothing of the lab is in the host namespace
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        survivors = [pid for pid in lab_processes if alive(pid)]
        holders = processes_in(inodes)
        if not survivors and not holders:
            break
        await anyio.sleep(0.05)
    assert survivors == [] and holders == []
    assert host_links() == links_before


async def test_close_ends_threads_processes_and_namespaces() -> None:
    before = netns_inodes_of_process()
    async with pb.Lab(pb.LabOpts(label="tidy")) as lab:
        r = await lab.add_router("r").build()
        d = await lab.add_device("d").iface("eth0", r).build()
        assert (await d.ping(r.gateway_ip)).received == 1
        d.run_sync(lambda: None)
        d.spawn_thread(lambda: None).result()
        daemon = await d.spawn_command(["sh", "-c", "setsid sleep 1000 & echo $!"], stdout=subprocess.PIPE)
        assert daemon.stdout is not None
        await daemon.wait()
        proc = await d.spawn_command(["sleep", "1000"])
        inodes = {n.ns.inode for n in [lab._ix, *lab._routers.values(), *lab._devices.values()]}  # type: ignore[union-attr]
        assert processes_in(inodes)
    assert netns_inodes_of_process() == before
    assert proc.returncode == -signal.SIGKILL
    assert not [t.name for t in threading.enumerate() if t.name.startswith("patchbay-") and "tidy" in t.name]
    assert not [t.name for t in threading.enumerate() if t.name in ("patchbay-loop-d", "patchbay-sync-d")]
    for _ in range(100):
        if not processes_in(inodes):
            break
        await anyio.sleep(0.02)
    assert processes_in(inodes) == []


async def test_two_labs_with_the_same_names_run_side_by_side() -> None:
    async def one(results: list[tuple[str, int]]) -> None:
        async with pb.Lab() as lab:
            dc = await lab.add_router("dc").build()
            home = await lab.add_router("home").build()
            server = await lab.add_device("server").iface("eth0", dc).build()
            laptop = await lab.add_device("laptop").iface("eth0", home).build()
            result = await laptop.ping(server.ip, count=3)
            results.append((str(server.ip), result.received))

    results: list[tuple[str, int]] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one, results)
    # Same names and the same address plan, in separate namespaces: no clash.
    assert results == [("198.18.1.2", 3)] * 3


async def test_close_is_quick_with_many_fds_open() -> None:
    import os

    async with pb.Lab() as lab:
        filler = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]  # fds past 1024
        try:
            r = await lab.add_router("r").build()
            await r.spawn_command(["sleep", "30"])  # the lab's PID namespace init starts now
        finally:
            for fd in filler:
                os.close(fd)
        started = time.monotonic()
    assert time.monotonic() - started < 3.0
