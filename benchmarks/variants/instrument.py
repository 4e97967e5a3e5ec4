"""The harness's measuring instrument: count the links left in a namespace, cheaply.

Every variant waits, after tearing down, until the kernel has removed its namespaces: the
IX namespace holds nothing but `lo` and its bridge. This counts them with one netlink dump.
"""

from __future__ import annotations

import os
import time

from patchbay_core.kernel import rtnl
from patchbay_core.kernel.native import home_netns_fd, lib


def rtnl_socket_in(ns_fd: int) -> int:
    fd = lib.pb_netlink_socket_in(ns_fd, home_netns_fd(), 0)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd))
    return int(fd)


def wait_until_only(rtnl_fd: int, keep: int = 2, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(rtnl.dump_links(rtnl_fd, "ix")) > keep:
        if time.monotonic() > deadline:
            raise TimeoutError("namespaces were not removed")
        time.sleep(0.001)
