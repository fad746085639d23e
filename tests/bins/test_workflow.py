"""The sorting workflow on a real bus, a real SQLite store and outbox, the real Arduino link and the pty simulator.

Decisions come from a scripted detector (the test publishes `Decision`); camera/detector health is
published the way the real components publish it (`StateUpdate`, `WorkersChanged`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.bins.tracker import FillTracker
from smartbin_daemon.bins.workflow import SCHEMA, SortingWorkflow
from smartbin_daemon.config import ArduinoConfig, BinsConfig
from smartbin_daemon.hardware.arduino.link import ArduinoLink
from smartbin_daemon.hardware.arduino.simulator import SimulatedArduino
from smartbin_daemon.messages import (
    ButtonPressed,
    Decision,
    DistanceReading,
    FillLevel,
    ItemDropped,
    ItemSorted,
    MaintenanceChanged,
    PresenceChanged,
    WeightReading,
)
from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.bus import SIGNED, UNSIGNED, Bus, Event, Request, Response, StateUpdate
from smartbin_daemon.runtime.supervisor import WorkersChanged
from smartbin_daemon.runtime.worker import Worker
from smartbin_daemon.store import Store

from ..conftest import SteppedClock, wait_until

ARDUINO_OWNS_ALL: dict[str, str | None] = {"route": "arduino", "lid": "arduino", "led": "arduino", "buzzer": "arduino"}

COMPARTMENTS: list[dict[str, Any]] = [
    {"id": "recycling", "name": "Recycling", "categories": ["plastic", "metal"],
     "sensor": {"source": "arduino", "channel": 1}},
    {"id": "paper", "name": "Paper", "categories": ["paper_cardboard"], "sensor": {"source": "arduino", "channel": 2}},
    {"id": "residual", "name": "Residual", "categories": ["residual"], "sensor": {"source": "arduino", "channel": 3}},
]

LINK: dict[str, Any] = {"enabled": True, "backend": "simulator", "boot_wait_s": 0.5, "ack_timeout_s": 0.2, "retries": 1,
                        "stale_after_s": 1.0, "reconnect_after_s": 2.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.3}

NO_DROP_SENSORS = ("us", "lid", "temp")
"""A board without drop sensor and load cell: only the test confirms drops (ItemDropped / WeightReading / FillLevel)."""


def bins_config(workflow: dict[str, Any] | None = None, compartments: list[dict[str, Any]] | None = None,
                fill: dict[str, Any] | None = None) -> BinsConfig:
    wf = {"decision_timeout_s": 0.5, "route_timeout_s": 1.0, "confirm_timeout_s": 0.5, "vision_grace_s": 0.0,
          **(workflow or {})}
    return BinsConfig.model_validate({"enabled": True, "compartments": compartments or COMPARTMENTS,
                                      "workflow": wf, "fill": fill or {}})


def decision(category: str, *, item_id: str = "det-1", uncertain: bool = False, reason: str | None = None,
             confidence: float = 0.91) -> Decision:
    """What the detector publishes after K frames."""
    return Decision(item_id=item_id, category=category, class_name=f"{category}_thing", confidence=confidence,
                    runner_up=None, runner_up_confidence=0.0, margin=confidence, uncertain=uncertain, reason=reason,
                    compartment=None, frames=3, votes={category: confidence}, frame_seq=7, mono=time.monotonic())


def workflow_meta(store: Store) -> dict[str, Any]:
    """What the workflow persisted about itself (error, maintenance)."""
    return {str(k): json.loads(str(v)) for k, v in store.query("SELECT key, value FROM workflow_meta")}


class Bench:
    """Simulator + ArduinoLink + SortingWorkflow (+ optionally the FillTracker), each worker in its own thread."""

    def __init__(self, tmp_path: Path, *, workflow: dict[str, Any] | None = None,
                 compartments: list[dict[str, Any]] | None = None, fill: dict[str, Any] | None = None,
                 sim: dict[str, Any] | None = None, link: dict[str, Any] | None = None,
                 vision: dict[str, bool] | None = None, tracker: bool = False) -> None:
        self.cfg = bins_config(workflow, compartments, fill)
        self.vision = vision or {"camera": True, "detector": True}
        self.store = Store(tmp_path / "smartbin.db")
        self.clock = SteppedClock()
        """The workflow's clock: a test steps it past a timeout instead of sleeping."""
        self.bus = Bus()
        self.bus.attach_sink(Outbox(self.store))
        self.seen = self.bus.subscribe("test", (Event, StateUpdate, Response, MaintenanceChanged, ItemSorted),
                                       maxsize=1_000_000)
        self.spy = self.bus.subscribe("arduino", (Request,), maxsize=100_000)  # sees what is addressed to the link
        self.messages: list[Any] = []
        self.requests_seen: list[Request] = []
        self.threads: dict[Worker, threading.Thread] = {}
        link_path = tmp_path / "arduino.tty"
        self.sim = SimulatedArduino(link_path, compartments=3, telemetry_interval_s=0.1, boot_delay_s=0.05, seed=3,
                                    **(sim or {}))
        self.sim.start()
        self.link = ArduinoLink(self.bus, ArduinoConfig.model_validate(
            {**LINK, **(link or {}), "simulator": {"link": str(link_path)}}), tmp_path)
        self.start(self.link)
        wait_until(lambda: self.link.status == "connected", 5, what="the Arduino link to connect")
        self.tracker: FillTracker | None = None
        if tracker:
            self.tracker = self.new_tracker()
        self.workflow = SortingWorkflow(self.bus, self.cfg, self.store, owners=ARDUINO_OWNS_ALL, vision=self.vision,
                                        clock=self.clock)
        if self.tracker is not None:
            self.start(self.tracker)
        self.start(self.workflow)
        self.wait_state("idle")

    # -- workers ---------------------------------------------------------------------------

    def new_tracker(self) -> FillTracker:
        t = FillTracker(self.bus, self.cfg, self.store)
        t.state_min_interval_s = 0.1
        return t

    def start(self, worker: Worker) -> None:
        thread = threading.Thread(target=worker.run, name=f"test-{worker.name}", daemon=True)
        self.threads[worker] = thread
        thread.start()

    def stop(self, worker: Worker) -> None:
        worker.request_stop()
        thread = self.threads.pop(worker)
        thread.join(5)
        assert not thread.is_alive(), f"{worker.name} did not stop"
        if worker.inbox is not None:
            self.bus.unsubscribe(worker.inbox)

    def restart_workflow(self, *, with_tracker: bool = False) -> None:
        """A daemon restart on the same database: new worker objects, nothing kept in memory."""
        if self.workflow in self.threads:
            self.stop(self.workflow)
        if with_tracker and self.tracker is not None:
            self.stop(self.tracker)
        self.drain()
        self.messages.clear()
        self.workflow = SortingWorkflow(self.bus, self.cfg, self.store, owners=ARDUINO_OWNS_ALL, vision=self.vision,
                                        clock=self.clock)
        if with_tracker and self.tracker is not None:
            self.tracker = self.new_tracker()
            self.start(self.tracker)
        self.start(self.workflow)

    def close(self) -> None:
        for worker in [w for w in self.threads if w is not self.link]:
            self.stop(worker)
        self.stop(self.link)
        self.sim.stop()
        self.store.close()

    # -- observing -------------------------------------------------------------------------

    def drain(self) -> list[Any]:
        while len(self.seen):
            msg = self.seen.get(0)
            if msg is not None:
                self.messages.append(msg)
        while len(self.spy):
            req = self.spy.get(0)
            if req is not None:
                self.requests_seen.append(req)
        return self.messages

    def events(self, type_: str | None = None, component: str | None = None) -> list[Event]:
        return [m for m in self.drain() if isinstance(m, Event) and (type_ is None or m.type == type_)
                and (component is None or m.component == component)]

    def alerts(self, code: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events("alert") if e.data["code"] == code]

    def wait_event(self, type_: str, predicate: Callable[[dict[str, Any]], bool] = lambda d: True,
                   timeout: float = 5.0) -> Event:
        return wait_until(lambda: next((e for e in self.events(type_) if predicate(e.data)), None), timeout,  # type: ignore[no-any-return]
                          what=f"event {type_}")

    def states(self) -> list[dict[str, Any]]:
        return [m.state for m in self.drain() if isinstance(m, StateUpdate) and m.component == "workflow"]

    def state(self) -> dict[str, Any]:
        states = self.states()
        return states[-1] if states else {}

    def state_path(self) -> list[str]:
        """The workflow states in the order they were published, repeats collapsed."""
        path: list[str] = []
        for s in self.states():
            if not path or path[-1] != s["state"]:
                path.append(s["state"])
        return path

    def wait_state(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        return wait_until(lambda: self.state() if self.state().get("state") == name else None, timeout,  # type: ignore[no-any-return]
                          what=f"workflow state {name} (now {self.state().get('state')})")

    def route_requests(self) -> list[Request]:
        self.drain()
        return [r for r in self.requests_seen if r.command == "route"]

    def fill_state(self, compartment: str) -> dict[str, Any]:
        fill = [m.state for m in self.drain() if isinstance(m, StateUpdate) and m.component == "fill"]
        return fill[-1]["compartments"][compartment] if fill else {}

    # -- acting ----------------------------------------------------------------------------

    def publish(self, msg: Any) -> None:
        self.bus.publish(msg)

    def present(self) -> None:
        self.bus.publish(PresenceChanged("gpio", True, time.monotonic()))

    def decide(self, category: str, **kw: Any) -> None:
        self.bus.publish(decision(category, **kw))

    def request(self, target: str, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
                authority: str = SIGNED) -> Response:
        rid = f"test-{uuid.uuid4().hex}"
        self.bus.publish(Request(target, command, args or {}, rid, authority=authority))
        return wait_until(lambda: next((m for m in self.drain() if isinstance(m, Response) and m.request_id == rid),  # type: ignore[no-any-return]
                                       None), timeout, what=f"the answer to {command}")

    def sync(self) -> None:
        """Every message published before this one has been handled by the workflow (its inbox is FIFO)."""
        resp = self.request("workflow", "workflow/ping")
        assert not resp.ok and "does not handle" in (resp.error or "")

    def after(self, seconds: float) -> None:
        """Step the workflow's clock and let it look at its timers (each handled message is followed by a tick)."""
        self.clock.advance(seconds)
        self.sync()
        self.sync()

    def set_level(self, compartment: str, level: str, pct: float) -> None:
        self.bus.publish(FillLevel(compartment, pct, level, time.monotonic()))

    def into_error(self) -> None:
        """The Arduino stops acknowledging: one item fails twice and the workflow locks up in `error`."""
        self.sim.drop_acks(100_000)
        self.present()
        self.decide("plastic")
        self.wait_state("error")
        self.sim.drop_acks(0)
        wait_until(lambda: self.sim.lid == "locked", 5, what="the lid lock to reach the simulator")

    def lid_ops(self) -> list[str]:
        return [f.args["op"] for f in list(self.sim.received) if f.type == "LID"]


@pytest.fixture
def make_bench(tmp_path: Path) -> Iterator[Callable[..., Bench]]:
    made: list[Bench] = []

    def make(**kw: Any) -> Bench:
        b = Bench(tmp_path, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def bench(make_bench: Callable[..., Bench]) -> Bench:
    return make_bench()


# --------------------------------------------------------------------------- the item's way


def test_an_item_is_classified_routed_and_confirmed_by_the_drop_sensor(bench: Bench) -> None:
    t_presence = time.monotonic()
    bench.publish(PresenceChanged("gpio", True, t_presence))
    bench.wait_state("classifying")
    bench.decide("plastic", item_id="det-42")

    data = bench.wait_event("item_sorted").data
    assert data["outcome"] == "sorted"
    assert (data["category"], data["compartment"], data["flap"]) == ("plastic", "recycling", 1)
    assert data["detection_id"] == "det-42" and data["class_name"] == "plastic_thing"
    assert data["confirmation"] == "drop" and data["confirmed"] is True
    assert data["route_attempts"] == 1 and data["maintenance"] is False
    latency = data["latency"]
    assert set(latency) == {"presence_to_decision_ms", "decision_to_ack_ms", "presence_to_route_ms", "total_ms"}
    assert all(isinstance(v, float) and v >= 0 for v in latency.values()), latency
    assert latency["presence_to_decision_ms"] <= latency["presence_to_route_ms"] <= latency["total_ms"]
    assert latency["decision_to_ack_ms"] <= latency["total_ms"]

    bench.wait_state("idle")
    sorted_msgs = [m for m in bench.drain() if isinstance(m, ItemSorted)]
    assert [(m.compartment, m.item_id) for m in sorted_msgs] == [("recycling", data["item_id"])]
    assert [b for _, b in bench.sim.routes] == [1], "the simulated flap moved once, to compartment 1"
    assert bench.state_path() == ["idle", "item_present", "classifying", "routing", "confirming", "idle"]
    assert bench.state()["counts"]["sorted"] == 1
    assert bench.state()["last_item"]["item_id"] == data["item_id"]
    assert bench.store.query("SELECT COUNT(*) FROM workflow_item") == [(0,)], "a finished item leaves no row"
    stored = [e.type for e in Outbox(bench.store).pending(limit=1000)]
    assert "item_sorted" in stored, "the event went through the durable outbox"


def test_each_category_goes_to_the_compartment_accepting_it_and_the_unaccepted_ones_to_residual(bench: Bench) -> None:
    cases = [("plastic", "recycling", 1), ("paper_cardboard", "paper", 2), ("metal", "recycling", 1),
             ("residual", "residual", 3), ("glass", "residual", 3)]
    for n, (category, compartment, flap) in enumerate(cases, start=1):
        bench.present()
        bench.decide(category, item_id=f"det-{n}")
        data = bench.wait_event("item_sorted", lambda d, n=n: d["detection_id"] == f"det-{n}").data  # type: ignore[misc]
        assert (data["category"], data["compartment"], data["flap"]) == (category, compartment, flap)
        bench.wait_state("idle")
    assert [b for _, b in bench.sim.routes] == [flap for _, _, flap in cases]
    glass = bench.wait_event("item_sorted", lambda d: d["category"] == "glass").data
    assert any("no compartment accepts glass" in note for note in glass["notes"])


def test_a_decision_without_presence_still_sorts_the_item(bench: Bench) -> None:
    """A motion-gated detector without presence sensor: the decision itself announces the item."""
    bench.decide("paper_cardboard", item_id="det-motion")
    data = bench.wait_event("item_sorted").data
    assert (data["detection_id"], data["compartment"], data["confirmed"]) == ("det-motion", "paper", True)
    assert data["latency"]["presence_to_decision_ms"] is not None
    assert bench.sim.routes and bench.sim.routes[0][1] == 2


def test_an_item_without_a_decision_goes_to_residual_after_the_decision_timeout(
        make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(workflow={"decision_timeout_s": 60.0})
    bench.present()
    bench.wait_state("classifying")
    bench.after(59.0)
    assert bench.state()["state"] == "classifying", "not before workflow.decision_timeout_s"
    bench.after(1.0)
    data = bench.wait_event("item_sorted").data
    assert (data["category"], data["compartment"], data["flap"]) == ("residual", "residual", 3)
    assert data["reason"] == "decision_timeout" and data["uncertain"] is True
    assert data["detection_id"] is None
    assert data["latency"]["presence_to_decision_ms"] >= 60_000
    bench.wait_state("idle")
    assert bench.state()["counts"]["residual"] == 1


def test_a_decision_arriving_after_its_item_timed_out_does_not_start_a_second_item(
        make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(workflow={"decision_timeout_s": 60.0})
    bench.present()
    bench.wait_state("classifying")
    bench.after(60.0)
    bench.wait_event("item_sorted")
    bench.wait_state("idle")
    bench.decide("plastic", item_id="late-1")
    bench.after(60.0)  # past every timeout an item started by the late decision would have
    assert len(bench.events("item_sorted")) == 1
    assert bench.state()["state"] == "idle"
    assert len(bench.route_requests()) == 1


def test_an_uncertain_decision_goes_to_residual(bench: Bench) -> None:
    bench.present()
    bench.decide("residual", uncertain=True, reason="low_confidence", confidence=0.3)
    data = bench.wait_event("item_sorted").data
    assert (data["compartment"], data["uncertain"], data["reason"]) == ("residual", True, "low_confidence")


# --------------------------------------------------------------------------- full compartments


def test_a_full_target_compartment_sends_the_item_to_the_fallback(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(workflow={"fallback_compartment": "residual"})
    bench.set_level("recycling", "full", 97.0)
    bench.present()
    bench.decide("plastic")
    data = bench.wait_event("item_sorted").data
    assert (data["category"], data["compartment"], data["flap"]) == ("plastic", "residual", 3)
    assert any("recycling full; fallback residual" in n for n in data["notes"])
    bench.wait_state("idle")
    assert bench.state()["counts"]["fallback"] == 1
    assert bench.state()["levels"]["recycling"] == "full"
    assert [b for _, b in bench.sim.routes] == [3]


@pytest.mark.parametrize("fallback", [None, "residual"], ids=["no_fallback", "fallback_also_full"])
def test_a_full_compartment_without_free_fallback_refuses_the_item_and_locks_the_lid_until_it_is_emptied(
        make_bench: Callable[..., Bench], fallback: str | None) -> None:
    bench = make_bench(workflow={"fallback_compartment": fallback})
    bench.set_level("recycling", "full", 96.0)
    if fallback is not None:
        bench.set_level("residual", "full", 99.0)
    bench.present()
    bench.decide("metal")

    refused = bench.wait_event("item_refused").data
    assert refused["outcome"] == "refused" and refused["code"] == "compartment_full"
    assert refused["category"] == "metal" and "full" in refused["error"]
    st = bench.wait_state("blocked")
    assert st["blocked"]["code"] == "compartment_full" and st["blocked"]["compartment"] == "recycling"
    alert = bench.alerts("refused_compartment_full")
    assert alert and alert[-1]["active"] is True and alert[-1]["severity"] == "critical"
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the lid lock to reach the simulator")
    wait_until(lambda: bench.sim.led == "error" and bench.sim.buzzer == "alarm", 5, what="error LED and alarm")
    assert bench.sim.routes == [], "nothing was routed"

    bench.present()  # the next item is not taken while blocked
    bench.sync()
    assert bench.state()["state"] == "blocked" and bench.state()["item"] is None

    bench.set_level("residual" if fallback else "paper", "ok", 10.0)  # another compartment: no change
    bench.sync()
    assert bench.state()["state"] == "blocked"

    bench.set_level("recycling", "almost_full", 82.0)  # emptied a bit: the block lifts by itself
    bench.wait_state("idle")
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the lid unlocked")
    assert bench.alerts("refused_compartment_full")[-1]["active"] is False
    assert bench.state()["blocked"] is None
    bench.present()
    bench.decide("metal", item_id="det-after")
    data = bench.wait_event("item_sorted").data
    assert data["compartment"] == "recycling"


# --------------------------------------------------------------------------- the Arduino does not answer


def test_no_ack_is_retried_once_with_the_same_command_id_then_the_workflow_locks_up_in_error(bench: Bench) -> None:
    bench.sim.drop_acks(100_000)  # commands still execute, every reply is lost
    bench.present()
    bench.decide("plastic")

    failed = bench.wait_event("item_failed").data
    assert failed["outcome"] == "failed" and failed["route_attempts"] == 2
    assert "no ACK" in failed["error"]
    routes = bench.route_requests()
    assert len(routes) == 2, "exactly one workflow-level retry"
    assert routes[0].args == routes[1].args == {"compartment": 1, "command_id": routes[0].args["command_id"]}
    assert routes[0].request_id != routes[1].request_id
    ids = {f.args["id"] for f in list(bench.sim.received) if f.type == "ROUTE"}
    assert ids == {routes[0].args["command_id"]}, "every ROUTE frame on the wire carried the same id"
    assert len(bench.sim.routes) == 1, "the MCU executed the id once"

    st = bench.wait_state("error")
    assert st["error"]["code"] == "route_failed" and st["error"]["item_id"] == failed["item_id"]
    alert = bench.alerts("route_failed")
    assert alert and alert[-1]["severity"] == "critical" and alert[-1]["active"] is True
    bench.sim.drop_acks(0)
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the lid lock to reach the simulator")
    assert bench.store.query("SELECT COUNT(*) FROM workflow_item") == [(0,)]
    assert workflow_meta(bench.store)["error"]["code"] == "route_failed"
    assert len(bench.events("item_sorted")) == 0


def test_a_hung_arduino_ends_the_item_in_error_and_the_lid_is_locked_once_it_is_back(bench: Bench) -> None:
    bench.sim.hang()
    bench.present()
    bench.decide("paper_cardboard")
    failed = bench.wait_event("item_failed").data
    assert failed["route_attempts"] == 2 and failed["compartment"] == "paper"
    bench.wait_state("error")
    assert bench.sim.lid == "closed", "nothing reaches a hung board"
    bench.sim.hang(False)
    wait_until(lambda: bench.sim.lid == "locked", 10, what="the lid locked after the board came back")
    assert bench.state()["state"] == "error"


def test_presence_while_in_error_is_not_accepted(bench: Bench) -> None:
    bench.into_error()
    routes = len(bench.route_requests())
    bench.present()
    bench.decide("plastic", item_id="det-ignored")
    bench.sync()
    st = bench.state()
    assert st["state"] == "error" and st["item"] is None
    assert len(bench.route_requests()) == routes
    assert bench.store.query("SELECT COUNT(*) FROM workflow_item") == [(0,)]


def test_clear_error_answers_ok_unlocks_the_lid_and_sorting_resumes(bench: Bench) -> None:
    bench.into_error()
    resp = bench.request("workflow", "workflow/clear_error")
    assert resp.ok, resp.error
    assert resp.data["cleared"]["code"] == "route_failed" and resp.data["state"] == "idle"
    bench.wait_state("idle")
    assert bench.state()["error"] is None
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the lid unlocked")
    assert bench.alerts("route_failed")[-1]["active"] is False
    assert workflow_meta(bench.store)["error"] is None

    bench.present()
    bench.decide("paper_cardboard", item_id="det-next")
    assert bench.wait_event("item_sorted").data["compartment"] == "paper"


def test_clear_error_with_nothing_to_clear_is_refused(bench: Bench) -> None:
    resp = bench.request("workflow", "workflow/clear_error")
    assert not resp.ok
    assert "nothing to clear" in (resp.error or "") and "idle" in (resp.error or "")
    assert bench.state()["state"] == "idle"


def test_the_error_survives_a_restart_and_the_lid_is_locked_again(bench: Bench) -> None:
    bench.into_error()
    item_id = bench.state()["error"]["item_id"]
    assert bench.request("arduino", "lid", {"op": "unlock"}).ok  # someone unlocked it by hand meanwhile
    assert bench.sim.lid == "closed"

    bench.restart_workflow()
    st = bench.wait_state("error")
    assert st["error"]["code"] == "route_failed" and st["error"]["item_id"] == item_id
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the restored error to lock the lid")
    bench.present()
    bench.sync()
    assert bench.state()["state"] == "error", "still not accepting items after the restart"
    assert bench.request("workflow", "workflow/clear_error").ok
    bench.wait_state("idle")


def test_a_rebooted_arduino_gets_the_lid_locked_again_while_in_error(bench: Bench) -> None:
    bench.into_error()
    boots = bench.sim.boots
    # Reboot right after the link published its state: the next (rate-limited) publish is ~1 s away.
    published = len([m for m in bench.drain() if isinstance(m, StateUpdate) and m.component == "arduino"])
    wait_until(lambda: len([m for m in bench.drain() if isinstance(m, StateUpdate) and m.component == "arduino"])
               > published, 3, interval=0.01, what="an arduino state update")
    bench.sim.reboot()  # brown-out: the lock relay drops out
    released = bench.sim.lid  # read at once: under load the workflow may re-lock before a later read
    wait_until(lambda: bench.sim.boots > boots, 5, what="the board rebooted")
    assert released == "closed"
    wait_until(lambda: bench.sim.lid == "locked", 2.5, what="the workflow to lock the lid again")


# --------------------------------------------------------------------------- vision health


VISION_DOWN: dict[str, Callable[[], list[Any]]] = {
    "detector_worker_failed": lambda: [WorkersChanged({"detector": {"status": "failed"}, "camera": {"status": "running"}})],
    "detection_switched_off": lambda: [StateUpdate("detector", {"enabled": False, "model": "waste-nano"})],
    "no_model_loaded": lambda: [StateUpdate("detector", {"enabled": True, "model": None})],
    "camera_gone": lambda: [StateUpdate("camera", {"status": "disconnected"})],
}
VISION_WHY = {"detector_worker_failed": "detector worker failed", "detection_switched_off": "detection switched off",
              "no_model_loaded": "no model loaded", "camera_gone": "camera disconnected"}


@pytest.mark.parametrize("cause", list(VISION_DOWN))
def test_vision_down_with_the_residual_policy_sends_items_to_residual(make_bench: Callable[..., Bench],
                                                                       cause: str) -> None:
    bench = make_bench(workflow={"degraded_policy": "residual"})
    for msg in VISION_DOWN[cause]():
        bench.publish(msg)
    bench.present()
    data = bench.wait_event("item_sorted").data
    assert (data["category"], data["compartment"]) == ("residual", "residual")
    assert data["reason"] == "vision_down" and data["uncertain"] is True
    assert any(VISION_WHY[cause] in n for n in data["notes"]), data["notes"]
    bench.wait_state("idle")
    assert VISION_WHY[cause] in bench.state()["vision"]


def test_a_healthy_detector_state_does_not_count_as_vision_down(bench: Bench) -> None:
    bench.publish(StateUpdate("detector", {"enabled": True, "model": "waste-nano"}))
    bench.publish(StateUpdate("camera", {"status": "connected"}))
    bench.publish(WorkersChanged({"detector": {"status": "running"}, "camera": {"status": "running"}}))
    bench.present()
    bench.wait_state("classifying")
    bench.decide("plastic")
    data = bench.wait_event("item_sorted").data
    assert data["compartment"] == "recycling" and data["reason"] is None
    assert bench.state()["vision"] == "ok"


def test_vision_down_with_the_refuse_policy_blocks_until_the_detector_is_back(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(workflow={"degraded_policy": "refuse"})
    bench.publish(WorkersChanged({"detector": {"status": "restarting"}, "camera": {"status": "running"}}))
    bench.present()
    refused = bench.wait_event("item_refused").data
    assert refused["code"] == "vision_down" and "detector worker restarting" in refused["error"]
    st = bench.wait_state("blocked")
    assert st["blocked"]["code"] == "vision_down"
    assert bench.alerts("refused_vision_down")[-1]["active"] is True
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the lid locked")
    assert bench.sim.routes == []

    bench.publish(WorkersChanged({"detector": {"status": "running"}, "camera": {"status": "running"}}))
    bench.wait_state("idle")
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the lid unlocked")
    assert bench.alerts("refused_vision_down")[-1]["active"] is False
    bench.present()
    bench.decide("plastic")
    assert bench.wait_event("item_sorted").data["compartment"] == "recycling"


def test_detection_switched_off_with_the_refuse_policy_blocks_until_it_is_switched_on(
        make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(workflow={"degraded_policy": "refuse"})
    bench.publish(StateUpdate("detector", {"enabled": False, "model": "waste-nano"}))
    bench.present()
    assert "detection switched off" in bench.wait_event("item_refused").data["error"]
    bench.wait_state("blocked")
    bench.publish(StateUpdate("detector", {"enabled": True, "model": "waste-nano"}))
    bench.wait_state("idle")


def test_a_restarted_workflow_takes_levels_and_vision_from_the_last_published_states(bench: Bench) -> None:
    """After a worker restart nobody republishes at once: the bus's last-value cache must be used."""
    bench.publish(StateUpdate("fill", {"compartments": {"recycling": {"level": "full", "fill_pct": 97.0},
                                                        "paper": {"level": "ok", "fill_pct": 10.0}}}))
    bench.publish(StateUpdate("detector", {"enabled": False, "model": "waste-nano"}))
    bench.restart_workflow()
    st = bench.wait_state("idle")
    assert st["levels"]["recycling"] == "full" and st["vision"] == "detection switched off"
    bench.publish(StateUpdate("detector", {"enabled": True, "model": "waste-nano"}))
    bench.present()
    bench.decide("metal")
    refused = bench.wait_event("item_refused").data
    assert refused["code"] == "compartment_full"


# --------------------------------------------------------------------------- confirmation


def _into_confirming(bench: Bench, category: str = "plastic") -> dict[str, Any]:
    bench.present()
    bench.decide(category)
    return bench.wait_state("confirming")


def test_a_load_cell_change_confirms_the_drop(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(sim={"sensors": NO_DROP_SENSORS}, workflow={"confirm_timeout_s": 3.0, "weight_step_g": 5.0})
    bench.publish(WeightReading(1000.0, time.monotonic()))
    _into_confirming(bench)
    bench.publish(WeightReading(1003.0, time.monotonic()))  # noise: below weight_step_g
    bench.sync()
    assert bench.state()["state"] == "confirming"
    bench.publish(WeightReading(1085.0, time.monotonic()))
    data = bench.wait_event("item_sorted").data
    assert data["confirmation"] == "weight" and data["confirmed"] is True


def test_a_fill_rise_in_the_target_compartment_confirms_the_drop(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(sim={"sensors": NO_DROP_SENSORS}, workflow={"confirm_timeout_s": 3.0, "fill_step_pct": 1.0})
    bench.set_level("recycling", "ok", 40.0)
    _into_confirming(bench)
    bench.set_level("paper", "ok", 60.0)  # another compartment
    bench.set_level("recycling", "ok", 40.5)  # below fill_step_pct
    bench.sync()
    assert bench.state()["state"] == "confirming"
    bench.set_level("recycling", "ok", 42.0)
    data = bench.wait_event("item_sorted").data
    assert data["confirmation"] == "fill" and data["confirmed"] is True


def test_a_drop_reported_for_another_flap_does_not_confirm_the_item(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(sim={"sensors": NO_DROP_SENSORS}, workflow={"confirm_timeout_s": 3.0})
    _into_confirming(bench)  # plastic: flap 1
    bench.publish(ItemDropped(2, time.monotonic()))
    bench.sync()
    assert bench.state()["state"] == "confirming"
    bench.publish(ItemDropped(1, time.monotonic()))
    data = bench.wait_event("item_sorted").data
    assert data["confirmation"] == "drop" and data["flap"] == 1
    assert any("drop seen in flap 2, expected 1" in n for n in data["notes"])


def test_without_any_confirmation_the_item_counts_as_sorted_unconfirmed_after_the_confirm_timeout(
        make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(workflow={"confirm_timeout_s": 60.0})
    bench.sim.jam(1)  # the flap stalls: ACK, but no drop and no weight change
    _into_confirming(bench)
    bench.after(59.0)
    assert bench.state()["state"] == "confirming"
    bench.after(1.0)
    data = bench.wait_event("item_sorted").data
    assert data["confirmation"] == "timeout" and data["confirmed"] is False
    bench.wait_state("idle")
    assert bench.state()["counts"]["unconfirmed"] == 1 and bench.state()["counts"]["sorted"] == 1
    assert [m.compartment for m in bench.drain() if isinstance(m, ItemSorted)] == ["recycling"]


# --------------------------------------------------------------------------- power loss


def test_an_item_cut_off_while_routing_is_reported_as_interrupted_exactly_once(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(link={"ack_timeout_s": 3.0, "retries": 0}, workflow={"route_timeout_s": 5.0})
    bench.sim.drop_acks(100_000)
    bench.present()
    bench.decide("paper_cardboard")
    st = bench.wait_state("routing")
    item_id = st["item"]["item_id"]
    command_id = bench.route_requests()[0].args["command_id"]
    bench.stop(bench.workflow)  # the power goes: nothing after this point runs
    assert bench.store.query("SELECT id, state FROM workflow_item") == [(item_id, "routing")]
    bench.sim.drop_acks(0)

    bench.restart_workflow()
    interrupted = bench.wait_event("item_interrupted").data
    assert interrupted["item_id"] == item_id and interrupted["state"] == "routing"
    assert interrupted["compartment"] == "paper" and interrupted["category"] == "paper_cardboard"
    assert interrupted["command_id"] == command_id and interrupted["route_attempts"] == 1
    assert interrupted["started_at"] is not None
    st = bench.wait_state("idle")
    assert st["counts"]["interrupted"] == 1 and st["last_item"]["outcome"] == "interrupted"

    bench.restart_workflow()
    bench.wait_state("idle")
    bench.sync()
    assert bench.events("item_interrupted") == [], "reported once, not on every start"
    stored = [e for e in Outbox(bench.store).pending(limit=10_000) if e.type == "item_interrupted"]
    assert [e.data["item_id"] for e in stored] == [item_id]


def test_a_row_left_in_the_store_is_reported_as_interrupted_on_start(tmp_path: Path,
                                                                      make_bench: Callable[..., Bench]) -> None:
    store = Store(tmp_path / "smartbin.db")
    for sql in SCHEMA:
        store.execute(sql)
    saved = {"id": "cafe01", "started_at": time.time() - 5, "category": "metal", "compartment": "recycling",
             "route_attempts": 2, "command_id": "beef", "maintenance": False}
    store.execute("INSERT INTO workflow_item (id, state, data, updated_at) VALUES (?, ?, ?, ?)",
                  ("cafe01", "confirming", json.dumps(saved), time.time()))
    store.close()

    bench = make_bench()
    data = bench.wait_event("item_interrupted").data
    assert (data["item_id"], data["state"], data["compartment"]) == ("cafe01", "confirming", "recycling")
    assert (data["route_attempts"], data["command_id"], data["category"]) == (2, "beef", "metal")
    assert bench.store.query("SELECT COUNT(*) FROM workflow_item") == [(0,)]


# --------------------------------------------------------------------------- maintenance


def test_a_signed_maintenance_request_pauses_sorting_and_unlocks_the_lid(bench: Bench) -> None:
    assert bench.request("arduino", "lid", {"op": "lock"}).ok
    resp = bench.request("workflow", "maintenance", {"on": True})
    assert resp.ok and resp.data == {"maintenance": True, "state": "maintenance", "pending": False,
                                     "lid_unlocked": True}
    st = bench.wait_state("maintenance")
    assert st["maintenance"] is True
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the lid unlock to reach the simulator")
    assert bench.lid_ops()[-1] == "unlock"
    wait_until(lambda: bench.sim.led == "blink", 5, what="the maintenance LED pattern")
    assert [m.on for m in bench.drain() if isinstance(m, MaintenanceChanged)] == [True]
    event = bench.wait_event("maintenance").data
    assert event["on"] is True and event["maintenance"] is True
    assert workflow_meta(bench.store)["maintenance"] is True

    bench.present()
    bench.decide("plastic")
    bench.sync()
    assert bench.state()["state"] == "maintenance" and bench.state()["item"] is None
    assert bench.route_requests() == []

    resp = bench.request("workflow", "maintenance", {"on": False})
    assert resp.ok and resp.data["maintenance"] is False
    bench.wait_state("idle")
    assert [m.on for m in bench.drain() if isinstance(m, MaintenanceChanged)] == [True, False]
    assert bench.events("maintenance")[-1].data == {"on": False, "reason": "request", "maintenance": False}
    bench.present()
    bench.decide("plastic")
    assert bench.wait_event("item_sorted").data["maintenance"] is False


def test_maintenance_requested_while_routing_is_entered_after_the_item(bench: Bench) -> None:
    bench.sim.set_ack_delay(0.15)  # the ROUTE ACK is still on its way when maintenance is asked for
    bench.present()
    bench.decide("plastic")
    bench.wait_state("routing")
    resp = bench.request("workflow", "maintenance", {"on": True})
    assert resp.ok and resp.data["pending"] is True and resp.data["maintenance"] is False
    assert resp.data["state"] in ("routing", "confirming")
    assert bench.state()["maintenance_pending"] is True

    data = bench.wait_event("item_sorted").data
    assert data["compartment"] == "recycling" and data["maintenance"] is False
    st = bench.wait_state("maintenance", timeout=2)
    assert st["maintenance"] is True and st["maintenance_pending"] is False


def test_holding_the_service_button_toggles_maintenance(bench: Bench) -> None:
    bench.publish(ButtonPressed("short", time.monotonic()))
    bench.sync()
    assert bench.state()["state"] == "idle"
    bench.publish(ButtonPressed("hold", time.monotonic()))
    bench.wait_state("maintenance")
    assert bench.wait_event("maintenance").data["reason"] == "service button held"
    bench.publish(ButtonPressed("hold", time.monotonic()))
    bench.wait_state("idle")
    assert [m.on for m in bench.drain() if isinstance(m, MaintenanceChanged)] == [True, False]


def test_maintenance_survives_a_restart(bench: Bench) -> None:
    assert bench.request("workflow", "maintenance", {"on": True}).ok
    bench.wait_state("maintenance")
    assert bench.request("arduino", "lid", {"op": "lock"}).ok  # locked meanwhile (by hand, a reboot, ...)
    assert bench.sim.lid == "locked"

    bench.restart_workflow()
    st = bench.wait_state("maintenance")
    assert st["maintenance"] is True
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the restored maintenance mode to unlock the lid")
    bench.present()
    bench.sync()
    assert bench.state()["state"] == "maintenance"
    assert bench.request("workflow", "maintenance", {"on": False}).ok
    bench.wait_state("idle")


def test_maintenance_entered_while_classifying_interrupts_the_item(bench: Bench) -> None:
    bench.present()
    st = bench.wait_state("classifying")
    item_id = st["item"]["item_id"]
    assert bench.request("workflow", "maintenance", {"on": True}).ok
    data = bench.wait_event("item_interrupted").data
    assert data["item_id"] == item_id and data["note"] == "maintenance mode"
    bench.wait_state("maintenance")
    bench.after(1.0)  # past decision_timeout_s: the dropped item must not come back
    assert bench.route_requests() == [] and bench.events("item_sorted") == []
    assert bench.store.query("SELECT COUNT(*) FROM workflow_item") == [(0,)]


GPIO_PAPER = [dict(COMPARTMENTS[0]), {**COMPARTMENTS[1], "sensor": {"source": "gpio", "channel": 2}},
              dict(COMPARTMENTS[2])]
FAST_FILL = {"filter": {"window": 1, "min_samples": 1, "confirm_s": 0, "settle_s": 0},
             "emptying": {"confirm_s": 0.5}}


def test_every_bin_event_emitted_during_maintenance_is_labelled_maintenance(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(tracker=True, compartments=GPIO_PAPER, fill=FAST_FILL)
    bench.publish(DistanceReading("gpio", 2, 500.0, time.monotonic()))  # paper 20 %: the first level, no event
    wait_until(lambda: bench.fill_state("paper").get("level") == "ok", 5, what="paper at level ok")

    assert bench.request("workflow", "maintenance", {"on": True}).ok
    bench.wait_state("maintenance")
    bench.publish(DistanceReading("gpio", 2, 110.0, time.monotonic()))  # the operator tops it up: full
    bench.wait_event("bin_level", lambda d: d["level"] == "full")
    assert bench.request("fill", "bin/emptied", {"compartment": "paper"}).ok
    bench.wait_event("bin_emptied")
    assert bench.request("workflow", "maintenance", {"on": False}).ok
    bench.wait_state("idle")

    events = [e for e in bench.events() if e.component in ("workflow", "fill") and e.type != "alert"]
    on = next(i for i, e in enumerate(events) if e.type == "maintenance" and e.data["on"] is True)
    off = next(i for i, e in enumerate(events) if e.type == "maintenance" and e.data["on"] is False)
    labelled = events[on:off]
    assert {"maintenance", "bin_level", "bin_emptied"} <= {e.type for e in labelled}
    assert all(e.data.get("maintenance") is True for e in labelled), [(e.type, e.data) for e in labelled]


def test_bin_events_after_a_restart_in_maintenance_are_still_labelled(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(tracker=True, compartments=GPIO_PAPER, fill=FAST_FILL)
    assert bench.request("workflow", "maintenance", {"on": True}).ok
    bench.wait_state("maintenance")
    bench.restart_workflow(with_tracker=True)  # the daemon restarts, still in maintenance
    bench.wait_state("maintenance")
    assert bench.request("fill", "bin/emptied", {"compartment": "paper"}).ok
    assert bench.wait_event("bin_emptied").data["maintenance"] is True


def test_leaving_maintenance_after_a_refusal_resumes_sorting_and_clears_the_refusal(bench: Bench) -> None:
    bench.set_level("recycling", "full", 97.0)
    bench.present()
    bench.decide("plastic")
    bench.wait_state("blocked")
    assert bench.request("workflow", "maintenance", {"on": True}).ok  # the operator comes to empty it
    bench.wait_state("maintenance")
    bench.set_level("recycling", "ok", 3.0)
    assert bench.request("workflow", "maintenance", {"on": False}).ok
    st = bench.wait_state("idle")
    assert bench.alerts("refused_compartment_full")[-1]["active"] is False
    assert st["blocked"] is None


# --------------------------------------------------------------------------- with the fill tracker


def test_sorted_items_fill_the_simulated_bin_and_are_counted_until_it_is_emptied(
        make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(tracker=True, sim={"item_mm": 60.0},
                       fill={"filter": {"window": 5, "min_samples": 3, "confirm_s": 0.5, "settle_s": 0.5},
                             "emptying": {"confirm_s": 0.5}})
    wait_until(lambda: bench.fill_state("recycling").get("fill_pct") is not None, 5, what="a first fill reading")
    assert abs(bench.fill_state("recycling")["fill_pct"]) <= 1.0
    for n in (1, 2):
        bench.present()
        bench.decide("plastic", item_id=f"det-{n}")
        bench.wait_event("item_sorted", lambda d, n=n: d["detection_id"] == f"det-{n}")  # type: ignore[misc]
        bench.wait_state("idle")
    # two items of 60 mm in a 500 mm span: ~24 % (±2 mm echo jitter, ~0.3 % temperature correction)
    wait_until(lambda: abs((bench.fill_state("recycling").get("fill_pct") or 0) - 24.0) <= 1.5, 5,
               what="the fill to follow the simulated items")
    st = bench.fill_state("recycling")
    assert st["items"] == 2 and st["items_total"] == 2
    assert bench.fill_state("paper")["items"] == 0

    bench.sim.empty(1)
    emptied = bench.wait_event("bin_emptied").data
    assert emptied["compartment"] == "recycling" and emptied["source"] == "sensor" and emptied["items"] == 2
    wait_until(lambda: bench.fill_state("recycling")["items"] == 0, 5, what="items reset by the emptying")
    assert bench.fill_state("recycling")["items_total"] == 2


# --------------------------------------------------------------------------- privilege follows the effect


def test_an_unsigned_maintenance_request_pauses_sorting_but_never_unlocks(bench: Bench) -> None:
    assert bench.request("arduino", "lid", {"op": "lock"}).ok  # an operator's signed lock
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the operator's lock")
    resp = bench.request("workflow", "maintenance", {"on": True}, authority=UNSIGNED)
    assert resp.ok and resp.data["maintenance"] is True and resp.data["lid_unlocked"] is False
    bench.wait_state("maintenance")
    bench.present()
    bench.decide("plastic")
    bench.sync()
    assert bench.route_requests() == [], "paused: nothing moves"
    assert bench.request("workflow", "maintenance", {"on": False}, authority=UNSIGNED).ok
    bench.wait_state("idle")
    bench.sync()
    assert "unlock" not in bench.lid_ops() and "open" not in bench.lid_ops()
    assert bench.sim.lid == "locked", "closing a locked lid keeps it locked"


def test_maintenance_entered_unsigned_does_not_unlock_after_a_restart(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench()
    assert bench.request("workflow", "maintenance", {"on": True}, authority=UNSIGNED).ok
    assert workflow_meta(bench.store)["maintenance_unlocked"] is False
    bench.restart_workflow()
    bench.wait_state("maintenance")
    bench.sync()
    assert "unlock" not in bench.lid_ops()


def test_holding_the_service_button_is_local_presence_and_unlocks(bench: Bench) -> None:
    assert bench.request("arduino", "lid", {"op": "lock"}).ok
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the operator's lock")
    bench.publish(ButtonPressed("hold", time.monotonic()))
    bench.wait_state("maintenance")
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the unlock for the technician at the bin")
    assert workflow_meta(bench.store)["maintenance_unlocked"] is True


def test_an_unsigned_clear_error_clears_the_state_but_keeps_the_lid_locked(bench: Bench) -> None:
    bench.into_error()
    resp = bench.request("workflow", "workflow/clear_error", authority=UNSIGNED)
    assert resp.ok and resp.data["state"] == "idle" and resp.data["lid_unlocked"] is False
    bench.sync()
    assert bench.sim.lid == "locked" and bench.lid_ops()[-1] == "lock"
    bench.into_error()
    resp = bench.request("workflow", "workflow/clear_error")  # signed
    assert resp.ok and resp.data["lid_unlocked"] is True
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the signed clear's unlock")


def test_leaving_maintenance_unsigned_while_blocked_stays_blocked_and_locked(bench: Bench) -> None:
    bench.set_level("recycling", "full", 97.0)
    bench.present()
    bench.decide("plastic")
    bench.wait_state("blocked")
    for on in (True, False):
        assert bench.request("workflow", "maintenance", {"on": on}, authority=UNSIGNED).ok
    st = bench.wait_state("blocked")
    assert st["blocked"]["code"] == "compartment_full"
    bench.sync()
    assert bench.sim.lid == "locked" and "unlock" not in bench.lid_ops()


def test_the_workflow_never_unlocks_a_lock_an_operator_had_set(make_bench: Callable[..., Bench]) -> None:
    """Detection off and on again (unsigned requests) around an item: the block and its end must not undo the lock."""
    bench = make_bench(workflow={"degraded_policy": "refuse"})
    assert bench.request("arduino", "lid", {"op": "lock"}).ok  # signed operator lock
    wait_until(lambda: bench.sim.lid == "locked", 5, what="the operator's lock")
    bench.sync()
    bench.publish(StateUpdate("detector", {"enabled": False, "model": "waste-nano"}))
    bench.present()
    bench.wait_state("blocked")
    bench.publish(StateUpdate("detector", {"enabled": True, "model": "waste-nano"}))  # vision is back
    bench.wait_state("idle")
    bench.sync()
    assert "unlock" not in bench.lid_ops() and bench.sim.lid == "locked"


def test_after_an_unsigned_clear_no_automatic_resume_unlocks_but_a_signed_clear_does(bench: Bench) -> None:
    """An unsigned clear leaves the lid locked and gives up the workflow's claim on that lock: a later refusal and
    its automatic end (the compartment no longer full) do not unlock it; a signed clear, asked explicitly, does."""
    bench.into_error()
    assert bench.request("workflow", "workflow/clear_error", authority=UNSIGNED).ok
    bench.set_level("recycling", "full", 97.0)
    bench.present()
    bench.decide("plastic")
    bench.wait_state("blocked")
    bench.set_level("recycling", "ok", 3.0)  # the bin resumes on its own
    bench.wait_state("idle")
    bench.sync()
    assert bench.sim.lid == "locked" and "unlock" not in bench.lid_ops()
    bench.into_error()
    resp = bench.request("workflow", "workflow/clear_error")  # signed
    assert resp.ok and resp.data["lid_unlocked"] is True
    wait_until(lambda: bench.sim.lid == "closed", 5, what="the signed clear's unlock")


# --------------------------------------------------------------------------- item history


def test_each_outcome_is_recorded_with_its_snapshot_and_answered_by_history_items_and_counts(bench: Bench) -> None:
    bench.publish(PresenceChanged("gpio", True, time.monotonic()))
    bench.wait_state("classifying")
    bench.publish(dataclasses.replace(decision("plastic", item_id="det-7"), snapshot="/evidence/2026-09-22/det-7.jpg"))
    sorted_data = bench.wait_event("item_sorted").data
    assert sorted_data["snapshot"] == "/evidence/2026-09-22/det-7.jpg", "the event names the snapshot too"
    bench.wait_state("idle")

    items = bench.request("workflow", "history/items", {"limit": 10})
    assert items.ok, items.error
    [item] = items.data["items"]
    assert (item["item_id"], item["outcome"], item["category"], item["compartment"], item["confidence"]) == (
        sorted_data["item_id"], "sorted", "plastic", "recycling", 0.91)
    assert (item["detection_id"], item["snapshot"], item["confirmation"]) == (
        "det-7", "/evidence/2026-09-22/det-7.jpg", "drop")
    assert item["at"].endswith("Z") and item["started_at"] == sorted_data["started_at"]

    counts = bench.request("workflow", "history/counts", {"hours": 2, "by": "compartment"})
    assert counts.ok and counts.data["totals"] == {"recycling": 1}
    assert [r["sorted"] for r in counts.data["rows"]] == [1]

    unknown = bench.request("workflow", "history/items", {"compartment": "glass"})
    assert not unknown.ok and "args.compartment: unknown compartment 'glass'" in str(unknown.error)
    too_long = bench.request("workflow", "history/counts", {"hours": 24 * 30})
    assert not too_long.ok and "args.period" in str(too_long.error)
