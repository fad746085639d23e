"""The `mqtt` component's retained state (`<root>/mqtt`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.state import State
from ..runtime.status import ConnectionStatus


@dataclass(slots=True, kw_only=True)
class OutboxCounts(State):
    """The durable event outbox: waiting, in flight, and what happened to the rest."""

    pending: int
    inflight: int
    sent: int
    acked: int
    rejected: int
    dropped: int
    dropped_by_size: int
    dropped_by_age: int
    oldest_age_s: float | None = None
    """Age of the oldest waiting event at the last backlog check (every 5 s); None: nothing waiting, or no clock."""


@dataclass(slots=True, kw_only=True)
class MqttState(State):
    """The broker connection, request counters and the outbox."""

    status: ConnectionStatus
    broker: str
    protocol: str
    tls: bool
    connected_since: str | None
    connects: int
    disconnects: int
    last_error: str | None
    requests: int
    request_errors: int
    requests_unauthorized: int
    requests_rate_limited: int
    requests_privileged: dict[str, int]
    outbox: OutboxCounts
