"""History requests shared by the fill tracker, the health monitor and the workflow: the time-range arguments,
their resolution to wall-clock seconds, and downsampling by time bucket in SQL.

Why in SQL: 90 days of history is tens of thousands of rows per series; SQLite averages them per bucket in a
few milliseconds, where fetching them into Python would not fit the 200 ms a dashboard may wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .clock import iso_utc
from .runtime.commands import RequestError
from .store import Store

MAX_POINTS = 500
"""The most rows one history answer carries (points, periods or items)."""
DEFAULT_HOURS = 24.0
MAX_HOURS = 3650 * 24.0


class TimeRangeArgs(BaseModel):
    """A time range: since/until (ISO-8601 or Unix seconds), or the last `hours`."""

    model_config = ConfigDict(extra="forbid")
    since: datetime | None = Field(default=None, description="start (ISO-8601, UTC when no offset, or Unix seconds); "
                                                             "default: until minus hours")
    until: datetime | None = Field(default=None, description="end (ISO-8601 or Unix seconds); default: now")
    hours: float | None = Field(default=None, gt=0, le=MAX_HOURS,
                                description=f"the range's length when since is not given; default {DEFAULT_HOURS:g}")

    @property
    def given(self) -> bool:
        """Whether any bound was given."""
        return self.since is not None or self.until is not None or self.hours is not None


class RangeArgs(TimeRangeArgs):
    """A time range and at most `limit` points."""

    limit: int = Field(default=MAX_POINTS, ge=1, le=MAX_POINTS, description="at most this many points (downsampled)")


@dataclass(frozen=True)
class TimeRange:
    """A resolved range in wall seconds (Unix time), since < until."""

    since: float
    until: float

    @property
    def span_s(self) -> float:
        """Its length in seconds."""
        return self.until - self.since

    def as_json(self) -> dict[str, str]:
        """`{"since", "until"}` as ISO UTC."""
        return {"since": iso_utc(self.since), "until": iso_utc(self.until)}


def _seconds(value: datetime) -> float:
    """Unix seconds of a datetime; a naive one is UTC."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)).timestamp()


def resolve_range(args: TimeRangeArgs, now: float) -> TimeRange:
    """The range the args ask for; a RequestError naming the field when it is inverted or over-specified."""
    if args.since is not None and args.hours is not None:
        raise RequestError("args.hours: give args.since or args.hours, not both")
    until = now if args.until is None else _seconds(args.until)
    if args.since is not None:
        since = _seconds(args.since)
    else:
        since = until - (DEFAULT_HOURS if args.hours is None else args.hours) * 3600.0
    if since >= until:
        raise RequestError(f"args.since: the range is empty or inverted ({iso_utc(since)} is not before "
                           f"{iso_utc(until)})")
    return TimeRange(since, until)


def bucket_s(span: TimeRange, limit: int, resolution_s: float) -> float:
    """The bucket width that fits the range into `limit` points, never finer than the series' own resolution."""
    return max(float(resolution_s), math.ceil(span.span_s / limit))


def bucketed(db: Store, source: str, columns: dict[str, str], span: TimeRange, width_s: float, limit: int,
             where: str = "", params: tuple[object, ...] = (),
             source_params: tuple[object, ...] = ()) -> list[dict[str, Any]]:
    """One row per non-empty bucket of `width_s` from span.since: `at` (the mean ts) and each named aggregate.

    `source` is a table or a sub-select (with `source_params`) with a `ts` column; `columns` maps an output name to an SQL aggregate
    (e.g. `{"fill_pct": "AVG(fill_pct)"}`). At most `limit` rows, oldest first.
    """
    select = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
    condition = f"ts >= ? AND ts <= ?{' AND ' + where if where else ''}"
    sql = (f"SELECT MIN(?, CAST((ts - ?) / ? AS INTEGER)) AS bucket, AVG(ts) AS at, {select} FROM {source} "
           f"WHERE {condition} GROUP BY bucket ORDER BY bucket")
    rows = db.query(sql, (limit - 1, span.since, width_s, *source_params, span.since, span.until, *params))
    names = ["at", *columns]
    return [dict(zip(names, row[1:])) for row in rows]


def rounded(row: dict[str, Any], digits: int = 2) -> dict[str, Any]:
    """A history row as answered: `at` as ISO UTC, floats rounded."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "at":
            out[key] = iso_utc(float(value))
        elif isinstance(value, float):
            out[key] = round(value, digits)
        else:
            out[key] = value
    return out
