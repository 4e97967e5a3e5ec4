"""Property test: the real NAT against a model written from RFC 4787's definitions.

Hypothesis draws a NAT configuration and a sequence of events between one device (two local
ports) and four remote endpoints (two hosts, two ports each):
  out(l, r)  the device sends from local port l to remote r; r notes the external address;
  in(r, k)   remote r sends to the external address seen in the k-th out event.
The model predicts which in-probes reach the device and which out events share an external
port; the lab must agree.

The model (RFC 4787 sections 4 and 5, read per mapping, as session-keeping NATs apply them):
- mapping: an out event uses the mapping of its key, made on first use: the local port
  (endpoint-independent), local port and remote IP (address-dependent), or local port and
  remote endpoint (address-and-port-dependent). Different keys never share an external port.
- filtering: an in-probe from r to mapping M is admitted when filtering is
  endpoint-independent; address-dependent: the device sent to r's IP through M;
  address-and-port-dependent: the device sent to r through M.
- sessions: once a packet between local port l and remote r passed (either way), later
  packets between them use that session's mapping.
- An in-probe from r to mapping M while l already has a session with r through another
  mapping is not generated: one internal endpoint cannot hold two sessions with one remote
  endpoint in a NAT that tracks sessions by the internal 5-tuple (Linux conntrack), and the
  RFC does not say which would win.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchbay_core as pb

pytestmark = pytest.mark.anyio

M, F = pb.NatMapping, pb.NatFiltering
MAPPINGS = [M.ENDPOINT_INDEPENDENT, M.ADDRESS_DEPENDENT, M.ADDRESS_AND_PORT_DEPENDENT]
LOCAL = [0, 1]  # two local ports
REMOTES = [(h, p) for h in (0, 1) for p in (0, 1)]  # (host, port) indexes


# ---- the model -------------------------------------------------------------------------


@dataclass
class Model:
    mapping: pb.NatMapping
    filtering: pb.NatFiltering
    mappings: dict[tuple[Any, ...], int] = field(default_factory=dict)  # key -> mapping id
    sent: dict[int, set[tuple[int, int]]] = field(default_factory=dict)  # mapping -> remotes sent to
    sessions: dict[tuple[int, tuple[int, int]], int] = field(default_factory=dict)  # (l, r) -> mapping
    owner: dict[int, int] = field(default_factory=dict)  # mapping -> local port

    def key(self, local: int, remote: tuple[int, int]) -> tuple[Any, ...]:
        if self.mapping is M.ENDPOINT_INDEPENDENT:
            return (local,)
        if self.mapping is M.ADDRESS_DEPENDENT:
            return (local, remote[0])
        return (local, remote)

    def out(self, local: int, remote: tuple[int, int]) -> int:
        m = self.sessions.get((local, remote))
        if m is None:
            m = self.mappings.setdefault(self.key(local, remote), len(self.mappings))
            self.owner[m] = local
            self.sessions[(local, remote)] = m
        self.sent.setdefault(m, set()).add(remote)
        return m

    def defined(self, remote: tuple[int, int], m: int) -> bool:
        session = self.sessions.get((self.owner[m], remote))
        return session is None or session == m

    def inbound(self, remote: tuple[int, int], m: int) -> bool:
        sent = self.sent.get(m, set())
        if self.filtering is F.ENDPOINT_INDEPENDENT:
            admitted = True
        elif self.filtering is F.ADDRESS_DEPENDENT:
            admitted = any(host == remote[0] for host, _ in sent)
        else:
            admitted = remote in sent
        if admitted:
            self.sessions.setdefault((self.owner[m], remote), m)
        return admitted


events = st.lists(
    st.one_of(
        st.tuples(st.just("out"), st.sampled_from(LOCAL), st.sampled_from(REMOTES)),
        st.tuples(st.just("in"), st.sampled_from(REMOTES), st.integers(0, 7)),
    ),
    min_size=2, max_size=8,
)


# ---- the lab ---------------------------------------------------------------------------


class Agent:
    """UDP sockets held open on a node across events, with everything they receive."""

    def __init__(self, node: pb.Device) -> None:
        self.node = node
        self.socks: dict[int, socket.socket] = {}
        self.tasks: list[asyncio.Task[None]] = []  # asyncio keeps only weak references to tasks
        self.got: list[tuple[int, bytes, tuple[str, int]]] = []

    async def open(self, ports: list[int]) -> None:
        async def run(_: pb.Device) -> None:
            loop = asyncio.get_running_loop()
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", port))
                sock.setblocking(False)
                self.socks[port] = sock

                async def receive(sock: socket.socket = sock, port: int = port) -> None:
                    while True:
                        try:
                            data, addr = await loop.sock_recvfrom(sock, 2048)
                        except OSError:
                            return  # closed at the end of the example
                        self.got.append((port, data, addr))

                self.tasks.append(loop.create_task(receive()))

        await self.node.spawn(run)

    async def send(self, port: int, target: tuple[str, int], payload: bytes) -> None:
        async def run(_: pb.Device) -> None:
            self.socks[port].sendto(payload, target)

        await self.node.spawn(run)

    async def close(self) -> None:
        async def run(_: pb.Device) -> None:
            for task in self.tasks:
                task.cancel()
            for sock in self.socks.values():
                sock.close()
            self.socks.clear()

        await self.node.spawn(run)

    async def wait_for(self, payload: bytes, seconds: float) -> tuple[int, bytes, tuple[str, int]] | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for item in list(self.got):
                if item[1] == payload:
                    return item
            await anyio.sleep(0.01)
        return None


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def grid(anyio_backend: str) -> Any:
    async with pb.Lab(pb.LabOpts(label="nat-model")) as lab:
        dc = await lab.add_router("dc").build()
        hosts = [await lab.add_device(f"h{i}").iface("eth0", dc).build() for i in (0, 1)]
        cells = {}
        for i, m in enumerate(MAPPINGS):
            for j, f in enumerate(F):
                router = await lab.add_router(f"nat-{i}{j}").nat(pb.NatConfig(mapping=m, filtering=f)).build()
                device = await lab.add_device(f"dev-{i}{j}").iface("eth0", router).build()
                cells[(m, f)] = (router, device)
        yield lab, hosts, cells


counter = iter(range(10**6))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(mapping=st.sampled_from(MAPPINGS), filtering=st.sampled_from(list(F)), script=events)
async def test_the_nat_behaves_as_rfc_4787_says(grid: Any, mapping: pb.NatMapping, filtering: pb.NatFiltering,
                                                 script: list[tuple[Any, ...]]) -> None:
    _lab, hosts, cells = grid
    router, device = cells[(mapping, filtering)]
    await router.flush_nat_state()
    n = next(counter)
    local_ports = [20000 + 2 * n, 20001 + 2 * n]  # fresh ports: no state from earlier examples
    remote_ports = [40000 + 2 * n, 40001 + 2 * n]
    dev_agent = Agent(device)
    remote_agents = [Agent(h) for h in hosts]
    await dev_agent.open(local_ports)
    for agent in remote_agents:
        await agent.open(remote_ports)
    model = Model(mapping, filtering)
    outs: list[tuple[int, tuple[int, int], int, tuple[str, int]]] = []  # (local, remote, mapping, seen)
    try:
        for step, event in enumerate(script):
            if event[0] == "out":
                _, local, remote = event
                m = model.out(local, remote)
                payload = b"out-%d" % step
                host, port = remote
                target = (str(hosts[host].ip), remote_ports[port])
                await dev_agent.send(local_ports[local], target, payload)
                got = await remote_agents[host].wait_for(payload, 2.0)
                assert got is not None, f"outbound {event} did not arrive"
                outs.append((local, remote, m, got[2]))
            else:
                _, remote, k = event
                if not outs:
                    continue
                local, _r0, m, seen = outs[k % len(outs)]
                if not model.defined(remote, m):
                    continue
                expected = model.inbound(remote, m)
                payload = b"in-%d" % step
                host, port = remote
                await remote_agents[host].send(remote_ports[port], seen, payload)
                got = await dev_agent.wait_for(payload, 0.6 if expected else 0.15)
                assert (got is not None) == expected, (
                    f"inbound {event} to mapping {m} (local {local}): expected {'arrival' if expected else 'drop'}; "
                    f"script {script}")
                if got is not None:
                    assert got[0] == local_ports[local]
        # External ports repeat exactly when the model's mappings do.
        for i, (_, _, m_i, seen_i) in enumerate(outs):
            for _, _, m_j, seen_j in outs[i + 1:]:
                assert (seen_i == seen_j) == (m_i == m_j), f"external ports {seen_i} {seen_j}; script {script}"
    finally:
        await dev_agent.close()
        for agent in remote_agents:
            await agent.close()
