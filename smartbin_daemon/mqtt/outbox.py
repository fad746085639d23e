"""Durable event outbox: every event is in SQLite before anyone hears of it, and leaves only on PUBACK.

Timestamps of a bin whose clock is not set yet: a Pi without RTC boots at 1970 (or at a stale
fake-hwclock time) and NTP steps the clock once the network is up. Each event is stored with its
monotonic time and the kernel's boot id; an event stamped before the clock was set (`ts_source`
`unsynced`) that is still waiting here when the clock is set gets its `ts` recomputed as
`now_wall - (now_mono - event_mono)` (`ts_source` `corrected`). That is exact within one boot (the
monotonic clock never steps); an event from an earlier boot keeps its unsynced stamp.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import CLOCK_SANE_AFTER, clock_is_set, iso_utc
from ..clock import boot_id as current_boot_id
from ..logs import ev
from ..runtime.bus import Alert, Event
from ..store import Store

logger = logging.getLogger(__name__)

TS_CLOCK, TS_CORRECTED, TS_UNSYNCED = "clock", "corrected", "unsynced"
"""Where an event's `ts` came from: the (set) wall clock, monotonic time after the clock was set, or a
wall clock that was not set yet (the stamp is meaningless; the order of `seq` still holds)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    component TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    ts_source TEXT NOT NULL DEFAULT 'clock',
    mono REAL,
    boot TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_ADDED_COLUMNS = (
    ("ts_source", "TEXT NOT NULL DEFAULT 'clock'"),
    ("mono", "REAL"),
    ("boot", "TEXT"),
)
"""Columns newer than the first outbox schema; a database from before them is migrated at open."""


BACKLOG_CHECK_S = 5.0
"""How often the MQTT worker measures the outbox backlog (the age is a query)."""


class Backlog:
    """The `outbox_backlog` alert: too many events waiting, or the oldest waiting too long (the broker is out of
    reach, or refuses them). Raised once when a limit is reached, cleared below 90 % of the count and the age."""

    def __init__(self, max_events: int, max_age_s: float) -> None:
        self.max_events, self.max_age_s = max_events, max_age_s
        self.active = False
        self.oldest_age_s: float | None = None
        """The oldest waiting event's age at the last check (None: none, or no trustworthy stamp)."""
        self._checked_at: float | None = None

    def check(self, now: float, pending: int, oldest_age_s: Callable[[], float | None]) -> Alert | None:
        """At most every BACKLOG_CHECK_S (`now`: monotonic): the alert to raise or clear, else None."""
        if self._checked_at is not None and now - self._checked_at < BACKLOG_CHECK_S:
            return None
        self._checked_at = now
        age = oldest_age_s() if pending else None
        self.oldest_age_s = None if age is None else round(age, 1)
        over = [f"{pending} events waiting (limit {self.max_events})"] if pending >= self.max_events else []
        if age is not None and age >= self.max_age_s:
            over.append(f"the oldest waiting for {age / 60:.0f} min (limit {self.max_age_s / 60:.0f})")
        clear = pending < 0.9 * self.max_events and (age is None or age < 0.9 * self.max_age_s)
        if over and not self.active:
            self.active = True
            logger.warning("outbox backlog: %s", "; ".join(over), extra=ev("outbox_backlog"))
            return Alert("mqtt", "outbox_backlog", "warning",
                         f"event outbox backlog: {'; '.join(over)}; is the broker reachable?")
        if clear and self.active:
            self.active = False
            return Alert("mqtt", "outbox_backlog", "info", f"event outbox drained ({pending} waiting)", active=False)
        return None


