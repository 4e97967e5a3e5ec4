"""(e) Mininet's Python API: a star of N hosts on one Linux bridge (no Open vSwitch, no
controller). Run with Debian's python3 (where the `mininet` package lives), inside a throwaway
network namespace so that Mininet's switch and links stay out of the host's."""

from __future__ import annotations

import sys
import time

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.nodelib import LinuxBridge
from mininet.topo import SingleSwitchTopo


def main(n: int) -> None:
    setLogLevel("error")
    started = time.perf_counter()
    net = Mininet(topo=SingleSwitchTopo(k=n), switch=LinuxBridge, controller=None, waitConnected=False)
    net.start()
    built = time.perf_counter()
    net.stop()
    closed = time.perf_counter()
    print(f"{(built - started) * 1e3:.2f} {(closed - built) * 1e3:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
