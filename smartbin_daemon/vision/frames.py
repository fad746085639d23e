"""The latest-frame slot between the camera and its consumers: the newest frame wins, nobody blocks the capture.

The slot also carries the consumers' demand: the camera decodes frames only while someone wants them
(a lease from `want`, a one-shot from `want_one`, or a consumer inside `wait_newer`) and otherwise only
takes them from the source undecoded, so an idle bin does not pay for decoding images nobody looks at.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..config import CameraConfig

LINGER_S = 0.5
"""How long frames keep coming after a `wait_newer` wait, so a consumer asking in a loop is never starved."""


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
        self._wanted_until = float("-inf")
        """Monotonic end of the longest demand lease."""
        self._want_one = False

    def put(self, frame: Frame) -> None:
        """Publish the newest frame (it satisfies a pending `want_one`)."""
        with self._cond:
            self._frame = frame
            self._want_one = False
            self._cond.notify_all()

    def want(self, hold_s: float) -> None:
        """Ask for decoded frames for the next `hold_s` seconds (extends a lease, never shortens it)."""
        until = time.monotonic() + hold_s
        with self._cond:
            self._wanted_until = max(self._wanted_until, until)

    def want_one(self) -> None:
        """Ask for just the next decoded frame (for periodic samplers such as the motion gate)."""
        with self._cond:
            self._want_one = True

    def wanted(self, now: float | None = None) -> bool:
        """Whether the camera should decode its next frame (a lease runs or a one-shot is pending)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            return self._want_one or now < self._wanted_until

    def latest(self) -> Frame | None:
        """The newest frame, if any."""
        with self._cond:
            return self._frame

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """The newest frame with a sequence number above `seq`, waiting up to `timeout` s; waiting is demand."""
        self.want(max(0.0, timeout) + LINGER_S)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.seq <= seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._frame

    def clear(self) -> None:
        """Forget the frame (camera lost: nobody may analyse a stale image); the demand stays."""
        with self._cond:
            self._frame = None


def is_fresh(frame: Frame | None, cfg: CameraConfig, now: float | None = None) -> bool:
    """Whether a frame may still be analysed (not older than `max_frame_age_s`)."""
    return frame is not None and frame.age(now) <= cfg.max_frame_age_s


def next_fresh_frame(frames: LatestFrame, cfg: CameraConfig, after_seq: int, timeout: float) -> Frame | None:
    """The newest frame after `after_seq` (waiting up to `timeout` s), or None if none came or it is stale."""
    frame = frames.wait_newer(after_seq, timeout)
    return frame if is_fresh(frame, cfg) else None
