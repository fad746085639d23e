"""Capped exponential backoff for the workers that hold a connection (broker, serial port, camera)."""

from __future__ import annotations


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
