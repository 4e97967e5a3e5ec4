"""Code and commands run inside the node's namespace, from asyncio and trio callers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading

import anyio
import pytest

import patchbay_core as pb

pytestmark = pytest.mark.anyio


def thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def node_netns(handle: pb.Device | pb.Router) -> int:
    return os.fstat(handle.ns_fd).st_ino


async def small_lab(lab: pb.Lab) -> tuple[pb.Router, pb.Device, pb.Device]:
    r = await lab.add_router("r").build()
    a = await lab.add_device("a").iface("eth0", r).build()
    b = await lab.add_device("b").iface("eth0", r).iface("eth1", r).default_via("eth0").build()
    return r, a, b


async def test_spawn_returns_values_and_reraises_errors(lab: pb.Lab) -> None:
    _, a, _ = await small_lab(lab)

    async def add(h: pb.Device, x: int, y: int) -> tuple[str, int]:
        await anyio.sleep(0)
        return h.name, x + y

    assert await a.spawn(add, 2, 3) == ("a", 5)

    class Boom(Exception):
        pass

    async def fail(_: pb.Device) -> None:
        raise Boom("inside the node")

    with pytest.raises(Boom, match="inside the node"):
        await a.spawn(fail)


async def test_sockets_made_in_spawn_see_only_the_node(lab: pb.Lab) -> None:
    _, a, b = await small_lab(lab)

    async def names(_: pb.Device) -> list[str]:
        return [name for _, name in socket.if_nameindex()]

    assert sorted(await a.spawn(names)) == ["eth0", "lo"]
    assert sorted(await b.spawn(names)) == ["eth0", "eth1", "lo"]
    assert sorted(name for _, name in socket.if_nameindex()) != ["eth0", "lo"]  # the host is elsewhere

    async def bind_own_address(h: pb.Device) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(h.ip), 0))  # only possible where that address lives
            return int(s.getsockname()[1])

    assert await a.spawn(bind_own_address) > 0


async def test_every_thread_that_runs_node_code_is_in_the_node(lab: pb.Lab) -> None:
    _, a, _ = await small_lab(lab)
    expected = node_netns(a)
    resolver_threads: list[int] = []

    async def where(_: pb.Device) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        real_getaddrinfo = socket.getaddrinfo

        def spying_getaddrinfo(*args: object, **kwargs: object) -> object:
            resolver_threads.append(thread_netns())
            return real_getaddrinfo(*args, **kwargs)  # type: ignore[arg-type]

        socket.getaddrinfo = spying_getaddrinfo  # type: ignore[assignment]
        try:
            await loop.getaddrinfo("127.0.0.1", 80)
            await anyio.getaddrinfo("127.0.0.1", 80)
        finally:
            socket.getaddrinfo = real_getaddrinfo
        return {
            "loop": thread_netns(),
            "anyio.to_thread": await anyio.to_thread.run_sync(thread_netns),
            "run_in_executor": await loop.run_in_executor(None, thread_netns),
        }

    found = await a.spawn(where)
    assert found == dict.fromkeys(found, expected)
    assert resolver_threads and set(resolver_threads) == {expected}
    assert a.run_sync(thread_netns) == expected
    assert a.spawn_thread(thread_netns).result(timeout=5) == expected
    assert thread_netns() != expected  # the caller stays home


async def test_run_sync_and_spawn_thread_return_results(lab: pb.Lab) -> None:
    _, a, _ = await small_lab(lab)
    assert a.run_sync(lambda x: x * 2, 21) == 42
    fut = a.spawn_thread(lambda: threading.current_thread().name)
    assert fut.result(timeout=5).startswith("patchbay-thread-a")
    with pytest.raises(ZeroDivisionError):
        a.run_sync(lambda: 1 / 0)


async def test_spawn_command_runs_in_the_node(lab: pb.Lab) -> None:
    _, _, b = await small_lab(lab)
    proc = await b.spawn_command(["cat", "/proc/net/dev"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    chunks = []
    async for chunk in proc.stdout:
        chunks.append(chunk)
    assert await proc.wait() == 0
    listed = {line.split(":")[0].strip() for line in b"".join(chunks).decode().splitlines()[2:]}
    assert listed == {"lo", "eth0", "eth1"}


async def test_spawn_command_sync_and_stdin(lab: pb.Lab) -> None:
    _, a, _ = await small_lab(lab)
    child = a.spawn_command_sync(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = child.communicate(b"through the pipe", timeout=5)
    assert out == b"through the pipe" and child.returncode == 0

    proc = await a.spawn_command(["sh", "-c", "read x; echo got-$x; exit 3"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdin.send(b"hi\n")
    await proc.stdin.aclose()
    assert await proc.stdout.receive() == b"got-hi\n"
    assert await proc.wait() == 3


async def test_reflector_echoes_and_ping_measures(lab: pb.Lab) -> None:
    _, a, b = await small_lab(lab)
    reflector = await b.spawn_reflector((b.ip, 9999))
    assert reflector.addr == (str(b.ip), 9999)

    async def probe(_: pb.Device) -> list[bytes]:
        sock = await anyio.create_udp_socket(family=socket.AF_INET)
        async with sock:
            answers = []
            for i in range(3):
                await sock.sendto(b"ping-%d" % i, str(b.ip), 9999)
                with anyio.fail_after(3):
                    answers.append((await sock.receive())[0])
            return answers

    assert await a.spawn(probe) == [b"ping-0", b"ping-1", b"ping-2"]
    await reflector.close()
    result = await a.ping(b.ip, count=3)
    assert result.sent == 3 and result.received == 3 and len(result.rtts_ms) == 3
    assert all(0 < rtt < 100 for rtt in result.rtts_ms)
    lost = await a.ping("198.18.200.1", count=1, timeout=0.3)  # nobody there
    assert lost.received == 0 and lost.loss_pct == 100.0


async def test_handles_of_a_closed_lab_raise_node_gone() -> None:
    async with pb.Lab() as lab:
        r = await lab.add_router("r").build()
        d = await lab.add_device("d").iface("eth0", r).build()
    with pytest.raises(pb.NodeGone, match="'d'"):
        await d.ping(r.gateway_ip)
    with pytest.raises(pb.NodeGone):
        d.run_sync(lambda: None)
    assert d.ip is None and r.uplink_ip is None


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_callers_get_the_same_api(lab: pb.Lab) -> None:
    import trio

    _, a, b = await small_lab(lab)

    async def hello(h: pb.Device) -> str:
        await anyio.sleep(0.01)
        return f"hello from {h.name}"

    assert await a.spawn(hello) == "hello from a"
    assert (await a.ping(b.ip)).received == 1
    proc = await a.spawn_command(["sh", "-c", "echo trio"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert await proc.stdout.receive() == b"trio\n"
    assert await proc.wait() == 0
    with trio.fail_after(5):
        assert await b.spawn(hello) == "hello from b"


async def test_cancelling_the_caller_cancels_the_node_task(lab: pb.Lab) -> None:
    _, a, _ = await small_lab(lab)
    state = {"started": False, "cancelled": False}

    async def forever(_: pb.Device) -> None:
        state["started"] = True
        try:
            await anyio.sleep(60)
        except BaseException:
            state["cancelled"] = True
            raise

    with anyio.move_on_after(0.3):
        await a.spawn(forever)
    for _ in range(100):
        if state["cancelled"]:
            break
        await anyio.sleep(0.01)
    assert state == {"started": True, "cancelled": True}
