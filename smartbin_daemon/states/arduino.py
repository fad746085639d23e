"""The `arduino` component's retained state (`<root>/arduino`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.state import State
from ..runtime.status import ConnectionStatus


@dataclass(slots=True, kw_only=True)
class LinkCounters(State):
    """Serial link counters since the daemon started."""

    frames_in: int
    frames_out: int
    checksum_errors: int
    bad_frames: int
    errors: dict[str, int]
    timeouts: int
    retries: int
    naks: int
    reconnects: int
    write_errors: int


@dataclass(slots=True, kw_only=True)
class ArduinoState(State):
    """The link, the firmware's handshake, the latest telemetry and the counters."""

    status: ConnectionStatus
    connected: bool
    port: str | None
    firmware: str | None
    firmware_version: str | None
    protocol: int | None
    compartments: int | None
    sensors: list[str] = field(default_factory=list)
    last_seen: str | None
    rtt_ms: float | None
    distances_mm: list[int | None] = field(default_factory=list)
    lid: str | None
    weight_g: float | None
    temperature_c: float | None
    fault: str | None
    last_error: str | None
    counters: LinkCounters
