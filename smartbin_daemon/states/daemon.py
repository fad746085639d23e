"""The `daemon` component's retained state (`<root>/daemon`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime.state import State


@dataclass(slots=True, kw_only=True)
class Audit(State):
    """Privileged requests accepted (by signing key) and refused, and the keys in use."""

    privileged_accepted: dict[str, int]
    refused: int
    signing_keys: list[str]
    revoked_keys: list[str]


@dataclass(slots=True, kw_only=True)
class DaemonState(State):
    """Version, uptime, the worker table, pending restarts."""

    version: str
    pid: int
    started_at: str
    uptime_s: int
    workers: dict[str, dict[str, Any]]
    failed_workers: list[str]
    restart_required: list[str]
    bus_dropped: dict[str, int]
    audit: Audit
