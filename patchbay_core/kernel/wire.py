"""The C wire (userspace link emulator) through cffi."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KernelFeatureMissing, NetlinkError
from .native import errbuf, ffi, home_netns_fd, lib, text


@dataclass(frozen=True)
class WireParams:
    latency_us: int = 0
    jitter_us: int = 0
    loss_ppm: int = 0
    loss_corr_ppm: int = 0
    reorder_ppm: int = 0
    duplicate_ppm: int = 0
    corrupt_ppm: int = 0
    queue_ms: int = 0
    rate_bps: int = 0


@dataclass(frozen=True)
class WireStats:
    rx: int
    tx: int
    dropped_loss: int
    dropped_queue: int
    duplicated: int
    corrupted: int
    reordered: int
    send_errors: int
    queued: int


class Wire:
    """One direction of one link: reads a TAP inside `ns_fd`, sends out of `out_ifindex`."""

    def __init__(self, ns_fd: int, tap_name: str, out_ifindex: int, mtu: int, seed: int, node: str) -> None:
        err, errlen = errbuf()
        self._w = lib.pb_wire_new(ns_fd, home_netns_fd(), tap_name.encode(), out_ifindex, mtu,
                                  seed & 0xFFFFFFFFFFFFFFFF, err, errlen)
        if self._w == ffi.NULL:
            message = text(err)
            if "/dev/net/tun" in message:
                raise KernelFeatureMissing(
                    "TUN/TAP devices (/dev/net/tun) for the wire link emulator",
                    f"{node}: {message}. Load the tun module, or run as root (/dev/net/tun is often 0600)",
                )
            raise NetlinkError("start a wire", 5, node=node, detail=message)
        self.tap_ifindex = int(lib.pb_wire_tap_ifindex(self._w))

    def set(self, params: WireParams) -> None:
        p = ffi.new("struct pb_wire_params *")
        for name, value in vars(params).items():
            setattr(p, name, value)
        lib.pb_wire_set(self._w, p)

    def stats(self) -> WireStats:
        s = ffi.new("struct pb_wire_stats *")
        lib.pb_wire_stats(self._w, s)
        return WireStats(**{name: int(getattr(s, name)) for name in WireStats.__dataclass_fields__})

    def close(self) -> None:
        if self._w is not None:
            lib.pb_wire_free(self._w)
            self._w = None
