"""The health history on a real SQLite store: every sample, a 10-minute rollup for long ranges, both bounded by
their retention; and `history/health` answered by the running health monitor."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.config import HealthConfig
from smartbin_daemon.health import HealthMonitor
from smartbin_daemon.health.history import ROLLUP_S, HealthHistory
from smartbin_daemon.history import TimeRange
from smartbin_daemon.runtime.bus import Bus, Request, Response
from smartbin_daemon.store import Store

from ..conftest import wait_until
from .test_health_monitor import LENIENT, sources

NOW = 1_790_035_200.0  # 2026-09-22T00:00:00Z
DAY = 86400.0


def health_state(i: int, *, gpu: bool = False, status: str = "ok") -> dict[str, Any]:
    """A published `health` state with figures that change with i."""
    return {"status": status, "score": 100 - i % 10, "cpu": {"percent": float(i % 100), "load_1": 0.5},
            "memory": {"percent": 40.0}, "swap": {"percent": 0.0}, "disk": {"storage": {"percent": 30.0}},
            "temperatures": {"cpu_c": 50.0, "gpu_c": 45.0 if gpu else None},
            "gpu": {"present": True, "load_pct": 20.0, "memory_pct": 10.0} if gpu else {"present": False},
            "process": {"rss_mb": 150.0}, "network": {"sent_bytes_per_s": None, "recv_bytes_per_s": 10.0}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "smartbin.db")


def fill(hist: HealthHistory, start: float, seconds: float, interval_s: float, **kw: Any) -> int:
    n = int(seconds / interval_s)
    for i in range(n):
        hist.record(health_state(i, **kw), start + i * interval_s)
    return n


def test_a_short_range_answers_from_the_samples_with_their_figures(store: Store) -> None:
    hist = HealthHistory(store, days=90, full_days=7, interval_s=10)
    hist.setup()
    fill(hist, NOW - 3600, 3600, 10, gpu=True)
    hist.record(health_state(5, status="critical"), NOW)
    out = hist.query(TimeRange(NOW - 3600, NOW), 60, NOW)
    assert out["source"] == "samples" and out["bucket_s"] == 60
    assert len(out["points"]) == 60
    assert sum(p["samples"] for p in out["points"]) == 361
    first, last = out["points"][0], out["points"][-1]
    assert set(first) >= {"at", "status", "samples", "min_score", "score", "cpu_pct", "memory_pct", "disk_pct",
                          "cpu_temp_c", "gpu_temp_c", "gpu_load_pct", "gpu_memory_pct", "rss_mb"}
    assert (first["cpu_pct"], first["min_score"], first["gpu_load_pct"], first["net_sent_bps"]) == (2.5, 95, 20.0, None)
    assert last["status"] == "critical", "a bucket shows its worst status"
    assert hist.query(TimeRange(NOW - 3 * DAY, NOW - 2 * DAY), 500, NOW)["points"] == []


def test_a_long_range_answers_from_the_rollup_and_agrees_with_the_samples(store: Store) -> None:
    hist = HealthHistory(store, days=90, full_days=7, interval_s=60)
    hist.setup()
    fill(hist, NOW - 20 * DAY, 20 * DAY, 60)
    rollup_rows = store.query("SELECT COUNT(*), SUM(samples) FROM health_rollup")[0]
    assert rollup_rows[0] == pytest.approx(20 * DAY / ROLLUP_S, abs=1), "one rollup row per closed 10 minutes"
    out = hist.query(TimeRange(NOW - 20 * DAY, NOW), 500, NOW)
    assert out["source"] == "rollup" and len(out["points"]) == 500
    assert sum(p["samples"] for p in out["points"]) == pytest.approx(20 * DAY / 60, abs=10)
    assert all(p["status"] == "ok" and 90 <= p["min_score"] <= p["score"] <= 100 for p in out["points"])
    assert store.query("SELECT MIN(ts) FROM health_history")[0][0] >= NOW - 7 * DAY - ROLLUP_S, "samples kept 7 days"
    recent = hist.query(TimeRange(NOW - 5 * DAY, NOW), 500, NOW)
    assert recent["source"] == "samples"
    assert recent["points"][10]["cpu_pct"] == pytest.approx(49.5, abs=15)


def test_the_tables_stay_bounded_by_the_retention(store: Store) -> None:
    """A year at an hourly interval with a 30-day retention keeps 30 days, whatever the run length."""
    hist = HealthHistory(store, days=30, full_days=2, interval_s=3600)
    hist.setup()
    sizes = []
    for month in range(12):
        fill(hist, NOW + month * 30 * DAY, 30 * DAY, 3600)
        sizes.append(store.query("SELECT (SELECT COUNT(*) FROM health_history), (SELECT COUNT(*) FROM health_rollup)")[0])
    assert all(samples <= 2 * 24 + 1 and rollup <= 30 * 24 + 1 for samples, rollup in sizes), sizes
    assert sizes[-1] == sizes[-2], "steady state: the same size month after month"
    oldest = store.query("SELECT MIN(ts) FROM health_rollup")[0][0]
    assert oldest >= NOW + 12 * 30 * DAY - 31 * DAY


def test_no_sample_is_kept_before_the_wall_clock_is_set(store: Store) -> None:
    hist = HealthHistory(store, days=90, full_days=7, interval_s=10)
    hist.setup()
    hist.record(health_state(1), 1000.0)
    assert store.query("SELECT COUNT(*) FROM health_history") == [(0,)]


def test_a_restarted_history_continues_the_rollup_where_it_ended(store: Store) -> None:
    first = HealthHistory(store, days=90, full_days=7, interval_s=60)
    first.setup()
    fill(first, NOW - DAY, DAY / 2, 60)
    second = HealthHistory(store, days=90, full_days=7, interval_s=60)
    second.setup()
    fill(second, NOW - DAY / 2, DAY / 2, 60)
    buckets = [int(ts // ROLLUP_S) for (ts,) in store.query("SELECT ts FROM health_rollup ORDER BY ts")]
    assert buckets == list(range(buckets[0], buckets[0] + len(buckets))), "no gap and no double at the restart"
    assert len(buckets) == DAY / ROLLUP_S - 1


def test_the_health_monitor_records_each_sample_and_answers_history_health(tmp_path: Path, store: Store) -> None:
    data_dir = Path(__file__).parent / "data"
    cfg = HealthConfig(interval_s=1, sources=sources(data_dir, "x86_laptop"), thresholds=LENIENT)
    bus = Bus()
    answers = bus.subscribe("test", (Response,))
    monitor = HealthMonitor(bus, cfg, tmp_path, store=store)
    assert sorted(s.command for s in monitor.requests()) == ["health/processes", "history/health"]
    assert [s.command for s in HealthMonitor(bus, cfg, tmp_path).requests()] == ["health/processes"], \
        "without a store, no history request is offered"
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    try:
        def samples() -> int:
            tables = store.query("SELECT name FROM sqlite_master WHERE name = 'health_history'")
            return int(store.query("SELECT COUNT(*) FROM health_history")[0][0]) if tables else 0  # type: ignore[call-overload]

        wait_until(lambda: samples() >= 2, 10, what="two samples")

        def ask(args: dict[str, Any]) -> Response:
            rid = uuid.uuid4().hex
            bus.publish(Request("health", "history/health", args, rid))
            return wait_until(lambda: next((m for m in iter(lambda: answers.get(0.1), None)  # type: ignore[no-any-return]
                                            if m.request_id == rid), None), 5, what="the answer")

        ok = ask({"hours": 1})
        assert ok.ok and ok.data["source"] == "samples" and ok.data["points"][-1]["cpu_pct"] is not None
        assert "args.since" in ask({"since": time.time(), "until": time.time() - 60}).error
        assert "args.limit" in ask({"limit": 501}).error
    finally:
        monitor.request_stop()
        thread.join(5)


def test_a_failed_history_write_is_logged_and_the_state_still_published(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    data_dir = Path(__file__).parent / "data"
    store = Store(tmp_path / "smartbin.db")
    monitor = HealthMonitor(Bus(), HealthConfig(interval_s=1, sources=sources(data_dir, "x86_laptop"),
                                                thresholds=LENIENT), tmp_path, store=store)
    assert monitor.history is not None
    monitor.history.setup()
    store.close()  # every write fails from now on, as on a broken disk
    state = monitor.poll()
    assert state["status"] in ("ok", "warn", "critical") and state["cpu"]["percent"] is not None
    assert "could not record the history sample" in caplog.text
