"""A self-pipe: another thread pokes it to end a worker's select() early without touching the worker's objects."""

from __future__ import annotations

import socket


class WakePipe:
    """Select on it beside a socket or serial port; `poke()` from any thread, `clear()` on the waiting thread."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        """For select()."""
        return self._r.fileno()

    def poke(self) -> None:
        """Wake the waiter (a full pipe means it is already woken)."""
        try:
            self._w.send(b"0")
        except OSError:
            pass

    def clear(self) -> None:
        """Consume the pokes, so the next select() waits again."""
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Release both ends; pokes after this are ignored."""
        self._r.close()
        self._w.close()
