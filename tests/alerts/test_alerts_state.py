"""The `alerts` component: the active set from alert events, alerts raised before it started, its HA entities."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from smartbin_daemon.alerts.worker import AlertsWorker, alerts_entities
from smartbin_daemon.config import parse_config
from smartbin_daemon.runtime.bus import Alert, Bus, Discovery, Request, Response, StateUpdate
from smartbin_daemon.states import AlertsState

from ..conftest import wait_until


class Running:
    """An AlertsWorker on its own thread, and what it published."""

    def __init__(self, bus: Bus, doc: dict[str, Any] | None = None) -> None:
        self.bus = bus
        self.states = bus.subscribe("test", (StateUpdate, Discovery))
        self.worker = AlertsWorker(bus, parse_config(doc or {}))
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def state(self) -> AlertsState:
        return AlertsState.from_json(self.bus.states().get("alerts"))

    def wait(self, predicate: Any, what: str) -> AlertsState:
        wait_until(lambda: "alerts" in self.bus.states() and predicate(self.state()), timeout=5, what=what)
        return self.state()

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(5)


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def running(bus: Bus) -> Iterator[Running]:
    r = Running(bus)
    yield r
    r.stop()


def codes(state: AlertsState) -> list[str]:
    return [f"{a.source}/{a.code}" for a in state.active]


def test_a_raised_alert_is_active_until_its_source_clears_it(bus: Bus, running: Running) -> None:
    event = bus.raise_alert(Alert("fill", "compartment_full_paper", "warning", "compartment Paper is full"))
    state = running.wait(lambda s: s.counts.total == 1, "the alert active")
    alert = state.active[0]
    assert (alert.id, alert.source, alert.code, alert.severity) == (event.id, "fill", "compartment_full_paper", "warning")
    assert alert.message == "compartment Paper is full" and alert.since.endswith("Z")
    assert (state.counts.warning, state.counts.critical) == (1, 0)
    bus.raise_alert(Alert("workflow", "route_failed", "critical", "no ACK"))
    running.wait(lambda s: s.counts.critical == 1 and s.counts.total == 2, "both active")
    bus.raise_alert(Alert("fill", "compartment_full_paper", "warning", "no longer full", active=False))
    state = running.wait(lambda s: s.counts.total == 1, "the fill alert cleared")
    assert codes(state) == ["workflow/route_failed"]


def test_a_raised_again_alert_keeps_its_since_and_takes_the_new_message(bus: Bus, running: Running) -> None:
    bus.raise_alert(Alert("health", "cpu", "warning", "cpu 85%"))
    first = running.wait(lambda s: s.counts.total == 1, "active").active[0]
    bus.raise_alert(Alert("health", "cpu", "critical", "cpu 99%"))
    again = running.wait(lambda s: s.counts.critical == 1, "raised again").active[0]
    assert again.since == first.since and again.message == "cpu 99%" and again.id != first.id


def test_info_alerts_are_one_shot_and_an_info_clear_clears(bus: Bus, running: Running) -> None:
    bus.raise_alert(Alert("camera", "camera_unavailable", "warning", "no image for 10s"))
    running.wait(lambda s: s.counts.total == 1, "camera alert active")
    bus.raise_alert(Alert("camera", "camera_unavailable", "info", "camera is back", active=False))
    bus.raise_alert(Alert("health", "note", "info", "a notice"))
    bus.raise_alert(Alert("health", "marker", "warning", "processed after the info ones"))
    state = running.wait(lambda s: "health/marker" in codes(s), "the marker")
    assert codes(state) == ["health/marker"]


def test_alerts_raised_before_the_worker_started_are_known(bus: Bus) -> None:
    bus.raise_alert(Alert("storage", "db_recovered", "critical", "database moved aside"))
    bus.raise_alert(Alert("fill", "compartment_full_a", "warning", "full"))
    bus.raise_alert(Alert("fill", "compartment_full_a", "warning", "not full", active=False))
    late = Running(bus)
    try:
        state = late.wait(lambda s: s.counts.total >= 1, "the early alert")
        assert codes(state) == ["storage/db_recovered"]
        assert state.counts.critical == 1
    finally:
        late.stop()


def test_a_restarted_worker_keeps_the_active_set(bus: Bus) -> None:
    first = Running(bus)
    bus.raise_alert(Alert("arduino", "link_down", "critical", "down for 120 s"))
    since = first.wait(lambda s: s.counts.total == 1, "active").active[0].since
    first.stop()
    bus.raise_alert(Alert("mqtt", "outbox_backlog", "warning", "1000 events waiting"))  # while nobody listens
    second = Running(bus)
    try:
        state = second.wait(lambda s: s.counts.total == 2, "both known after the restart")
        assert codes(state) == ["arduino/link_down", "mqtt/outbox_backlog"]
        assert state.active[0].since == since
    finally:
        second.stop()


def test_the_entities_are_problem_sensors_and_event_triggers() -> None:
    entities = {e.object_id: e for e in alerts_entities(webhook=True)}
    assert entities["alerts_warning"].options["device_class"] == "problem"
    assert entities["alerts_critical"].options["json_attributes_topic"] == "alerts"
    for event in ("item_sorted", "bin_level", "bin_emptied", "alert"):
        entity = entities[f"event_{event}"]
        assert entity.platform == "event" and entity.options["state_topic"] == f"event/{event}"
        assert entity.options["event_types"]
    assert {"alerts_webhook_sent", "alerts_webhook_failed", "alerts_webhook_suppressed"} <= set(entities)
    assert not any(o.startswith("alerts_webhook") for o in (e.object_id for e in alerts_entities(webhook=False)))


def test_the_alert_ledger_is_bounded_forgetting_the_least_recently_raised(bus: Bus) -> None:
    from smartbin_daemon.runtime.bus import ALERT_LEDGER_MAX

    for i in range(ALERT_LEDGER_MAX + 5):
        bus.raise_alert(Alert("arduino", f"fault_{i}", "critical", "made-up fault code"))
    bus.raise_alert(Alert("arduino", "fault_3", "critical", "raised again: now the newest"))
    codes_kept = [e.data["code"] for e in bus.alerts()]
    assert len(codes_kept) == ALERT_LEDGER_MAX and codes_kept[-1] == "fault_3"
    assert "fault_0" not in codes_kept and "fault_5" not in codes_kept and "fault_6" in codes_kept


def test_an_acknowledged_alert_leaves_the_list_until_its_source_raises_it_again(bus: Bus, running: Running) -> None:
    answers = bus.subscribe("ack-test", (Response,))

    def ack(alert_id: str) -> Response:
        bus.publish(Request("alerts", "alerts/ack", {"id": alert_id}, f"r-{alert_id}", authority="unsigned"))
        msg = answers.get(5)
        assert isinstance(msg, Response)
        return msg

    fault = bus.raise_alert(Alert("arduino", "fault_servo_stall", "critical", "Arduino fault servo_stall"))
    bus.raise_alert(Alert("fill", "compartment_full_paper", "warning", "compartment Paper is full"))
    running.wait(lambda s: s.counts.total == 2, "both active")

    answer = ack(fault.id)
    assert answer.ok and answer.data["acknowledged"]["code"] == "fault_servo_stall"
    state = running.wait(lambda s: s.counts.total == 1, "the fault acknowledged")
    assert codes(state) == ["fill/compartment_full_paper"] and state.counts.critical == 0

    refused = ack("no-such-alert")
    assert not refused.ok and refused.error.startswith("args.id: no active alert 'no-such-alert'")
    assert "compartment_full_paper" in refused.error, "the error lists what can be acknowledged"

    bus.raise_alert(Alert("arduino", "fault_servo_stall", "critical", "Arduino fault servo_stall"))
    running.wait(lambda s: s.counts.critical == 1, "raised again: active again")
