"""The sorting workflow as a pure transition: `transition(layout, state, event, now)` returns the next state and the
effects that the `workflow` worker (workflow.py) carries out. No I/O, no clock reads, no bus: ids, stamps and the
other components' news all arrive in the event and in `now`.

    idle -> item_present -> classifying -> routing -> confirming -> idle
                                 |             |
                                 |             +-> error    (no ACK twice: lid locked until workflow/clear_error)
                                 +-> blocked  (target full and no fallback, or vision down with policy refuse)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from ..clock import iso_utc
from ..config import CompartmentConfig
from ..logs import ev
from ..states import CameraState, ConnectionStatus, DetectorState, FillState, parse_state
from ..states.workflow import ItemInFlight, SortingCounts, SortingState, WorkflowState
from .sorting_model import (
    ASKED,
    AUTO,
    BLOCKED,
    CLASSIFYING,
    CONFIRMING,
    ERROR,
    IDLE,
    IN_FLIGHT,
    ITEM_PRESENT,
    MAINTENANCE,
    RESIDUAL,
    ROUTING,
    UNTRUSTED,
    Actuate,
    AnnounceMaintenance,
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
    Interrupted,
    Item,
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
    ServiceButtonHeld,
    Sorting,
    Start,
    Tick,
    Weighed,
    WorkerStatuses,
)


def transition(layout: Layout, state: Sorting, event: Event, now: Now) -> tuple[Sorting, tuple[Effect, ...]]:
    """The next state and the effects to carry out, in order."""
    run = _Run(layout, state, now)
    _HANDLERS[type(event)](run, event)
    return run.s, tuple(run.out)


def view(layout: Layout, s: Sorting, now: float) -> WorkflowState:
    """The `workflow` state as published."""
    item = s.item
    return WorkflowState(
        state=SortingState(s.phase), maintenance=s.maintenance, maintenance_pending=s.maintenance_pending,
        item=None if item is None else ItemInFlight(item_id=item.id, category=item.category,
                                                    compartment=item.compartment, route_attempts=item.route_attempts),
        error=s.error, blocked=s.blocked, vision=vision_down(layout, s, now) or "ok",
        degraded_policy=layout.cfg.workflow.degraded_policy, levels=dict(s.levels),
        counts=SortingCounts(**s.counts), last_item=s.last_item,
    )


def vision_down(layout: Layout, s: Sorting, now: float) -> str | None:
    """Why the camera/detector cannot classify now, or None when they can."""
    if not layout.vision.get("detector"):
        return "no detector configured"
    for name in ("camera", "detector"):
        if layout.vision.get(name) and s.workers.get(name) in ("failed", "restarting", "stopped"):
            return f"{name} worker {s.workers[name]}"
    det = s.detector
    if det is not None:
        if det.enabled is False:
            return "detection switched off"
        if det.model is None:
            return "no model loaded"
    if layout.vision.get("camera") and s.camera_down_since is not None \
            and now - s.camera_down_since >= layout.cfg.workflow.vision_grace_s:
        return f"camera {s.camera.status if s.camera is not None else None}"
    return None


K = TypeVar("K")
V = TypeVar("V")


def _with(mapping: Mapping[K, V], key: K, value: V) -> dict[K, V]:
    return {**mapping, key: value}


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000.0, 1)


def _iso(ts: Any) -> str | None:
    return iso_utc(float(ts)) if isinstance(ts, (int, float)) else None


class _Run:
    """One transition under way: the state so far and the effects so far (never shared, never kept)."""

    def __init__(self, layout: Layout, state: Sorting, now: Now) -> None:
        self.layout = layout
        self.cfg = layout.cfg
        self.wf = layout.cfg.workflow
        self.s = state
        self.now = now
        self.out: list[Effect] = []

    # -- small steps --------------------------------------------------------------------------

    @property
    def item(self) -> Item:
        assert self.s.item is not None
        return self.s.item

    def set(self, **changes: Any) -> None:
        self.s = replace(self.s, **changes)

    def set_item(self, **changes: Any) -> None:
        self.s = replace(self.s, item=replace(self.item, **changes))

    def note(self, text: str) -> None:
        self.set_item(notes=(*self.item.notes, text))

    def count(self, key: str) -> None:
        self.set(counts=_with(self.s.counts, key, self.s.counts[key] + 1))

    def log(self, level: int, message: str, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        self.out.append(Log(level, message, args, extra))

    def actuate(self, command: str, args: Mapping[str, Any]) -> None:
        self.out.append(Actuate(command, args))

    def save_meta(self, key: str, value: Any) -> None:
        self.out.append(SaveMeta(key, value))

    def set_state(self, phase: str, why: str) -> None:
        previous = self.s.phase
        self.set(phase=phase)
        item = self.s.item
        if item is not None and phase in IN_FLIGHT:
            self.out.append(SaveItem(item, phase, self.now.wall))
        if previous != phase or item is not None:
            self.log(logging.INFO, "workflow %s -> %s%s: %s", previous, phase, f" [item {item.id}]" if item else "", why,
                     extra=ev("workflow_transition", item=item.id if item else "", state=phase))
        self.out.append(PublishState(self.s))

    def clear_item(self) -> None:
        self.set(item=None, deadline=None)

    def show(self) -> None:
        """The status LED follows the state; changed patterns only."""
        pattern = {ERROR: "error", BLOCKED: "error", MAINTENANCE: "blink"}.get(self.s.phase, "on")
        if pattern != self.s.led:
            self.set(led=pattern)
            self.actuate("led", {"pattern": pattern})

    def lock_lid(self) -> None:
        """Lock for a refusal or an error, noting whether someone else (an operator's signed lock) had locked it."""
        if not self.s.own_lock:
            self.set(foreign_lock="locked" in self.s.lid.values())
        self.set(own_lock=True)
        self.actuate("lid", {"op": "lock"})

    def release_lid(self, cause: str) -> bool:
        """End the workflow's lock. ASKED (a trusted request) unlocks; AUTO (the bin resuming on its own) unlocks only
        its own lock, never one someone else had set; UNTRUSTED unlocks nothing and gives up the workflow's claim, so
        no later automatic resume unlocks it either (a signed `lid unlock` or the service button does)."""
        own, foreign = self.s.own_lock, self.s.foreign_lock
        self.set(own_lock=False)
        if cause == ASKED or (cause == AUTO and own and not foreign):
            self.actuate("lid", {"op": "unlock"})
            return True
        return False

    def item_event(self, type_: str, extra: dict[str, Any], meta: tuple[str, Any] | None = None) -> None:
        """An item's outcome event; the item's in-flight row goes in the same transaction (and, when sorted,
        the fill tracker's hand-off row), so a crash right after cannot report it again as interrupted."""
        item = self.item
        comp = next((c for c in self.cfg.compartments if c.id == item.compartment), None)
        data = {
            "item_id": item.id, "detection_id": item.detection_id, "class_name": item.class_name,
            "category": item.category, "confidence": item.confidence, "uncertain": item.uncertain,
            "reason": item.reason, "compartment": item.compartment, "compartment_name": comp.name if comp else None,
            "flap": item.flap, "route_attempts": item.route_attempts, "started_at": _iso(item.started_at),
            "notes": list(item.notes), "snapshot": item.snapshot, "maintenance": self.s.maintenance or item.maintenance,
            **extra,
        }
        handoff = (item.id, item.compartment) if type_ == "item_sorted" and item.compartment is not None else None
        self.out.append(Emit(type_, data, forget=item.id, handoff=handoff, meta=meta))
        self.set(last_item={**data, "at": iso_utc(self.now.wall)})

    # -- start ------------------------------------------------------------------------------------

    def restore(self, e: Restore) -> None:
        maintenance = bool(e.meta.get("maintenance", False))
        self.set(maintenance=maintenance,
                 maintenance_unlocked=maintenance and bool(e.meta.get("maintenance_unlocked", False)),
                 error=e.meta.get("error"), blocked=None, item=None, deadline=None, led=None)
        for row in e.interrupted:
            self.report_interrupted(row)
        self.seed(e.states)

    def seed(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Levels and vision states published before this worker (re)started come from the bus's last-value cache."""
        levels, fill = dict(self.s.levels), dict(self.s.fill)
        for cid, comp in (FillState.from_json(states.get("fill")).compartments or {}).items():
            levels[cid], fill[cid] = comp.level, comp.fill_pct
        self.set(levels=levels, fill=fill,
                 camera=CameraState.from_json(states["camera"]) if "camera" in states else self.s.camera,
                 detector=DetectorState.from_json(states["detector"]) if "detector" in states else self.s.detector)

    def report_interrupted(self, row: Interrupted) -> None:
        """A row left in workflow_item means the daemon died mid-item: report it, never drop it silently."""
        saved = row.saved
        payload = {"item_id": row.item_id, "state": row.state, "category": saved.get("category"),
                   "compartment": saved.get("compartment"), "started_at": _iso(saved.get("started_at")),
                   "route_attempts": saved.get("route_attempts", 0), "command_id": saved.get("command_id"),
                   "maintenance": bool(saved.get("maintenance")),
                   "note": "the daemon stopped mid-item (power loss or crash); check the intake and the compartment"}
        self.log(logging.WARNING, "item %s was interrupted in state %s by a restart; reporting it", row.item_id,
                 row.state, extra=ev("item_interrupted", item=row.item_id))
        self.out.append(Emit("item_interrupted", payload, forget=row.item_id))
        self.count("interrupted")
        self.set(last_item={**payload, "outcome": "interrupted"})

    def start(self, _: Start) -> None:
        if self.s.maintenance:
            self.out.append(AnnounceMaintenance(True, self.now.mono))
            self.set_state(MAINTENANCE, "restored after restart")
            if self.s.maintenance_unlocked:
                self.actuate("lid", {"op": "unlock"})
        elif self.s.error is not None:
            self.set_state(ERROR, f"restored after restart: {self.s.error.get('message')}")
            self.lock_lid()
        else:
            self.set_state(IDLE, "started")
        self.show()

    # -- what the other components say -------------------------------------------------------------

    def component_state(self, e: ComponentState) -> None:
        if e.component == "camera":
            self.set(camera=CameraState.from_json(e.state))
            return
        if e.component == "detector":
            self.set(detector=DetectorState.from_json(e.state))
            return
        actuators = {self.layout.owners.get(c) for c in ("lid", "led", "buzzer")} - {None}
        if e.component not in actuators:
            return
        status = getattr(parse_state(e.component, e.state), "status", None)  # gpio has no link status
        previous = self.s.actuators.get(e.component)
        self.set(actuators=_with(self.s.actuators, e.component, status))
        if status == ConnectionStatus.CONNECTED and previous != ConnectionStatus.CONNECTED:
            # A (re)connected or rebooted controller lost its LED pattern and lock: assert ours again.
            self.set(led=None)
            self.show()
            if self.s.phase in (ERROR, BLOCKED):
                self.actuate("lid", {"op": "lock"})
            elif self.s.phase == MAINTENANCE and self.s.maintenance_unlocked:
                self.actuate("lid", {"op": "unlock"})

    def worker_statuses(self, e: WorkerStatuses) -> None:
        self.set(workers=dict(e.statuses))

    def lid_reported(self, e: LidReported) -> None:
        self.set(lid=_with(self.s.lid, e.source, e.state))

    # -- timers -----------------------------------------------------------------------------------

    def tick(self, _: Tick) -> None:
        self.track_camera()
        if self.s.deadline is None or self.now.mono < self.s.deadline or self.s.item is None:
            return
        item = self.item
        if self.s.phase in (ITEM_PRESENT, CLASSIFYING):
            self.set(deadline=None)
            self.note(f"no decision within {self.wf.decision_timeout_s:g}s")
            self.log(logging.WARNING, "item %s: no decision within %.1fs; sending it to residual", item.id,
                     self.wf.decision_timeout_s, extra=ev("item_decision_timeout", item=item.id))
            self.classified(RESIDUAL, None, None, True, "decision_timeout")
        elif self.s.phase == ROUTING:
            self.set(deadline=None)
            self.route_failed(f"no answer to route within {self.wf.route_timeout_s:g}s")
        elif self.s.phase == CONFIRMING:
            self.set(deadline=None)
            self.finish("timeout")

    def track_camera(self) -> None:
        connected = self.s.camera is None or self.s.camera.status == ConnectionStatus.CONNECTED
        if connected:
            self.set(camera_down_since=None)
        elif self.s.camera_down_since is None:
            self.set(camera_down_since=self.now.mono)
        if self.s.phase == BLOCKED and (self.s.blocked or {}).get("code") == "vision_down":
            down = vision_down(self.layout, self.s, self.now.mono)
            if down == "detection switched off":
                self.set(switched_off_in_block=True)
            elif down is None:
                self.unblock("vision is back", UNTRUSTED if self.s.switched_off_in_block else AUTO)

    # -- the item -----------------------------------------------------------------------------------

    def presence(self, e: Presence) -> None:
        self.set(presence_seen=True)
        if not e.present:
            return
        s = self.s
        if s.phase != IDLE:
            if s.phase in (ERROR, BLOCKED):
                self.log(logging.WARNING, "item presented while %s (%s); not accepted", s.phase,
                         (s.error or s.blocked or {}).get("message"), extra=ev("item_not_accepted"))
            elif s.phase == MAINTENANCE:
                self.log(logging.INFO, "presence during maintenance ignored", extra=ev("item_not_accepted"))
            else:  # a second item while one is in flight (or the presence beam re-triggered): it is not sorted
                self.log(logging.WARNING, "presence while item %s is %s; the new item is not accepted",
                         s.item.id if s.item else "?", s.phase, extra=ev("item_not_accepted"))
            return
        self.set(item=Item(e.ids.item_id, self.now.wall, e.mono, command_id=e.ids.command_id))
        self.set_state(ITEM_PRESENT, "presence")
        down = vision_down(self.layout, self.s, self.now.mono)
        if down is not None:
            self.degraded(down)
            return
        self.set(deadline=self.now.mono + self.wf.decision_timeout_s)
        self.set_state(CLASSIFYING, "waiting for the detector")

    def degraded(self, why: str) -> None:
        self.note(f"vision down: {why}")
        if self.wf.degraded_policy == "refuse":
            self.refuse(f"vision down ({why}) and workflow.degraded_policy is refuse", "vision_down")
            return
        self.log(logging.WARNING, "item %s: vision down (%s); degraded policy sends it to residual", self.item.id, why,
                 extra=ev("item_degraded", item=self.item.id))
        self.classified(RESIDUAL, None, None, True, "vision_down")

    def decided(self, e: Decided) -> None:
        d = e.decision
        if self.s.phase == IDLE and self.s.presence_seen:
            # With a presence sensor every item starts with presence: an idle-time decision is a late one
            # (it arrived after the decision timeout already sent its item to residual).
            self.log(logging.INFO, "late decision %s (%s) after its item timed out; ignored", d.item_id, d.category)
            return
        if self.s.phase == IDLE and not self.s.maintenance:
            # No presence sensor (motion gate): the decision itself announces the item.
            self.set(item=Item(e.ids.item_id, self.now.wall, d.mono, command_id=e.ids.command_id))
            self.set_state(ITEM_PRESENT, "decision without presence")
            self.set_state(CLASSIFYING, "decision arrived")
        if self.s.phase not in (ITEM_PRESENT, CLASSIFYING) or self.s.item is None:
            self.log(logging.INFO, "decision %s (%s) arrived in state %s; ignored", d.item_id, d.category, self.s.phase)
            return
        self.set_item(detection_id=d.item_id, snapshot=d.snapshot)
        self.set(deadline=None)
        self.classified(d.category, d.class_name, d.confidence, d.uncertain, d.reason)

    def classified(self, category: str, class_name: str | None, confidence: float | None, uncertain: bool,
                   reason: str | None) -> None:
        self.set_item(category=category, class_name=class_name, confidence=confidence, uncertain=uncertain,
                      reason=reason, decision_mono=self.now.mono)
        item = self.item
        target = self.cfg.compartment_for(category)
        if target is None:  # config validation guarantees a residual compartment; belt and braces
            self.refuse(f"no compartment accepts {category!r}", "no_compartment")
            return
        if category not in target.categories:
            self.note(f"no compartment accepts {category}; residual")
        if self.s.levels.get(target.id) == "full":
            fallback = self.fallback(target)
            if fallback is None:
                self.refuse(f"compartment {target.name} is full and no fallback compartment is free",
                            "compartment_full", compartment=target.id)
                return
            self.note(f"{target.id} full; fallback {fallback.id}")
            self.log(logging.WARNING, "item %s: %s is full; using fallback %s", item.id, target.id, fallback.id,
                     extra=ev("item_fallback", item=item.id))
            self.count("fallback")
            target = fallback
        self.set_item(compartment=target.id, flap=self.cfg.flap_of(target))
        self.route()

    def fallback(self, full: CompartmentConfig) -> CompartmentConfig | None:
        fid = self.wf.fallback_compartment
        if fid is None or fid == full.id or self.s.levels.get(fid) == "full":
            return None
        return next((c for c in self.cfg.compartments if c.id == fid), None)

    def route(self) -> None:
        """Take the confirmation baselines, then send ROUTE (or, with no flap, go straight to confirming).

        Why the baselines are guarded: a weight read before the previous item landed, or a fill level taken
        while the previous item's fill step into the same compartment is still being confirmed by the tracker,
        would let *that* item's late reading confirm this one (a jammed item reported as sorted).
        """
        now, s, item = self.now.mono, self.s, self.item
        previous = s.landed_in.get(item.compartment or "")
        recent = previous is not None and now - previous < self.wf.confirm_timeout_s
        self.set_item(weight_at_route=s.weight_g if s.weight_mono > s.landed_mono else None,
                      fill_at_route=None if recent else s.fill.get(item.compartment or ""))
        owner = self.layout.owners.get("route")
        if owner is None:
            # No flap (single opening): the item falls straight in; confirm by the sensors.
            self.set_item(route_sent_mono=now, ack_mono=now)
            self.confirming("no flap to move")
            return
        attempts = item.route_attempts + 1
        self.set_item(route_attempts=attempts, request_id=f"workflow-{item.id}-{attempts}",
                      route_sent_mono=item.route_sent_mono or now)
        item = self.item
        self.set_state(ROUTING, f"to {item.compartment} (flap {item.flap}, attempt {item.route_attempts})")
        self.set(deadline=now + self.wf.route_timeout_s)
        self.out.append(SendRoute(owner, {"compartment": item.flap, "command_id": item.command_id},
                                  str(item.request_id)))

    def route_answer(self, e: RouteAnswer) -> None:
        item = self.s.item
        if item is None or self.s.phase != ROUTING or e.request_id != item.request_id:
            return
        self.set(deadline=None)
        if e.ok:
            self.set_item(ack_mono=self.now.mono)
            self.confirming("route acknowledged" + (" (duplicate id: already executed)" if e.duplicate else ""))
        else:
            self.route_failed(e.error or "route refused")

    def route_failed(self, why: str) -> None:
        item = self.item
        if item.route_attempts < 2:
            # Retry once with the same command id: the MCU executes an id at most once.
            self.note(f"route attempt {item.route_attempts} failed: {why}")
            self.log(logging.WARNING, "item %s: route failed (%s); retrying once", item.id, why,
                     extra=ev("item_route_retry", item=item.id))
            self.route()
            return
        message = f"route to {item.compartment} failed twice: {why}"
        self.log(logging.ERROR, "item %s: %s; lid locked until workflow/clear_error", item.id, message,
                 extra=ev("workflow_error", item=item.id))
        self.count("failed")
        error = {"code": "route_failed", "message": message, "item_id": item.id, "at": iso_utc(self.now.wall)}
        self.set(error=error)
        self.item_event("item_failed", {"outcome": "failed", "error": why}, meta=("error", error))
        self.out.append(RaiseAlert("route_failed", "critical",
                                   f"{message}; the lid is locked until workflow/clear_error"))
        self.clear_item()
        self.set_state(ERROR, message)
        self.lock_lid()
        self.actuate("buzzer", {"pattern": "alarm"})
        self.show()

    def confirming(self, why: str) -> None:
        self.set_state(CONFIRMING, why)
        self.set(deadline=self.now.mono + self.wf.confirm_timeout_s)

    # -- confirmation ---------------------------------------------------------------------------------

    def dropped(self, e: Dropped) -> None:
        item = self.s.item
        if item is None or self.s.phase != CONFIRMING:
            return
        if e.flap != item.flap:
            self.note(f"drop seen in flap {e.flap}, expected {item.flap}")
            return
        self.finish("drop")

    def weighed(self, e: Weighed) -> None:
        self.set(weight_g=e.grams, weight_mono=self.now.mono)
        item = self.s.item
        if item is None or self.s.phase != CONFIRMING or e.grams is None:
            return
        if item.weight_at_route is None:
            self.set_item(weight_at_route=e.grams)  # first reading after the route: the baseline
            return
        if abs(e.grams - item.weight_at_route) >= self.wf.weight_step_g:
            self.finish("weight")

    def fill_changed(self, e: FillChanged) -> None:
        previous = self.s.levels.get(e.compartment)
        self.set(levels=_with(self.s.levels, e.compartment, e.level), fill=_with(self.s.fill, e.compartment, e.fill_pct))
        item = self.s.item
        if item is not None and self.s.phase == CONFIRMING and e.compartment == item.compartment \
                and e.fill_pct is not None and item.fill_at_route is not None \
                and e.fill_pct - item.fill_at_route >= self.wf.fill_step_pct:
            self.finish("fill")
        blocked = self.s.blocked
        if self.s.phase == BLOCKED and blocked is not None and blocked.get("compartment") == e.compartment \
                and previous == "full" and e.level != "full":
            self.unblock(f"compartment {e.compartment} is no longer full")

    def finish(self, confirmation: str) -> None:
        now, item = self.now.mono, self.item
        self.set(landed_mono=now, landed_in=_with(self.s.landed_in, item.compartment or "", now))
        confirmed = confirmation != "timeout"
        if not confirmed:
            self.count("unconfirmed")
            self.log(logging.WARNING, "item %s: no drop, weight or fill change within %.1fs; counted as sorted, "
                     "unconfirmed", item.id, self.wf.confirm_timeout_s, extra=ev("item_unconfirmed", item=item.id))
        self.count("sorted")
        if item.category == RESIDUAL or item.uncertain:
            self.count("residual")
        latency = {
            "presence_to_decision_ms": _ms(item.presence_mono, item.decision_mono),
            "decision_to_ack_ms": _ms(item.decision_mono, item.ack_mono),
            "presence_to_route_ms": _ms(item.presence_mono, item.route_sent_mono),
            "total_ms": _ms(item.presence_mono, now),
        }
        self.item_event("item_sorted", {"outcome": "sorted", "confirmation": confirmation, "confirmed": confirmed,
                                        "latency": latency})
        self.log(logging.INFO, "item %s sorted: %s -> %s (%s, %s ms)", item.id, item.category, item.compartment,
                 confirmation, latency["total_ms"], extra=ev("item_sorted", item=item.id))
        if item.compartment is not None:
            self.out.append(HandOff(item.compartment, item.id, now))
        self.clear_item()
        self.after_item()

    def after_item(self) -> None:
        if self.s.maintenance_pending:
            self.set(maintenance_pending=False)
            self.set_maintenance(True, "requested during an item", trusted=self.s.pending_trusted)
            return
        self.set_state(IDLE, "item done")
        self.show()

    # -- refusals and errors -----------------------------------------------------------------------------

    def refuse(self, message: str, code: str, compartment: str | None = None) -> None:
        item = self.item
        self.log(logging.ERROR, "item %s refused: %s; lid locked", item.id, message, extra=ev("item_refused", item=item.id))
        self.count("refused")
        self.item_event("item_refused", {"outcome": "refused", "error": message, "code": code})
        self.set(blocked={"code": code, "message": message, "compartment": compartment, "at": iso_utc(self.now.wall)})
        self.out.append(RaiseAlert(f"refused_{code}", "critical", f"item refused: {message}"))
        self.clear_item()
        self.set_state(BLOCKED, message)
        self.lock_lid()
        self.actuate("buzzer", {"pattern": "alarm"})
        self.show()

    def unblock(self, why: str, cause: str = AUTO) -> bool:
        blocked = self.s.blocked or {}
        self.log(logging.INFO, "workflow unblocked: %s", why, extra=ev("workflow_resumed"))
        self.out.append(RaiseAlert(f"refused_{blocked.get('code')}", "critical", f"resumed: {why}", active=False))
        self.set(blocked=None, switched_off_in_block=False)
        self.set_state(IDLE, why)
        unlocked = self.release_lid(cause)
        self.show()
        return unlocked

    def clear_error(self, e: ClearError) -> None:
        s = self.s
        if s.phase not in (ERROR, BLOCKED) and s.error is None:
            self.out.append(Answer(error=f"nothing to clear: the workflow is {s.phase}"))
            return
        cleared = s.error or s.blocked
        if s.error is not None:
            self.out.append(RaiseAlert(str(s.error.get("code")), "critical", "cleared by request", active=False))
        self.set(error=None)
        self.save_meta("error", None)
        unlocked = False
        cause = ASKED if e.trusted else UNTRUSTED
        if self.s.blocked is not None:
            unlocked = self.unblock("cleared by request", cause)
        elif not self.s.maintenance:
            self.set_state(IDLE, "error cleared by request")
            unlocked = self.release_lid(cause)
            self.actuate("buzzer", {"pattern": "off"})
            self.show()
        self.log(logging.INFO, "workflow error cleared by %s request%s", e.authority,
                 "" if e.trusted else " (the lid stays locked: it needs a signed lid unlock or the service button)",
                 extra=ev("workflow_error_cleared"))
        self.out.append(Answer({"cleared": cleared, "state": self.s.phase, "lid_unlocked": unlocked}))

    # -- maintenance ----------------------------------------------------------------------------------------

    def service_button(self, _: ServiceButtonHeld) -> None:
        self.set_maintenance(not self.s.maintenance, "service button held", trusted=True)

    def maintenance_asked(self, e: MaintenanceAsked) -> None:
        self.set_maintenance(e.on, e.why, trusted=e.trusted)
        s = self.s
        self.out.append(Answer({"maintenance": s.maintenance, "state": s.phase, "pending": s.maintenance_pending,
                                "lid_unlocked": s.maintenance_unlocked}))

    def set_maintenance(self, on: bool, why: str, *, trusted: bool) -> None:
        """Pause or resume sorting. Only the service button or a trusted request unlocks the lid for it; anyone may
        pause (it fails safe: items are refused, nothing moves)."""
        s = self.s
        if on == s.maintenance and not (on and s.maintenance_pending):
            return
        if on and s.item is not None and s.phase in (ROUTING, CONFIRMING):
            self.set(maintenance_pending=True, pending_trusted=trusted)  # the flap is moving: finish this item first
            self.log(logging.INFO, "maintenance requested; entering it after the current item",
                     extra=ev("maintenance_pending"))
            return
        if on and s.item is not None:
            self.item_event("item_interrupted", {"outcome": "interrupted", "note": "maintenance mode",
                                                 "maintenance": True})
            self.count("interrupted")
            self.clear_item()
        self.set(maintenance=on)
        self.save_meta("maintenance", on)
        self.out.append(AnnounceMaintenance(on, self.now.mono))
        self.out.append(Emit("maintenance", {"on": on, "reason": why, "maintenance": on}))
        self.log(logging.INFO, "maintenance mode %s (%s)", "on" if on else "off", why,
                 extra=ev("maintenance_changed", state="on" if on else "off"))
        if on:
            self.set_state(MAINTENANCE, why)
            self.set(maintenance_unlocked=trusted)
            self.save_meta("maintenance_unlocked", trusted)
            if trusted:
                self.set(own_lock=False)
                self.actuate("lid", {"op": "unlock"})
        else:
            self.leave_maintenance(why, trusted)
        self.show()

    def leave_maintenance(self, why: str, trusted: bool) -> None:
        self.set(maintenance_unlocked=False)
        self.save_meta("maintenance_unlocked", False)
        if self.s.error is not None:
            self.set_state(ERROR, "maintenance off; the error is still not cleared")
            self.lock_lid()
        elif self.s.blocked is not None and not trusted:
            self.set_state(BLOCKED, f"maintenance off; still blocked: {self.s.blocked.get('message')}")
            self.lock_lid()
        elif self.s.blocked is not None:
            self.unblock(f"{why} (maintenance over)", ASKED)
        else:
            self.set_state(IDLE, why)
            self.actuate("lid", {"op": "close"})


_HANDLERS: dict[type, Callable[[_Run, Any], None]] = {
    Restore: _Run.restore, Start: _Run.start, Presence: _Run.presence, Decided: _Run.decided,
    RouteAnswer: _Run.route_answer, Dropped: _Run.dropped, Weighed: _Run.weighed, FillChanged: _Run.fill_changed,
    ServiceButtonHeld: _Run.service_button, LidReported: _Run.lid_reported, ComponentState: _Run.component_state,
    WorkerStatuses: _Run.worker_statuses, Tick: _Run.tick, ClearError: _Run.clear_error,
    MaintenanceAsked: _Run.maintenance_asked,
}
