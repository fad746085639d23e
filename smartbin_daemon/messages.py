"""Domain messages components exchange on the bus, and the argument schemas of shared commands.

Why one module: the GPIO and Arduino components can both own a lid, LEDs or a buzzer; the
messages and request schemas are the contract between them and the rest, so they live below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class PresenceChanged:
    """An item appeared in / left the intake (debounced). `mono` is time.monotonic() at the edge."""

    source: str  # "gpio" | "arduino" | "motion"
    present: bool
    mono: float


@dataclass(frozen=True)
class DoorChanged:
    """The lid/door opened or closed (door switch or MCU lid sensor)."""

    source: str
    state: str  # open | closed | locked
    mono: float


@dataclass(frozen=True)
class ButtonPressed:
    """The service button: `short` (status blink) or `hold` (maintenance mode toggle)."""

    kind: Literal["short", "hold"]
    mono: float


@dataclass(frozen=True)
class DistanceReading:
    """One raw ultrasonic distance of a compartment (mm; None = no echo)."""

    source: str
    compartment: int  # 1-based
    mm: float | None
    mono: float


@dataclass(frozen=True)
class ItemDropped:
    """The MCU saw an item fall into a compartment (drop sensor or weight step)."""

    compartment: int
    mono: float


@dataclass(frozen=True)
class WeightReading:
    """Load cell weight in grams."""

    grams: float
    mono: float


@dataclass(frozen=True)
class TemperatureReading:
    """Ambient temperature near the sensors (°C), for speed-of-sound compensation."""

    celsius: float
    mono: float


@dataclass(frozen=True)
class SimulatedPresence:
    """Simulation only: the item feeder asks the GPIO component to drive its mock presence pin."""

    present: bool


@dataclass(frozen=True)
class DetectedBox:
    """One detector box in a frame: class, category, confidence and pixel box (x1, y1, x2, y2)."""

    class_id: int
    class_name: str
    category: str
    confidence: float
    xyxy: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        """Box area in pixels."""
        x1, y1, x2, y2 = self.xyxy
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True)
class Decision:
    """What an item is, decided from several frames; `uncertain` items go to residual."""

    item_id: str
    category: str
    class_name: str | None
    confidence: float
    runner_up: str | None
    runner_up_confidence: float
    margin: float
    uncertain: bool
    reason: str | None
    compartment: str | None
    frames: int
    votes: dict[str, float]
    frame_seq: int | None
    mono: float
    boxes: tuple[DetectedBox, ...] = ()
    snapshot: str | None = None


@dataclass(frozen=True)
class FillLevel:
    """A compartment's filtered fill (published by the fill tracker when it changes)."""

    compartment: str
    fill_pct: float | None
    level: str | None  # ok | almost_full | full | None (no reading yet)
    mono: float


ITEM_HANDOFF_DDL = "CREATE TABLE IF NOT EXISTS item_handoff (item_id TEXT PRIMARY KEY, compartment TEXT NOT NULL)"
"""The durable side of ItemSorted: the workflow inserts the row in the same transaction as `item_sorted`, the
fill tracker counts the item and deletes the row in one transaction (left-over rows are counted at its start),
so a crash between the two can neither lose nor double a count."""


@dataclass(frozen=True)
class ItemSorted:
    """The workflow put an item into a compartment (the fill tracker counts it; see ITEM_HANDOFF_DDL)."""

    compartment: str
    item_id: str
    mono: float


@dataclass(frozen=True)
class MaintenanceChanged:
    """Maintenance mode switched on or off (events are labelled with it)."""

    on: bool
    mono: float


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LidArgs(_Args):
    """`lid` request."""

    op: Literal["open", "close", "lock", "unlock"]


LED_PATTERNS = ("off", "on", "blink", "pulse", "error", "ok")
BUZZER_PATTERNS = ("off", "beep", "alarm", "ok")


class LedArgs(_Args):
    """`led` request."""

    pattern: Literal["off", "on", "blink", "pulse", "error", "ok"]


class BuzzerArgs(_Args):
    """`buzzer` request."""

    pattern: Literal["off", "beep", "alarm", "ok"]


class RouteArgs(_Args):
    """`route` request (manual routing, for technicians)."""

    compartment: int = Field(ge=1, le=16)
    command_id: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{1,8}$",
        description="reuse the same id when retrying: the MCU executes one id at most once",
    )
