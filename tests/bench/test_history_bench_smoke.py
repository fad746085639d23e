"""Smoke run of the history bench at quick size: the store is filled as described, every query is timed and
answers rows, and the round trip through a real daemon answers each request."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench import history


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """One quick bench run for the module."""
    return history.bench(quick=True)


def test_the_store_holds_the_history_the_daemon_keeps(figures: dict[str, Any]) -> None:
    rows = figures["rows"]
    assert figures["days"] == 3
    assert rows["fill_history"] == 3 * 3 * 288, "three compartments, a point every 300 s"
    assert rows["health_samples_written"] == 3 * 8640
    assert rows["health_history"] == rows["health_samples_written"] + 1, "all kept (< 7 days), and the record() that rolled up"
    assert 3 * 144 - 2 <= rows["health_rollup"] <= 3 * 144, "one rollup row per closed 10 minutes"
    assert rows["item_history"] == 3 * history.ITEMS_PER_DAY


def test_every_query_is_timed_and_judged_against_the_target(figures: dict[str, Any]) -> None:
    queries = figures["queries"]
    assert set(queries) == {"fill_3d", "fill_7d", "fill_24h", "health_3d", "health_7d", "health_24h",
                            "counts_3d_per_day_by_category", "counts_7d_per_hour_by_compartment", "items_last_500"}
    for name, q in queries.items():
        assert q["runs"] == 5 and 0 < q["median_ms"] <= q["p95_ms"] <= q["max_ms"], (name, q)
        assert q["rows"] > 0, name
        assert q["target_met"] is (q["p95_ms"] <= history.TARGET_MS)
    assert queries["items_last_500"]["rows"] == 500 and 490 <= queries["fill_3d"]["rows"] <= 500
    assert figures["target_met"] is all(q["target_met"] for q in queries.values())


def test_each_request_makes_the_round_trip_through_a_real_daemon(figures: dict[str, Any]) -> None:
    trips = figures["round_trip"]
    assert len(trips) == 5 and next(iter(trips)).startswith("ping")
    assert all(t["runs"] == 2 and 0 < t["median_ms"] < 20_000 for t in trips.values()), trips
