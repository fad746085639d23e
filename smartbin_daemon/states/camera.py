"""The `camera` component's retained state (`<root>/camera`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..runtime.state import State
from ..runtime.status import ConnectionStatus


@dataclass(slots=True, kw_only=True)
class CameraPreview(State):
    """The live view (`camera/preview`): whether it is on, for how long yet, and what it sent."""

    on: bool = False
    remaining_s: float | None = None
    fps: float | None = None
    paused: bool = False
    """An item is being sorted: no preview frame is encoded or sent."""
    frames: int = 0
    skipped_busy: int = 0
    last_bytes: int | None = None


@dataclass(slots=True, kw_only=True)
class CameraState(State):
    """The frame source, its rates and its failures."""

    status: ConnectionStatus
    source: str | None
    kind: str | None
    resolution: str | None
    fps: float
    target_fps: float
    frames: int
    decoded: int
    last_frame_age_s: float | None
    reconnects_last_hour: int
    stalls_last_hour: int
    reconnects_total: int
    stalls_total: int
    errors_total: int
    open_attempts_total: int
    last_error: str | None
    last_error_at: str | None
    next_retry_s: float | None
    unavailable_alert: bool = False
    source_stats: dict[str, Any] = field(default_factory=dict)
    preview: CameraPreview = field(default_factory=CameraPreview)
