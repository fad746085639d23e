"""The `workflow` worker: a thin adapter around the pure sorting transition (sorting.py). It turns bus messages
into events, feeds `now` from its clock, and carries out the effects: requests, events, alerts, SQLite rows.

Why one worker owns it: every decision about an item (which compartment, retry or give up, lock the
lid) is taken in one place, in order, and written to SQLite before it is acted on, so a power cut
mid-item is reported as `interrupted` on the next start instead of vanishing.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import BinsConfig
from ..history import resolve_range
from ..logs import ev
from ..messages import (
    ITEM_HANDOFF_DDL,
    ButtonPressed,
    Decision,
    DistanceReading,
    DoorChanged,
    FillLevel,
    ItemDropped,
    ItemSorted,
    MaintenanceChanged,
    PresenceChanged,
    WeightReading,
)
from ..runtime.bus import Alert, Bus, Discovery, Entity, Request, Response, StateUpdate
from ..runtime.commands import ANSWERED_LATER, NoArgs, RequestError, RequestSpec, command
from ..runtime.supervisor import WorkersChanged
from ..runtime.worker import STATE_EXPIRE_AFTER_S as EXPIRE_AFTER_S
from ..runtime.worker import Worker
from ..states.selftest import SelfTestState
from ..states.workflow import WorkflowState
from ..store import Store
from . import history
from . import sorting_model as sm
from .history import CountsArgs, ItemsArgs
from .selftest import MAX_RUN_S, MOVING, PARTS, Probe, SelfTestArgs, SelfTestRun, plan
from .sorting import transition, view

logger = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS workflow_item (id TEXT PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL, updated_at REAL)",
    "CREATE TABLE IF NOT EXISTS workflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ITEM_HANDOFF_DDL,
    *history.SCHEMA,
)
PRUNE_EVERY_S = 3600.0
_FORGET_ITEM = "DELETE FROM workflow_item WHERE id = ?"
_SAVE_ITEM = ("INSERT INTO workflow_item (id, state, data, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
              "SET state = excluded.state, data = excluded.data, updated_at = excluded.updated_at")
_SAVE_META = "INSERT INTO workflow_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_HAND_OFF = "INSERT OR IGNORE INTO item_handoff (item_id, compartment) VALUES (?, ?)"


class MaintenanceArgs(BaseModel):
    """`maintenance`: pause sorting (on), or resume (off); the lid unlocks only when signed."""

    model_config = ConfigDict(extra="forbid")
    on: bool = Field(description="true: maintenance mode on")


class SortingWorkflow(Worker):
    """Runs the sorting transition on the bus; answers `workflow/clear_error` and `maintenance`."""

    critical = True

    def __init__(self, bus: Bus, cfg: BinsConfig, store: Store, *, owners: dict[str, str | None],
                 vision: dict[str, bool], name: str = "workflow", clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(name, bus, tick_s=0.2, clock=clock,
                         inbox=(PresenceChanged, Decision, Response, ItemDropped, WeightReading, FillLevel,
                                ButtonPressed, StateUpdate, WorkersChanged, Request, DoorChanged, DistanceReading))
        self.cfg = cfg
        self.store = store
        self.wall = wall
        self.layout = sm.Layout(cfg, owners, vision)
        self.sorting = sm.Sorting()
        """The workflow state: only `feed()` replaces it."""
        self._next_prune = 0.0
        self.vision = vision
        self.selftest: SelfTestRun | None = None
        self._probe: Probe | None = None
        """What the running self-test's checks read: fresh readings are added to it."""
        self._selftest_req: Request | None = None
        self._selftest_held = False
        """Whether the running self-test put the workflow into maintenance (and takes it out again)."""
        self._selftest_reported = 0

    def entities(self) -> tuple[Entity, ...]:
        """Whole-bin entities: workflow state, last item, clear-error button, maintenance switch."""
        return (
            Entity("sensor", "workflow_state", "Sorting state", self.name, "{{ value_json.state }}",
                   {"device_class": "enum", "options": list(sm.STATES), "icon": "mdi:state-machine", "expire_after": EXPIRE_AFTER_S}),
            Entity("sensor", "workflow_last_item", "Last item", self.name,
                   "{{ value_json.last_item.category if value_json.last_item else none }}",
                   {"icon": "mdi:recycle", "json_attributes_topic": "workflow", "expire_after": EXPIRE_AFTER_S,
                    "json_attributes_template": "{{ (value_json.last_item or {}) | tojson }}"}),
            Entity("sensor", "workflow_items_sorted", "Items sorted", self.name, "{{ value_json.counts.sorted }}",
                   {"state_class": "total_increasing", "icon": "mdi:counter", "unit_of_measurement": "items",
                    "expire_after": EXPIRE_AFTER_S}),
            Entity("binary_sensor", "workflow_error", "Sorting fault", self.name,
                   "{{ 'ON' if value_json.state in ['error', 'blocked'] else 'OFF' }}",
                   {"device_class": "problem", "expire_after": EXPIRE_AFTER_S}),
            Entity("button", "workflow_clear_error", "Clear sorting error", self.name, None,
                   {"command_topic": "workflow/clear_error", "payload_press": "{}", "icon": "mdi:restart-alert"}),
            Entity("switch", "workflow_maintenance", "Maintenance mode", self.name,
                   "{{ 'ON' if value_json.maintenance else 'OFF' }}",
                   {"command_topic": "maintenance", "payload_on": '{"args": {"on": true}}',
                    "payload_off": '{"args": {"on": false}}', "state_on": "ON", "state_off": "OFF",
                    "icon": "mdi:wrench", "entity_category": "config"}),
            *selftest_entities(),
        )

    # -- lifecycle --------------------------------------------------------------------------

    def setup(self) -> None:
        with self.store.transaction() as db:
            for sql in SCHEMA:
                db.execute(sql)
        meta = {str(k): json.loads(str(v)) for k, v in self.store.query("SELECT key, value FROM workflow_meta")}
        self.feed(sm.Restore(meta, self._interrupted_rows(), self.bus.states()))
        if isinstance(meta.get("selftest"), dict):
            self.bus.set_state("selftest", SelfTestState.from_json(meta["selftest"]))  # the last result, again
        else:
            self.bus.set_state("selftest", SelfTestState())  # never run: status null (HA: unknown, not unavailable)
        self.bus.publish(Discovery(self.name, self.entities()))
        self.feed(sm.Start())

    def _interrupted_rows(self) -> tuple[sm.Interrupted, ...]:
        """The rows a previous run left in workflow_item (it died mid-item)."""
        rows = []
        for item_id, state, data in self.store.query("SELECT id, state, data FROM workflow_item"):
            try:
                saved = json.loads(str(data))
            except ValueError:
                saved = {}
            rows.append(sm.Interrupted(str(item_id), str(state), saved))
        return tuple(rows)

    def teardown(self) -> None:
        # An item still in flight stays in SQLite: the next start reports it as interrupted.
        if self.selftest is not None:
            self.selftest.finished = True
            self._selftest_done()
        self.publish_state(self.own_state, force=True)

    # -- loop ---------------------------------------------------------------------------------

    def step(self) -> None:
        deadlines = [d for d in (self.sorting.deadline, self.selftest and self.selftest.wake_at) if d is not None]
        wait = self.tick_s if not deadlines else max(0.0, min(self.tick_s, min(deadlines) - self.clock()))
        msg = self.next_message(wait)
        if msg is not None:
            self.handle(msg)
        self.feed(sm.Tick())
        if self.selftest is not None:
            self.selftest.tick()
            self._selftest_progress()
        self.publish_state(self.own_state)
        if self.clock() >= self._next_prune:
            self._next_prune = self.clock() + PRUNE_EVERY_S
            history.prune(self.store, self.wall(), self.cfg.workflow.history_days)

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Request):
            self.answer(msg)
            self.publish_state(self.own_state, force=True)
        elif isinstance(msg, Response) and self.selftest is not None and self.selftest.owns(msg.request_id):
            self.selftest.on_response(msg)
            self._selftest_progress()
        elif isinstance(msg, Response) and msg.request_id.startswith("workflow-act-"):
            if not msg.ok:
                logger.info("workflow: %s failed: %s", msg.command, msg.error, extra=ev("workflow_action_failed"))
        else:
            event = self._event(msg)
            if event is not None:
                self.feed(event)

    def _event(self, msg: Any) -> sm.Event | None:
        """The event a bus message means to the workflow (None: nothing)."""
        if isinstance(msg, PresenceChanged):
            return sm.Presence(msg.present, msg.mono, _ids())
        if isinstance(msg, Decision):
            return sm.Decided(msg, _ids())
        if isinstance(msg, Response):
            duplicate = isinstance(msg.data, dict) and bool(msg.data.get("duplicate"))
            return sm.RouteAnswer(msg.request_id, msg.ok, msg.error, duplicate)
        if isinstance(msg, ItemDropped):
            if self.selftest is not None:
                self.selftest.on_drop(msg.compartment)
            return sm.Dropped(msg.compartment)
        if isinstance(msg, DistanceReading):
            if self.selftest is not None and self._probe is not None:
                self._probe.readings[(msg.source, msg.compartment)] = msg.mm
            return None
        if isinstance(msg, WeightReading):
            if self.selftest is not None and self._probe is not None:
                self._probe.weights.append(msg.grams)
            return sm.Weighed(msg.grams)
        if isinstance(msg, FillLevel):
            return sm.FillChanged(msg.compartment, msg.fill_pct, msg.level)
        if isinstance(msg, ButtonPressed):
            return sm.ServiceButtonHeld() if msg.kind == "hold" else None  # someone at the bin: local presence may unlock
        if isinstance(msg, DoorChanged):
            return sm.LidReported(msg.source, msg.state)
        if isinstance(msg, StateUpdate):
            return sm.ComponentState(msg.component, msg.state)
        if isinstance(msg, WorkersChanged):
            return sm.WorkerStatuses({n: str(e.get("status")) for n, e in msg.table.items()})
        return None

    def feed(self, event: sm.Event) -> tuple[sm.Effect, ...]:
        """Run one transition at the clock's `now` and carry out its effects, in order."""
        self.sorting, effects = transition(self.layout, self.sorting, event, sm.Now(self.clock(), self.wall()))
        for effect in effects:
            self._do(effect)
        return effects

    # -- effects --------------------------------------------------------------------------------

    def _do(self, effect: sm.Effect) -> None:
        if isinstance(effect, sm.Log):
            logger.log(effect.level, effect.message, *effect.args, extra=effect.extra)
        elif isinstance(effect, sm.PublishState):
            snapshot = effect.state
            self.publish_state(lambda: view(self.layout, snapshot, self.clock()), force=True)
        elif isinstance(effect, sm.SaveItem):
            self.store.execute(_SAVE_ITEM, (effect.item.id, effect.phase, json.dumps(asdict(effect.item)),
                                            effect.wall))
        elif isinstance(effect, sm.SaveMeta):
            self.store.execute(_SAVE_META, (effect.key, json.dumps(effect.value)))
        elif isinstance(effect, sm.Emit):
            self._emit(effect)
        elif isinstance(effect, sm.RaiseAlert):
            self.bus.raise_alert(Alert(self.name, effect.code, effect.severity, effect.message, active=effect.active))
        elif isinstance(effect, sm.Actuate):
            owner = self.layout.owners.get(effect.command)
            if owner is not None:
                self.bus.publish(Request(owner, effect.command, dict(effect.args), f"workflow-act-{uuid.uuid4().hex}"))
        elif isinstance(effect, sm.SendRoute):
            self.bus.publish(Request(effect.owner, "route", dict(effect.args), effect.request_id))
        elif isinstance(effect, sm.HandOff):
            self.bus.publish(ItemSorted(effect.compartment, effect.item_id, effect.mono))
        elif isinstance(effect, sm.AnnounceMaintenance):
            self.bus.publish(MaintenanceChanged(effect.on, effect.mono))

    def _emit(self, effect: sm.Emit) -> None:
        """Emit an event and commit its state change with it (one transaction: a crash keeps both or neither)."""
        also: list[tuple[str, tuple[object, ...]]] = []
        if effect.forget is not None:
            also.append((_FORGET_ITEM, (effect.forget,)))
        if effect.meta is not None:
            also.append((_SAVE_META, (effect.meta[0], json.dumps(effect.meta[1]))))
        if effect.handoff is not None:
            also.append((_HAND_OFF, effect.handoff))
        item_row = history.record_params(effect.type, effect.data, self.wall())
        if item_row is not None:
            also.append((history.RECORD, item_row))
        if not also:
            self.bus.emit_event(effect.type, effect.data, self.name)
        elif self.bus.has_sink:
            self.bus.emit_event(effect.type, effect.data, self.name, also=also)
        else:
            with self.store.transaction() as db:  # no durable events (unit tests): still apply the state change
                for sql, params in also:
                    db.execute(sql, params)
            self.bus.emit_event(effect.type, effect.data, self.name)

    # -- requests -------------------------------------------------------------------------------

    def _ask(self, event: sm.Event) -> Any:
        """Feed a request's event; its `Answer` is the reply (or the refusal)."""
        answer = next((e for e in self.feed(event) if isinstance(e, sm.Answer)), sm.Answer())
        if answer.error is not None:
            raise RequestError(answer.error)
        return answer.data

    @command("workflow/clear_error", summary="Leave the error or blocked state and resume sorting (after fixing the "
                                            "cause); the lid unlocks only when the request is signed.")
    def _clear_error(self, req: Request, args: NoArgs) -> dict[str, Any]:
        return self._ask(sm.ClearError(req.trusted, req.authority))

    @command("maintenance", MaintenanceArgs, example={"on": True},
             summary="Maintenance mode: sorting pauses, events are labelled maintenance; the lid unlocks only when "
                     "signed or by holding the service button (which also toggles it).")
    def _maintenance_request(self, req: Request, args: MaintenanceArgs) -> dict[str, Any]:
        if self._selftest_held:
            raise RequestError("a self-test holds the workflow in maintenance while it moves the lid and flap; "
                               "it ends it when done")
        return self._ask(sm.MaintenanceAsked(args.on, req.trusted))

    @command("history/counts", CountsArgs, example={"hours": 168, "period": "day", "by": "category"},
             summary="Items per UTC hour or day (default: the last 24 h per hour), per category, compartment or "
                     "outcome: all outcomes and the sorted ones; at most 500 periods.")
    def _counts(self, req: Request, args: CountsArgs) -> dict[str, Any]:
        return history.counts(self.store, resolve_range(args, self.wall()), args.period, args.by)

    @command("history/items", ItemsArgs, example={"limit": 20},
             summary="The last items (at most limit, 500), newest first: decision (category, class, confidence), "
                     "outcome, compartment, times and evidence snapshot; filters by range, category, compartment, "
                     "outcome.")
    def _items(self, req: Request, args: ItemsArgs) -> dict[str, Any]:
        known = [c.id for c in self.cfg.compartments]
        if args.compartment is not None and args.compartment not in known:
            raise RequestError(f"args.compartment: unknown compartment {args.compartment!r}; known: {', '.join(known)}")
        span = resolve_range(args, self.wall()) if args.given else None
        return history.items(self.store, span, args)

    @command("selftest", SelfTestArgs, example={"parts": ["camera", "detector"], "move": False},
             privileged_when=RequestSpec.arg_in("move", True), answer_within_s=MAX_RUN_S + 5.0,
             summary="Exercise each part present (distance sensors, drop sensor, scale, lid, flap routes, LED, "
                     "buzzer, camera, detector); pass/fail/skipped per part, also in the retained selftest state. "
                     "With move (the default) the lid and flap move, only while the workflow is idle (it is held "
                     "in maintenance meanwhile).")
    def _selftest_request(self, req: Request, args: SelfTestArgs) -> object:
        if self.selftest is not None:
            raise RequestError("a self-test is already running")
        parts = list(args.parts or PARTS)
        refused = self._selftest_hold(args.move, req.trusted, parts)
        probe = self._probe = Probe(self.clock, self.bus.states, self.cfg, self.layout.owners)
        checks = plan(probe, parts, move_refused=refused, timeout_s=self.cfg.workflow.route_timeout_s,
                      vision=self.vision)
        logger.info("self-test started by %s request (%s; moving parts: %s)", req.authority, ", ".join(parts),
                    refused or "yes", extra=ev("selftest_started"))
        self.selftest, self._selftest_req, self._selftest_reported = \
            SelfTestRun(checks, self.clock, self.wall, self._selftest_send, args.move, req.authority), req, -1
        self.selftest.start()
        self._selftest_progress()
        return ANSWERED_LATER

    def _selftest_hold(self, move: bool, trusted: bool, parts: list[str]) -> str | None:
        """Hold the workflow for the moving parts (maintenance while idle); None, or why they are skipped."""
        if not MOVING.intersection(parts):
            return None
        if not move:
            return "move is false"
        if not trusted:
            return "the request is not trusted (unsigned)"
        phase = self.sorting.phase
        if phase == sm.MAINTENANCE:
            return None  # already paused by someone else: nothing to undo afterwards
        if phase != sm.IDLE or self.sorting.item is not None:
            return f"the workflow is {phase}: the lid and flap are tested only while it is idle (no item in flight)"
        self.feed(sm.MaintenanceAsked(True, trusted=False, why="self-test"))
        self._selftest_held = True
        return None

    def _selftest_send(self, command_: str, args: Mapping[str, Any], request_id: str) -> None:
        owner = "detector" if command_ == "detector/test" else self.layout.owners.get(command_)
        if owner is not None:
            self.bus.publish(Request(owner, command_, dict(args), request_id))

    def _selftest_progress(self) -> None:
        """Publish each new result; at the end release the hold, keep the result and answer the request."""
        run = self.selftest
        if run is None:
            return
        if len(run.results) != self._selftest_reported:
            self._selftest_reported = len(run.results)
            self.bus.set_state("selftest", run.state())
        if run.finished:
            self._selftest_done()

    def _selftest_done(self) -> None:
        run, req = self.selftest, self._selftest_req
        assert run is not None
        self.selftest, self._selftest_req = None, None
        if self._selftest_held:
            self._selftest_held = False
            self.feed(sm.MaintenanceAsked(False, trusted=False, why="self-test done"))
        result = run.state()
        self.bus.set_state("selftest", result)
        self.store.execute(_SAVE_META, ("selftest", json.dumps(result.to_json())))
        logger.log(logging.WARNING if result.failed else logging.INFO, "self-test %s: %d passed, %d failed, %d skipped",
                   result.status, result.passed, result.failed, result.skipped, extra=ev("selftest_finished"))
        if req is not None:
            self.reply(req, result.to_json())

    def own_state(self) -> WorkflowState:
        """The `workflow` state."""
        return view(self.layout, self.sorting, self.clock())


