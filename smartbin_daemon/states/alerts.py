"""The `alerts` component's retained state (`<root>/alerts`): the alerts active now and the webhook's counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.state import State


@dataclass(slots=True, kw_only=True)
class ActiveAlert(State):
    """One active alert: raised by `source` with `code`, not cleared yet."""

    id: str
    """The id of the `event/alert` that raised it (the latest one when it was raised again)."""
    source: str
    code: str
    severity: str
    since: str
    """When it became active (ISO-8601 UTC, the bin's wall clock)."""
    message: str


@dataclass(slots=True, kw_only=True)
class AlertCounts(State):
    """Active alerts per severity."""

    warning: int = 0
    critical: int = 0
    total: int = 0


@dataclass(slots=True, kw_only=True)
class WebhookCounters(State):
    """The webhook sender: whether one is configured, and what became of the alerts it was given."""

    enabled: bool = False
    min_severity: str = "critical"
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    dropped: int = 0
    retries: int = 0
    last_sent_at: str | None = None
    last_error: str | None = None


@dataclass(slots=True, kw_only=True)
class AlertsState(State):
    """The alerts active now (oldest first), their counts per severity, and the webhook."""

    active: list[ActiveAlert] = field(default_factory=list)
    counts: AlertCounts = field(default_factory=AlertCounts)
    webhook: WebhookCounters = field(default_factory=WebhookCounters)
    ts: str | None = None
