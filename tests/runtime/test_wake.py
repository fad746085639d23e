"""The self-pipe that lets another thread end a worker's select() early."""

from __future__ import annotations

import select
import threading
import time

from smartbin_daemon.runtime.wake import WakePipe


def test_a_poke_from_another_thread_ends_the_wait_and_clear_rearms_it() -> None:
    pipe = WakePipe()
    threading.Timer(0.1, pipe.poke).start()
    t0 = time.monotonic()
    ready, _, _ = select.select([pipe], [], [], 5.0)
    assert ready == [pipe] and time.monotonic() - t0 < 2.0
    for _ in range(10_000):  # many pokes before the waiter runs: the pipe never blocks the poker
        pipe.poke()
    pipe.clear()
    assert select.select([pipe], [], [], 0.05)[0] == []