@dataclass(frozen=True)
class StoredEvent:
    """An event as held in the outbox, with its delivery sequence number."""

    seq: int
    id: str
    type: str
    component: str
    ts: float
    data: dict[str, Any]
    ts_source: str = TS_CLOCK

    def payload(self, device_id: str) -> bytes:
        """The JSON published on `<root>/event/<type>` (same bytes on every replay unless `ts` was corrected)."""
        body = {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "ts": iso_utc(self.ts),
            "ts_source": self.ts_source,
            "device": device_id,
            "component": self.component,
            "data": self.data,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


class Outbox:
    """Ordered, bounded, durable event queue (thread-safe; shares the daemon's Store).

    `wall`, `mono` and `boot_id` are the clocks and the boot id (injectable for tests).
    """

    def __init__(self, store: Store, max_events: int = 100_000, max_age_days: float = 30.0, *,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 boot_id: str | None = None) -> None:
        self.store = store
        self.max_events = max_events
        self.max_age_s = max_age_days * 86400.0
        self._wall = wall
        self._mono = mono
        self.boot_id = boot_id if boot_id is not None else current_boot_id()
        self._lock = threading.Lock()
        with self._lock, store.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            self._migrate(db)
        self._count = int(str(store.query("SELECT COUNT(*) FROM outbox")[0][0]))
        self._correctable = self.boot_id is not None and bool(store.query(
            "SELECT 1 FROM outbox WHERE ts_source = ? AND boot = ? LIMIT 1", (TS_UNSYNCED, self.boot_id)))
        """Some events of this boot carry unsynced stamps that can be corrected once the clock is set."""

    @staticmethod
    def _migrate(db: Any) -> None:
        """Add the timestamp-source columns to an outbox from before them (its events cannot be corrected)."""
        have = {str(row[1]) for row in db.execute("PRAGMA table_info(outbox)").fetchall()}
        missing = [(name, decl) for name, decl in _ADDED_COLUMNS if name not in have]
        for name, decl in missing:
            db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        if missing:
            db.execute("UPDATE outbox SET ts_source = ? WHERE ts < ?", (TS_UNSYNCED, CLOCK_SANE_AFTER))
            logger.info("outbox: added column(s) %s", ", ".join(n for n, _ in missing))

    # -- writing ----------------------------------------------------------------

    def append(self, event: Event, also: Sequence[tuple[str, tuple[object, ...]]] = ()) -> None:
        """Persist one event (durable on return), enforcing the size bound by dropping the oldest.

        `also`: statements (sql, params) committed in the same transaction, so that a state change and the
        event reporting it survive a crash together or not at all (e.g. deleting the item an outcome ends).
        """
        data = json.dumps(event.data, separators=(",", ":"), sort_keys=True, default=str)
        source = TS_CLOCK if clock_is_set(event.ts) else TS_UNSYNCED
        with self._lock, self.store.transaction() as db:
            for sql, params in also:
                db.execute(sql, params)
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox (id, type, component, ts, data, ts_source, mono, boot) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.id, event.type, event.component, event.ts, data, source, self._mono(), self.boot_id),
            )
            self._count += cur.rowcount or 0
            if source == TS_UNSYNCED:
                self._correctable = self._correctable or self.boot_id is not None
            elif self._correctable:
                self._correct(db)
            if self._count > self.max_events:
                excess = self._count - self.max_events
                db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,))
                self._add_dropped(db, excess, "size")
                self._count -= excess

    def correct_timestamps(self) -> int:
        """Once the wall clock is set: restamp this boot's unsynced events from monotonic time; how many."""
        if not self._correctable or not clock_is_set(self._wall()):
            return 0
        with self._lock, self.store.transaction() as db:
            return self._correct(db)

    def _correct(self, db: Any) -> int:
        if not self._correctable:
            return 0
        wall, mono = self._wall(), self._mono()
        if not clock_is_set(wall):
            return 0
        rows = db.execute("SELECT seq, mono FROM outbox WHERE ts_source = ? AND boot = ? AND mono IS NOT NULL",
                          (TS_UNSYNCED, self.boot_id)).fetchall()
        db.executemany("UPDATE outbox SET ts = ?, ts_source = ? WHERE seq = ?",
                       [(wall - max(0.0, mono - float(m)), TS_CORRECTED, int(seq)) for seq, m in rows])
        self._correctable = False
        if rows:
            logger.info("the wall clock is set now: corrected the stamps of %d event(s) emitted before it was, "
                        "from monotonic time", len(rows))
        return len(rows)

    def prune_expired(self, now: float | None = None) -> int:
        """Drop events older than the age bound (only those with a trustworthy stamp); returns how many."""
        now = self._wall() if now is None else now
        if not clock_is_set(now):
            return 0
        cutoff = now - self.max_age_s
        with self._lock, self.store.transaction() as db:
            self._correct(db)
            cur = db.execute("DELETE FROM outbox WHERE ts < ? AND ts_source != ?", (cutoff, TS_UNSYNCED))
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
        """Oldest undelivered events with seq > after_seq (stamps corrected first if the clock is set now)."""
        self.correct_timestamps()
        rows = self.store.query(
            "SELECT seq, id, type, component, ts, data, ts_source FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        out: list[StoredEvent] = []
        for seq, id_, type_, component, ts, data, source in rows:
            try:
                payload = json.loads(str(data))
            except ValueError:
                payload = {"_corrupt": str(data)[:200]}
            out.append(StoredEvent(int(str(seq)), str(id_), str(type_), str(component), float(str(ts)), payload,
                                   str(source)))
        return out

    def ack(self, seq: int) -> None:
        """The broker acknowledged this event: forget it."""
        self.ack_many((seq,))

    def ack_many(self, seqs: Sequence[int]) -> None:
        """The broker acknowledged these events: forget them in one transaction (one fsync, not one each)."""
        with self._lock, self.store.transaction() as db:
            for start in range(0, len(seqs), 500):
                chunk = tuple(seqs[start:start + 500])
                cur = db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
                self._count -= cur.rowcount or 0

    def __len__(self) -> int:
        return self._count

    def dropped(self) -> dict[str, int]:
        """Total events dropped by the bounds, by reason."""
        rows = self.store.query("SELECT key, value FROM meta WHERE key LIKE 'dropped%'")
        return {str(k): int(str(v)) for k, v in rows}

    def discovery_topics(self) -> set[str]:
        """The HA discovery topics this bin last left a retained config on (kept across restarts)."""
        rows = self.store.query("SELECT value FROM meta WHERE key = 'discovery_topics'")
        try:
            topics = json.loads(str(rows[0][0])) if rows else []
        except ValueError:
            topics = []
        return {t for t in topics if isinstance(t, str)}

    def set_discovery_topics(self, topics: set[str]) -> None:
        """Remember the discovery topics holding a config now (the next start clears those it no longer has)."""
        self.store.execute("INSERT INTO meta (key, value) VALUES ('discovery_topics', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (json.dumps(sorted(topics)),))

    def oldest_age_s(self) -> float | None:
        """Age in seconds of the oldest undelivered event with a trustworthy stamp, or None (none, or no clock)."""
        self.correct_timestamps()
        now = self._wall()
        rows = self.store.query("SELECT MIN(ts) FROM outbox WHERE ts_source != ?", (TS_UNSYNCED,))
        if not rows or rows[0][0] is None or not clock_is_set(now):
            return None
        return max(0.0, now - float(rows[0][0]))  # type: ignore[arg-type]
