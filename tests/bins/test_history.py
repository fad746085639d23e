"""The fill and item history queries on a real SQLite store: downsampling, ranges, limits, filters, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartbin_daemon.bins import history
from smartbin_daemon.bins.history import CountsArgs, ItemsArgs, counts, items, record_params
from smartbin_daemon.bins.tracker import SCHEMA as FILL_SCHEMA
from smartbin_daemon.bins.tracker import fill_history
from smartbin_daemon.history import TimeRange
from smartbin_daemon.runtime.commands import RequestError
from smartbin_daemon.store import Store

NOW = 1_790_035_200.0  # 2026-09-22T00:00:00Z
DAY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "smartbin.db")
    with s.transaction() as db:
        for sql in (*FILL_SCHEMA, *history.SCHEMA):
            db.execute(sql)
    return s


def add_fill(store: Store, compartment: str, points: list[tuple[float, float]]) -> None:
    with store.transaction() as db:
        db.executemany("INSERT INTO fill_history (compartment, ts, fill_pct) VALUES (?, ?, ?)",
                       [(compartment, ts, pct) for ts, pct in points])


def test_a_week_of_fill_is_downsampled_to_the_limit_with_mean_min_and_max(store: Store) -> None:
    week = [(NOW - 7 * DAY + i * 300, (i % 288) / 288 * 90) for i in range(7 * 288)]  # fills up, emptied daily
    add_fill(store, "paper", week)
    add_fill(store, "recycling", [(NOW - 60, 50.0)])
    out = fill_history(store, "paper", TimeRange(NOW - 7 * DAY, NOW), 100, 300)
    points = out["points"]
    assert out["compartment"] == "paper" and out["bucket_s"] == 6048
    assert len(points) == 100
    assert sum(p["samples"] for p in points) == len(week), "only this compartment's points"
    assert all(p["min_pct"] <= p["fill_pct"] <= p["max_pct"] for p in points)
    assert any(p["max_pct"] - p["min_pct"] > 80 for p in points), "an emptying inside a bucket shows in min/max"
    assert points[0]["at"].endswith("Z") and out["since"] < points[0]["at"] < out["until"]


def test_a_short_range_returns_each_sample_and_outside_points_are_left_out(store: Store) -> None:
    add_fill(store, "paper", [(NOW - 3600 + i * 300, float(i)) for i in range(12)] + [(NOW + 3600, 99.0)])
    out = fill_history(store, "paper", TimeRange(NOW - 3600, NOW), 500, 300)
    assert [p["fill_pct"] for p in out["points"]] == [float(i) for i in range(12)]
    assert out["bucket_s"] == 300, "never finer than the recording interval"
    assert fill_history(store, "paper", TimeRange(NOW - 3 * DAY, NOW - 2 * DAY), 500, 300)["points"] == []


def sorted_item(item_id: str, category: str, compartment: str, **extra: object) -> dict[str, object]:
    return {"item_id": item_id, "detection_id": f"det-{item_id}", "class_name": f"{category}_thing", "category": category,
            "confidence": 0.9, "uncertain": False, "compartment": compartment, "started_at": "2026-09-21T10:00:00.000Z",
            "snapshot": f"/var/lib/smartbin/evidence/{item_id}.jpg", "maintenance": False, "outcome": "sorted",
            "confirmation": "drop", "confirmed": True, **extra}


def record(store: Store, event: str, data: dict[str, object], ts: float) -> None:
    params = record_params(event, data, ts)
    assert params is not None
    store.execute(history.RECORD, params)


def test_only_outcome_events_make_an_item_row_and_an_unconfirmed_drop_says_so() -> None:
    assert record_params("item_sorted", sorted_item("a", "paper_cardboard", "paper"), NOW) is not None
    assert record_params("bin_level", {"item_id": "x"}, NOW) is None
    assert record_params("maintenance", {"on": True}, NOW) is None
    params = record_params("item_sorted", sorted_item("b", "metal", "recycling", confirmation="timeout",
                                                       confirmed=False), NOW)
    assert params is not None and "unconfirmed" in params


def test_counts_per_hour_and_day_by_category_compartment_and_outcome(store: Store) -> None:
    record(store, "item_sorted", sorted_item("a", "plastic", "recycling"), NOW - 3 * 3600 + 10)
    record(store, "item_sorted", sorted_item("b", "plastic", "recycling"), NOW - 3 * 3600 + 20)
    record(store, "item_sorted", sorted_item("c", "metal", "recycling"), NOW - 3600 + 5)
    record(store, "item_refused", {**sorted_item("d", "paper_cardboard", "paper"), "outcome": "refused"}, NOW - DAY - 5)
    day = TimeRange(NOW - DAY, NOW)
    hourly = counts(store, day, "hour", "category")
    assert hourly["rows"] == [
        {"period": "2026-09-21T21:00:00.000Z", "category": "plastic", "items": 2, "sorted": 2},
        {"period": "2026-09-21T23:00:00.000Z", "category": "metal", "items": 1, "sorted": 1},
    ]
    assert hourly["totals"] == {"plastic": 2, "metal": 1}
    two_days = counts(store, TimeRange(NOW - 2 * DAY, NOW - 1), "day", "compartment")
    assert [(r["period"][:10], r["compartment"], r["items"], r["sorted"]) for r in two_days["rows"]] == [
        ("2026-09-20", "paper", 1, 0), ("2026-09-21", "recycling", 3, 3)]
    assert counts(store, day, "hour", "outcome")["totals"] == {"sorted": 3}
    assert counts(store, TimeRange(NOW + DAY, NOW + 2 * DAY), "day", "category")["rows"] == []


def test_counts_refuse_more_than_500_periods(store: Store) -> None:
    with pytest.raises(RequestError, match=r"args\.period: 721 hours"):
        counts(store, TimeRange(NOW - 30 * DAY, NOW), "hour", "category")
    assert counts(store, TimeRange(NOW - 90 * DAY, NOW), "day", "category")["rows"] == []


def test_the_last_items_newest_first_with_decision_outcome_and_snapshot(store: Store) -> None:
    for i in range(30):
        record(store, "item_sorted", sorted_item(f"i{i:02d}", "plastic" if i % 2 else "paper_cardboard",
                                                 "recycling" if i % 2 else "paper"), NOW - 3600 + i)
    record(store, "item_interrupted", {"item_id": "cut", "category": "metal", "compartment": "recycling",
                                       "maintenance": True, "note": "maintenance mode"}, NOW)
    out = items(store, None, ItemsArgs(limit=5))
    assert out["count"] == 5
    assert [i["item_id"] for i in out["items"]] == ["cut", "i29", "i28", "i27", "i26"]
    cut, newest_sorted = out["items"][0], out["items"][1]
    assert (cut["outcome"], cut["maintenance"], cut["snapshot"]) == ("interrupted", True, None)
    assert newest_sorted == {
        "at": "2026-09-21T23:00:29.000Z", "item_id": "i29", "outcome": "sorted", "category": "plastic",
        "class_name": "plastic_thing", "confidence": 0.9, "uncertain": False, "compartment": "recycling",
        "confirmation": "drop", "started_at": "2026-09-21T10:00:00.000Z", "detection_id": "det-i29",
        "snapshot": "/var/lib/smartbin/evidence/i29.jpg", "maintenance": False}
    paper = items(store, TimeRange(NOW - 3600, NOW - 3600 + 10), ItemsArgs(limit=500, compartment="paper"))
    assert [i["item_id"] for i in paper["items"]] == ["i10", "i08", "i06", "i04", "i02", "i00"]
    assert items(store, None, ItemsArgs(outcome="interrupted"))["count"] == 1
    assert items(store, TimeRange(NOW + 1, NOW + 2), ItemsArgs())["items"] == []


def test_items_older_than_the_retention_are_pruned(store: Store) -> None:
    for age_days in (100, 91, 89, 1):
        record(store, "item_sorted", sorted_item(f"d{age_days}", "plastic", "recycling"), NOW - age_days * DAY)
    history.prune(store, NOW, 90)
    assert [i["item_id"] for i in items(store, None, ItemsArgs())["items"]] == ["d1", "d89"]


def test_counts_and_items_arguments_are_bounded() -> None:
    from pydantic import ValidationError
    for bad in ({"limit": 501}, {"compartment": "a/b"}, {"outcome": "lost"}):
        with pytest.raises(ValidationError):
            ItemsArgs.model_validate(bad)
    for bad in ({"period": "week"}, {"by": "colour"}, {"limit": 5}):
        with pytest.raises(ValidationError):
            CountsArgs.model_validate(bad)
