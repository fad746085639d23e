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

The live view (`camera/preview`) is encoded here, on the camera's thread, at the preview rate only: when a preview
frame is due the next frame is decoded, scaled down and sent as a JPEG (not retained, QoS 0); while an item is being
sorted (the workflow's or detector's published state says so) the due frame is skipped, never queued.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso_utc
from ..config import CameraConfig
from ..logs import ev
from ..runtime.backoff import RetrySchedule
from ..runtime.bus import Alert, BinaryPublish, Bus, Discovery, Entity, Request
from ..runtime.commands import RequestError, command
from ..runtime.status import CONNECTED, DISCONNECTED, ENDED, RECONNECTING
from ..runtime.worker import STATE_EXPIRE_AFTER_S as EXPIRE_AFTER_S
from ..runtime.worker import Worker
from ..states.camera import CameraPreview, CameraState
from ..states.detector import DetectorState, GateState
from ..states.workflow import SortingState, WorkflowState
from .frames import Frame, LatestFrame
from .sources import FrameSource, SourceEnded, SourceError, SourceStalled, make_source, redact

logger = logging.getLogger(__name__)

FPS_WINDOW_S = 5.0
HOUR_S = 3600.0
IDLE_SLEEP_S = 0.02
"""Pause after a read that returned no frame, so a source failing fast cannot spin the CPU."""

PREVIEW_SUBTOPIC = "camera/preview"
"""`<root>/camera/preview`: the live view's JPEGs (HA camera entity)."""
SORTING_BUSY = frozenset({SortingState.ITEM_PRESENT, SortingState.CLASSIFYING, SortingState.ROUTING,
                          SortingState.CONFIRMING})
"""Workflow states with an item in flight: no preview frame then."""

_SEQUENCE = itertools.count(1)
"""Process-wide frame numbers: a camera worker replaced on reload continues above what consumers saw,
so their `wait_newer(last_seq)` never waits for numbers the new worker would only reach much later."""


class PreviewArgs(BaseModel):
    """`camera/preview`: switch the live view on (for `minutes`, default `camera.preview.auto_off_min`) or off."""

    model_config = ConfigDict(extra="forbid")
    on: bool = Field(description="true: send preview frames; false: stop")
    minutes: float | None = Field(default=None, gt=0, le=120,
                                  description="how long (at most camera.preview.max_min); default auto_off_min")


def camera_entities(component: str) -> tuple[Entity, ...]:
    """HA entities of the camera: measured fps and connectivity (both diagnostic), the live view and its switch."""
    diag = {"entity_category": "diagnostic", "expire_after": EXPIRE_AFTER_S}
    return (
        Entity("camera", "camera_live", "Live view", component, None, {"topic": PREVIEW_SUBTOPIC, "icon": "mdi:cctv"}),
        Entity("switch", "camera_preview", "Live view", component, "{{ 'ON' if value_json.preview.on else 'OFF' }}",
               {"command_topic": "camera/preview", "payload_on": '{"args": {"on": true}}',
                "payload_off": '{"args": {"on": false}}', "state_on": "ON", "state_off": "OFF", "icon": "mdi:cctv"}),
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
                 name: str = "camera", clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, bus, tick_s=1.0, inbox=(Request,), clock=clock)
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
        self._preview_until: float | None = None
        """Clock time the live view switches itself off (None: off)."""
        self._preview_next = 0.0
        self._preview_paused = False
        self._preview_frames = 0
        self._preview_skipped = 0
        self._preview_bytes: int | None = None

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
                msg = self.next_message(max(0.0, wait))
                if msg is not None:
                    self.handle(msg)
        else:
            self._read_once()
        if self.inbox is not None and len(self.inbox):
            self.drain()
        self._preview_expiry()
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
        preview = self._preview_due()
        try:
            if self._decode_next or preview or self.frames.wanted():
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
        if preview and image is not None:
            self._send_preview(image)

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

    # -- live view ---------------------------------------------------------------------------

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Request):
            self.answer(msg)

    @command("camera/preview", PreviewArgs, example={"on": True, "minutes": 5},
             summary="Live view on demand: JPEG frames at camera.preview.fps on <root>/camera/preview (not retained), "
                     "off after `minutes` (default camera.preview.auto_off_min) and paused while an item is sorted.")
    def _preview(self, req: Request, args: PreviewArgs) -> dict[str, Any]:
        pcfg = self.cfg.preview
        if not args.on:
            was_on = self._preview_until is not None
            self._preview_off("request")
            return {"on": False, "was_on": was_on}
        minutes = pcfg.auto_off_min if args.minutes is None else args.minutes
        if minutes > pcfg.max_min:
            raise RequestError(f"args.minutes: at most {pcfg.max_min:g} (camera.preview.max_min), got {minutes:g}")
        now = self.clock()
        if self._preview_until is None:
            self._preview_next = now
            logger.info("camera: live view on for %g min at %g fps", minutes, pcfg.fps, extra=ev("camera_preview"))
        self._preview_until = now + minutes * 60.0
        self.publish_state(self.own_state, force=True)
        return {"on": True, "minutes": minutes, "fps": pcfg.fps, "topic": PREVIEW_SUBTOPIC}

    def _preview_off(self, why: str) -> None:
        if self._preview_until is None:
            return
        self._preview_until = None
        self._preview_paused = False
        logger.info("camera: live view off (%s)", why, extra=ev("camera_preview"))
        self.publish_state(self.own_state, force=True)

    def _preview_expiry(self) -> None:
        if self._preview_until is not None and self.clock() >= self._preview_until:
            self._preview_off("auto-off")

    def _preview_due(self) -> bool:
        """Whether the next frame goes to the live view (on, its interval passed, no item being sorted)."""
        if self._preview_until is None:
            return False
        now = self.clock()
        if now < self._preview_next:
            return False
        self._preview_next = now + 1.0 / self.cfg.preview.fps
        paused = self._sorting_busy()
        if paused:
            self._preview_skipped += 1
        if paused != self._preview_paused:
            self._preview_paused = paused
            self.publish_state(self.own_state, force=True)
        return not paused

    def _sorting_busy(self) -> bool:
        """An item is being classified or routed, as the workflow's and detector's published states say."""
        states = self.bus.states()
        workflow = states.get("workflow")
        if workflow is not None and WorkflowState.from_json(workflow).state in SORTING_BUSY:
            return True
        detector = states.get("detector")
        return detector is not None and DetectorState.from_json(detector).gate_state in (GateState.SETTLING,
                                                                                          GateState.COLLECTING)

    def _send_preview(self, image: np.ndarray) -> None:
        """Scale down, encode and send one live-view JPEG (dropped by the bus, never queued here)."""
        pcfg = self.cfg.preview
        height, width = image.shape[:2]
        if width > pcfg.max_width:
            size = (pcfg.max_width, max(1, round(height * pcfg.max_width / width)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, pcfg.jpeg_quality])
        if not ok:
            return
        payload = jpeg.tobytes()
        self._preview_frames += 1
        self._preview_bytes = len(payload)
        self.bus.publish(BinaryPublish(PREVIEW_SUBTOPIC, payload, retain=False))

    def _preview_state(self) -> CameraPreview:
        until = self._preview_until
        return CameraPreview(
            on=until is not None,
            remaining_s=None if until is None else round(max(0.0, until - self.clock())),
            fps=self.cfg.preview.fps if until is not None else None,
            paused=self._preview_paused,
            frames=self._preview_frames,
            skipped_busy=self._preview_skipped,
            last_bytes=self._preview_bytes,
        )

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
            preview=self._preview_state(),
        )
