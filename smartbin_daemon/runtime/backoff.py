"""Capped exponential backoff and the retry schedule of the workers that hold a connection (broker, serial port,
camera)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Delays between connection attempts: min, 2·min, 4·min … capped at max; back to min after a success."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max(min_s, max_s)
        self.delay = min_s
        """The wait the next failure gets."""

    def next(self) -> float:
        """The wait after this failure; the one after the next failure doubles."""
        delay = self.delay
        self.delay = min(self.max_s, self.delay * 2)
        return delay

    def reset(self) -> None:
        """Connected: the next loss waits the minimum again."""
        self.delay = self.min_s


class RetrySchedule:
    """When a worker holding a link (broker, serial port, camera) tries to open it next: each failure waits the
    backoff's next delay (or a given one), a success resets the backoff. Times are the worker's clock."""

    def __init__(self, min_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = Backoff(min_s, max_s)
        self.clock = clock
        self.next_attempt = 0.0

    def now(self) -> None:
        """Try at the next opportunity (a fresh start)."""
        self.next_attempt = self.clock()

    def due(self, now: float) -> bool:
        """Whether an attempt is due."""
        return now >= self.next_attempt

    def wait_s(self, now: float) -> float:
        """Seconds until the next attempt (0 when due)."""
        return max(0.0, self.next_attempt - now)

    def failed(self, delay: float | None = None) -> float:
        """An attempt failed or the link was lost: the next one waits `delay`, else the backoff's; returns the wait."""
        wait = self.backoff.next() if delay is None else delay
        self.next_attempt = self.clock() + wait
        return wait

    def succeeded(self) -> None:
        """Connected: the next loss waits the minimum again."""
        self.backoff.reset()
