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

import logging
import re
from pathlib import Path

import cv2

from ...config import CameraConfig
from .base import (
    IMAGE_SUFFIXES,
    KINDS,
    FrameSource,
    Pacer,
    SourceEnded,
    SourceError,
    SourceStalled,
    has_gstreamer,
    redact,
    to_bgr,
)
from .folder import ImageFolderSource
from .mjpeg import MjpegSource, MultipartJpegParser
from .opencv import OpenCVSource, VideoFileSource
from .picamera import Picamera2Source

__all__ = [
    "IMAGE_SUFFIXES", "KINDS", "FrameSource", "ImageFolderSource", "MjpegSource", "MultipartJpegParser", "OpenCVSource",
    "Pacer", "Picamera2Source", "SourceEnded", "SourceError", "SourceStalled", "VideoFileSource", "has_gstreamer",
    "make_source", "redact", "resolve_kind", "to_bgr",
]

logger = logging.getLogger(__name__)

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
