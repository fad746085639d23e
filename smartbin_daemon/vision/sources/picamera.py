"""The Raspberry Pi camera module through picamera2."""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

import numpy as np

from ...config import CameraConfig
from .base import READ_TIMEOUT_S, SourceError, to_bgr

logger = logging.getLogger(__name__)

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


