"""The `workflow` component's retained state (`<root>/workflow`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..runtime.state import State
from ..runtime.status import StrEnum


class SortingState(StrEnum):
    """The sorting state machine's state."""

    IDLE = "idle"
    ITEM_PRESENT = "item_present"
    CLASSIFYING = "classifying"
    ROUTING = "routing"
    CONFIRMING = "confirming"
    ERROR = "error"
    BLOCKED = "blocked"
    MAINTENANCE = "maintenance"


@dataclass(slots=True, kw_only=True)
class ItemInFlight(State):
    """The item being sorted."""

    item_id: str
    category: str | None
    compartment: str | None
    route_attempts: int


@dataclass(slots=True, kw_only=True)
class SortingCounts(State):
    """Items by outcome since the daemon started."""

    sorted: int = 0
    residual: int = 0
    fallback: int = 0
    refused: int = 0
    failed: int = 0
    interrupted: int = 0
    unconfirmed: int = 0


@dataclass(slots=True, kw_only=True)
class WorkflowState(State):
    """The state machine, maintenance, the item in flight, faults, vision, levels and counts."""

    state: SortingState
    maintenance: bool = False
    maintenance_pending: bool = False
    item: ItemInFlight | None
    error: dict[str, Any] | None
    blocked: dict[str, Any] | None
    vision: str
    degraded_policy: str
    levels: dict[str, str | None] = field(default_factory=dict)
    counts: SortingCounts = field(default_factory=SortingCounts)
    last_item: dict[str, Any] | None
    """The last item's outcome event data (plus `at`), or the `item_interrupted` data."""
