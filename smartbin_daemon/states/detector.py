"""The `detector` component's retained state (`<root>/detector`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..runtime.state import State
from ..runtime.status import StrEnum


class GateState(StrEnum):
    """Where the detector's gate is: waiting, letting the item settle, collecting frames for a decision."""

    IDLE = "idle"
    SETTLING = "settling"
    COLLECTING = "collecting"


@dataclass(slots=True, kw_only=True)
class Percentiles(State):
    """Median and 95th percentile, in milliseconds (None before the first sample)."""

    p50: float | None
    p95: float | None


@dataclass(slots=True, kw_only=True)
class Thresholds(State):
    """The vote thresholds in use and where each came from (`config`/`model`/`default`)."""

    min_confidence: float
    min_margin: float
    source: dict[str, str]


@dataclass(slots=True, kw_only=True)
class LastDecision(State):
    """The latest decision."""

    item_id: str
    category: str
    class_name: str | None
    confidence: float
    uncertain: bool
    snapshot: str | None
    at: str


@dataclass(slots=True, kw_only=True)
class DetectorState(State):
    """Switches, the model in use, thresholds, counters, timings, the last decision and the evidence writer."""

    enabled: bool
    continuous: bool
    gate: str | None
    gate_state: GateState
    model: str | None
    backend: str | None
    device: str | None
    imgsz: int | None
    thresholds: Thresholds
    warnings: list[str] = field(default_factory=list)
    inferences: int
    decisions: int
    decisions_per_minute: int
    stale_frames: int
    inference_ms: Percentiles
    stages_ms: dict[str, Percentiles] = field(default_factory=dict)
    last: LastDecision | None
    evidence: dict[str, Any] | None
