"""The shared history arguments: a time range resolved from since/until/hours, and downsampling by time bucket."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from smartbin_daemon.history import MAX_POINTS, RangeArgs, TimeRange, bucket_s, bucketed, resolve_range
from smartbin_daemon.runtime.commands import RequestError
from smartbin_daemon.store import Store

NOW = 1_790_000_000.0


def test_the_default_range_is_the_last_24_hours() -> None:
    span = resolve_range(RangeArgs(), NOW)
    assert (span.since, span.until) == (NOW - 86400, NOW)


def test_hours_counts_back_from_until_and_since_until_take_iso_or_unix_seconds() -> None:
    assert resolve_range(RangeArgs(hours=2, until=NOW), NOW + 999) == TimeRange(NOW - 7200, NOW)
    span = resolve_range(RangeArgs.model_validate({"since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00Z"}), NOW)
    assert (span.since, span.span_s) == (1767225600.0, 86400.0), "an ISO time without an offset is UTC"


@pytest.mark.parametrize("args, field", [
    ({"since": NOW, "until": NOW - 60}, "args.since"),
    ({"since": NOW, "until": NOW}, "args.since"),
    ({"since": NOW - 60, "hours": 1}, "args.hours"),
])
def test_an_inverted_empty_or_overspecified_range_is_refused_naming_the_field(args: dict[str, float], field: str) -> None:
    with pytest.raises(RequestError, match=field):
        resolve_range(RangeArgs.model_validate(args), NOW)


@pytest.mark.parametrize("args", [{"limit": MAX_POINTS + 1}, {"limit": 0}, {"hours": -1}, {"since": "yesterday"},
                                  {"bogus": 1}])
def test_out_of_bounds_arguments_fail_validation(args: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RangeArgs.model_validate(args)


def test_the_bucket_fits_the_limit_but_is_never_finer_than_the_series(tmp_path: Path) -> None:
    day = TimeRange(NOW - 86400, NOW)
    assert bucket_s(day, 500, 10) == 173  # ceil(86400 / 500)
    assert bucket_s(day, 500, 300) == 300
    store = Store(tmp_path / "h.db")
    store.execute("CREATE TABLE t (ts REAL, v REAL)")
    with store.transaction() as db:
        db.executemany("INSERT INTO t VALUES (?, ?)", [(NOW - 86400 + i * 10, i % 7) for i in range(8641)])
    rows = bucketed(store, "t", {"v": "AVG(v)", "n": "COUNT(*)"}, day, bucket_s(day, 500, 10), 500)
    assert len(rows) == 500, "every sample falls in one of exactly `limit` buckets, the last one included"
    assert sum(r["n"] for r in rows) == 8641
    assert all(day.since <= r["at"] <= day.until for r in rows)
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
    assert bucketed(store, "t", {"v": "AVG(v)"}, TimeRange(NOW + 1, NOW + 99), 1, 500) == [], "an empty range"
