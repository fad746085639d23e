"""The fill tracker worker on a real bus, a real SQLite store and outbox: readings in, fill/levels/events out."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.bins.fill import LEVELS, compensate
from smartbin_daemon.bins.tracker import CalibrateArgs, EmptiedArgs, FillTracker, ResetCountersArgs
from smartbin_daemon.config import BinsConfig
from smartbin_daemon.messages import (
    DistanceReading,
    DoorChanged,
    FillLevel,
    ItemSorted,
    MaintenanceChanged,
    TemperatureReading,
)
from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.bus import Bus, Discovery, Event, Request, Response, StateUpdate
from smartbin_daemon.store import Store

from ..conftest import wait_until

COMPARTMENTS: list[dict[str, Any]] = [
    {"id": "recycling", "name": "Recycling", "categories": ["plastic", "metal"],
     "sensor": {"source": "arduino", "channel": 1}, "capacity_l": 50},
    {"id": "paper", "name": "Paper", "categories": ["paper_cardboard"], "sensor": {"source": "arduino", "channel": 2}},
    {"id": "residual", "name": "Residual", "categories": ["residual"], "sensor": {"source": "arduino", "channel": 3}},
]
# Calibration is the config default: empty 600 mm, full 100 mm, so fill % = (600 - mm) / 5.
FILL: dict[str, Any] = {
    "almost_full_pct": 80, "full_pct": 95, "hysteresis_pct": 5, "temperature_compensation": True,
    "filter": {"window": 1, "min_samples": 1, "confirm_s": 0, "settle_s": 0.3},
    "emptying": {"near_empty_pct": 10, "min_drop_pct": 20, "confirm_s": 0.6},
    "history_interval_s": 1, "forecast_min_span_s": 0, "forecast_min_points": 2,
}


def mm_for(pct: float) -> float:
    """The distance that reads as `pct` % with the default calibration."""
    return 600.0 - pct * 5.0


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Rig:
    """A FillTracker in its own thread; the test plays the Arduino link (readings) and the workflow (ItemSorted)."""

    def __init__(self, tmp_path: Path, fill: dict[str, Any] | None = None) -> None:
        self.cfg = BinsConfig.model_validate({"enabled": True, "compartments": COMPARTMENTS,
                                              "fill": _merge(FILL, fill or {})})
        self.store = Store(tmp_path / "smartbin.db")
        self.bus = Bus()
        self.bus.attach_sink(Outbox(self.store))
        self.seen = self.bus.subscribe("test", (Event, StateUpdate, Response, FillLevel, Discovery), maxsize=1_000_000)
        self.messages: list[Any] = []
        self.tracker: FillTracker | None = None
        self.thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """A (re)start on the same database: a new worker object, nothing kept in memory."""
        self.tracker = FillTracker(self.bus, self.cfg, self.store)
        self.tracker.state_min_interval_s = 0.1
        self.thread = threading.Thread(target=self.tracker.run, name="test-fill", daemon=True)
        self.thread.start()
        wait_until(lambda: self.state(), 5, what="the first fill state")

    def stop(self) -> None:
        assert self.tracker is not None and self.thread is not None
        self.tracker.request_stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "fill tracker did not stop"
        if self.tracker.inbox is not None:
            self.bus.unsubscribe(self.tracker.inbox)
        self.tracker = self.thread = None
        self.drain()
        self.messages.clear()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.tracker is not None:
            self.stop()
        self.store.close()

    # -- feeding ---------------------------------------------------------------------------

    def reading(self, channel: int, mm: float | None, source: str = "arduino") -> None:
        self.bus.publish(DistanceReading(source, channel, mm, time.monotonic()))

    def settle(self, compartment: str, pct: float, channel: int | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """Feed readings of `pct` until the tracker has evaluated them; the compartment's state then."""
        ch = channel or [c["id"] for c in COMPARTMENTS].index(compartment) + 1

        def done() -> dict[str, Any] | None:
            self.reading(ch, mm_for(pct))
            st = self.comp(compartment)
            return st if st.get("fill_pct") == pct else None

        return wait_until(done, timeout, interval=0.1, what=f"{compartment} at {pct} %")  # type: ignore[no-any-return]

    def sorted_item(self, compartment: str) -> None:
        self.bus.publish(ItemSorted(compartment, uuid.uuid4().hex[:12], time.monotonic()))

    def request(self, command: str, args: dict[str, Any], timeout: float = 5.0) -> Response:
        """Send a request; return its answer once the state published after it has arrived too."""
        rid = f"test-{uuid.uuid4().hex}"
        self.bus.publish(Request("fill", command, args, rid))

        def answered() -> Response | None:
            msgs = self.drain()
            at = next((i for i, m in enumerate(msgs) if isinstance(m, Response) and m.request_id == rid), None)
            if at is None or not any(isinstance(m, StateUpdate) and m.component == "fill" for m in msgs[at:]):
                return None
            return msgs[at]  # type: ignore[no-any-return]

        return wait_until(answered, timeout, what=f"the answer to {command}")  # type: ignore[no-any-return]

    def calibrate(self, **kw: Any) -> Response:
        return self.request("bin/calibrate", CalibrateArgs(**kw).model_dump())

    # -- observing -------------------------------------------------------------------------

    def drain(self) -> list[Any]:
        while len(self.seen):
            msg = self.seen.get(0)
            if msg is not None:
                self.messages.append(msg)
        return self.messages

    def state(self) -> dict[str, Any]:
        states = [m.state for m in self.drain() if isinstance(m, StateUpdate) and m.component == "fill"]
        return states[-1] if states else {}

    def comp(self, compartment: str) -> dict[str, Any]:
        return self.state().get("compartments", {}).get(compartment, {})  # type: ignore[no-any-return]

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [m.data for m in self.drain() if isinstance(m, Event) and m.type == type_]

    def alerts(self, code: str) -> list[dict[str, Any]]:
        return [a for a in self.events("alert") if a["code"] == code]

    def wait_event(self, type_: str, predicate: Callable[[dict[str, Any]], bool] = lambda d: True,
                   timeout: float = 5.0) -> dict[str, Any]:
        return wait_until(lambda: next((d for d in self.events(type_) if predicate(d)), None), timeout,  # type: ignore[no-any-return]
                          what=f"event {type_}")

    def quiet(self, seconds: float = 1.1) -> None:
        """Let at least two evaluation rounds pass."""
        time.sleep(seconds)


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**kw: Any) -> Rig:
        r = Rig(tmp_path, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


# --------------------------------------------------------------------------- fill and levels


def test_readings_become_fill_percent_and_level_in_the_state(rig: Rig) -> None:
    assert rig.comp("recycling")["fill_pct"] is None and rig.comp("recycling")["level"] is None
    st = rig.settle("recycling", 50.0)
    assert st["level"] == "ok" and st["full"] is False and st["distance_mm"] == 350.0
    assert st["free_l"] == 25.0, "half of the 50 l capacity is free"
    assert st["calibration"] == {"empty_mm": 600.0, "full_mm": 100.0, "source": "config", "calibrated_at": None}
    paper = rig.settle("paper", 90.0)
    assert paper["level"] == "almost_full"
    levels = [(m.compartment, m.fill_pct, m.level) for m in rig.drain() if isinstance(m, FillLevel)]
    assert ("recycling", 50.0, "ok") in levels and ("paper", 90.0, "almost_full") in levels
    assert rig.comp("residual")["fill_pct"] is None, "no reading for it yet"
    # A first reading at ok is no news; one that starts almost_full (or full) is.
    assert [(e["compartment"], e["previous"], e["level"]) for e in rig.events("bin_level")] == [
        ("paper", None, "almost_full")]

    rig.reading(1, 150.0, source="gpio")  # nobody's sensor: ignored
    rig.reading(1, None)  # no echo: rejected and counted
    rig.quiet(0.7)
    assert rig.comp("recycling")["fill_pct"] == 50.0
    assert rig.comp("recycling")["rejected_readings"].get("no_echo") == 1


def test_crossing_almost_full_and_full_emits_level_events_and_a_full_alert_that_clears(rig: Rig) -> None:
    rig.settle("recycling", 60.0)
    rig.settle("recycling", 82.0)
    ev = rig.wait_event("bin_level")
    assert (ev["compartment"], ev["previous"], ev["level"], ev["fill_pct"]) == ("recycling", "ok", "almost_full", 82.0)
    assert ev["name"] == "Recycling" and ev["maintenance"] is False
    assert rig.alerts("compartment_full_recycling") == []

    st = rig.settle("recycling", 96.0)
    assert st["level"] == "full" and st["full"] is True
    ev = rig.wait_event("bin_level", lambda d: d["level"] == "full")
    assert ev["previous"] == "almost_full"
    alert = rig.alerts("compartment_full_recycling")
    assert len(alert) == 1 and alert[0]["active"] is True and alert[0]["severity"] == "warning"
    assert alert[0]["source"] == "fill"

    rig.settle("recycling", 40.0)
    ev = rig.wait_event("bin_level", lambda d: d["previous"] == "full")
    assert ev["level"] == "ok"
    alert = rig.alerts("compartment_full_recycling")
    assert [a["active"] for a in alert] == [True, False]
    assert [(e["previous"], e["level"]) for e in rig.events("bin_level")] == [
        ("ok", "almost_full"), ("almost_full", "full"), ("full", "ok")]
    levels = [m.level for m in rig.drain() if isinstance(m, FillLevel) and m.compartment == "recycling"]
    assert "full" in levels and levels[-1] == "ok", "the workflow hears of every level"


def test_readings_hovering_around_a_threshold_do_not_flap_the_level(rig: Rig) -> None:
    rig.settle("recycling", 70.0)
    rig.settle("recycling", 81.0)
    rig.wait_event("bin_level")
    for pct in (79.0, 80.5, 76.0):  # within hysteresis_pct (5) below almost_full (80)
        assert rig.settle("recycling", pct)["level"] == "almost_full"
    for pct in (96.0, 91.0, 95.5, 90.5):  # same around full (95)
        rig.settle("recycling", pct)
    assert rig.comp("recycling")["level"] == "full"
    assert [(e["previous"], e["level"]) for e in rig.events("bin_level")] == [
        ("ok", "almost_full"), ("almost_full", "full")]
    assert [a["active"] for a in rig.alerts("compartment_full_recycling")] == [True]
    rig.settle("recycling", 89.0)  # now clearly below full - hysteresis
    rig.settle("recycling", 74.0)  # and below almost_full - hysteresis
    assert [e["level"] for e in rig.events("bin_level")] == ["almost_full", "full", "almost_full", "ok"]


@pytest.mark.parametrize(("enabled", "age_s", "corrected"), [(True, 0.0, True), (False, 0.0, False),
                                                             (True, 200.0, False)],
                         ids=["enabled", "disabled", "stale_temperature"])
def test_temperature_compensation_corrects_the_distance_only_when_enabled(
        make_rig: Callable[..., Rig], enabled: bool, age_s: float, corrected: bool) -> None:
    rig = make_rig(fill={"temperature_compensation": enabled})
    rig.bus.publish(TemperatureReading(40.0, time.monotonic() - age_s))
    rig.reading(1, 400.0)
    expected = round(compensate(400.0, 40.0), 1) if corrected else 400.0
    assert abs(compensate(400.0, 40.0) - 400.0) > 10, "40 °C moves 400 mm by more than 1 cm"
    st = wait_until(lambda: rig.comp("recycling") if rig.comp("recycling").get("distance_mm") else None, 5,
                    what="a distance")
    assert st["distance_mm"] == expected
    assert st["fill_pct"] == round((600.0 - expected) / 5.0, 1)


def test_readings_while_the_lid_is_open_and_settling_are_ignored(rig: Rig) -> None:
    rig.settle("recycling", 50.0)
    rig.bus.publish(DoorChanged("arduino", "open", time.monotonic()))
    for _ in range(5):
        rig.reading(1, 150.0)  # the lid itself (or a hand) in the beam
        time.sleep(0.1)
    rig.quiet(0.6)
    st = rig.comp("recycling")
    assert st["fill_pct"] == 50.0 and st["rejected_readings"].get("lid_open") == 5
    assert rig.state()["lid_open"] is True
    rig.bus.publish(DoorChanged("arduino", "closed", time.monotonic()))
    rig.reading(1, 150.0)  # within settle_s (0.3 s)
    rig.quiet(0.6)
    assert rig.comp("recycling")["fill_pct"] == 50.0
    assert rig.comp("recycling")["rejected_readings"].get("settling") == 1
    assert rig.state()["lid_open"] is False
    assert rig.settle("recycling", 90.0)["level"] == "almost_full", "after settling, readings count again"


def test_a_compartment_found_full_at_the_first_reading_raises_the_full_alert(rig: Rig) -> None:
    assert rig.settle("residual", 98.0)["level"] == "full"
    ev = rig.wait_event("bin_level")
    assert (ev["compartment"], ev["previous"], ev["level"]) == ("residual", None, "full")
    alert = rig.alerts("compartment_full_residual")
    assert len(alert) == 1 and alert[0]["active"] is True


# --------------------------------------------------------------------------- items and emptying


def test_item_sorted_messages_count_items_and_lifetime_totals(rig: Rig) -> None:
    for c in ("recycling", "recycling", "paper"):
        rig.sorted_item(c)
    rig.sorted_item("nowhere")  # unknown compartment: ignored
    wait_until(lambda: rig.comp("recycling").get("items") == 2 and rig.comp("paper").get("items") == 1, 5,
               what="items counted")
    assert rig.comp("recycling")["items_total"] == 2 and rig.comp("residual")["items"] == 0
    assert rig.store.query("SELECT compartment, items, items_total FROM fill_state ORDER BY compartment") == [
        ("paper", 1, 1), ("recycling", 2, 2)]


def test_a_sustained_drop_to_near_empty_is_an_emptying_with_the_item_count(rig: Rig) -> None:
    rig.settle("recycling", 60.0)
    for _ in range(3):
        rig.sorted_item("recycling")
    wait_until(lambda: rig.comp("recycling").get("items") == 3, 5, what="three items")
    rig.settle("recycling", 2.0)  # a dip shorter than emptying.confirm_s ...
    rig.settle("recycling", 58.0)  # ... (someone's hand) is no emptying
    rig.quiet(1.0)
    assert rig.events("bin_emptied") == []

    t0 = time.monotonic()
    rig.settle("recycling", 2.0)
    ev = rig.wait_event("bin_emptied")
    assert time.monotonic() - t0 >= 0.5, "only after emptying.confirm_s"
    assert (ev["compartment"], ev["items"], ev["source"], ev["fill_pct"]) == ("recycling", 3, "sensor", 2.0)
    assert ev["emptied_at"] is not None and ev["maintenance"] is False
    st = wait_until(lambda: rig.comp("recycling") if rig.comp("recycling")["items"] == 0 else None, 5,
                    what="items reset")
    assert st["items_total"] == 3 and st["emptied_at"] == ev["emptied_at"]
    rig.quiet(0.6)
    assert len(rig.events("bin_emptied")) == 1, "one emptying, one event"


def test_a_sensor_detected_emptying_reports_the_peak_fill_before_it(rig: Rig) -> None:
    rig.settle("recycling", 60.0)
    rig.settle("recycling", 2.0)
    assert rig.wait_event("bin_emptied")["peak_fill_pct"] == 60.0


def test_maintenance_mode_labels_the_level_and_emptying_events(rig: Rig) -> None:
    rig.settle("paper", 50.0)
    rig.bus.publish(MaintenanceChanged(True, time.monotonic()))
    wait_until(lambda: rig.state().get("maintenance") is True, 5, what="maintenance in the fill state")
    rig.settle("paper", 85.0)
    assert rig.wait_event("bin_level")["maintenance"] is True
    assert rig.request("bin/emptied", EmptiedArgs(compartment="paper").model_dump()).ok
    assert rig.wait_event("bin_emptied")["maintenance"] is True
    rig.bus.publish(MaintenanceChanged(False, time.monotonic()))
    wait_until(lambda: rig.state().get("maintenance") is False, 5, what="maintenance off")
    rig.settle("paper", 40.0)
    assert rig.wait_event("bin_level", lambda d: d["level"] == "ok")["maintenance"] is False


# --------------------------------------------------------------------------- persistence


def test_a_restart_restores_level_items_totals_emptying_and_calibration(rig: Rig) -> None:
    rig.settle("recycling", 60.0)
    rig.settle("recycling", 96.0)
    rig.settle("recycling", 97.0)
    rig.wait_event("bin_level", lambda d: d["level"] == "full")
    for c in ("recycling", "recycling", "paper"):
        rig.sorted_item(c)
    assert rig.request("bin/emptied", EmptiedArgs(compartment="paper").model_dump()).ok
    rig.sorted_item("paper")
    assert rig.calibrate(compartment="residual", point="full", distance_mm=150.0).ok
    wait_until(lambda: rig.comp("recycling")["items"] == 2 and rig.comp("paper")["items"] == 1, 5,
               what="the counts")
    before = rig.state()["compartments"]

    rig.restart()
    after = rig.state()["compartments"]
    rec = after["recycling"]
    assert (rec["fill_pct"], rec["level"], rec["full"]) == (97.0, "full", True)
    assert (rec["items"], rec["items_total"]) == (2, 2)
    assert (after["paper"]["items"], after["paper"]["items_total"]) == (1, 2)
    assert after["paper"]["emptied_at"] == before["paper"]["emptied_at"] is not None
    assert after["residual"]["calibration"] == before["residual"]["calibration"]
    assert after["residual"]["calibration"]["full_mm"] == 150.0
    assert after["residual"]["calibration"]["source"] == "request"
    restored = [m for m in rig.drain() if isinstance(m, FillLevel) and m.compartment == "recycling"]
    assert restored and (restored[0].fill_pct, restored[0].level) == (97.0, "full"), \
        "the workflow learns the restored level at once"

    rig.settle("recycling", 96.5)
    rig.quiet(0.6)
    assert rig.events("bin_level") == [], "the restored level is no new transition"
    rig.settle("recycling", 50.0)
    ev = rig.wait_event("bin_level")
    assert (ev["previous"], ev["level"]) == ("full", "ok")
    assert rig.alerts("compartment_full_recycling")[-1]["active"] is False
    rig.sorted_item("recycling")
    wait_until(lambda: rig.comp("recycling")["items_total"] == 3, 5, what="counting on after the restart")


# --------------------------------------------------------------------------- requests


def test_calibrating_empty_and_full_from_the_current_reading_changes_the_fill(rig: Rig) -> None:
    rig.reading(1, 580.0)
    wait_until(lambda: rig.comp("recycling").get("distance_mm") == 580.0, 5, what="a reading")
    resp = rig.calibrate(compartment="recycling", point="empty")
    assert resp.ok, resp.error
    assert resp.data == {"compartment": "recycling", "empty_mm": 580.0, "full_mm": 100.0}
    rig.reading(1, 200.0)
    wait_until(lambda: rig.comp("recycling").get("distance_mm") == 200.0, 5, what="a second reading")
    resp = rig.calibrate(compartment="recycling", point="full")
    assert resp.ok and resp.data["full_mm"] == 200.0
    rig.reading(1, 390.0)
    st = wait_until(lambda: rig.comp("recycling") if rig.comp("recycling").get("distance_mm") == 390.0 else None, 5,
                    what="a reading after calibrating")
    assert st["fill_pct"] == 50.0, "(580 - 390) / (580 - 200)"
    assert st["calibration"]["source"] == "request" and st["calibration"]["calibrated_at"] is not None
    assert (st["calibration"]["empty_mm"], st["calibration"]["full_mm"]) == (580.0, 200.0)
    assert rig.store.query("SELECT empty_mm, full_mm FROM fill_state WHERE compartment = 'recycling'") == [
        (580.0, 200.0)]


def test_calibrating_from_a_given_distance_needs_no_reading(rig: Rig) -> None:
    resp = rig.calibrate(compartment="paper", point="full", distance_mm=150.0)
    assert resp.ok and resp.data == {"compartment": "paper", "empty_mm": 600.0, "full_mm": 150.0}
    rig.reading(2, 375.0)
    st = wait_until(lambda: rig.comp("paper") if rig.comp("paper").get("fill_pct") is not None else None, 5,
                    what="a paper reading")
    assert st["fill_pct"] == 50.0


def test_calibrating_without_a_reading_is_an_error(rig: Rig) -> None:
    resp = rig.calibrate(compartment="recycling", point="empty")
    assert not resp.ok and "no valid distance reading for recycling" in (resp.error or "")
    assert rig.comp("recycling")["calibration"]["source"] == "config"


@pytest.mark.parametrize(("point", "distance"), [("full", 590.0), ("empty", 110.0), ("empty", 90.0)])
def test_calibration_points_too_close_together_name_args_point(rig: Rig, point: str, distance: float) -> None:
    resp = rig.calibrate(compartment="recycling", point=point, distance_mm=distance)
    assert not resp.ok
    assert (resp.error or "").startswith("args.point:") and "at least 20 mm" in (resp.error or "")
    assert rig.comp("recycling")["calibration"] == {"empty_mm": 600.0, "full_mm": 100.0, "source": "config",
                                                   "calibrated_at": None}


@pytest.mark.parametrize("command", ["bin/calibrate", "bin/emptied", "bin/reset_counters"])
def test_an_unknown_compartment_is_an_error_naming_args_compartment(rig: Rig, command: str) -> None:
    args = {"bin/calibrate": CalibrateArgs(compartment="nope", point="empty", distance_mm=500),
            "bin/emptied": EmptiedArgs(compartment="nope"),
            "bin/reset_counters": ResetCountersArgs(compartment="nope")}[command].model_dump()
    resp = rig.request(command, args)
    assert not resp.ok
    assert "args.compartment" in (resp.error or "") and "'nope'" in (resp.error or "")
    assert "recycling" in (resp.error or ""), "the known ids are listed"


def test_emptied_by_request_for_one_compartment_and_for_all(rig: Rig) -> None:
    for c in ("recycling", "recycling", "paper", "residual"):
        rig.sorted_item(c)
    wait_until(lambda: rig.comp("residual").get("items") == 1 and rig.comp("recycling").get("items") == 2, 5,
               what="items counted")
    resp = rig.request("bin/emptied", EmptiedArgs(compartment="recycling").model_dump())
    assert resp.ok and resp.data == {"emptied": ["recycling"]}
    ev = rig.wait_event("bin_emptied")
    assert (ev["compartment"], ev["items"], ev["source"]) == ("recycling", 2, "request")
    st = rig.state()["compartments"]
    assert (st["recycling"]["items"], st["recycling"]["items_total"]) == (0, 2)
    assert st["recycling"]["emptied_at"] is not None
    assert st["paper"]["items"] == 1 and st["paper"]["emptied_at"] is None

    resp = rig.request("bin/emptied", EmptiedArgs().model_dump())
    assert resp.ok and sorted(resp.data["emptied"]) == ["paper", "recycling", "residual"]
    wait_until(lambda: len(rig.events("bin_emptied")) == 4, 5, what="one event per compartment")
    assert {(e["compartment"], e["items"]) for e in rig.events("bin_emptied")[1:]} == {
        ("recycling", 0), ("paper", 1), ("residual", 1)}
    assert all(c["items"] == 0 and c["emptied_at"] for c in rig.state()["compartments"].values())


@pytest.mark.parametrize("totals", [False, True])
def test_reset_counters_zeroes_items_and_totals_only_when_asked(rig: Rig, totals: bool) -> None:
    for c in ("recycling", "recycling", "paper"):
        rig.sorted_item(c)
    wait_until(lambda: rig.comp("paper").get("items") == 1 and rig.comp("recycling").get("items") == 2, 5,
               what="items counted")
    resp = rig.request("bin/reset_counters", ResetCountersArgs(compartment="recycling", totals=totals).model_dump())
    assert resp.ok and resp.data == {"reset": ["recycling"], "totals": totals}
    st = rig.state()["compartments"]
    assert st["recycling"]["items"] == 0 and st["recycling"]["items_total"] == (0 if totals else 2)
    assert (st["paper"]["items"], st["paper"]["items_total"]) == (1, 1), "another compartment is untouched"
    resp = rig.request("bin/reset_counters", ResetCountersArgs(totals=totals).model_dump())
    assert resp.ok and sorted(resp.data["reset"]) == ["paper", "recycling", "residual"]
    st = rig.state()["compartments"]
    assert st["paper"]["items"] == 0 and st["paper"]["items_total"] == (0 if totals else 1)
    assert rig.events("bin_emptied") == [], "resetting counters is no emptying"
    rig.restart()
    assert rig.comp("recycling")["items_total"] == (0 if totals else 2), "the reset is persisted"


def test_an_unknown_request_is_refused(rig: Rig) -> None:
    resp = rig.request("bin/explode", {})
    assert not resp.ok and "fill does not handle" in (resp.error or "")


# --------------------------------------------------------------------------- forecast


def test_a_rising_history_gives_a_fill_rate_and_a_predicted_full_time(rig: Rig) -> None:
    assert rig.comp("recycling")["rate_pct_per_h"] is None and rig.comp("recycling")["predicted_full_at"] is None
    pct = 10.0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        rig.settle("recycling", pct)
        st = rig.comp("recycling")
        if st["rate_pct_per_h"] and st["predicted_full_at"]:
            break
        pct += 4.0
    st = rig.comp("recycling")
    assert st["rate_pct_per_h"] is not None and st["rate_pct_per_h"] > 0
    full_at = dt.datetime.fromisoformat(st["predicted_full_at"].replace("Z", "+00:00"))
    assert full_at > dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    assert st["seconds_to_full"] is not None and st["seconds_to_full"] >= 0
    points = rig.store.query("SELECT COUNT(*) FROM fill_history WHERE compartment = 'recycling'")[0][0]
    assert isinstance(points, int) and points >= 2

    assert rig.request("bin/emptied", EmptiedArgs(compartment="recycling").model_dump()).ok
    st = rig.comp("recycling")
    assert st["rate_pct_per_h"] is None and st["predicted_full_at"] is None, "the forecast restarts"
    rig.quiet(1.3)  # a history point or two at a steady fill: the rise before the emptying is forgotten
    st = rig.comp("recycling")
    assert not st["rate_pct_per_h"] and st["predicted_full_at"] is None


# --------------------------------------------------------------------------- Home Assistant


def test_discovery_declares_fill_level_items_predicted_full_free_rate_full_and_emptied_per_compartment_and_the_lid(rig: Rig) -> None:
    discovery = [m for m in rig.drain() if isinstance(m, Discovery) and m.component == "fill"]
    assert discovery, "published at start"
    entities = {e.object_id: e for e in discovery[-1].entities}
    for c in ("recycling", "paper", "residual"):
        fill = entities[f"bin_{c}_fill"]
        assert fill.platform == "sensor" and fill.options["unit_of_measurement"] == "%"
        assert f"compartments['{c}'].fill_pct" in (fill.value_template or "")
        level = entities[f"bin_{c}_level"]
        assert level.platform == "sensor" and level.options["device_class"] == "enum"
        assert level.options["options"] == list(LEVELS)
        assert entities[f"bin_{c}_items"].options["state_class"] == "total_increasing"
        predicted = entities[f"bin_{c}_predicted_full"]
        assert predicted.platform == "sensor" and predicted.options["device_class"] == "timestamp"
        assert "predicted_full_at" in (predicted.value_template or "")
        free = entities[f"bin_{c}_free"]
        assert free.options["unit_of_measurement"] == "L" and "free_l" in (free.value_template or "")
        rate = entities[f"bin_{c}_fill_rate"]
        assert rate.options["unit_of_measurement"] == "%/h" and "rate_pct_per_h" in (rate.value_template or "")
        full = entities[f"bin_{c}_full"]
        assert full.platform == "binary_sensor" and full.options["device_class"] == "problem"
        button = entities[f"bin_{c}_emptied"]
        assert button.platform == "button" and button.options["command_topic"] == "bin/emptied"
        assert f'"compartment": "{c}"' in button.options["payload_press"]
        assert all(e.component == "fill" for e in (fill, level, predicted, full, button))
    lid = entities["bin_lid"]
    assert lid.platform == "binary_sensor" and lid.options["device_class"] == "opening" and "lid_open" in (
        lid.value_template or "")
    assert len(entities) == 8 * 3 + 1
    assert rig.bus.entities()["fill"] == discovery[-1].entities


# --------------------------------------------------------------------------- history/fill


def test_history_fill_answers_the_recorded_points_and_names_a_bad_compartment_or_range(rig: Rig) -> None:
    rig.settle("recycling", 20)
    wait_until(lambda: rig.store.query("SELECT COUNT(*) FROM fill_history WHERE compartment = 'recycling'")[0][0] >= 2,
               10, what="two history points")
    resp = rig.request("history/fill", {"compartment": "recycling", "hours": 1, "limit": 10})
    assert resp.ok, resp.error
    assert resp.data["compartment"] == "recycling" and resp.data["bucket_s"] == 360
    assert resp.data["points"] and all(p["fill_pct"] == pytest.approx(20, abs=0.5) for p in resp.data["points"])
    unknown = rig.request("history/fill", {"compartment": "glass"})
    assert not unknown.ok and "args.compartment: unknown compartment 'glass'" in str(unknown.error)
    inverted = rig.request("history/fill", {"compartment": "paper", "since": "2026-01-02T00:00:00Z",
                                            "until": "2026-01-01T00:00:00Z"})
    assert not inverted.ok and "args.since" in str(inverted.error)
    too_many = rig.request("history/fill", {"compartment": "paper", "limit": 501})
    assert not too_many.ok and "args.limit" in str(too_many.error)


def test_a_full_compartment_keeps_the_moment_it_became_full_as_its_predicted_full_time(rig: Rig) -> None:
    """Once full, `predicted_full_at` is when it became full, not "now" again at every evaluation."""
    st = rig.settle("paper", 97.0)
    assert st["seconds_to_full"] == 0 and st["predicted_full_at"] is not None
    first = st["predicted_full_at"]
    time.sleep(2.2)  # later evaluations of the same full compartment (timestamps have 1 s resolution or better)
    st = rig.settle("paper", 98.0)
    assert st["seconds_to_full"] == 0 and st["predicted_full_at"] == first
    rig.settle("paper", 5.0)
    assert rig.comp("paper")["predicted_full_at"] != first, "emptied: a new forecast, not the old full time"
