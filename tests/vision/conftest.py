"""Camera test fixtures: a live MJPEG server, generated video files, and a camera worker in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from smartbin_daemon.config import CameraConfig
from smartbin_daemon.runtime.bus import Bus, Event, StateUpdate, Subscription
from smartbin_daemon.vision.camera import CameraWorker
from smartbin_daemon.vision.frames import LatestFrame

from ..conftest import wait_until
from .mjpeg_server import MjpegServer

SIZE = (160, 120)
"""Small frames: the suite shares the CPU with model training."""


def write_video(path: Path, frames: int, *, fps: float = 20.0, size: tuple[int, int] = SIZE, step: int = 8) -> Path:
    """An MJPG .avi whose frame i is uniformly grey at i*step (read back to check it round-trips)."""
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "this OpenCV cannot write MJPG/AVI"
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), i * step % 256, np.uint8))
    writer.release()
    cap = cv2.VideoCapture(str(tmp))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == frames, f"video round trip: wrote {frames} frames, read {count}"
    tmp.rename(path)  # atomic: a worker polling for the file never sees half of it
    return path


def grey_index(image: np.ndarray, step: int = 8) -> int:
    """Inverse of write_video's shading."""
    return int(round(float(image.mean()) / step))


@dataclass
class CameraRig:
    """A CameraWorker running in its own thread, with every state it published recorded."""

    cfg: CameraConfig
    base_dir: Path
    bus: Bus = field(default_factory=Bus)
    frames: LatestFrame = field(default_factory=LatestFrame)

    def __post_init__(self) -> None:
        self.probe: Subscription = self.bus.subscribe("probe", (StateUpdate, Event), 100000)
        self.history: list[dict[str, Any]] = []
        self.events: list[Event] = []
        self.worker = CameraWorker(self.bus, self.cfg, self.frames, base_dir=self.base_dir)
        self.thread = threading.Thread(target=self.worker.run, name="camera-under-test", daemon=True)

    def start(self) -> CameraRig:
        """Run the worker."""
        self.thread.start()
        return self

    def stop(self) -> float:
        """Stop the worker; returns how long it took."""
        started = time.monotonic()
        self.worker.request_stop()
        self.thread.join(5)
        return time.monotonic() - started

    def _drain(self) -> None:
        while len(self.probe):
            msg = self.probe.get(0)
            if isinstance(msg, StateUpdate) and msg.component == "camera":
                self.history.append(msg.state)
            elif isinstance(msg, Event):
                self.events.append(msg)

    def state(self) -> dict[str, Any]:
        """The latest published camera state."""
        self._drain()
        return self.history[-1] if self.history else {}

    def statuses(self) -> list[str]:
        """Every status published so far, consecutive repeats folded."""
        self._drain()
        out: list[str] = []
        for s in self.history:
            if not out or out[-1] != s["status"]:
                out.append(s["status"])
        return out

    def alerts(self) -> list[dict[str, Any]]:
        """Alert payloads emitted so far."""
        self._drain()
        return [e.data for e in self.events if e.type == "alert"]

    def wait_state(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0,
                   what: str = "camera state") -> dict[str, Any]:
        """Wait until the latest published state satisfies `predicate`."""
        def check() -> dict[str, Any] | None:
            state = self.state()
            return state if state and predicate(state) else None
        result: dict[str, Any] = wait_until(check, timeout, interval=0.02, what=what)
        return result

    def wait_status(self, status: str, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for a status."""
        return self.wait_state(lambda s: s["status"] == status, timeout, what=f"camera {status}")


def camera_config(source: str, **overrides: Any) -> CameraConfig:
    """Test settings: quick watchdog, quick backoff."""
    values: dict[str, Any] = {"enabled": True, "source": source, "fps": 20.0, "width": SIZE[0], "height": SIZE[1],
                              "stall_timeout_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    values.update(overrides)
    return CameraConfig(**values)


@pytest.fixture
def camera_rig(tmp_path: Path) -> Iterator[Callable[..., CameraRig]]:
    """Factory: `camera_rig(source, **cfg)` starts a worker; all are stopped at the end."""
    rigs: list[CameraRig] = []

    def make(source: str, **overrides: Any) -> CameraRig:
        rig = CameraRig(camera_config(source, **overrides), tmp_path)
        rigs.append(rig)
        return rig.start()

    yield make
    for rig in rigs:
        rig.stop()


@pytest.fixture
def mjpeg_server() -> Iterator[MjpegServer]:
    """A running 20 fps 160x120 MJPEG server on a free port."""
    server = MjpegServer(fps=20.0, width=SIZE[0], height=SIZE[1]).start()
    yield server
    server.stop()
