"""The frame-source protocol and what every backend shares: errors, timeouts, redaction, BGR conversion, pacing."""

from __future__ import annotations

import logging
import re
import time
from typing import Protocol

import cv2
import numpy as np

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 2.0
"""Connect plus response headers of an HTTP stream."""
NETWORK_OPEN_TIMEOUT_MS = 5000
"""FFmpeg/GStreamer open timeout (RTSP handshakes can be slow)."""
READ_TIMEOUT_S = 0.5
"""Longest a single `read()` of the MJPEG client waits for data."""
FFMPEG_READ_TIMEOUT_MS = 1000
MAX_PART_BYTES = 16 * 1024 * 1024
"""A multipart body (or garbage without a boundary) larger than this is a broken stream."""
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
V4L2_AUTO_EXPOSURE_MANUAL = 1
V4L2_AUTO_EXPOSURE_APERTURE_PRIORITY = 3

KINDS = ("v4l2", "picamera2", "gstreamer", "url", "video", "images")


class SourceError(Exception):
    """The source cannot deliver frames (absent, refused, dead); the worker releases and re-opens it."""


class SourceStalled(SourceError):
    """The source stopped delivering frames without failing outright (counted as a stall)."""


class SourceEnded(SourceError):
    """A finite source (video file or folder without `loop`) has delivered everything."""


class FrameSource(Protocol):
    """One camera backend, used from a single thread."""

    kind: str

    def open(self) -> None:
        """Acquire the device or connection; raise SourceError when it cannot be used."""

    def read(self) -> np.ndarray | None:
        """The next BGR frame; None when none came within ~1 s; SourceError when the source is dead."""

    def grab(self) -> bool:
        """Take the next frame without decoding it; False when none came within ~1 s; errors as `read`."""

    def close(self) -> None:
        """Release everything; safe to call twice and after a failed open."""

    def describe(self) -> str:
        """Human-readable identity, with any password redacted."""

    def stats(self) -> dict[str, int]:
        """Backend counters (skipped, corrupt, unreadable...) for the camera state."""


# --------------------------------------------------------------------------- helpers

_URL_PASSWORD_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^@\s/]*@")


def redact(text: str) -> str:
    """`rtsp://user:secret@host/x` -> `rtsp://user:***@host/x`, anywhere in `text` (pipelines, errors)."""
    return _URL_PASSWORD_RE.sub(r"\1:***@", text)


def to_bgr(image: np.ndarray) -> np.ndarray:
    """A 3-channel uint8 BGR image from gray, BGRA or BGR input."""
    if image.dtype != np.uint8:
        raise SourceError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise SourceError(f"unsupported image shape {image.shape}")


def _cv_version() -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", cv2.__version__)[:3])


def has_gstreamer() -> bool:
    """Whether this OpenCV build can run GStreamer pipelines."""
    return re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.MULTILINE) is not None


class Pacer:
    """Real-time pacing at `fps` on the monotonic clock; falls back in step instead of bursting after a lag."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._due: float | None = None

    def remaining(self, now: float) -> float:
        """Seconds until the next frame is due (0 if due)."""
        return 0.0 if self._due is None else max(0.0, self._due - now - self.period * 0.05)

    def mark(self, now: float) -> None:
        """A frame was delivered at `now`."""
        if self._due is None or now - self._due > self.period:
            self._due = now + self.period
        else:
            self._due += self.period


def _paced_wait(pacer: Pacer) -> bool:
    """Sleep until the next frame is due, at most 0.5 s; True when it is due."""
    remaining = pacer.remaining(time.monotonic())
    if remaining > 0.5:
        time.sleep(0.5)
        return False
    if remaining > 0:
        time.sleep(remaining)
    return True


# --------------------------------------------------------------------------- OpenCV VideoCapture backends


