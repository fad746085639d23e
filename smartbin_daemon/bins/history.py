"""The item history: one row per item outcome (written by the workflow in the outcome event's transaction), pruned
to `bins.workflow.history_days`, and the `history/counts` and `history/items` queries over it."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from ..clock import iso_utc
from ..config import TOPIC_NAME_RE
from ..history import MAX_POINTS, TimeRange, TimeRangeArgs
from ..runtime.commands import RequestError
from ..store import Store

ITEM_OUTCOMES = {"item_sorted": "sorted", "item_refused": "refused", "item_failed": "failed",
                 "item_interrupted": "interrupted"}
"""The events that end an item, and the outcome each records."""

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS item_history (item_id TEXT PRIMARY KEY, ts REAL NOT NULL, outcome TEXT NOT NULL, "
    "category TEXT, class_name TEXT, confidence REAL, uncertain INTEGER, compartment TEXT, confirmation TEXT, "
    "started_at TEXT, detection_id TEXT, snapshot TEXT, maintenance INTEGER)",
    "CREATE INDEX IF NOT EXISTS item_history_ts ON item_history (ts)",
)
_COLUMNS = ("item_id", "ts", "outcome", "category", "class_name", "confidence", "uncertain", "compartment",
            "confirmation", "started_at", "detection_id", "snapshot", "maintenance")
RECORD = (f"INSERT OR REPLACE INTO item_history ({', '.join(_COLUMNS)}) "
          f"VALUES ({', '.join('?' for _ in _COLUMNS)})")
PERIOD_S = {"hour": 3600, "day": 86400}
ItemsLimit = Field(default=50, ge=1, le=MAX_POINTS, description="at most this many items, newest first")
Filter = Field(default=None, pattern=TOPIC_NAME_RE.pattern, max_length=64)


class CountsArgs(TimeRangeArgs):
    """`history/counts`: items per hour or day, per category, compartment or outcome."""

    period: Literal["hour", "day"] = Field(default="hour", description="UTC hours or days")
    by: Literal["category", "compartment", "outcome"] = "category"


class ItemsArgs(TimeRangeArgs):
    """`history/items`: the last items with their decision, outcome and snapshot."""

    limit: int = ItemsLimit
    category: str | None = Filter
    compartment: str | None = Filter
    outcome: Literal["sorted", "refused", "failed", "interrupted"] | None = None


def record_params(event_type: str, data: dict[str, Any], now_ts: float) -> tuple[object, ...] | None:
    """The item_history row of an outcome event (None: the event ends no item)."""
    outcome = ITEM_OUTCOMES.get(event_type)
    if outcome is None or not data.get("item_id"):
        return None
    confirmation = data.get("confirmation")
    if data.get("confirmed") is False:
        confirmation = "unconfirmed"
    return (data["item_id"], now_ts, outcome, data.get("category"), data.get("class_name"), data.get("confidence"),
            _flag(data.get("uncertain")), data.get("compartment"), confirmation, data.get("started_at"),
            data.get("detection_id"), data.get("snapshot"), _flag(data.get("maintenance")))


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def prune(store: Store, now_ts: float, days: float) -> None:
    """Forget items older than the retention."""
    store.execute("DELETE FROM item_history WHERE ts < ?", (now_ts - days * 86400.0,))


def counts(store: Store, span: TimeRange, period: str, by: str) -> dict[str, Any]:
    """Items per UTC period and key in `span`: all outcomes (`items`) and the sorted ones (`sorted`)."""
    width = PERIOD_S[period]
    first, last = math.floor(span.since / width), math.floor(span.until / width)
    if last - first + 1 > MAX_POINTS:
        raise RequestError(f"args.period: {last - first + 1} {period}s in the range, more than {MAX_POINTS}; "
                           f"ask per day or for a shorter range")
    rows = store.query(
        f"SELECT CAST(ts / ? AS INTEGER) AS p, {by}, COUNT(*), SUM(outcome = 'sorted') FROM item_history "
        f"WHERE ts >= ? AND ts <= ? GROUP BY p, {by} ORDER BY p, {by}", (width, span.since, span.until))
    out = [{"period": iso_utc(int(p) * width), by: key, "items": int(n), "sorted": int(s or 0)}  # type: ignore[call-overload]
           for p, key, n, s in rows]
    totals: dict[str, int] = {}
    for row in out:
        totals[str(row[by])] = totals.get(str(row[by]), 0) + int(row["items"])
    return {**span.as_json(), "period": period, "by": by, "rows": out, "totals": totals}


def items(store: Store, span: TimeRange | None, args: ItemsArgs) -> dict[str, Any]:
    """The newest items (at most args.limit) in `span` (None: all kept), filtered by category, compartment, outcome."""
    where, params = ["1"], []  # type: ignore[var-annotated]
    if span is not None:
        where.append("ts >= ? AND ts <= ?")
        params += [span.since, span.until]
    for column in ("category", "compartment", "outcome"):
        value = getattr(args, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = store.query(f"SELECT {', '.join(_COLUMNS)} FROM item_history WHERE {' AND '.join(where)} "
                       f"ORDER BY ts DESC LIMIT ?", (*params, args.limit))
    listed = []
    for row in rows:
        fields = dict(zip(_COLUMNS, row))
        item = {"at": iso_utc(float(fields.pop("ts"))), **fields}  # type: ignore[arg-type]
        for flag in ("uncertain", "maintenance"):
            item[flag] = None if item[flag] is None else bool(item[flag])
        listed.append(item)
    return {**(span.as_json() if span is not None else {}), "count": len(listed), "items": listed}
