"""sd_notify over the notify socket protocol: READY, STATUS, WATCHDOG, STOPPING; a no-op without systemd."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Talks to systemd's NOTIFY_SOCKET (datagram, abstract names start with '@')."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (pid is None or pid == str(os.getpid())):
            try:
                self.watchdog_interval_s = int(usec) / 1_000_000 / 2
            except ValueError:
                logger.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        self._sock: socket.socket | None = None
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        """True when started by systemd with Type=notify (or a test posing as it)."""
        return self.address is not None

    def send(self, message: str) -> bool:
        """Send one notify datagram; never raises (a lost notification must not kill the daemon)."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), addr)
            return True
        except OSError as exc:
            logger.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str | None = None) -> None:
        """READY=1 (optionally with the first STATUS line)."""
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if status:
            self._last_status = status

    def status(self, text: str) -> None:
        """STATUS=<one human line>, sent only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """WATCHDOG=1 keep-alive."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """STOPPING=1."""
        self.send("STOPPING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
