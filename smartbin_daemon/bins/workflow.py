"""The sorting workflow: one state machine from an item at the intake to the item in its compartment.

    idle -> item_present -> classifying -> routing -> confirming -> idle
                                 |             |
                                 |             +-> error    (no ACK twice: lid locked until workflow/clear_error)
                                 +-> blocked  (target full and no fallback, or vision down with policy refuse)

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
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso_utc
from ..config import BinsConfig, CompartmentConfig
from ..logs import ev
from ..messages import (
    ITEM_HANDOFF_DDL,
    ButtonPressed,
    Decision,
    DoorChanged,
    FillLevel,
    ItemDropped,
    ItemSorted,
    MaintenanceChanged,
    PresenceChanged,
    WeightReading,
)
from ..runtime.bus import Alert, Bus, Discovery, Entity, Request, Response, StateUpdate
from ..runtime.commands import NoArgs, RequestError, command
from ..runtime.supervisor import WorkersChanged
from ..runtime.worker import STATE_EXPIRE_AFTER_S as EXPIRE_AFTER_S
from ..runtime.worker import Worker
from ..store import Store

logger = logging.getLogger(__name__)

AUTO, ASKED, UNTRUSTED = "auto", "asked", "untrusted"
"""Why the workflow's lid lock ends: the bin resumed on its own, a trusted request, an unsigned request."""
IDLE, ITEM_PRESENT, CLASSIFYING, ROUTING, CONFIRMING = "idle", "item_present", "classifying", "routing", "confirming"
ERROR, BLOCKED, MAINTENANCE = "error", "blocked", "maintenance"
STATES = (IDLE, ITEM_PRESENT, CLASSIFYING, ROUTING, CONFIRMING, ERROR, BLOCKED, MAINTENANCE)
IN_FLIGHT = (ITEM_PRESENT, CLASSIFYING, ROUTING, CONFIRMING)
RESIDUAL = "residual"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS workflow_item (id TEXT PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL, updated_at REAL)",
    "CREATE TABLE IF NOT EXISTS workflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ITEM_HANDOFF_DDL,
)
_FORGET_ITEM = "DELETE FROM workflow_item WHERE id = ?"
_SAVE_META = "INSERT INTO workflow_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


class MaintenanceArgs(BaseModel):
    """`maintenance`: pause sorting (on), or resume (off); the lid unlocks only when signed."""

    model_config = ConfigDict(extra="forbid")
    on: bool = Field(description="true: maintenance mode on")


@dataclass
class _Item:
    """The item in flight; everything here is persisted at every transition."""

    id: str
    started_at: float  # wall, for reports
    presence_mono: float
    maintenance: bool = False
    detection_id: str | None = None
    category: str | None = None
    class_name: str | None = None
    confidence: float | None = None
    uncertain: bool = False
    reason: str | None = None
    compartment: str | None = None
    flap: int | None = None
    decision_mono: float | None = None
    route_sent_mono: float | None = None
    ack_mono: float | None = None
    command_id: str = field(default_factory=lambda: secrets.token_hex(4))
    route_attempts: int = 0
    request_id: str | None = None
    weight_at_route: float | None = None
    fill_at_route: float | None = None
    notes: list[str] = field(default_factory=list)


