"""Frame source backends behind one small protocol: open, bounded read or grab, close, describe.

Which backend serves which `camera.source`:

* V4L2 (USB webcams): an index (`0`) or a device path (`/dev/video0`, `/dev/v4l/by-id/...`), through
  OpenCV's V4L2 backend. Width, height and fps are asked of the device; `exposure` sets manual
  exposure in V4L2 units (`exposure_time_absolute`, 100 µs steps), null switches auto exposure on.
* Raspberry Pi camera module: `picamera2` (or `picamera2:N` for camera N), through the picamera2
  library (libcamera's official Python binding). The pip OpenCV wheels have no GStreamer, so
  `libcamerasrc` pipelines are not used; on Raspberry Pi OS install `python3-picamera2` and create
  the venv with `--system-site-packages`. Size, frame rate and exposure (µs, `AeEnable` off) are
  set through picamera2 controls.
* Jetson CSI cameras: a GStreamer pipeline ending in `appsink`, e.g.
  `nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 !
  nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1`.
  This needs an OpenCV built with GStreamer: JetPack's (`python3-opencv` from apt, venv with
  `--system-site-packages`), never the pip wheels. Resolution, fps and exposure are part of the
  pipeline string (nvarguscamerasrc `exposuretimerange`), not taken from the config.
* `rtsp://` (and other non-HTTP URLs): OpenCV's FFmpeg backend with a 5 s open and 1 s read timeout.
  A read timeout ends an FFmpeg capture for good, so an RTSP stream silent for 1 s is reported
  as stalled and re-opened (whatever `stall_timeout_s` says). FFmpeg options such as
  `rtsp_transport;tcp` go in the service's `OPENCV_FFMPEG_CAPTURE_OPTIONS` environment variable.
* `http(s)://` MJPEG: a small stdlib client (`MjpegSource`), not OpenCV. Measured with
  opencv-python-headless 5.0 against tests/vision/mjpeg_server.py: FFmpeg opens and reads the
  stream fine, but its read timeout is fatal (after one 1 s timeout every later read fails at once,
  even when the server resumes), so a bounded read there means a reconnect after every short
  pause, while a long timeout means a read that cannot be interrupted for that long. The stdlib
  client has a real socket timeout, survives pauses, reports HTTP errors (401, 404) clearly and
  drops surplus frames before decoding them.
* A video file (looped when `loop`) or a folder of images, paced to `fps` in real time: for simulation.

`width`/`height` are asked of V4L2 and picamera2 devices only; streams, files and pipelines keep
their own size (the state reports the real one). `fps` is asked of devices, paces files and
folders, and caps how many MJPEG parts are decoded (the surplus is dropped undecoded).

Every source can also `grab()`: take the next frame from the device or stream without decoding it.
The camera worker grabs while no consumer wants frames, so the device keeps streaming (no stale
driver queue, no reconnect, the stall watchdog keeps watching) at a fraction of the cost. What a
grab skips: V4L2 the conversion to BGR (for MJPEG cameras the JPEG decode) and the copy; FFmpeg
(RTSP, video files) the colour conversion and copy (the codec still decodes: inter-frame video
needs every frame); GStreamer only the copy out of the appsink (the pipeline runs for every
frame); MJPEG the JPEG decode; image folders the file read; picamera2 the copy of the image buffer.

Every `read()` and `grab()` returns within about a second, so the camera worker's heartbeat stays
fresh and a stop request is honoured promptly whatever the camera does.
"""

from __future__ import annotations

import base64
import concurrent.futures
import logging
import os
import re
import socket
import ssl
import time
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from ..config import CameraConfig

logger = logging.getLogger(__name__)

# OpenCV's V4L2 backend waits in select() for each frame: 10 s by default, read once per process,
# in whole seconds. One second keeps V4L2 reads bounded like every other backend's.
os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "1")

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