def selftest_entities() -> tuple[Entity, ...]:
    """The self-test's entities: its result, a problem sensor when it failed, and a button for the unsigned run."""
    return (
        Entity("sensor", "selftest_result", "Self-test", "selftest", "{{ value_json.status or none }}",
               {"icon": "mdi:clipboard-check-outline", "entity_category": "diagnostic", "json_attributes_topic": "selftest",
                "json_attributes_template": "{{ {'finished_at': value_json.finished_at, 'passed': value_json.passed, "
                                            "'failed': value_json.failed, 'skipped': value_json.skipped, "
                                            "'failed_parts': value_json.parts | selectattr('status', 'eq', 'fail') "
                                            "| map(attribute='name') | list} | tojson }}"}),
        Entity("binary_sensor", "selftest_failed", "Self-test failed", "selftest",
               "{{ 'ON' if value_json.status == 'fail' else 'OFF' }}",
               {"device_class": "problem", "entity_category": "diagnostic"}),
        Entity("button", "selftest_no_move", "Self-test (no movement)", "selftest", None,
               {"command_topic": "selftest", "payload_press": '{"args": {"move": false}}',
                "icon": "mdi:clipboard-play-outline", "entity_category": "diagnostic"}),
    )


def _ids() -> sm.Ids:
    """Fresh ids for an item the next transition may start."""
    return sm.Ids(uuid.uuid4().hex[:12], secrets.token_hex(4))
