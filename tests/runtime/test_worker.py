"""The Worker base: draining the inbox at a bounded pace."""

from __future__ import annotations

import threading
import time
from typing import Any

from smartbin_daemon.messages import PresenceChanged
from smartbin_daemon.runtime.bus import Bus
from smartbin_daemon.runtime.worker import Worker


class Recorder(Worker):
    def __init__(self, bus: Bus) -> None:
        super().__init__("recorder", bus, inbox=[PresenceChanged])
        self.handled: list[Any] = []

    def handle(self, msg: Any) -> None:
        self.handled.append(msg)


def presence(i: int) -> PresenceChanged:
    return PresenceChanged("gpio", i % 2 == 0, float(i))


def test_drain_handles_what_is_queued_in_order_at_most_limit_at_a_time() -> None:
    bus = Bus()
    w = Recorder(bus)
    for i in range(5):
        bus.publish(presence(i))
    assert w.drain(limit=3) == 3 and [m.mono for m in w.handled] == [0.0, 1.0, 2.0]
    assert w.drain() == 2 and w.drain() == 0 and len(w.handled) == 5


def test_drain_can_wait_for_the_first_message() -> None:
    bus = Bus()
    w = Recorder(bus)
    timer = threading.Timer(0.1, lambda: bus.publish(presence(7)))
    timer.start()
    t0 = time.monotonic()
    assert w.drain(wait_s=5.0) == 1
    assert time.monotonic() - t0 < 4.0 and w.handled[0].mono == 7.0
    t0 = time.monotonic()
    assert w.drain(wait_s=0.05) == 0 and time.monotonic() - t0 >= 0.04
