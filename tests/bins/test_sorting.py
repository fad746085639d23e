"""The pure sorting transition: events in, state and effects out, with explicit `now` values (no threads, no waits)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from smartbin_daemon.bins.sorting import transition, view
from smartbin_daemon.bins.sorting_model import (
    Actuate,
    Answer,
    ClearError,
    ComponentState,
    Decided,
    Dropped,
    Effect,
    Emit,
    Event,
    FillChanged,
    HandOff,
    Ids,
    Interrupted,
    Layout,
    LidReported,
    Log,
    MaintenanceAsked,
    Now,
    Presence,
    PublishState,
    RaiseAlert,
    Restore,
    RouteAnswer,
    SaveItem,
    SaveMeta,
    SendRoute,
    Sorting,
    Start,
    Tick,
    Weighed,
)

from .test_workflow import ARDUINO_OWNS_ALL, bins_config, decision

WALL0 = 1_700_000_000.0


@dataclass
class Core:
    """The transition driven by hand: each call names the moment (monotonic seconds) it happens at."""

    layout: Layout
    state: Sorting = field(default_factory=Sorting)
    effects: list[Effect] = field(default_factory=list)
    items: int = 0

    def feed(self, event: Event, t: float) -> tuple[Effect, ...]:
        before = self.state
        self.state, out = transition(self.layout, self.state, event, Now(t, WALL0 + t))
        assert transition(self.layout, before, event, Now(t, WALL0 + t)) == (self.state, out), "deterministic"
        self.effects += out
        return out

    def start(self, t: float = 0.0, meta: dict[str, Any] | None = None, rows: tuple[Interrupted, ...] = (),
              states: dict[str, Any] | None = None) -> None:
        self.feed(Restore(meta or {}, rows, states or {}), t)
        self.feed(Start(), t)

    def present(self, t: float) -> None:
        self.items += 1
        self.feed(Presence(True, t, Ids(f"item{self.items}", f"cmd{self.items}")), t)

    def decide(self, category: str, t: float, **kw: Any) -> None:
        self.feed(Decided(decision(category, **kw), Ids("unused", "unused")), t)

    def answer_route(self, t: float, ok: bool = True, error: str | None = None) -> None:
        assert self.state.item is not None
        self.feed(RouteAnswer(str(self.state.item.request_id), ok, error), t)

    @property
    def phase(self) -> str:
        return self.state.phase

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [e.data for e in self.effects if isinstance(e, Emit) and e.type == type_]

    def routes(self) -> list[SendRoute]:
        return [e for e in self.effects if isinstance(e, SendRoute)]

    def lid_ops(self) -> list[str]:
        return [str(e.args["op"]) for e in self.effects if isinstance(e, Actuate) and e.command == "lid"]

    def published_phases(self) -> list[str]:
        return [e.state.phase for e in self.effects if isinstance(e, PublishState)]


def core(workflow: dict[str, Any] | None = None, *, owners: dict[str, str | None] | None = None,
         vision: dict[str, bool] | None = None) -> Core:
    layout = Layout(bins_config(workflow), ARDUINO_OWNS_ALL if owners is None else owners,
                    vision or {"camera": True, "detector": True})
    c = Core(layout)
    c.start()
    return c


# --------------------------------------------------------------------------- the item's way


def test_an_item_is_classified_routed_confirmed_and_its_latencies_come_from_the_given_moments() -> None:
    c = core()
    c.present(10.0)
    assert c.phase == "classifying" and c.state.deadline == 10.5
    c.decide("plastic", 10.4, item_id="det-1")
    assert c.phase == "routing"
    assert [(r.owner, dict(r.args)) for r in c.routes()] == [("arduino", {"compartment": 1, "command_id": "cmd1"})]
    c.answer_route(10.5)
    assert c.phase == "confirming" and c.state.deadline == 11.0
    c.feed(Dropped(1), 10.9)

    sorted_ = c.events("item_sorted")
    assert len(sorted_) == 1 and sorted_[0]["confirmation"] == "drop" and sorted_[0]["detection_id"] == "det-1"
    assert sorted_[0]["latency"] == {"presence_to_decision_ms": 400.0, "decision_to_ack_ms": 100.0,
                                     "presence_to_route_ms": 400.0, "total_ms": 900.0}
    assert [e for e in c.effects if isinstance(e, HandOff)] == [HandOff("recycling", "item1", 10.9)]
    emit = next(e for e in c.effects if isinstance(e, Emit) and e.type == "item_sorted")
    assert (emit.forget, emit.handoff) == ("item1", ("item1", "recycling"))
    assert c.published_phases() == ["idle", "item_present", "classifying", "routing", "confirming", "idle"]
    assert [e.phase for e in c.effects if isinstance(e, SaveItem)] == ["item_present", "classifying", "routing",
                                                                       "confirming"]
    assert c.phase == "idle" and c.state.item is None and c.state.counts["sorted"] == 1


def test_an_item_without_a_decision_goes_to_residual_after_the_decision_timeout() -> None:
    c = core({"decision_timeout_s": 2.0})
    c.present(10.0)
    c.feed(Tick(), 11.99)
    assert c.phase == "classifying" and c.routes() == []
    c.feed(Tick(), 12.0)
    assert c.phase == "routing" and c.routes()[0].args["compartment"] == 3
    item = c.state.item
    assert item is not None and (item.category, item.reason, item.uncertain) == ("residual", "decision_timeout", True)
    assert "no decision within 2s" in item.notes


def test_a_decision_arriving_after_its_item_timed_out_does_not_start_a_second_item() -> None:
    c = core()
    c.present(10.0)
    c.feed(Tick(), 10.5)
    c.answer_route(10.6)
    c.feed(Dropped(3), 10.7)
    assert c.phase == "idle"
    c.decide("plastic", 10.8, item_id="late")
    c.feed(Tick(), 20.0)
    assert c.phase == "idle" and len(c.routes()) == 1 and len(c.events("item_sorted")) == 1


def test_a_decision_without_a_presence_sensor_announces_the_item_itself() -> None:
    c = core()
    c.decide("paper_cardboard", 5.0)
    assert c.phase == "routing" and c.routes()[0].args["compartment"] == 2
    assert c.published_phases()[-3:] == ["item_present", "classifying", "routing"]


def test_a_second_presence_while_an_item_is_in_flight_is_not_accepted() -> None:
    c = core()
    c.present(1.0)
    first = c.state.item
    c.present(1.1)
    assert c.state.item == first
    assert any(isinstance(e, Log) and e.extra and e.extra["SMARTBIN_EVENT"] == "item_not_accepted" for e in c.effects)


# --------------------------------------------------------------------------- route and confirmation timeouts


def test_an_unanswered_route_is_retried_once_with_the_same_command_id_then_the_workflow_locks_up() -> None:
    c = core({"route_timeout_s": 1.0})
    c.present(0.0)
    c.decide("plastic", 0.1)
    c.feed(Tick(), 1.09)
    assert len(c.routes()) == 1
    c.feed(Tick(), 1.1)
    assert len(c.routes()) == 2 and c.phase == "routing"
    first, second = c.routes()
    assert first.args == second.args and first.request_id != second.request_id
    c.answer_route(1.2)  # the first attempt's late answer would not do: only the current request id counts
    assert c.phase == "confirming"


def test_a_route_failing_twice_ends_in_error_with_the_lid_locked_and_the_error_persisted_with_the_event() -> None:
    c = core()
    c.present(0.0)
    c.decide("plastic", 0.1)
    c.answer_route(0.3, ok=False, error="no ACK")
    c.answer_route(0.6, ok=False, error="no ACK")
    assert c.phase == "error" and c.state.error is not None and c.state.error["code"] == "route_failed"
    failed = next(e for e in c.effects if isinstance(e, Emit) and e.type == "item_failed")
    assert failed.data["route_attempts"] == 2 and failed.meta == ("error", c.state.error)
    assert c.lid_ops()[-1] == "lock"
    assert Actuate("buzzer", {"pattern": "alarm"}) in c.effects
    assert RaiseAlert("route_failed", "critical", f"{c.state.error['message']}; the lid is locked until "
                      "workflow/clear_error") in c.effects

    out = c.feed(ClearError(trusted=True, authority="signed"), 5.0)
    answer = next(e for e in out if isinstance(e, Answer))
    assert answer.data == {"cleared": failed.meta[1], "state": "idle", "lid_unlocked": True}
    assert SaveMeta("error", None) in out and c.lid_ops()[-1] == "unlock"


def test_clear_error_with_nothing_to_clear_answers_with_a_refusal_and_changes_nothing() -> None:
    c = core()
    before = c.state
    assert c.feed(ClearError(trusted=True, authority="signed"), 1.0) == (
        Answer(error="nothing to clear: the workflow is idle"),)
    assert c.state == before


def test_without_any_confirmation_the_item_counts_as_sorted_unconfirmed_after_the_confirm_timeout() -> None:
    c = core({"confirm_timeout_s": 3.0})
    c.present(0.0)
    c.decide("plastic", 0.1)
    c.answer_route(0.2)
    c.feed(Tick(), 3.19)
    assert c.phase == "confirming"
    c.feed(Tick(), 3.2)
    data = c.events("item_sorted")[0]
    assert (data["confirmation"], data["confirmed"], data["latency"]["total_ms"]) == ("timeout", False, 3200.0)
    assert c.state.counts["unconfirmed"] == 1 and c.phase == "idle"


def test_a_weight_change_confirms_only_against_a_baseline_read_after_the_previous_item_landed() -> None:
    c = core({"weight_step_g": 5.0, "confirm_timeout_s": 60.0})
    c.feed(Weighed(1000.0), 0.5)
    c.present(1.0)
    c.decide("plastic", 1.1)
    c.answer_route(1.2)
    assert c.state.item is not None and c.state.item.weight_at_route == 1000.0
    c.feed(Weighed(1003.0), 1.3)
    assert c.phase == "confirming"
    c.feed(Weighed(1085.0), 1.4)
    assert c.events("item_sorted")[0]["confirmation"] == "weight"

    c.present(2.0)  # the last reading (1.4) is from before the first item landed (1.4): no baseline
    c.decide("plastic", 2.1)
    assert c.state.item is not None and c.state.item.weight_at_route is None


def test_a_fill_baseline_is_not_taken_while_the_previous_item_in_that_compartment_may_still_show_up() -> None:
    c = core({"confirm_timeout_s": 3.0, "fill_step_pct": 1.0})
    c.feed(FillChanged("recycling", 40.0, "ok"), 0.0)
    c.present(1.0)
    c.decide("plastic", 1.1)
    c.answer_route(1.2)
    c.feed(FillChanged("recycling", 40.5, "ok"), 1.3)
    assert c.phase == "confirming"
    c.feed(FillChanged("recycling", 42.0, "ok"), 1.4)
    assert c.events("item_sorted")[0]["confirmation"] == "fill"
    c.present(2.0)
    c.decide("metal", 2.1)
    assert c.state.item is not None and c.state.item.fill_at_route is None, "1.4 + 3.0 s not over yet"
    c.answer_route(2.2)
    c.feed(Dropped(1), 2.3)
    c.present(5.3)  # the previous item landed at 2.3
    c.decide("metal", 5.4)
    assert c.state.item is not None and c.state.item.fill_at_route == 42.0


# --------------------------------------------------------------------------- full compartments, vision


def test_a_full_compartment_without_fallback_refuses_the_item_until_it_is_emptied() -> None:
    c = core()
    c.feed(FillChanged("recycling", 97.0, "full"), 0.0)
    c.present(1.0)
    c.decide("metal", 1.1)
    assert c.phase == "blocked" and c.state.blocked is not None and c.state.blocked["compartment"] == "recycling"
    assert c.events("item_refused")[0]["code"] == "compartment_full" and c.routes() == []
    c.feed(FillChanged("paper", 10.0, "ok"), 2.0)
    assert c.phase == "blocked"
    c.feed(FillChanged("recycling", 82.0, "almost_full"), 3.0)
    assert c.phase == "idle" and c.lid_ops() == ["lock", "unlock"]
    assert RaiseAlert("refused_compartment_full", "critical", "resumed: compartment recycling is no longer full",
                      active=False) in c.effects


def test_the_workflow_never_unlocks_a_lock_an_operator_had_set() -> None:
    c = core()
    c.feed(LidReported("arduino", "locked"), 0.0)
    c.feed(FillChanged("recycling", 97.0, "full"), 0.0)
    c.present(1.0)
    c.decide("plastic", 1.1)
    c.feed(FillChanged("recycling", 3.0, "ok"), 2.0)
    assert c.phase == "idle" and "unlock" not in c.lid_ops()


def test_an_item_goes_to_residual_once_the_camera_is_gone_longer_than_the_vision_grace() -> None:
    c = core({"vision_grace_s": 10.0})
    c.feed(ComponentState("camera", {"status": "disconnected"}), 0.0)
    c.feed(Tick(), 0.0)
    c.present(9.9)
    assert c.phase == "classifying", "a gap shorter than the grace is not 'down'"
    c.decide("plastic", 9.95)
    c.answer_route(10.0)
    c.feed(Dropped(1), 10.0)
    c.present(10.0)
    item = c.state.item
    assert item is not None and item.reason == "vision_down" and "vision down: camera disconnected" in item.notes
    assert view(c.layout, c.state, 10.0).vision == "camera disconnected"
    assert view(c.layout, c.state, 9.0).vision == "ok"


@pytest.mark.parametrize("state", [{"enabled": False, "model": "m"}, {"enabled": True, "model": None}])
def test_vision_down_with_the_refuse_policy_blocks_until_the_detector_is_back(state: dict[str, Any]) -> None:
    c = core({"degraded_policy": "refuse"})
    c.feed(ComponentState("detector", state), 0.0)
    c.present(1.0)
    assert c.phase == "blocked" and c.events("item_refused")[0]["code"] == "vision_down"
    c.feed(ComponentState("detector", {"enabled": True, "model": "m"}), 2.0)
    c.feed(Tick(), 2.0)
    assert c.phase == "idle"


# --------------------------------------------------------------------------- maintenance, restarts


def test_maintenance_entered_while_classifying_drops_the_item_for_good() -> None:
    c = core()
    c.present(0.0)
    out = c.feed(MaintenanceAsked(on=True, trusted=True), 0.1)
    assert next(e for e in out if isinstance(e, Answer)).data == {"maintenance": True, "state": "maintenance",
                                                                   "pending": False, "lid_unlocked": True}
    assert c.events("item_interrupted")[0]["note"] == "maintenance mode"
    c.feed(Tick(), 100.0)
    assert c.phase == "maintenance" and c.routes() == [] and c.events("item_sorted") == []


def test_maintenance_asked_while_routing_is_entered_after_the_item_with_the_trust_it_was_asked_with() -> None:
    c = core()
    c.present(0.0)
    c.decide("plastic", 0.1)
    c.feed(MaintenanceAsked(on=True, trusted=False), 0.2)
    assert c.phase == "routing" and c.state.maintenance_pending
    c.answer_route(0.3)
    c.feed(Dropped(1), 0.4)
    assert c.phase == "maintenance" and not c.state.maintenance_pending and not c.state.maintenance_unlocked
    assert "unlock" not in c.lid_ops()


def test_a_restart_reports_interrupted_rows_and_restores_the_error_with_the_lid_locked() -> None:
    c = Core(core().layout)
    row = Interrupted("cafe01", "routing", {"category": "metal", "compartment": "recycling", "route_attempts": 1,
                                            "command_id": "beef", "started_at": WALL0})
    c.start(meta={"error": {"code": "route_failed", "message": "route failed twice"}}, rows=(row,),
            states={"fill": {"compartments": {"recycling": {"level": "full", "fill_pct": 97.0}}}})
    (interrupted,) = c.events("item_interrupted")
    assert (interrupted["item_id"], interrupted["state"], interrupted["command_id"]) == ("cafe01", "routing", "beef")
    assert interrupted["started_at"] == "2023-11-14T22:13:20.000Z"
    assert c.phase == "error" and c.lid_ops() == ["lock"] and c.state.levels == {"recycling": "full"}
    assert c.state.counts["interrupted"] == 1


def test_the_transition_logs_through_the_worker_with_stable_event_ids() -> None:
    c = core()
    c.present(0.0)
    logs = [e for e in c.effects if isinstance(e, Log)]
    assert all(isinstance(e.level, int) and e.level in (logging.INFO, logging.WARNING) for e in logs)
    assert logs[-1].extra is not None and logs[-1].extra["SMARTBIN_EVENT"] == "workflow_transition"
    assert logs[-1].message % logs[-1].args == "workflow item_present -> classifying [item item1]: waiting for the detector"
