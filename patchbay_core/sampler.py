"""Per-interface packet and byte counters of every node, as periodic `packet_counters` events.

Only labs with an output directory sample (every `PATCHBAY_COUNTER_INTERVAL` seconds, 1 by
default, 0 = never). Each sample is one netlink link dump per namespace, done on the lab's
kernel thread; an event is written only for the nodes whose counters moved since the last one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

INTERVAL_ENV = "PATCHBAY_COUNTER_INTERVAL"
DEFAULT_INTERVAL_S = 1.0


def interval_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class PeriodicSampler:
    """Calls `sample()` every `interval` seconds on a thread of its own until `close()`."""

    def __init__(self, label: str, interval: float, sample: Callable[[], None]) -> None:
        self._interval = interval
        self._sample = sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"patchbay-sampler-{label}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sample()
            except Exception:  # the lab is closing, or a node went away meanwhile
                if self._stop.is_set():
                    return

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
