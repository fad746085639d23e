"""Connection statuses, defined once: the workers that hold a connection publish them, consumers compare them."""

from __future__ import annotations

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
