"""The `health` component's retained state (`<root>/health`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime.state import State
from ..runtime.status import StrEnum


class HealthStatus(StrEnum):
    """The overall health verdict."""

    OK = "ok"
    WARN = "warn"
    CRITICAL = "critical"


@dataclass(slots=True, kw_only=True)
class HealthState(State):
    """Verdict and score, then the sampled metrics as health/sources.py reads them (sections kept as dicts)."""

    status: HealthStatus
    score: int
    conditions: list[str]
    cpu: dict[str, Any]
    memory: dict[str, Any]
    swap: dict[str, Any]
    disk: dict[str, Any]
    temperatures: dict[str, Any]
    uptime_s: int
    network: dict[str, Any]
    process: dict[str, Any]
    pi: dict[str, Any] | None
    gpu: dict[str, Any]
    power: dict[str, Any] | None
    system: dict[str, Any] | None = None
    clock: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    ts: str
