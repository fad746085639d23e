"""The `fill` component's retained state (`<root>/fill`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.state import State
from ..runtime.status import StrEnum


class BinLevel(StrEnum):
    """A compartment's level (with hysteresis)."""

    OK = "ok"
    ALMOST_FULL = "almost_full"
    FULL = "full"


@dataclass(slots=True, kw_only=True)
class Calibration(State):
    """The distances that mean empty and full, and where they came from."""

    empty_mm: float | None
    full_mm: float | None
    source: str
    calibrated_at: str | None


@dataclass(slots=True, kw_only=True)
class SensorRef(State):
    """Which sensor measures the compartment."""

    source: str
    channel: int


@dataclass(slots=True, kw_only=True)
class CompartmentFill(State):
    """One compartment: fill, level, counters, forecast, calibration."""

    name: str | None
    categories: list[str] = field(default_factory=list)
    fill_pct: float | None
    level: BinLevel | None
    full: bool = False
    distance_mm: float | None
    items: int = 0
    items_total: int = 0
    emptied_at: str | None
    rate_pct_per_h: float | None
    predicted_full_at: str | None
    seconds_to_full: int | None
    capacity_l: float | None
    free_l: float | None
    calibration: Calibration | None
    sensor: SensorRef | None
    rejected_readings: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class FillState(State):
    """Every compartment, keyed by id."""

    compartments: dict[str, CompartmentFill] = field(default_factory=dict)
    maintenance: bool = False
    lid_open: bool | None
