"""SQLite (WAL) database under storage.path, with recovery from a corrupt or unusable file."""

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


class Store:
    """One shared SQLite connection guarded by a lock; `synchronous=FULL` so a commit survives power loss.

    Why one connection: writes are small and rare (events, counters), SQLite serialises writers
    anyway, and a single connection keeps the fd count flat over months of uptime.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.recovered_from: Path | None = None
        self._lock = threading.RLock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect_checked()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            logger.error("database %s is unusable (%s); moving it aside to %s and starting fresh",
                         self.path, exc, aside, extra=ev("db_recovered"))
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self.recovered_from = aside
            return self._connect_checked()

    def _connect_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no result'}")
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
