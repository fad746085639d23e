"""The camera worker: opens the configured frame source, publishes the newest frame, and watches it.

Latest frame wins: every decoded frame replaces the one in the shared `LatestFrame` slot, so the
capture loop never waits for a consumer and a slow consumer always sees the current scene. The
watchdog releases the source when it fails or stays silent for `stall_timeout_s` and re-opens it
with exponential backoff; a camera that is absent at start is retried the same way, so the daemon
runs without one (state `disconnected`) and picks it up when it appears.

Idle costs nothing: a frame is decoded only while a consumer wants one (`LatestFrame.want`,
`want_one`, or a consumer waiting in `wait_newer`), plus the first frame after each open, which
proves the stream decodes and gives the resolution. Otherwise the frame is only grabbed (taken
from the source undecoded): it counts for the stall watchdog, `frames`, fps and `connected`, so
status and alerts do not depend on demand, but nothing new enters the slot, whose last frame goes
stale (consumers refuse stale frames, see `frames.is_fresh`). `decoded` in the state counts decoded frames.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from ..clock import iso_utc
from ..config import CameraConfig
from ..logs import ev
from ..runtime.backoff import RetrySchedule
from ..runtime.bus import Alert, Bus, Discovery, Entity
from ..runtime.status import CONNECTED, DISCONNECTED, ENDED, RECONNECTING
from ..runtime.worker import STATE_EXPIRE_AFTER_S as EXPIRE_AFTER_S
from ..runtime.worker import Worker
from ..states.camera import CameraState
from .frames import Frame, LatestFrame
from .sources import FrameSource, SourceEnded, SourceError, SourceStalled, make_source, redact

logger = logging.getLogger(__name__)

FPS_WINDOW_S = 5.0
HOUR_S = 3600.0
IDLE_SLEEP_S = 0.02
"""Pause after a read that returned no frame, so a source failing fast cannot spin the CPU."""

_SEQUENCE = itertools.count(1)
"""Process-wide frame numbers: a camera worker replaced on reload continues above what consumers saw,
so their `wait_newer(last_seq)` never waits for numbers the new worker would only reach much later."""


def camera_entities(component: str) -> tuple[Entity, ...]:
    """HA entities of the camera: measured fps and connectivity (both diagnostic)."""
    diag = {"entity_category": "diagnostic", "expire_after": EXPIRE_AFTER_S}
    return (
        Entity("sensor", "camera_fps", "Camera fps", component, "{{ value_json.fps }}",
               {"unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:camera-timer", **diag}),
        Entity("binary_sensor", "camera_connected", "Camera connected", component,
               "{{ 'ON' if value_json.status == 'connected' else 'OFF' }}",
               {"device_class": "connectivity", **diag}),
    )


class CameraWorker(Worker):
    """Owner of the frame source; state on `<root>/camera`."""

    critical = True

    def __init__(self, bus: Bus, cfg: CameraConfig, frames: LatestFrame, *, base_dir: Path,
                 name: str = "camera") -> None:
        super().__init__(name, bus, tick_s=1.0)
        self.cfg = cfg
        self.frames = frames
        self.base_dir = base_dir
        self.stall_limit_s = max(cfg.stall_timeout_s, 3.0 / cfg.fps)
        """A source paced slower than the stall timeout is slow, not stalled."""
        self.source: FrameSource | None = None
        self.status = DISCONNECTED
        self.kind: str | None = None
        self.description = redact(cfg.source)
        self.frames_total = 0
        self.decoded_total = 0
        self._decode_next = False
        """Decode the next frame whatever the demand (the first one after an open)."""
        self.reconnects_total = 0
        self.stalls_total = 0
        self.errors_total = 0
        self.open_attempts_total = 0
        self.last_error: str | None = None
        self._last_error_wall: float | None = None
        self._logged_error: str | None = None
        self._retry = RetrySchedule(cfg.reconnect_min_s, cfg.reconnect_max_s, self.clock)
        self._progress_at = 0.0
        """When the source was opened or last gave a frame (stall clock)."""
        self._last_frame_at: float | None = None
        self._resolution: tuple[int, int] | None = None
        self._fps_stamps: collections.deque[float] = collections.deque()
        self._reconnect_stamps: collections.deque[float] = collections.deque()
        self._stall_stamps: collections.deque[float] = collections.deque()
        self._source_stats: dict[str, int] = {}
        self._unavailable_since: float | None = None
        self._alert_active = False

    def entities(self) -> tuple[Entity, ...]:
        """HA entities of the camera."""
        return camera_entities(self.name)

    # -- lifecycle ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._close()
        now = time.monotonic()
        self.status = DISCONNECTED
        self._retry = RetrySchedule(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self.clock)
        self._retry.now()
        self._unavailable_since = now
        # A worker replaced on reload inherits an alert its predecessor raised, so it clears it later.
        self._alert_active = bool(CameraState.from_json(self.bus.states().get(self.name)).unavailable_alert)
        self.bus.publish(Discovery(self.name, self.entities()))
        self.publish_state(self.own_state, force=True)

    def teardown(self) -> None:
        self._close()
        self.frames.clear()
        if self.status != ENDED:
            self.status = DISCONNECTED
        self._fps_stamps.clear()
        self.publish_state(self.own_state, force=True)

    def step(self) -> None:
        if self.source is None:
            now = time.monotonic()
            if self.status != ENDED and self._retry.due(now):
                self._open()
            else:
                wait = self.tick_s if self.status == ENDED else min(self.tick_s, self._retry.wait_s(now))
                self.sleep(max(0.0, wait))
        else:
            self._read_once()
        self._check_alert()
        self.publish_state(self.own_state)

    # -- connection --------------------------------------------------------------------------

    def _open(self) -> None:
        self.open_attempts_total += 1
        source: FrameSource | None = None
        try:
            source = make_source(self.cfg, self.base_dir)
            self.kind = source.kind
            self.description = redact(source.describe())
            source.open()
        except (SourceError, cv2.error, OSError) as exc:
            if source is not None:
                self._close_source(source)
            self.errors_total += 1
            self._retry_later(str(exc) or type(exc).__name__)
            return
        self.source = source
        self._decode_next = True
        self._progress_at = time.monotonic()
        logger.info("camera opened: %s", self.description, extra=ev("camera_opened"))

    def _retry_later(self, error: str, *, log: bool = True) -> None:
        error = redact(error)
        self.last_error = error
        self._last_error_wall = time.time()
        delay = self._retry.failed()
        if not log:
            pass  # the caller has already said why
        elif error != self._logged_error:
            logger.warning("camera: %s; retrying in %.1fs", error, delay, extra=ev("camera_retry"))
        else:
            logger.debug("camera: %s; retrying in %.1fs", error, delay)
        self._logged_error = error

    def _close_source(self, source: FrameSource) -> None:
        try:
            self._source_stats = dict(source.stats())
            source.close()
        except Exception as exc:  # noqa: BLE001 - releasing a broken device must never take the worker down
            logger.debug("camera: closing %s failed: %s", self.description, exc)

    def _close(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            self._close_source(source)

    def _lost(self, reason: str, *, stall: bool) -> None:
        """Release the source, forget the frame, count it, and schedule a re-open."""
        now = time.monotonic()
        self._close()
        self.frames.clear()
        self._fps_stamps.clear()
        self.reconnects_total += 1
        self._reconnect_stamps.append(now)
        reason = redact(reason)
        logged = True
        if stall:
            self.stalls_total += 1
            self._stall_stamps.append(now)
            logger.warning("camera stalled (%s): releasing and re-opening %s in %.1fs", reason, self.description,
                           self._retry.backoff.delay, extra=ev("camera_stall"))
        else:
            self.errors_total += 1
            if self.status == CONNECTED:
                logger.warning("camera lost (%s): re-opening %s in %.1fs", reason, self.description, self._retry.backoff.delay,
                               extra=ev("camera_lost"))
            else:
                logged = False
        if self.status == CONNECTED:
            self._unavailable_since = now
        self.status = RECONNECTING
        self._retry_later(reason, log=not logged)
        self.publish_state(self.own_state, force=True)

    def _ended(self, reason: str) -> None:
        self._close()
        self.frames.clear()
        self._fps_stamps.clear()
        self.status = ENDED
        self._unavailable_since = None
        logger.info("camera source finished: %s", reason, extra=ev("camera_ended"))
        self.publish_state(self.own_state, force=True)

    # -- frames ------------------------------------------------------------------------------

    def _read_once(self) -> None:
        source = self.source
        assert source is not None
        image: np.ndarray | None = None
        try:
            if self._decode_next or self.frames.wanted():
                image = source.read()
                got = image is not None
            else:
                got = source.grab()
        except SourceEnded as exc:
            self._ended(str(exc))
            return
        except SourceStalled as exc:
            self._lost(str(exc), stall=True)
            return
        except (SourceError, cv2.error, OSError) as exc:
            self._lost(f"read failed: {exc}", stall=False)
            return
        now = time.monotonic()
        if not got:
            silent = now - self._progress_at
            if silent >= self.stall_limit_s:
                self._lost(f"no frame for {silent:.1f}s", stall=True)
            else:
                self.sleep(IDLE_SLEEP_S)
            return
        self._on_frame(image, now)

    def _on_frame(self, image: np.ndarray | None, now: float) -> None:
        """A frame came: decoded (`image`, published in the slot) or only grabbed (None)."""
        if image is not None:
            self.frames.put(Frame(image, next(_SEQUENCE), now, time.time()))
            self.decoded_total += 1
            self._decode_next = False
            self._resolution = (int(image.shape[1]), int(image.shape[0]))
        self.frames_total += 1
        self._progress_at = now
        self._last_frame_at = now
        self._fps_stamps.append(now)
        if self.status == CONNECTED:
            return
        self.status = CONNECTED
        self._retry.succeeded()
        self._unavailable_since = None
        logger.info("camera connected: %s, %s", self.description, self._resolution_text() or "size unknown",
                    extra=ev("camera_connected"))
        if self._alert_active:
            self._alert_active = False
            self.bus.raise_alert(Alert(self.name, "camera_unavailable", "info", f"camera is back: {self.description}",
                                       active=False))
        self.publish_state(self.own_state, force=True)

    def _check_alert(self) -> None:
        since = self._unavailable_since
        if self._alert_active or since is None or self.status in (CONNECTED, ENDED):
            return
        down = time.monotonic() - since
        if down >= self.cfg.stall_timeout_s:
            self._alert_active = True
            self.bus.raise_alert(Alert(self.name, "camera_unavailable", "warning",
                                       f"no camera image for {down:.0f}s: {self.last_error or 'no frames'}"))
            self.publish_state(self.own_state, force=True)

    # -- state -------------------------------------------------------------------------------

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last few seconds (decays to 0 when frames stop)."""
        now = time.monotonic() if now is None else now
        stamps = self._fps_stamps
        while stamps and stamps[0] < now - FPS_WINDOW_S:
            stamps.popleft()
        if len(stamps) < 2:
            return 0.0
        span = stamps[-1] - stamps[0]
        if now - stamps[-1] > 1.0:
            span = now - stamps[0]  # frames stopped: let the rate fall instead of freezing it
        return round((len(stamps) - 1) / span, 1) if span > 0 else 0.0

    def _resolution_text(self) -> str | None:
        """E.g. `640x480`; the last decoded frame's size (None before the first decode)."""
        return f"{self._resolution[0]}x{self._resolution[1]}" if self._resolution else None

    def own_state(self) -> CameraState:
        """The `camera` state."""
        now = time.monotonic()
        for stamps in (self._reconnect_stamps, self._stall_stamps):
            while stamps and stamps[0] < now - HOUR_S:
                stamps.popleft()
        if self.source is not None:
            self._source_stats = dict(self.source.stats())
        waiting = self.source is None and self.status != ENDED
        return CameraState(
            status=self.status,
            source=self.description,
            kind=self.kind,
            resolution=self._resolution_text(),
            fps=self.fps(now),
            target_fps=self.cfg.fps,
            frames=self.frames_total,
            decoded=self.decoded_total,
            last_frame_age_s=None if self._last_frame_at is None else round(now - self._last_frame_at, 3),
            reconnects_last_hour=len(self._reconnect_stamps),
            stalls_last_hour=len(self._stall_stamps),
            reconnects_total=self.reconnects_total,
            stalls_total=self.stalls_total,
            errors_total=self.errors_total,
            open_attempts_total=self.open_attempts_total,
            last_error=self.last_error,
            last_error_at=iso_utc(self._last_error_wall) if self._last_error_wall is not None else None,
            next_retry_s=round(self._retry.wait_s(now), 1) if waiting else None,
            unavailable_alert=self._alert_active,
            source_stats=self._source_stats,
        )
