"""The health history: the scalar figures of each `health` sample in SQLite, a 10-minute rollup for long ranges,
both pruned to their retention, and the `history/health` query.

Why two tables: at the default 10 s interval 90 days are ~780,000 samples (~100 MB, and a second to average on
a Pi). The samples are kept `history_full_days` (7 by default) for close looks; the rollup (one row per 10
minutes: worst status, mean figures, lowest score) keeps `history_days` (90) in ~13,000 rows, so any range
answers in milliseconds.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..clock import CLOCK_SANE_AFTER
from ..history import RangeArgs, TimeRange, bucket_s, bucketed, rounded
from ..store import Store

logger = logging.getLogger(__name__)

ROLLUP_S = 600.0
"""Width of one rollup row."""
RAW_MAX_ROWS = 20_000
"""A range that would average more samples than this is answered from the rollup."""
STATUS_RANK = {"ok": 0, "warn": 1, "critical": 2}
STATUS_OF_RANK = {rank: status for status, rank in STATUS_RANK.items()}

FIGURES: dict[str, tuple[str, ...]] = {
    "score": ("score",),
    "cpu_pct": ("cpu", "percent"),
    "load_1": ("cpu", "load_1"),
    "memory_pct": ("memory", "percent"),
    "swap_pct": ("swap", "percent"),
    "disk_pct": ("disk", "storage", "percent"),
    "cpu_temp_c": ("temperatures", "cpu_c"),
    "gpu_temp_c": ("temperatures", "gpu_c"),
    "gpu_load_pct": ("gpu", "load_pct"),
    "gpu_memory_pct": ("gpu", "memory_pct"),
    "rss_mb": ("process", "rss_mb"),
    "net_sent_bps": ("network", "sent_bytes_per_s"),
    "net_recv_bps": ("network", "recv_bytes_per_s"),
}
"""The scalar figures kept per sample: column name -> path in the `health` state (None where absent)."""

_COLS = ", ".join(f"{name} REAL" for name in FIGURES)
_NAMES = ", ".join(FIGURES)
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS health_history (ts REAL PRIMARY KEY, status INTEGER NOT NULL, {_COLS}) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS health_rollup (ts REAL PRIMARY KEY, samples INTEGER NOT NULL, status INTEGER NOT NULL, "
    f"min_score REAL, {_COLS}) WITHOUT ROWID",
)
_INSERT = (f"INSERT OR REPLACE INTO health_history (ts, status, {_NAMES}) "
           f"VALUES (?, ?, {', '.join('?' for _ in FIGURES)})")
_ROLL_UP = (f"INSERT OR REPLACE INTO health_rollup (ts, samples, status, min_score, {_NAMES}) "
            f"SELECT AVG(ts), COUNT(*), MAX(status), MIN(score), {', '.join(f'AVG({n})' for n in FIGURES)} "
            f"FROM health_history WHERE ts >= ? AND ts < ? GROUP BY CAST(ts / {ROLLUP_S} AS INTEGER)")
_UNION = (f"(SELECT ts, samples, status, min_score, {_NAMES} FROM health_rollup WHERE ts < ? "
          f"UNION ALL SELECT ts, 1, status, score AS min_score, {_NAMES} FROM health_history WHERE ts >= ?)")
_SAMPLES = f"(SELECT ts, 1 AS samples, status, score AS min_score, {_NAMES} FROM health_history)"
_AGGREGATES = {"status": "MAX(status)", "samples": "SUM(samples)", "min_score": "MIN(min_score)",
               **{name: f"AVG({name})" for name in FIGURES}}


class HealthHistoryArgs(RangeArgs):
    """`history/health`: the health history over a time range."""


def _figure(state: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = state
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


class HealthHistory:
    """Writes each health sample and keeps the rollup and the retention; answers the history query."""

    def __init__(self, store: Store, *, days: float, full_days: float, interval_s: float) -> None:
        self.store = store
        self.days = days
        self.full_days = min(full_days, days)
        self.interval_s = interval_s
        self._rolled_until: float | None = None
        """Samples before this wall time are in the rollup (a multiple of ROLLUP_S)."""

    def setup(self) -> None:
        """Create the tables; find where the rollup ends."""
        with self.store.transaction() as db:
            for sql in SCHEMA:
                db.execute(sql)
        last = self.store.query("SELECT MAX(ts) FROM health_rollup")[0][0]
        self._rolled_until = None if last is None else (math.floor(float(last) / ROLLUP_S) + 1) * ROLLUP_S  # type: ignore[arg-type]

    def record(self, state: dict[str, Any], now_ts: float) -> None:
        """Store one published `health` state; roll up the 10-minute buckets it closes and prune (not before the wall
        clock is set)."""
        if now_ts < CLOCK_SANE_AFTER:
            return
        row = (now_ts, STATUS_RANK.get(str(state.get("status")), 0), *(_figure(state, p) for p in FIGURES.values()))
        boundary = math.floor(now_ts / ROLLUP_S) * ROLLUP_S
        with self.store.transaction() as db:
            db.execute(_INSERT, row)
            if self._rolled_until is None or self._rolled_until < boundary:
                start = self._rolled_until if self._rolled_until is not None else boundary - self.days * 86400.0
                db.execute(_ROLL_UP, (start, boundary))
                db.execute("DELETE FROM health_history WHERE ts < ?", (now_ts - self.full_days * 86400.0,))
                db.execute("DELETE FROM health_rollup WHERE ts < ?", (now_ts - self.days * 86400.0,))
                self._rolled_until = boundary

    def query(self, span: TimeRange, limit: int, now_ts: float) -> dict[str, Any]:
        """The history in `span`, at most `limit` buckets: worst status, mean figures and lowest score per bucket."""
        width = bucket_s(span, limit, self.interval_s)
        samples_only = (span.span_s / self.interval_s <= RAW_MAX_ROWS
                        and span.since >= now_ts - self.full_days * 86400.0)
        rollup = not samples_only and self._rolled_until is not None
        if not rollup:
            source, params = _SAMPLES, ()
        else:
            width = max(width, ROLLUP_S)
            source, params = _UNION, (self._rolled_until, self._rolled_until)
        rows = bucketed(self.store, source, _AGGREGATES, span, width, limit, source_params=params)
        points = []
        for row in rows:
            point = rounded(row, 2)
            point["status"] = STATUS_OF_RANK.get(int(row["status"]), "ok")
            points.append(point)
        return {**span.as_json(), "bucket_s": width, "source": "rollup" if rollup else "samples",
                "points": points}
