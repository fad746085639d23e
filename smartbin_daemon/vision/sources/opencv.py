"""OpenCV backends: V4L2 devices, GStreamer pipelines, FFmpeg streams (RTSP) and video files."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from ...config import CameraConfig
from .base import (
    FFMPEG_READ_TIMEOUT_MS,
    NETWORK_OPEN_TIMEOUT_MS,
    V4L2_AUTO_EXPOSURE_APERTURE_PRIORITY,
    V4L2_AUTO_EXPOSURE_MANUAL,
    Pacer,
    SourceEnded,
    SourceError,
    SourceStalled,
    _cv_version,
    _paced_wait,
    has_gstreamer,
    redact,
    to_bgr,
)

logger = logging.getLogger(__name__)

# OpenCV's V4L2 backend waits in select() for each frame: 10 s by default, read once per process,
# in whole seconds. One second keeps V4L2 reads bounded like every other backend's.
os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "1")

class OpenCVSource:
    """A cv2.VideoCapture: V4L2 devices, GStreamer pipelines and FFmpeg network streams."""

    def __init__(self, kind: str, target: str | int, api: int, *, cfg: CameraConfig) -> None:
        self.kind = kind
        self.target = target
        self.api = api
        self.cfg = cfg
        self.cap: cv2.VideoCapture | None = None
        self._failed_reads = 0

    def describe(self) -> str:
        """E.g. `/dev/video0 (V4L2)`."""
        label = {cv2.CAP_V4L2: "V4L2", cv2.CAP_GSTREAMER: "GStreamer", cv2.CAP_FFMPEG: "FFmpeg"}.get(self.api, "OpenCV")
        return f"{redact(str(self.target))} ({label})"

    def stats(self) -> dict[str, int]:
        """Failed reads since open."""
        return {"failed_reads": self._failed_reads}

    def _params(self) -> list[int]:
        version = _cv_version()
        if self.api == cv2.CAP_FFMPEG and version >= (4, 5, 4):
            return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_OPEN_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, FFMPEG_READ_TIMEOUT_MS]
        if self.api == cv2.CAP_GSTREAMER and version >= (4, 7, 0):
            return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_OPEN_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, FFMPEG_READ_TIMEOUT_MS]
        return []  # a backend given parameters it does not know refuses to open at all

    def open(self) -> None:
        """Open the capture and apply resolution, fps and exposure (V4L2 only)."""
        self.close()
        if self.api == cv2.CAP_GSTREAMER:
            if not has_gstreamer():
                raise SourceError("this OpenCV build has no GStreamer support (pip wheels never have it): on Jetson "
                                  "use JetPack's OpenCV (apt python3-opencv, venv with --system-site-packages)")
            if "appsink" not in str(self.target):
                raise SourceError("a GStreamer pipeline for the camera must end in appsink "
                                  "(... ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1)")
        params = self._params()
        try:
            cap = cv2.VideoCapture(self.target, self.api, params) if params else cv2.VideoCapture(self.target, self.api)
        except cv2.error as exc:
            raise SourceError(f"cannot open {self.describe()}: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.describe()}")
        self.cap = cap
        self._failed_reads = 0
        if self.api == cv2.CAP_V4L2:
            self._configure_v4l2(cap)

    def _configure_v4l2(self, cap: cv2.VideoCapture) -> None:
        cfg = self.cfg
        if cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver queue short: old frames are worthless
        if cfg.exposure is None:
            ok = cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, V4L2_AUTO_EXPOSURE_APERTURE_PRIORITY)
        else:
            ok = cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, V4L2_AUTO_EXPOSURE_MANUAL) and cap.set(
                cv2.CAP_PROP_EXPOSURE, cfg.exposure)
        if not ok:
            logger.info("camera %s did not accept the exposure setting %s", self.describe(),
                        "auto" if cfg.exposure is None else cfg.exposure)
        got = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FPS))
        logger.info("camera %s: %dx%d at %.1f fps (asked %sx%s at %.1f)", self.describe(), got[0], got[1], got[2],
                    cfg.width, cfg.height, cfg.fps)

    def read(self) -> np.ndarray | None:
        """Next frame (grab, then retrieve, as cv2 reads). FFmpeg captures are dead after a failed read."""
        cap = self._cap()
        started = time.monotonic()
        try:
            ok, image = cap.retrieve() if cap.grab() else (False, None)
        except cv2.error as exc:
            raise SourceError(f"read failed: {exc}") from exc
        if ok and image is not None:
            return to_bgr(image)
        self._no_frame(started)
        return None

    def grab(self) -> bool:
        """Take the next frame without retrieving it; failures as in `read`."""
        cap = self._cap()
        started = time.monotonic()
        try:
            ok = cap.grab()
        except cv2.error as exc:
            raise SourceError(f"grab failed: {exc}") from exc
        if ok:
            return True
        self._no_frame(started)
        return False

    def _cap(self) -> cv2.VideoCapture:
        if self.cap is None:
            raise SourceError("not open")
        return self.cap

    def _no_frame(self, started: float) -> None:
        """Count a failed read; raise when the capture is dead (FFmpeg timeout or end, V4L2 unplugged)."""
        self._failed_reads += 1
        if self.api == cv2.CAP_FFMPEG:
            waited = time.monotonic() - started
            if waited >= FFMPEG_READ_TIMEOUT_MS / 1000.0 * 0.8:
                raise SourceStalled(f"no frame for {waited:.1f}s (stream read timeout)")
            raise SourceError("stream ended or failed")
        if self.api == cv2.CAP_V4L2 and isinstance(self.target, str) and not os.path.exists(self.target):
            raise SourceError(f"{self.target} disappeared (unplugged?)")

    def close(self) -> None:
        """Release the capture."""
        cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()


# --------------------------------------------------------------------------- simulation: file and folder


def _take(cap: cv2.VideoCapture, decode: bool) -> tuple[bool, np.ndarray | None]:
    """The next frame of a capture: read (decoded) or only grabbed."""
    if decode:
        ok, image = cap.read()
        return (True, image) if ok and image is not None else (False, None)
    return bool(cap.grab()), None


class VideoFileSource:
    """A video file played in real time at `fps`, from the start again at the end when `loop`."""

    kind = "video"

    def __init__(self, path: Path, *, fps: float, loop: bool) -> None:
        self.path = path
        self.loop = loop
        self.pacer = Pacer(fps)
        self.cap: cv2.VideoCapture | None = None
        self.loops = 0

    def describe(self) -> str:
        """E.g. `clips/demo.avi (video file, looped)`."""
        return f"{self.path} (video file{', looped' if self.loop else ''})"

    def stats(self) -> dict[str, int]:
        """How often the file started over."""
        return {"loops": self.loops}

    def open(self) -> None:
        """Open the file."""
        self.close()
        if not self.path.is_file():
            raise SourceError(f"no such video file: {self.path}")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot decode video file {self.path}")
        self.cap = cap

    def read(self) -> np.ndarray | None:
        """The next frame when it is due (None while waiting longer than 0.5 s)."""
        ok, image = self._next(decode=True)
        return to_bgr(image) if ok and image is not None else None

    def grab(self) -> bool:
        """Pass the next frame when it is due, not retrieved (False while waiting longer than 0.5 s)."""
        return self._next(decode=False)[0]

    def _next(self, decode: bool) -> tuple[bool, np.ndarray | None]:
        cap = self.cap
        if cap is None:
            raise SourceError("not open")
        if not _paced_wait(self.pacer):
            return False, None
        ok, image = _take(cap, decode)
        if not ok:
            if not self.loop:
                raise SourceEnded(f"end of video file {self.path}")
            self.loops += 1
            ok, image = self._rewind(cap, decode)
            if not ok:
                raise SourceError(f"no readable frame in {self.path}")
        self.pacer.mark(time.monotonic())
        return True, image

    def _rewind(self, cap: cv2.VideoCapture, decode: bool) -> tuple[bool, np.ndarray | None]:
        if cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            ok, image = _take(cap, decode)
            if ok:
                return ok, image
        self.open()  # some containers cannot seek: reopening always starts at frame 0
        assert self.cap is not None
        return _take(self.cap, decode)

    def close(self) -> None:
        """Release the file."""
        cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()


