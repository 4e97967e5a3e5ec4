"""A UDP server that echoes every datagram to its sender (connectivity and RTT probes)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from ipaddress import ip_address

from .futures import wait_future


class Reflector:
    """Handle to a running reflector. `await close()` stops it."""

    def __init__(self, addr: tuple[str, int], transport: asyncio.DatagramTransport,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.addr = addr
        self._transport = transport
        self._loop = loop

    async def close(self) -> None:
        if self._loop.is_closed():
            return
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()

        def stop() -> None:
            self._transport.close()
            fut.set_result(None)

        self._loop.call_soon_threadsafe(stop)
        await wait_future(fut)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def start_reflector(bind: tuple[str, int]) -> Reflector:
    """Runs on the node's loop: bind and start echoing."""
    host, port = bind
    family = socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(host, port), family=family)
    local = transport.get_extra_info("sockname")
    return Reflector((local[0], local[1]), transport, loop)
