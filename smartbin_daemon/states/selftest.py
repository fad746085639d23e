"""The self-test's retained result (`<root>/selftest`), published by the `workflow` component that runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..runtime.state import State
from ..runtime.status import StrEnum

PARTS = ("ultrasonic", "drop", "scale", "lid", "routes", "led", "buzzer", "camera", "detector")
"""Every part the self-test knows, in the order it runs them."""
MOVING = frozenset({"lid", "routes", "led", "buzzer"})
"""Parts that move something or make a sound: run only with `move` and while the workflow is held."""
MAX_RUN_S = 120.0
"""The longest a whole run may take (the MQTT worker and smartbinctl wait this long for its answer)."""


class PartStatus(StrEnum):
    """One check's outcome."""

    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


class SelfTestStatus(StrEnum):
    """The whole run: running, or its result (fail when any check failed)."""

    RUNNING = "running"
    PASS = "pass"
    FAIL = "fail"


@dataclass(slots=True, kw_only=True)
class PartResult(State):
    """One check: which part (and which channel, compartment or device of it), its outcome and what it measured."""

    part: str
    name: str
    status: PartStatus
    value: Any = None
    unit: str | None = None
    detail: str | None = None
    duration_ms: float | None = None
    at: str | None = None


@dataclass(slots=True, kw_only=True)
class SelfTestState(State):
    """The latest self-test: overall status, when, what it was allowed to move, and every check."""

    status: SelfTestStatus | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    move: bool = False
    authority: str | None = None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    parts: list[PartResult] = field(default_factory=list)