class ImageFolderSource:
    """The images of a folder in name order, paced to `fps`; unreadable files are counted and skipped."""

    kind = "images"

    def __init__(self, folder: Path, *, fps: float, loop: bool) -> None:
        self.folder = folder
        self.loop = loop
        self.pacer = Pacer(fps)
        self.files: list[Path] = []
        self.index = 0
        self.bad: set[Path] = set()
        self.loops = 0

    def describe(self) -> str:
        """E.g. `samples/ (image folder, looped)`."""
        return f"{self.folder} (image folder{', looped' if self.loop else ''})"

    def stats(self) -> dict[str, int]:
        """Unreadable files, images in the folder and passes over it."""
        return {"unreadable": len(self.bad), "images": len(self.files), "loops": self.loops}

    def _scan(self) -> None:
        try:
            entries = sorted(p for p in self.folder.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        except OSError as exc:
            raise SourceError(f"cannot list {self.folder}: {exc}") from exc
        self.files = entries
        self.index = 0

    def open(self) -> None:
        """List the folder."""
        if not self.folder.is_dir():
            raise SourceError(f"no such image folder: {self.folder}")
        self._scan()
        if not self.files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.folder}")

    def read(self) -> np.ndarray | None:
        """The next readable image when it is due."""
        if not _paced_wait(self.pacer):
            return None
        while True:  # ends: each pass returns or marks one more file unreadable, and _next_path gives up
            path = self._next_path()
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.bad.add(path)
                logger.warning("camera: skipping unreadable image %s", path)
                continue
            self.pacer.mark(time.monotonic())
            return to_bgr(image)

    def grab(self) -> bool:
        """Move on to the next image when due, without reading it (unreadable files are found by `read`)."""
        if not _paced_wait(self.pacer):
            return False
        self._next_path()
        self.pacer.mark(time.monotonic())
        return True

    def _next_path(self) -> Path:
        """The next file not known to be unreadable, starting over (rescanned) at the end when looping."""
        tried = 0
        while tried <= len(self.files):
            if self.index >= len(self.files):
                if not self.loop:
                    raise SourceEnded(f"all images of {self.folder} shown")
                self.loops += 1
                self._scan()  # pick up images added meanwhile
                if not self.files:
                    raise SourceError(f"no images left in {self.folder}")
            path = self.files[self.index]
            self.index += 1
            tried += 1
            if path not in self.bad:
                return path
        raise SourceError(f"no readable image in {self.folder}")

    def close(self) -> None:
        """Nothing held open between reads."""


# --------------------------------------------------------------------------- Raspberry Pi camera


