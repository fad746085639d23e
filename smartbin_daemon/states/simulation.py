"""The `simulation` component's retained state (`<root>/simulation`, simulation only)."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.state import State


@dataclass(slots=True, kw_only=True)
class SimulationState(State):
    """Simulated items shown so far, the current sample and its expected category."""

    items: int
    samples: int
    current: str | None
    expected_category: str | None
    interval_s: float
    emptied: int
