"""Smoke test of the system bench at quick size: it runs end to end and every figure is there and plausible.

The figures themselves mean little on a busy CI box; what must hold is that each measurement produced
numbers of the right kind (positive, ordered, within generous bounds) and that the outbox replay delivered
every event exactly once and in order.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench import system


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """One quick bench run shared by the checks below."""
    return system.bench(quick=True)


def _positive(value: Any, upper: float) -> bool:
    return isinstance(value, (int, float)) and 0 < value <= upper


def test_item_latency_reports_k_inference_budget_and_a_verdict(figures: dict[str, Any]) -> None:
    lat = figures["item_latency"]
    assert lat["items"] >= 1 and lat["other_outcomes"] == 0, lat
    assert lat["k_inferences_per_item"] == lat["k_config_frames_per_decision"] == 5, lat
    assert _positive(lat["inference_p50_ms"], 2000), lat
    assert lat["settle_ms"] == 300.0
    assert lat["budget_ms"] == pytest.approx(5 * lat["inference_p50_ms"] + system.EXTRA_MS, abs=0.1)
    assert lat["budget_with_frame_wait_ms"] >= lat["budget_ms"]
    # Presence -> route covers the settle time and K inferences at the very least, and stays under the
    # workflow's decision timeout.
    assert lat["settle_ms"] + lat["inference_p50_ms"] < lat["presence_to_route_p50_ms"] <= lat["presence_to_route_p95_ms"] < 10_000
    assert lat["excluding_settle_p50_ms"] == pytest.approx(lat["presence_to_route_p50_ms"] - lat["settle_ms"], abs=0.1)
    assert isinstance(lat["target_met"], bool) and isinstance(lat["strict_target_met"], bool)


def test_startup_reaches_ready_before_the_detector_and_the_first_detection(figures: dict[str, Any]) -> None:
    s = figures["startup"]
    assert s["runs"] >= 1
    assert _positive(s["ready_median_s"], 30), s
    assert s["ready_median_s"] <= s["ready_to_detect_median_s"] <= s["first_detection_event_median_s"] < 120, s
    assert s["target_s"] == system.STARTUP_TARGET_S == 2.0 and s["target"]
    assert s["target_met"] is (s["ready_to_detect_median_s"] <= 2.0)


@pytest.mark.parametrize(("median", "met"), [(1.2, True), (2.0, True), (2.01, False), (6.9, False), (None, False)])
def test_the_startup_target_is_the_median_time_to_ready_to_detect(median: float | None, met: bool) -> None:
    summary: dict[str, Any] = {"runs": 3, "ready_median_s": 1.0}
    if median is not None:
        summary["ready_to_detect_median_s"] = median
    verdict = system.startup_verdict(summary)
    assert verdict["target_met"] is met and verdict["runs"] == 3


def test_the_system_bench_refuses_an_unknown_part() -> None:
    with pytest.raises(ValueError, match="unknown part"):
        system.bench(quick=True, only=["startup", "latency"])


def test_round_trips_are_measured_beside_the_bare_broker(figures: dict[str, Any]) -> None:
    r = figures["round_trip"]
    assert r["requests"] == 50 and r["timeouts"] == 0, r
    assert _positive(r["bare_p50_ms"], 500) and _positive(r["ping_p50_ms"], 1000), r
    assert r["bare_p50_ms"] <= r["bare_p99_ms"] and r["ping_p50_ms"] <= r["ping_p99_ms"], r
    assert r["overhead_p50_ms"] == pytest.approx(r["ping_p50_ms"] - r["bare_p50_ms"], abs=0.02)


def test_outbox_replay_delivers_every_event_once_in_order_beside_the_paho_anchor(figures: dict[str, Any]) -> None:
    o = figures["outbox_replay"]
    assert o["target_met"] is True, o
    for side in ("daemon", "paho_anchor"):
        run = o[side]
        assert run["received"] == o["events"] == 500 and run["duplicates"] == 0 and run["in_seq_order"], (side, run)
        assert _positive(run["total_s"], 120) and run["first_after_s"] <= run["total_s"], (side, run)
    assert _positive(o["ratio_total"], 1000)
    cost = o["durable_path_cost"]
    assert _positive(cost["append_ms_per_event"], 1000) and _positive(cost["ack_ms_per_event"], 1000), cost
