#!/usr/bin/env python3
"""A UDP hole-punching peer (standard library only), the other half of tools/rendezvous.py.

It registers with the rendezvous server, learns the other peer's public endpoint, and sends
punches at it while the other peer does the same. When a datagram of the peer arrives
directly, the NATs on both sides let the path through: conn_type Direct. When no punch gets
through in --punch-timeout seconds (a NAT with endpoint-dependent mapping gives every
destination its own port, so the endpoint the server saw is useless to the peer), the peers
talk through the server: conn_type Relay. Either way it measures a round trip, reports to the
server, answers the other peer for --linger seconds and exits 0. Output is ndjson on stdout:

    {"kind": "Registered", "endpoint": "198.18.0.11:40000"}
    {"kind": "PeerFound", "peer": "10.0.2.2", "endpoint": "198.18.0.12:40000"}
    {"kind": "Connected", "conn_type": "Direct", "rtt_ms": 1.3, "remote": "198.18.0.12:40000"}
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def emit(kind: str, **fields: object) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return socket.gethostbyname(host), int(port)


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.server = endpoint(args.rendezvous)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", args.port))
        self.sock.settimeout(0.05)
        self.args = args
        self.registered = False
        self.peer: str | None = None
        self.peer_endpoint: tuple[str, int] | None = None
        self.direct: tuple[str, int] | None = None  # where the peer's datagrams come from
        self.pong: tuple[float, str] | None = None  # (rtt ms, how)
        self.reported = False

    def send(self, msg: dict[str, object], to: tuple[str, int]) -> None:
        self.sock.sendto(json.dumps({**msg, "peer": self.name}).encode(), to)

    def relay(self, data: dict[str, object]) -> None:
        if self.peer is not None:
            self.send({"type": "relay", "to": self.peer, "data": data}, self.server)

    def receive(self) -> None:
        """Handle what arrived in the next few milliseconds."""
        try:
            raw, addr = self.sock.recvfrom(65535)
        except TimeoutError:
            return
        try:
            msg = json.loads(raw)
            kind = msg["type"]
        except (ValueError, KeyError, TypeError):
            return
        if addr == self.server:
            if kind == "registered" and not self.registered:
                self.registered = True
                emit("Registered", endpoint=msg.get("endpoint"))
            elif kind == "peer" and self.peer_endpoint is None:
                self.peer, self.peer_endpoint = str(msg["peer"]), endpoint(msg["endpoint"])
                emit("PeerFound", peer=self.peer, endpoint=msg["endpoint"])
            elif kind == "relayed":
                self.on_relayed(msg.get("data") or {})
            elif kind == "report-ack":
                self.reported = True
            return
        # Anything else came straight from the peer: the hole is punched.
        if self.direct is None:
            self.direct = addr
        if kind == "punch":
            self.send({"type": "punch-ack"}, addr)
        elif kind == "ping":
            self.send({"type": "pong", "t": msg.get("t")}, addr)
        elif kind == "pong" and self.pong is None and isinstance(msg.get("t"), (int, float)):
            self.pong = ((time.monotonic() - msg["t"]) * 1000, "Direct")

    def on_relayed(self, data: dict[str, object]) -> None:
        if data.get("type") == "ping":
            self.relay({"type": "pong", "t": data.get("t")})
        elif data.get("type") == "pong" and self.pong is None and isinstance(data.get("t"), (int, float)):
            self.pong = ((time.monotonic() - float(data["t"])) * 1000, "Relay")  # type: ignore[arg-type]

    def run(self) -> int:
        deadline = time.monotonic() + self.args.timeout
        last_register = last_punch = last_ping = 0.0
        punch_until: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if (not self.registered or self.peer_endpoint is None) and now - last_register > 0.25:
                self.send({"type": "register"}, self.server)
                last_register = now
            if self.peer_endpoint is not None and self.pong is None:
                if punch_until is None:
                    punch_until = now + self.args.punch_timeout
                if self.direct is not None:
                    if now - last_ping > 0.2:
                        self.send({"type": "ping", "t": now}, self.direct)
                        last_ping = now
                elif now < punch_until:
                    if now - last_punch > 0.1:
                        self.send({"type": "punch"}, self.peer_endpoint)
                        last_punch = now
                elif now - last_ping > 0.2:
                    self.relay({"type": "ping", "t": now})
                    last_ping = now
            if self.pong is not None:
                break
            self.receive()
        if self.pong is None:
            emit("Failed", reason="no answer from the peer, directly or through the relay")
            return 1
        rtt, conn_type = self.pong
        remote = self.direct if conn_type == "Direct" else self.server
        assert remote is not None
        emit("Connected", conn_type=conn_type, rtt_ms=round(rtt, 3), remote=f"{remote[0]}:{remote[1]}")
        linger_until = time.monotonic() + self.args.linger
        last_report = 0.0
        while time.monotonic() < linger_until:  # the other peer may still need our answers
            if not self.reported and time.monotonic() - last_report > 0.2:
                self.send({"type": "report", "conn_type": conn_type, "rtt_ms": round(rtt, 3)}, self.server)
                last_report = time.monotonic()
            self.receive()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="this peer's name in the session")
    parser.add_argument("--rendezvous", required=True, metavar="HOST:PORT", help="the rendezvous server")
    parser.add_argument("--port", type=int, default=40000, help="local UDP port (default: 40000)")
    parser.add_argument("--punch-timeout", type=float, default=2.0, help="seconds of punching before relaying")
    parser.add_argument("--linger", type=float, default=1.5, help="seconds to keep answering after connecting")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    return Peer(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
