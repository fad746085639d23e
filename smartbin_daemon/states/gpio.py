"""The `gpio` component's retained state (`<root>/gpio`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..runtime.state import State


@dataclass(slots=True, kw_only=True)
class StatusLed(State):
    """The status LED's pattern and whether it shows a fault."""

    pattern: str | None
    fault: bool


@dataclass(slots=True, kw_only=True)
class GpioState(State):
    """Inputs and outputs on the header; None where the device is not configured."""

    pin_factory: str | None
    presence: bool | None
    door: str | None
    button: str | None
    lid: dict[str, Any] | None
    led: StatusLed | None
    buzzer: str | None
    distances: dict[str, float | None] = field(default_factory=dict)
    """Millimetres by compartment (the key is the compartment number as a string)."""
    counters: dict[str, int] = field(default_factory=dict)
