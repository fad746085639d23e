"""Connection statuses, defined once: the workers that hold a connection publish them, consumers compare them."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A str Enum whose str() and format() give its value, as enum.StrEnum does from Python 3.11 on."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ConnectionStatus(StrEnum):
    """The `status` of a component that holds a connection (mqtt, arduino, camera); the JSON strings are the contract."""

    CONNECTED = "connected"
    CONNECTING = "connecting"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    STALE = "stale"
    """Connected, but the peer fell silent."""
    INCOMPATIBLE = "incompatible"
    """The peer speaks another protocol version."""
    AUTH_FAILED = "auth_failed"
    ENDED = "ended"
    """A finite source (a video file without loop) is over."""


CONNECTED = ConnectionStatus.CONNECTED
CONNECTING = ConnectionStatus.CONNECTING
DISCONNECTED = ConnectionStatus.DISCONNECTED
RECONNECTING = ConnectionStatus.RECONNECTING
STALE = ConnectionStatus.STALE
INCOMPATIBLE = ConnectionStatus.INCOMPATIBLE
AUTH_FAILED = ConnectionStatus.AUTH_FAILED
ENDED = ConnectionStatus.ENDED
