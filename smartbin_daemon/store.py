"""SQLite (WAL) database under storage.path, with recovery from a corrupt, locked or otherwise unusable file."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .logs import ev

logger = logging.getLogger(__name__)

DB_NAME = "smartbin.db"

BUSY_TIMEOUT_S = 5.0
"""How long one statement waits for another process's lock before it fails (SQLite's busy timeout).

At start-up this bounds the wait for a locked file: the first statement that needs the lock (at the
latest the write probe) fails after it, and the file is moved aside. 5 s is far inside systemd's
TimeoutStartSec (120 s, which must also cover loading the model) and long enough for a short-lived
reader or an `sqlite3 .backup` to finish."""

_LOCK_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED")


def _why_unusable(exc: sqlite3.Error) -> str:
    """`locked` when another process holds the file, else `corrupt`."""
    name = getattr(exc, "sqlite_errorname", "")
    if any(name.startswith(code) for code in _LOCK_ERRORS) or "locked" in str(exc):
        return "locked"
    return "corrupt"


class Store:
    """One shared SQLite connection guarded by a lock; `synchronous=FULL` so a commit survives power loss.

    Why one connection: writes are small and rare (events, counters), SQLite serialises writers
    anyway, and a single connection keeps the fd count flat over months of uptime.

    Why a database that is locked at start is moved aside like a corrupt one: the daemon cannot run
    without writing (every event goes through the outbox), and a lock held across a restart is never
    a healthy state (systemd runs one daemon; smartbinctl does not write). Waiting for it would keep
    the bin down; the old file is kept next to the new one for analysis, and `db_recovered` says so.
    """

    def __init__(self, path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.recovered_from: Path | None = None
        self.recovered_reason: str | None = None
        """`corrupt` or `locked` when the file was moved aside at start."""
        self._lock = threading.RLock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            return self._connect_checked()
        except sqlite3.DatabaseError as exc:
            reason = _why_unusable(exc)
            aside = self._aside_name(reason)
            logger.error("database %s is unusable (%s: %s, after %.1fs); moving it aside to %s and starting fresh",
                         self.path, reason, exc, time.monotonic() - started, aside, extra=ev("db_recovered"))
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self.recovered_from = aside
            self.recovered_reason = reason
            return self._connect_checked()

    def _aside_name(self, reason: str) -> Path:
        """`smartbin.db.<reason>-<UTC stamp>`, with a counter if that name is taken."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.{reason}-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.{reason}-{stamp}-{n}")
            n += 1
        return aside

    def _connect_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no result'}")
            # Reading works even while another process holds the write lock (WAL): make sure we can write.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`with store.transaction() as db:` runs statements atomically under the lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a read query and return all rows."""
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """Run one statement in autocommit mode."""
        with self._lock:
            self._conn.execute(sql, params)

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()