class Picamera2Source:
    """The Raspberry Pi camera module through picamera2 (imported only when used)."""

    kind = "picamera2"

    def __init__(self, cfg: CameraConfig, camera_num: int = 0) -> None:
        self.cfg = cfg
        self.camera_num = camera_num
        self.cam: Any = None
        self._job: Any = None
        self._job_kind = ""
        """What the pending request captures: `array` (read) or `metadata` (grab)."""
        self.timeouts = 0

    def describe(self) -> str:
        """E.g. `picamera2 camera 0`."""
        return f"picamera2 camera {self.camera_num}"

    def stats(self) -> dict[str, int]:
        """Reads that timed out."""
        return {"timeouts": self.timeouts}

    def open(self) -> None:
        """Open, configure (size, frame duration, exposure) and start the camera."""
        self.close()
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise SourceError("picamera2 not installed: on Raspberry Pi OS install python3-picamera2 and create the "
                              "venv with --system-site-packages") from exc
        cfg = self.cfg
        frame_us = int(1_000_000 / cfg.fps)
        controls: dict[str, Any] = {"FrameDurationLimits": (frame_us, frame_us)}
        if cfg.exposure is None:
            controls["AeEnable"] = True
        else:
            controls.update({"AeEnable": False, "ExposureTime": int(cfg.exposure)})
        main: dict[str, Any] = {"format": "RGB888"}  # libcamera RGB888 is B,G,R in memory: OpenCV order
        if cfg.width and cfg.height:
            main["size"] = (cfg.width, cfg.height)
        try:
            cam = Picamera2(self.camera_num)
        except Exception as exc:  # noqa: BLE001 - libcamera raises RuntimeError, IndexError...; all mean "no camera"
            raise SourceError(f"cannot open Pi camera {self.camera_num}: {exc}") from exc
        try:
            cam.configure(cam.create_video_configuration(main=main, controls=controls))
            cam.start()
        except Exception as exc:  # noqa: BLE001 - as above
            try:
                cam.close()
            except Exception:  # noqa: BLE001 - best effort on an already failing camera
                pass
            raise SourceError(f"cannot start Pi camera {self.camera_num}: {exc}") from exc
        self.cam = cam

    def read(self) -> np.ndarray | None:
        """Next frame, waiting at most READ_TIMEOUT_S; a request that timed out is waited on again next time."""
        if self._job is not None and self._job_kind == "metadata":
            done, _ = self._capture("metadata")  # a grab's request timed out earlier: let it finish first
            if not done:
                return None
        done, image = self._capture("array")
        return to_bgr(np.asarray(image)) if done else None

    def grab(self) -> bool:
        """Wait for the next frame's metadata only (its image is not copied); timeouts as in `read`."""
        return self._capture(self._job_kind if self._job is not None else "metadata")[0]

    def _capture(self, kind: str) -> tuple[bool, Any]:
        """Wait up to READ_TIMEOUT_S for the pending request, or a new one of `kind`: (done, result)."""
        if self.cam is None:
            raise SourceError("not open")
        try:
            if self._job is None:
                self._job = (self.cam.capture_array("main", wait=False) if kind == "array"
                             else self.cam.capture_metadata(wait=False))
                self._job_kind = kind
            result = self._job.get_result(timeout=READ_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            self.timeouts += 1
            return False, None
        except Exception as exc:  # noqa: BLE001 - picamera2 surfaces libcamera failures as any exception
            self._job = None
            raise SourceError(f"Pi camera read failed: {exc}") from exc
        self._job = None
        return True, result

    def close(self) -> None:
        """Stop and close the camera."""
        cam, self.cam, self._job = self.cam, None, None
        if cam is None:
            return
        for action in (cam.stop, cam.close):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - closing must not fail the worker
                logger.debug("picamera2 %s failed: %s", action.__name__, exc)


# --------------------------------------------------------------------------- HTTP MJPEG


class MultipartJpegParser:
    """Incremental multipart/x-mixed-replace parser: feed bytes, pop complete part bodies.

    Tolerates what real cameras send: parts with or without Content-Length, boundaries declared
    with or without the leading `--`, `\\n` instead of `\\r\\n`, and garbage before the first boundary.
    """

    _HEADER_END = re.compile(rb"\r?\n\r?\n")

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1").lstrip(b"-")
        self.buffer = bytearray()
        self.state = "seek"
        self.length: int | None = None
        self.parts: list[bytes] = []
        self.ended = False

    def feed(self, data: bytes) -> None:
        """Add received bytes and cut out every complete part."""
        self.buffer += data
        while self._step():
            pass
        if len(self.buffer) > MAX_PART_BYTES:
            raise SourceError(f"no complete MJPEG part in {MAX_PART_BYTES} bytes")

    def pop_latest(self) -> tuple[bytes | None, int]:
        """The newest complete part and how many older ones were dropped unseen."""
        if not self.parts:
            return None, 0
        latest, dropped = self.parts[-1], len(self.parts) - 1
        self.parts.clear()
        return latest, dropped

    def _step(self) -> bool:
        buf = self.buffer
        if self.state == "seek":
            at = buf.find(self.delimiter)
            if at < 0:
                keep = len(self.delimiter) - 1
                if len(buf) > keep:
                    del buf[:len(buf) - keep]
                return False
            del buf[:at + len(self.delimiter)]
            self.state = "headers"
            return True
        if self.state == "headers":
            if buf[:2] == b"--":
                self.ended = True  # closing delimiter: the server ends the stream
                buf.clear()
                return False
            match = self._HEADER_END.search(buf)
            if match is None:
                if len(buf) > 8192:
                    self.state = "seek"  # not a part header: resynchronise on the next delimiter
                    return True
                return False
            headers = bytes(buf[:match.start()])
            del buf[:match.end()]
            self.length = None
            found = re.search(rb"(?im)^\s*content-length\s*:\s*(\d+)\s*$", headers)
            if found is not None:
                self.length = int(found.group(1))
            self.state = "body"
            return True
        # body
        if self.length is not None:
            if len(buf) < self.length:
                return False
            self.parts.append(bytes(buf[:self.length]))
            del buf[:self.length]
            self.state = "seek"
            return True
        at = buf.find(self.delimiter)
        if at < 0:
            return False
        body = bytes(buf[:at])
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        self.parts.append(body)
        del buf[:at + len(self.delimiter)]
        self.state = "headers"
        return True


class MjpegSource:
    """An HTTP(S) MJPEG stream read with the stdlib: real socket timeouts, newest part decoded, surplus dropped."""

    kind = "url"

    def __init__(self, url: str, *, fps: float, open_timeout_s: float = OPEN_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pacer = Pacer(fps)
        self.sock: socket.socket | None = None
        self.parser: MultipartJpegParser | None = None
        self._pending: bytes | None = None
        self.skipped = 0
        self.corrupt = 0
        self.undecoded = 0

    def describe(self) -> str:
        """E.g. `http://cam/stream (MJPEG over HTTP)`."""
        return f"{redact(self.url)} (MJPEG over HTTP)"

    def stats(self) -> dict[str, int]:
        """Parts dropped undecoded (newer ones waited), parts that did not decode, parts only grabbed."""
        return {"skipped": self.skipped, "corrupt": self.corrupt, "undecoded": self.undecoded}

    def open(self) -> None:
        """Connect, send the request (HTTP/1.0: no chunked replies), check status and content type."""
        self.close()
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"not an http(s) URL: {redact(self.url)}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.0", f"Host: {host_header}", "User-Agent: smartbin-daemon",
                 "Accept: multipart/x-mixed-replace, */*"]
        if parts.username is not None:
            userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            lines.append("Authorization: Basic " + base64.b64encode(userpass).decode("ascii"))
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        deadline = time.monotonic() + self.open_timeout_s
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=self.open_timeout_s)
            if parts.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            sock.sendall(request)
            head, rest = self._read_head(sock, deadline)
            boundary = self._check_head(head)
        except (OSError, SourceError, ValueError) as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"cannot connect to {redact(self.url)}: {exc}") from exc
        self.sock = sock
        self.parser = MultipartJpegParser(boundary)
        self._pending = None
        if rest:
            self.parser.feed(rest)

    @staticmethod
    def _read_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
        data = bytearray()
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                return bytes(data[:end]), bytes(data[end + 4:])
            if len(data) > 65536:
                raise SourceError("HTTP response headers too long")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError("no HTTP response in time")
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                raise SourceError("connection closed before the HTTP response")
            data += chunk

    def _check_head(self, head: bytes) -> str:
        status_line, _, header_bytes = head.partition(b"\r\n")
        fields = status_line.decode("latin-1").split(None, 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise SourceError(f"not an HTTP response: {status_line[:60]!r}")
        status = int(fields[1])
        headers = BytesHeaderParser().parsebytes(header_bytes)
        if status != 200:
            reason = fields[2] if len(fields) > 2 else ""
            hint = ""
            if status == 401:
                scheme = (headers.get("WWW-Authenticate") or "").split(" ", 1)[0]
                hint = (" (only Basic authentication is supported; put user:password in the URL)"
                        if scheme.lower() != "basic" else " (check the user and password in the URL)")
            elif status in (301, 302, 303, 307, 308):
                hint = f" (redirects are not followed; configure {redact(headers.get('Location', '?'))})"
            raise SourceError(f"HTTP {status} {reason}{hint}".strip())
        content_type = headers.get_content_type()
        if content_type != "multipart/x-mixed-replace":
            raise SourceError(f"{redact(self.url)} serves {content_type}, not an MJPEG stream (multipart/x-mixed-replace)")
        boundary = headers.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise SourceError("MJPEG stream without a multipart boundary")
        return boundary

    def read(self) -> np.ndarray | None:
        """The newest complete frame once due; None after READ_TIMEOUT_S without one; SourceError on EOF/errors."""
        deadline = time.monotonic() + self.read_timeout_s
        while (due := self._due_part(deadline)) is not None:
            data, now = due
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                self.corrupt += 1
                continue
            self.pacer.mark(now)
            return to_bgr(image)
        return None

    def grab(self) -> bool:
        """Drop the newest complete part undecoded once due (draining the socket as `read` does)."""
        due = self._due_part(time.monotonic() + self.read_timeout_s)
        if due is None:
            return False
        self.undecoded += 1
        self.pacer.mark(due[1])
        return True

    def _due_part(self, deadline: float) -> tuple[bytes, float] | None:
        """The newest complete part and when it fell due, once the pacer allows one; None at `deadline`."""
        sock, parser = self.sock, self.parser
        if sock is None or parser is None:
            raise SourceError("not open")
        while True:
            latest, dropped = parser.pop_latest()
            if latest is not None:
                self.skipped += dropped + (self._pending is not None)
                self._pending = latest
            now = time.monotonic()
            wait_due = self.pacer.remaining(now)
            if self._pending is not None and wait_due <= 0:
                data, self._pending = self._pending, None
                return data, now
            if parser.ended:
                raise SourceError("the server ended the MJPEG stream")
            remaining = deadline - now
            if remaining <= 0:
                return None
            # Keep draining the socket while a frame waits for its turn, so the newest one wins.
            sock.settimeout(max(0.005, min(remaining, wait_due) if self._pending is not None else remaining))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if self._pending is not None:
                    continue
                return None
            except OSError as exc:
                raise SourceError(f"connection lost: {exc}") from exc
            if not chunk:
                raise SourceError("the server closed the connection")
            parser.feed(chunk)

    def close(self) -> None:
        """Close the connection."""
        sock, self.sock = self.sock, None
        self.parser = None
        self._pending = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- choosing a backend


def resolve_kind(cfg: CameraConfig, base_dir: Path) -> str:
    """The backend kind for `cfg.source` (`cfg.kind` unless auto)."""
    if cfg.kind != "auto":
        return cfg.kind
    source = cfg.source.strip()
    lowered = source.lower()
    if source.isdigit() or source.startswith("/dev/"):
        return "v4l2"
    if lowered == "picamera2" or lowered.startswith("picamera2:"):
        return "picamera2"
    if "!" in source:
        return "gstreamer"
    if re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        return "url"
    path = _resolve_path(source, base_dir)
    if path.is_dir():
        return "images"
    if path.is_file():
        return "video"
    raise SourceError(f"{source}: no such file or folder (and not a device index, /dev path, URL or pipeline)")


def _resolve_path(source: str, base_dir: Path) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else base_dir / path


def make_source(cfg: CameraConfig, base_dir: Path) -> FrameSource:
    """The backend for the configured source (not opened); relative paths are taken from `base_dir`."""
    kind = resolve_kind(cfg, base_dir)
    source = cfg.source.strip()
    if kind == "v4l2":
        target: str | int = int(source) if source.isdigit() else source
        return OpenCVSource("v4l2", target, cv2.CAP_V4L2, cfg=cfg)
    if kind == "picamera2":
        _, _, num = source.partition(":")
        if num and not num.isdigit():
            raise SourceError(f"picamera2 camera number must be an integer, not {num!r}")
        return Picamera2Source(cfg, int(num) if num else 0)
    if kind == "gstreamer":
        return OpenCVSource("gstreamer", source, cv2.CAP_GSTREAMER, cfg=cfg)
    if kind == "url":
        if source.lower().startswith(("http://", "https://")):
            return MjpegSource(source, fps=cfg.fps)
        return OpenCVSource("url", source, cv2.CAP_FFMPEG, cfg=cfg)
    if kind == "video":
        return VideoFileSource(_resolve_path(source, base_dir), fps=cfg.fps, loop=cfg.loop)
    if kind == "images":
        return ImageFolderSource(_resolve_path(source, base_dir), fps=cfg.fps, loop=cfg.loop)
    raise SourceError(f"unknown camera kind {kind!r}")
