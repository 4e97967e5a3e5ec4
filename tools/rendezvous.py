#!/usr/bin/env python3
"""A UDP rendezvous and relay server for tools/holepunch.py (standard library only).

Peers register from behind their NATs; the server tells each the public endpoint (address and
port as it sees them) of the other, relays datagrams when a direct path cannot be punched,
and reports how each peer got connected (conn_type Direct or Relay). Output: one JSON object
per line (ndjson) on stdout, for a sim's captures:

    {"kind": "Listening", "port": 3478}
    {"kind": "Registered", "peer": "10.0.1.2", "endpoint": "198.18.0.11:40000"}
    {"kind": "Paired", "peers": ["...", "..."]}
    {"kind": "Report", "peer": "10.0.1.2", "conn_type": "Direct", "rtt_ms": 1.9}
    {"kind": "Done", "conn_types": {"10.0.1.2": "Direct", ...}, "relayed": 0}

It exits once every peer of the session reported (or after --timeout seconds, with status 1).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def emit(kind: str, **fields: object) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=3478)
    parser.add_argument("--peers", type=int, default=2, help="peers in the session (default: 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    sock.settimeout(0.2)
    emit("Listening", port=args.port)
    endpoints: dict[str, tuple[str, int]] = {}  # peer name -> its public endpoint
    reports: dict[str, str] = {}
    relayed = 0
    paired = False
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        try:
            msg = json.loads(data)
            kind, name = msg["type"], str(msg["peer"])
        except (ValueError, KeyError, TypeError):
            continue
        if kind == "register":
            if endpoints.get(name) != addr:
                endpoints[name] = addr
                emit("Registered", peer=name, endpoint=f"{addr[0]}:{addr[1]}")
            sock.sendto(json.dumps({"type": "registered", "endpoint": f"{addr[0]}:{addr[1]}"}).encode(), addr)
            if len(endpoints) >= args.peers:
                if not paired:
                    paired = True
                    emit("Paired", peers=sorted(endpoints))
                for peer, endpoint in endpoints.items():  # everyone learns everyone else
                    for other, other_endpoint in endpoints.items():
                        if other != peer:
                            where = f"{other_endpoint[0]}:{other_endpoint[1]}"
                            note = {"type": "peer", "peer": other, "endpoint": where}
                            sock.sendto(json.dumps(note).encode(), endpoint)
        elif kind == "relay":
            target = endpoints.get(str(msg.get("to")))
            if target is not None:
                relayed += 1
                sock.sendto(json.dumps({"type": "relayed", "peer": name, "data": msg.get("data")}).encode(), target)
        elif kind == "report":
            if name not in reports:
                reports[name] = str(msg.get("conn_type"))
                emit("Report", peer=name, conn_type=reports[name], rtt_ms=msg.get("rtt_ms"))
            sock.sendto(json.dumps({"type": "report-ack"}).encode(), addr)
            if len(reports) >= args.peers:
                emit("Done", conn_types=reports, relayed=relayed)
                return 0
    emit("Timeout", registered=sorted(endpoints), reports=reports)
    return 1


if __name__ == "__main__":
    sys.exit(main())
