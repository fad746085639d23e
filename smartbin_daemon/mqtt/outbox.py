"""Durable event outbox: every event is in SQLite before anyone hears of it, and leaves only on PUBACK."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..clock import iso_utc
from ..logs import ev
from ..runtime.bus import Event
from ..store import Store

logger = logging.getLogger(__name__)

PLAUSIBLE_EPOCH = 1_577_836_800.0  # 2020-01-01: older wall stamps come from a Pi clock not yet set by NTP

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    component TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredEvent:
    """An event as held in the outbox, with its delivery sequence number."""

    seq: int
    id: str
    type: str
    component: str
    ts: float
    data: dict[str, Any]

    def payload(self, device_id: str) -> bytes:
        """The JSON published on `<root>/event/<type>` (same bytes on every replay)."""
        body = {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "ts": iso_utc(self.ts),
            "device": device_id,
            "component": self.component,
            "data": self.data,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


class Outbox:
    """Ordered, bounded, durable event queue (thread-safe; shares the daemon's Store)."""

    def __init__(self, store: Store, max_events: int = 100_000, max_age_days: float = 30.0) -> None:
        self.store = store
        self.max_events = max_events
        self.max_age_s = max_age_days * 86400.0
        self._lock = threading.Lock()
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                store.execute(statement)
        self._count = int(str(store.query("SELECT COUNT(*) FROM outbox")[0][0]))

    # -- writing ----------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Persist one event (durable on return), enforcing the size bound by dropping the oldest."""
        data = json.dumps(event.data, separators=(",", ":"), sort_keys=True, default=str)
        with self._lock, self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO outbox (id, type, component, ts, data) VALUES (?, ?, ?, ?, ?)",
                (event.id, event.type, event.component, event.ts, data),
            )
            self._count += 1
            if self._count > self.max_events:
                excess = self._count - self.max_events
                db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,))
                self._add_dropped(db, excess, "size")
                self._count -= excess

    def prune_expired(self, now: float | None = None) -> int:
        """Drop events older than the age bound (only those with a plausible wall stamp); returns how many."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock, self.store.transaction() as db:
            cur = db.execute("DELETE FROM outbox WHERE ts < ? AND ts > ?", (cutoff, PLAUSIBLE_EPOCH))
            n = cur.rowcount or 0
            if n:
                self._add_dropped(db, n, "age")
                self._count -= n
        return n

    def _add_dropped(self, db: Any, n: int, reason: str) -> None:
        for key in ("dropped", f"dropped_{reason}"):
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
                (key, str(n)),
            )
        logger.warning("outbox full/expired: dropped %d oldest event(s) (%s bound)", n, reason, extra=ev("outbox_dropped"))

    # -- reading / acknowledging ------------------------------------------------

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[StoredEvent]:
        """Oldest undelivered events with seq > after_seq."""
        rows = self.store.query(
            "SELECT seq, id, type, component, ts, data FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        out: list[StoredEvent] = []
        for seq, id_, type_, component, ts, data in rows:
            try:
                payload = json.loads(str(data))
            except ValueError:
                payload = {"_corrupt": str(data)[:200]}
            out.append(StoredEvent(int(str(seq)), str(id_), str(type_), str(component), float(str(ts)), payload))
        return out

    def ack(self, seq: int) -> None:
        """The broker acknowledged this event: forget it."""
        with self._lock, self.store.transaction() as db:
            cur = db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._count -= cur.rowcount or 0

    def __len__(self) -> int:
        return self._count

    def dropped(self) -> dict[str, int]:
        """Total events dropped by the bounds, by reason."""
        rows = self.store.query("SELECT key, value FROM meta WHERE key LIKE 'dropped%'")
        return {str(k): int(str(v)) for k, v in rows}

    def oldest_age_s(self) -> float | None:
        """Age of the oldest undelivered event in seconds (wall clock), or None when empty."""
        rows = self.store.query("SELECT MIN(ts) FROM outbox")
        if not rows or rows[0][0] is None:
            return None
        return max(0.0, time.time() - float(rows[0][0]))  # type: ignore[arg-type]