class SortingWorkflow(Worker):
    """Owns the sorting state machine, maintenance mode and the fault states; answers `workflow/clear_error`
    and `maintenance`."""

    critical = True

    def __init__(self, bus: Bus, cfg: BinsConfig, store: Store, *, owners: dict[str, str | None],
                 vision: dict[str, bool], name: str = "workflow") -> None:
        super().__init__(name, bus, tick_s=0.2, inbox=(PresenceChanged, Decision, Response, ItemDropped, WeightReading,
                                                       FillLevel, ButtonPressed, StateUpdate, WorkersChanged, Request,
                                                       DoorChanged))
        self.cfg = cfg
        self.wf = cfg.workflow
        self.store = store
        self.owners = owners
        """Who owns route / lid / led / buzzer (None: nobody, the action is skipped)."""
        self.vision = vision
        """Which vision components are configured: {"camera": bool, "detector": bool}."""
        self.state = IDLE
        self.item: _Item | None = None
        self.deadline: float | None = None
        self.maintenance = False
        self.error: dict[str, Any] | None = None
        self.blocked: dict[str, Any] | None = None
        self.levels: dict[str, str | None] = {}
        self.fill: dict[str, float | None] = {}
        self.weight_g: float | None = None
        self._weight_mono = 0.0  # when weight_g was read
        self._landed_mono = 0.0  # when the previous item finished (landed, or timed out unconfirmed)
        self._landed_in: dict[str, float] = {}  # compartment -> when an item last finished there
        self.last_item: dict[str, Any] | None = None
        self.counts = {"sorted": 0, "residual": 0, "fallback": 0, "refused": 0, "failed": 0, "interrupted": 0,
                       "unconfirmed": 0}
        self._workers: dict[str, str] = {}
        self._components: dict[str, dict[str, Any]] = {}
        self._camera_down_since: float | None = None
        self._led: str | None = None
        self._actions: set[str] = set()
        self._maintenance_pending = False
        self._pending_trusted = False
        self.maintenance_unlocked = False
        """The lid was unlocked for maintenance: only by the service button or a trusted (signed) request."""
        self._lid: dict[str, str] = {}
        """The lid state each source last reported (DoorChanged)."""
        self._own_lock = False
        """The workflow locked the lid (refusal, error) and has not released it."""
        self._foreign_lock = False
        """When the workflow locked it, the lid was already locked by someone else (an operator's signed lock)."""
        self._presence_seen = False
        """A presence sensor exists (it has reported): decisions never start items on their own then."""
        self._switched_off_in_block = False
        """Detection was switched off during the current vision_down block: switching it on again is a `detection`
        request anyone may send, so that end of the block is no trusted cause and does not unlock."""

    def entities(self) -> tuple[Entity, ...]:
        """Whole-bin entities: workflow state, last item, clear-error button, maintenance switch."""
        return (
            Entity("sensor", "workflow_state", "Sorting state", self.name, "{{ value_json.state }}",
                   {"device_class": "enum", "options": list(STATES), "icon": "mdi:state-machine", "expire_after": EXPIRE_AFTER_S}),
            Entity("sensor", "workflow_last_item", "Last item", self.name,
                   "{{ value_json.last_item.category if value_json.last_item else 'None' }}",
                   {"icon": "mdi:recycle", "json_attributes_topic": "workflow",
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
        )

    # -- lifecycle --------------------------------------------------------------------------

    def setup(self) -> None:
        with self.store.transaction() as db:
            for sql in SCHEMA:
                db.execute(sql)
        meta = {str(k): json.loads(str(v)) for k, v in self.store.query("SELECT key, value FROM workflow_meta")}
        self.maintenance = bool(meta.get("maintenance", False))
        self.maintenance_unlocked = self.maintenance and bool(meta.get("maintenance_unlocked", False))
        self.error = meta.get("error")
        self.blocked = None
        self.item = None
        self.deadline = None
        self._led = None
        self._report_interrupted()
        self._seed_from_cache()
        self.bus.publish(Discovery(self.name, self.entities()))
        if self.maintenance:
            self.bus.publish(MaintenanceChanged(True, time.monotonic()))
            self._set_state(MAINTENANCE, "restored after restart")
            if self.maintenance_unlocked:
                self._actuate("lid", {"op": "unlock"})
        elif self.error is not None:
            self._set_state(ERROR, f"restored after restart: {self.error.get('message')}")
            self._lock_lid()
        else:
            self._set_state(IDLE, "started")
        self._show()

    def _seed_from_cache(self) -> None:
        """Levels and vision states published before this worker (re)started come from the bus's last-value cache."""
        states = self.bus.states()
        for cid, comp in ((states.get("fill") or {}).get("compartments") or {}).items():
            self.levels[cid] = comp.get("level")
            self.fill[cid] = comp.get("fill_pct")
        for name in ("camera", "detector"):
            if name in states:
                self._components[name] = states[name]

    def _report_interrupted(self) -> None:
        """A row left in workflow_item means the daemon died mid-item: report it, never drop it silently."""
        for item_id, state, data in self.store.query("SELECT id, state, data FROM workflow_item"):
            try:
                saved = json.loads(str(data))
            except ValueError:
                saved = {}
            payload = {"item_id": str(item_id), "state": str(state), "category": saved.get("category"),
                       "compartment": saved.get("compartment"), "started_at": _iso(saved.get("started_at")),
                       "route_attempts": saved.get("route_attempts", 0), "command_id": saved.get("command_id"),
                       "maintenance": bool(saved.get("maintenance")),
                       "note": "the daemon stopped mid-item (power loss or crash); check the intake and the "
                               "compartment"}
            logger.warning("item %s was interrupted in state %s by a restart; reporting it", item_id, state,
                           extra=ev("item_interrupted", item=str(item_id)))
            self._emit("item_interrupted", payload, [(_FORGET_ITEM, (str(item_id),))])
            self.counts["interrupted"] += 1
            self.last_item = {**payload, "outcome": "interrupted"}

    def teardown(self) -> None:
        # An item still in flight stays in SQLite: the next start reports it as interrupted.
        self.publish_state(self.own_state, force=True)

    # -- loop ---------------------------------------------------------------------------------

    def step(self) -> None:
        now = time.monotonic()
        wait = self.tick_s if self.deadline is None else max(0.0, min(self.tick_s, self.deadline - now))
        msg = self.next_message(wait)
        if msg is not None:
            self.handle(msg)
        self._timers(time.monotonic())
        self.publish_state(self.own_state)

    def handle(self, msg: Any) -> None:
        if isinstance(msg, PresenceChanged):
            self._presence_seen = True
            if msg.present:
                self._on_presence(msg.mono)
        elif isinstance(msg, Decision):
            self._on_decision(msg)
        elif isinstance(msg, Response):
            self._on_response(msg)
        elif isinstance(msg, ItemDropped):
            self._on_confirmation("drop", msg.compartment, None, None)
        elif isinstance(msg, WeightReading):
            self.weight_g, self._weight_mono = msg.grams, time.monotonic()
            self._on_confirmation("weight", None, msg.grams, None)
        elif isinstance(msg, FillLevel):
            self._on_fill(msg)
        elif isinstance(msg, ButtonPressed):
            if msg.kind == "hold":  # someone at the bin: local presence may unlock
                self._set_maintenance(not self.maintenance, "service button held", trusted=True)
        elif isinstance(msg, DoorChanged):
            self._lid[msg.source] = msg.state
        elif isinstance(msg, StateUpdate):
            self._on_component_state(msg)
        elif isinstance(msg, WorkersChanged):
            self._workers = {n: str(e.get("status")) for n, e in msg.table.items()}
        elif isinstance(msg, Request):
            self.answer(msg)
            self.publish_state(self.own_state, force=True)

    def _on_component_state(self, msg: StateUpdate) -> None:
        if msg.component in ("camera", "detector"):
            self._components[msg.component] = msg.state
            return
        actuators = {self.owners.get(c) for c in ("lid", "led", "buzzer")} - {None}
        if msg.component not in actuators:
            return
        status = msg.state.get("status")
        previous = self._components.get(msg.component, {}).get("status")
        self._components[msg.component] = {"status": status}
        if status == "connected" and previous != "connected":
            # A (re)connected or rebooted controller lost its LED pattern and lock: assert ours again.
            self._led = None
            self._show()
            if self.state in (ERROR, BLOCKED):
                self._actuate("lid", {"op": "lock"})
            elif self.state == MAINTENANCE and self.maintenance_unlocked:
                self._actuate("lid", {"op": "unlock"})

    def _timers(self, now: float) -> None:
        self._track_camera(now)
        if self.deadline is None or now < self.deadline or self.item is None:
            return
        item = self.item
        if self.state in (ITEM_PRESENT, CLASSIFYING):
            self.deadline = None
            self._note(item, f"no decision within {self.wf.decision_timeout_s:g}s")
            logger.warning("item %s: no decision within %.1fs; sending it to residual", item.id,
                           self.wf.decision_timeout_s, extra=ev("item_decision_timeout", item=item.id))
            self._classified(item, RESIDUAL, None, None, True, "decision_timeout")
        elif self.state == ROUTING:
            self.deadline = None
            self._route_failed(item, f"no answer to route within {self.wf.route_timeout_s:g}s")
        elif self.state == CONFIRMING:
            self.deadline = None
            self._finish(item, "timeout")

    # -- the item -----------------------------------------------------------------------------

    def _on_presence(self, mono: float) -> None:
        if self.state != IDLE:
            if self.state in (ERROR, BLOCKED):
                logger.warning("item presented while %s (%s); not accepted", self.state,
                               (self.error or self.blocked or {}).get("message"), extra=ev("item_not_accepted"))
            elif self.state == MAINTENANCE:
                logger.info("presence during maintenance ignored", extra=ev("item_not_accepted"))
            else:  # a second item while one is in flight (or the presence beam re-triggered): it is not sorted
                logger.warning("presence while item %s is %s; the new item is not accepted",
                               self.item.id if self.item else "?", self.state, extra=ev("item_not_accepted"))
            return
        item = _Item(uuid.uuid4().hex[:12], time.time(), mono)
        self.item = item
        self._set_state(ITEM_PRESENT, "presence")
        down = self._vision_down()
        if down is not None:
            self._degraded(item, down)
            return
        self.deadline = time.monotonic() + self.wf.decision_timeout_s
        self._set_state(CLASSIFYING, "waiting for the detector")

    def _degraded(self, item: _Item, why: str) -> None:
        self._note(item, f"vision down: {why}")
        if self.wf.degraded_policy == "refuse":
            self._refuse(item, f"vision down ({why}) and workflow.degraded_policy is refuse", "vision_down")
            return
        logger.warning("item %s: vision down (%s); degraded policy sends it to residual", item.id, why,
                       extra=ev("item_degraded", item=item.id))
        self._classified(item, RESIDUAL, None, None, True, "vision_down")

    def _on_decision(self, d: Decision) -> None:
        if self.state == IDLE and self._presence_seen:
            # With a presence sensor every item starts with presence: an idle-time decision is a late one
            # (it arrived after the decision timeout already sent its item to residual).
            logger.info("late decision %s (%s) after its item timed out; ignored", d.item_id, d.category)
            return
        if self.state == IDLE and not self.maintenance:
            # No presence sensor (motion gate): the decision itself announces the item.
            self.item = _Item(uuid.uuid4().hex[:12], time.time(), d.mono)
            self._set_state(ITEM_PRESENT, "decision without presence")
            self._set_state(CLASSIFYING, "decision arrived")
        if self.state not in (ITEM_PRESENT, CLASSIFYING) or self.item is None:
            logger.info("decision %s (%s) arrived in state %s; ignored", d.item_id, d.category, self.state)
            return
        item = self.item
        item.detection_id = d.item_id
        self.deadline = None
        self._classified(item, d.category, d.class_name, d.confidence, d.uncertain, d.reason)

    def _classified(self, item: _Item, category: str, class_name: str | None, confidence: float | None,
                    uncertain: bool, reason: str | None) -> None:
        item.category, item.class_name, item.confidence, item.uncertain = category, class_name, confidence, uncertain
        item.reason = reason
        item.decision_mono = time.monotonic()
        target = self.cfg.compartment_for(category)
        if target is None:  # config validation guarantees a residual compartment; belt and braces
            self._refuse(item, f"no compartment accepts {category!r}", "no_compartment")
            return
        if category not in target.categories:
            self._note(item, f"no compartment accepts {category}; residual")
        if self.levels.get(target.id) == "full":
            fallback = self._fallback(target)
            if fallback is None:
                self._refuse(item, f"compartment {target.name} is full and no fallback compartment is free",
                             "compartment_full", compartment=target.id)
                return
            self._note(item, f"{target.id} full; fallback {fallback.id}")
            logger.warning("item %s: %s is full; using fallback %s", item.id, target.id, fallback.id,
                           extra=ev("item_fallback", item=item.id))
            self.counts["fallback"] += 1
            target = fallback
        item.compartment = target.id
        item.flap = self.cfg.flap_of(target)
        self._route(item)

    def _fallback(self, full: CompartmentConfig) -> CompartmentConfig | None:
        fid = self.wf.fallback_compartment
        if fid is None or fid == full.id or self.levels.get(fid) == "full":
            return None
        return next((c for c in self.cfg.compartments if c.id == fid), None)

    def _route(self, item: _Item) -> None:
        """Take the confirmation baselines, then send ROUTE (or, with no flap, go straight to confirming).

        Why the baselines are guarded: a weight read before the previous item landed, or a fill level taken
        while the previous item's fill step into the same compartment is still being confirmed by the tracker,
        would let *that* item's late reading confirm this one (a jammed item reported as sorted).
        """
        now = time.monotonic()
        item.weight_at_route = self.weight_g if self._weight_mono > self._landed_mono else None
        previous = self._landed_in.get(item.compartment or "")
        recent = previous is not None and now - previous < self.wf.confirm_timeout_s
        item.fill_at_route = None if recent else self.fill.get(item.compartment or "")
        owner = self.owners.get("route")
        if owner is None:
            # No flap (single opening): the item falls straight in; confirm by the sensors.
            item.route_sent_mono = item.ack_mono = time.monotonic()
            self._confirming(item, "no flap to move")
            return
        item.route_attempts += 1
        item.request_id = f"workflow-{uuid.uuid4().hex}"
        item.route_sent_mono = item.route_sent_mono or time.monotonic()
        self._set_state(ROUTING, f"to {item.compartment} (flap {item.flap}, attempt {item.route_attempts})")
        self.deadline = time.monotonic() + self.wf.route_timeout_s
        self.bus.publish(Request(owner, "route", {"compartment": item.flap, "command_id": item.command_id},
                                 item.request_id))

    def _on_response(self, resp: Response) -> None:
        item = self.item
        if item is None or self.state != ROUTING or resp.request_id != item.request_id:
            if resp.request_id.startswith("workflow-act-") and not resp.ok:
                logger.info("workflow: %s failed: %s", resp.command, resp.error, extra=ev("workflow_action_failed"))
            return
        self.deadline = None
        if resp.ok:
            item.ack_mono = time.monotonic()
            dup = isinstance(resp.data, dict) and resp.data.get("duplicate")
            self._confirming(item, "route acknowledged" + (" (duplicate id: already executed)" if dup else ""))
        else:
            self._route_failed(item, resp.error or "route refused")

    def _route_failed(self, item: _Item, why: str) -> None:
        if item.route_attempts < 2:
            # Retry once with the same command id: the MCU executes an id at most once.
            self._note(item, f"route attempt {item.route_attempts} failed: {why}")
            logger.warning("item %s: route failed (%s); retrying once", item.id, why, extra=ev("item_route_retry", item=item.id))
            self._route(item)
            return
        message = f"route to {item.compartment} failed twice: {why}"
        logger.error("item %s: %s; lid locked until workflow/clear_error", item.id, message,
                     extra=ev("workflow_error", item=item.id))
        self.counts["failed"] += 1
        self.error = {"code": "route_failed", "message": message, "item_id": item.id, "at": iso_utc(time.time())}
        self._item_event("item_failed", item, {"outcome": "failed", "error": why},
                         also=[(_SAVE_META, ("error", json.dumps(self.error)))])
        self.bus.raise_alert(Alert(self.name, "route_failed", "critical", f"{message}; the lid is locked until "
                                   "workflow/clear_error"))
        self._clear_item()
        self._set_state(ERROR, message)
        self._lock_lid()
        self._actuate("buzzer", {"pattern": "alarm"})
        self._show()

    def _confirming(self, item: _Item, why: str) -> None:
        self._set_state(CONFIRMING, why)
        self.deadline = time.monotonic() + self.wf.confirm_timeout_s

    def _on_confirmation(self, kind: str, flap: int | None, grams: float | None, fill: float | None) -> None:
        item = self.item
        if item is None or self.state != CONFIRMING:
            return
        if kind == "drop" and flap != item.flap:
            self._note(item, f"drop seen in flap {flap}, expected {item.flap}")
            return
        if kind == "weight" and not self._weight_changed(item, grams):
            return
        if kind == "fill" and (fill is None or item.fill_at_route is None or fill - item.fill_at_route < self.wf.fill_step_pct):
            return
        self._finish(item, kind)

    def _weight_changed(self, item: _Item, grams: float | None) -> bool:
        if grams is None:
            return False
        if item.weight_at_route is None:
            item.weight_at_route = grams  # first reading after the route: the baseline
            return False
        return abs(grams - item.weight_at_route) >= self.wf.weight_step_g

    def _on_fill(self, msg: FillLevel) -> None:
        previous = self.levels.get(msg.compartment)
        self.levels[msg.compartment] = msg.level
        self.fill[msg.compartment] = msg.fill_pct
        item = self.item
        if item is not None and self.state == CONFIRMING and msg.compartment == item.compartment:
            self._on_confirmation("fill", None, None, msg.fill_pct)
        if self.state == BLOCKED and self.blocked is not None and self.blocked.get("compartment") == msg.compartment \
                and previous == "full" and msg.level != "full":
            self._unblock(f"compartment {msg.compartment} is no longer full")

    def _finish(self, item: _Item, confirmation: str) -> None:
        now = time.monotonic()
        self._landed_mono = now
        self._landed_in[item.compartment or ""] = now
        confirmed = confirmation != "timeout"
        if not confirmed:
            self.counts["unconfirmed"] += 1
            logger.warning("item %s: no drop, weight or fill change within %.1fs; counted as sorted, unconfirmed",
                           item.id, self.wf.confirm_timeout_s, extra=ev("item_unconfirmed", item=item.id))
        self.counts["sorted"] += 1
        if item.category == RESIDUAL or item.uncertain:
            self.counts["residual"] += 1
        latency = {
            "presence_to_decision_ms": _ms(item.presence_mono, item.decision_mono),
            "decision_to_ack_ms": _ms(item.decision_mono, item.ack_mono),
            "presence_to_route_ms": _ms(item.presence_mono, item.route_sent_mono),
            "total_ms": _ms(item.presence_mono, now),
        }
        self._item_event("item_sorted", item, {"outcome": "sorted", "confirmation": confirmation,
                                               "confirmed": confirmed, "latency": latency})
        logger.info("item %s sorted: %s -> %s (%s, %s ms)", item.id, item.category, item.compartment, confirmation,
                    latency["total_ms"], extra=ev("item_sorted", item=item.id))
        if item.compartment is not None:
            self.bus.publish(ItemSorted(item.compartment, item.id, now))
        self._clear_item()
        self._after_item()

    def _refuse(self, item: _Item, message: str, code: str, compartment: str | None = None) -> None:
        logger.error("item %s refused: %s; lid locked", item.id, message, extra=ev("item_refused", item=item.id))
        self.counts["refused"] += 1
        self._item_event("item_refused", item, {"outcome": "refused", "error": message, "code": code})
        self.blocked = {"code": code, "message": message, "compartment": compartment, "at": iso_utc(time.time())}
        self.bus.raise_alert(Alert(self.name, f"refused_{code}", "critical", f"item refused: {message}"))
        self._clear_item()
        self._set_state(BLOCKED, message)
        self._lock_lid()
        self._actuate("buzzer", {"pattern": "alarm"})
        self._show()

    def _unblock(self, why: str, cause: str = AUTO) -> bool:
        blocked = self.blocked or {}
        logger.info("workflow unblocked: %s", why, extra=ev("workflow_resumed"))
        self.bus.raise_alert(Alert(self.name, f"refused_{blocked.get('code')}", "critical",
                                   f"resumed: {why}", active=False))
        self.blocked = None
        self._switched_off_in_block = False
        self._set_state(IDLE, why)
        unlocked = self._release_lid(cause)
        self._show()
        return unlocked

    def _after_item(self) -> None:
        if self._maintenance_pending:
            self._maintenance_pending = False
            self._set_maintenance(True, "requested during an item", trusted=self._pending_trusted)
            return
        self._set_state(IDLE, "item done")
        self._show()

    # -- vision health ------------------------------------------------------------------------

    def _track_camera(self, now: float) -> None:
        cam = self._components.get("camera")
        connected = cam is None or cam.get("status") == "connected"
        if connected:
            self._camera_down_since = None
        elif self._camera_down_since is None:
            self._camera_down_since = now
        if self.state == BLOCKED and (self.blocked or {}).get("code") == "vision_down":
            down = self._vision_down()
            if down == "detection switched off":
                self._switched_off_in_block = True
            elif down is None:
                self._unblock("vision is back", UNTRUSTED if self._switched_off_in_block else AUTO)

    def _vision_down(self) -> str | None:
        """Why the camera/detector cannot classify now, or None when they can."""
        if not self.vision.get("detector"):
            return "no detector configured"
        for name in ("camera", "detector"):
            if self.vision.get(name) and self._workers.get(name) in ("failed", "restarting", "stopped"):
                return f"{name} worker {self._workers[name]}"
        det = self._components.get("detector")
        if det is not None:
            if det.get("enabled") is False:
                return "detection switched off"
            if det.get("model") is None:
                return "no model loaded"
        if self.vision.get("camera") and self._camera_down_since is not None \
                and time.monotonic() - self._camera_down_since >= self.wf.vision_grace_s:
            return f"camera {self._components.get('camera', {}).get('status')}"
        return None

    # -- maintenance, errors, requests ---------------------------------------------------------

    def _set_maintenance(self, on: bool, why: str, *, trusted: bool) -> None:
        """Pause or resume sorting. Only the service button or a trusted request unlocks the lid for it; anyone may
        pause (it fails safe: items are refused, nothing moves)."""
        if on == self.maintenance and not (on and self._maintenance_pending):
            return
        if on and self.item is not None and self.state in (ROUTING, CONFIRMING):
            self._maintenance_pending = True  # the flap is moving: finish this item first
            self._pending_trusted = trusted
            logger.info("maintenance requested; entering it after the current item", extra=ev("maintenance_pending"))
            return
        if on and self.item is not None:
            self._item_event("item_interrupted", self.item, {"outcome": "interrupted", "note": "maintenance mode",
                                                             "maintenance": True})
            self.counts["interrupted"] += 1
            self._clear_item()
        self.maintenance = on
        self._save_meta("maintenance", on)
        self.bus.publish(MaintenanceChanged(on, time.monotonic()))
        self.bus.emit_event("maintenance", {"on": on, "reason": why, "maintenance": on}, self.name)
        logger.info("maintenance mode %s (%s)", "on" if on else "off", why, extra=ev("maintenance_changed", state="on" if on else "off"))
        if on:
            self._set_state(MAINTENANCE, why)
            self.maintenance_unlocked = trusted
            self._save_meta("maintenance_unlocked", trusted)
            if trusted:
                self._own_lock = False
                self._actuate("lid", {"op": "unlock"})
        else:
            self.maintenance_unlocked = False
            self._save_meta("maintenance_unlocked", False)
            if self.error is not None:
                self._set_state(ERROR, "maintenance off; the error is still not cleared")
                self._lock_lid()
            elif self.blocked is not None and not trusted:
                self._set_state(BLOCKED, f"maintenance off; still blocked: {self.blocked.get('message')}")
                self._lock_lid()
            elif self.blocked is not None:
                self._unblock(f"{why} (maintenance over)", ASKED)
            else:
                self._set_state(IDLE, why)
                self._actuate("lid", {"op": "close"})
        self._show()

    @command("workflow/clear_error", summary="Leave the error or blocked state and resume sorting (after fixing the "
                                            "cause); the lid unlocks only when the request is signed.")
    def _clear_error(self, req: Request, args: NoArgs) -> dict[str, Any]:
        if self.state not in (ERROR, BLOCKED) and self.error is None:
            raise RequestError(f"nothing to clear: the workflow is {self.state}")
        cleared = self.error or self.blocked
        if self.error is not None:
            self.bus.raise_alert(Alert(self.name, str(self.error.get("code")), "critical",
                                       "cleared by request", active=False))
        self.error = None
        self._save_meta("error", None)
        unlocked = False
        if self.blocked is not None:
            unlocked = self._unblock("cleared by request", ASKED if req.trusted else UNTRUSTED)
        elif not self.maintenance:
            self._set_state(IDLE, "error cleared by request")
            unlocked = self._release_lid(ASKED if req.trusted else UNTRUSTED)
            self._actuate("buzzer", {"pattern": "off"})
            self._show()
        logger.info("workflow error cleared by %s request%s", req.authority,
                    "" if req.trusted else " (the lid stays locked: it needs a signed lid unlock or the service button)",
                    extra=ev("workflow_error_cleared"))
        return {"cleared": cleared, "state": self.state, "lid_unlocked": unlocked}

    @command("maintenance", MaintenanceArgs, example={"on": True},
             summary="Maintenance mode: sorting pauses, events are labelled maintenance; the lid unlocks only when "
                     "signed or by holding the service button (which also toggles it).")
    def _maintenance_request(self, req: Request, args: MaintenanceArgs) -> dict[str, Any]:
        self._set_maintenance(args.on, "request", trusted=req.trusted)
        return {"maintenance": self.maintenance, "state": self.state, "pending": self._maintenance_pending,
                "lid_unlocked": self.maintenance_unlocked}

    # -- helpers --------------------------------------------------------------------------------

    def _set_state(self, state: str, why: str) -> None:
        previous, self.state = self.state, state
        item = self.item
        if item is not None and state in IN_FLIGHT:
            data = asdict(item)
            self.store.execute("INSERT INTO workflow_item (id, state, data, updated_at) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (id) DO UPDATE SET state = excluded.state, data = excluded.data, "
                               "updated_at = excluded.updated_at", (item.id, state, json.dumps(data), time.time()))
        if previous != state or item is not None:
            logger.info("workflow %s -> %s%s: %s", previous, state, f" [item {item.id}]" if item else "", why,
                        extra=ev("workflow_transition", item=item.id if item else "", state=state))
        self.publish_state(self.own_state, force=True)

    def _clear_item(self) -> None:
        if self.item is not None:
            self.store.execute("DELETE FROM workflow_item WHERE id = ?", (self.item.id,))
        self.item = None
        self.deadline = None

    def _note(self, item: _Item, text: str) -> None:
        item.notes.append(text)

    def _emit(self, type_: str, data: dict[str, Any], also: list[tuple[str, tuple[object, ...]]]) -> None:
        """Emit an event and commit `also` with it (one transaction: a crash keeps both or neither)."""
        if self.bus.has_sink:
            self.bus.emit_event(type_, data, self.name, also=also)
            return
        with self.store.transaction() as db:  # no durable events (unit tests): still apply the state change
            for sql, params in also:
                db.execute(sql, params)
        self.bus.emit_event(type_, data, self.name)

    def _item_event(self, type_: str, item: _Item, extra: dict[str, Any],
                    also: list[tuple[str, tuple[object, ...]]] | None = None) -> None:
        """An item's outcome event; the item's in-flight row goes in the same transaction (and, when sorted,
        the fill tracker's hand-off row), so a crash right after cannot report it again as interrupted."""
        comp = next((c for c in self.cfg.compartments if c.id == item.compartment), None)
        data = {
            "item_id": item.id, "detection_id": item.detection_id, "class_name": item.class_name,
            "category": item.category, "confidence": item.confidence, "uncertain": item.uncertain,
            "reason": item.reason, "compartment": item.compartment, "compartment_name": comp.name if comp else None,
            "flap": item.flap, "route_attempts": item.route_attempts, "started_at": _iso(item.started_at),
            "notes": list(item.notes), "maintenance": self.maintenance or item.maintenance, **extra,
        }
        statements = [(_FORGET_ITEM, (item.id,)), *(also or [])]
        if type_ == "item_sorted" and item.compartment is not None:
            statements.append(("INSERT OR IGNORE INTO item_handoff (item_id, compartment) VALUES (?, ?)",
                               (item.id, item.compartment)))
        self._emit(type_, data, statements)
        self.last_item = {**data, "at": iso_utc(time.time())}

    def _lock_lid(self) -> None:
        """Lock for a refusal or an error, noting whether someone else (an operator's signed lock) had locked it."""
        if not self._own_lock:
            self._foreign_lock = "locked" in self._lid.values()
        self._own_lock = True
        self._actuate("lid", {"op": "lock"})

    def _release_lid(self, cause: str) -> bool:
        """End the workflow's lock. ASKED (a trusted request) unlocks; AUTO (the bin resuming on its own) unlocks only
        its own lock, never one someone else had set; UNTRUSTED unlocks nothing and gives up the workflow's claim, so
        no later automatic resume unlocks it either (a signed `lid unlock` or the service button does)."""
        own, foreign = self._own_lock, self._foreign_lock
        self._own_lock = False
        if cause == ASKED or (cause == AUTO and own and not foreign):
            self._actuate("lid", {"op": "unlock"})
            return True
        return False

    def _actuate(self, command: str, args: dict[str, Any]) -> None:
        owner = self.owners.get(command)
        if owner is None:
            return
        self.bus.publish(Request(owner, command, args, f"workflow-act-{uuid.uuid4().hex}"))

    def _show(self) -> None:
        """The status LED follows the state; changed patterns only."""
        pattern = {ERROR: "error", BLOCKED: "error", MAINTENANCE: "blink"}.get(self.state, "on")
        if pattern != self._led:
            self._led = pattern
            self._actuate("led", {"pattern": pattern})

    def _save_meta(self, key: str, value: Any) -> None:
        self.store.execute(_SAVE_META, (key, json.dumps(value)))

    def own_state(self) -> dict[str, Any]:
        """The `workflow` state."""
        item = self.item
        return {
            "state": self.state,
            "maintenance": self.maintenance,
            "maintenance_pending": self._maintenance_pending,
            "item": None if item is None else {"item_id": item.id, "category": item.category,
                                               "compartment": item.compartment, "route_attempts": item.route_attempts},
            "error": self.error,
            "blocked": self.blocked,
            "vision": self._vision_down() or "ok",
            "degraded_policy": self.wf.degraded_policy,
            "levels": dict(self.levels),
            "counts": dict(self.counts),
            "last_item": self.last_item,
        }


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000.0, 1)


def _iso(ts: Any) -> str | None:
    return iso_utc(float(ts)) if isinstance(ts, (int, float)) else None
