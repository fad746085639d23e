"""The latest-frame slot between the camera and its consumers: the newest frame wins, nobody blocks the capture."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image (BGR, HxWx3 uint8) with its capture sequence number and monotonic/wall stamps."""

    image: np.ndarray
    seq: int
    mono: float
    wall: float

    def age(self, now: float | None = None) -> float:
        """Seconds since capture (monotonic)."""
        return (time.monotonic() if now is None else now) - self.mono


class LatestFrame:
    """A one-slot mailbox: `put` replaces the frame and never blocks; readers wait for one newer than theirs.

    Why not a queue: a consumer that falls behind must analyse the current scene, not a backlog, and the
    capture loop must never stall because a consumer is slow.
    """

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._cond = threading.Condition()

    def put(self, frame: Frame) -> None:
        """Publish the newest frame."""
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def latest(self) -> Frame | None:
        """The newest frame, if any."""
        with self._cond:
            return self._frame

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """The newest frame with a sequence number greater than `seq`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.seq <= seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._frame

    def clear(self) -> None:
        """Forget the frame (camera lost: nobody may analyse a stale image)."""
        with self._cond:
            self._frame = None
