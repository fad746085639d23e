"""The `alerts` component: the alerts active now as a retained state, the webhook, and HA's problem and event entities.

Alerts stay what they were, `event/alert` events raised by their sources (`Bus.raise_alert`). This worker keeps
the set active now, keyed by (source, code): a `warning` or `critical` alert with `active: true` is active until
its source sends the same code with `active: false`; `info` alerts are one-shot notices and never stay active
(an `info` with `active: false` is how several sources say "cleared"). The truth is the bus's alert ledger (the
last alert of each key since the daemon started), so the worker also knows the alerts raised before it started or
while it was restarting. Nothing is persisted: after a daemon restart every source raises again what still holds.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso_utc
from ..config import SEVERITY_RANK, WASTE_CATEGORIES, Config
from ..logs import ev
from ..runtime.bus import Bus, Discovery, Entity, Event, Request
from ..runtime.commands import RequestError, command
from ..runtime.worker import STATE_EXPIRE_AFTER_S, Worker
from ..states.alerts import ActiveAlert, AlertCounts, AlertsState, WebhookCounters
from .webhook import WebhookSender

logger = logging.getLogger(__name__)

COMPONENT = "alerts"
LASTING = ("warning", "critical")
"""Severities that stay active until cleared; `info` is a one-shot notice."""
NOTIFIED_MAX = 2000
"""Alert event ids remembered so none is posted twice (the oldest are forgotten first)."""

EVENT_TYPES: dict[str, tuple[str, list[str], str]] = {
    # event: (event_type expression, the event_types it can take, the attributes it adds)
    "item_sorted": ("value_json.data.category", list(WASTE_CATEGORIES),
                    '"compartment": d.compartment, "class_name": d.class_name, "confidence": d.confidence, '
                    '"uncertain": d.uncertain, "item_id": d.item_id'),
    "bin_level": ("value_json.data.level", ["ok", "almost_full", "full"],
                  '"compartment": d.compartment, "name": d.name, "previous": d.previous, "fill_pct": d.fill_pct'),
    "bin_emptied": ("value_json.data.source", ["sensor", "request"],
                    '"compartment": d.compartment, "name": d.name, "items": d["items"], "peak_fill_pct": d.peak_fill_pct'),
    "alert": ("(value_json.data.severity if value_json.data.active else 'cleared')",
              ["info", "warning", "critical", "cleared"],
              '"source": d.source, "code": d.code, "severity": d.severity, "message": d.message, "active": d.active'),
}
"""The HA `event` entity of each bin event: what becomes HA's `event_type`, and the attributes it carries."""


class AckArgs(BaseModel):
    """Arguments of `alerts/ack`."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                    description="the active alert's id (`<root>/alerts` → active[].id)")


def event_entity(event: str) -> Entity:
    """The HA `event` entity on `<root>/event/<event>`: an automation trigger with the event's main fields."""
    expr, types, attrs = EVENT_TYPES[event]
    template = ("{% set d = value_json.data %}{{ {\"event_type\": " + expr + ", \"event_id\": value_json.id, "
                + attrs + "} | tojson }}")
    return Entity("event", f"event_{event}", f"Event {event.replace('_', ' ')}", COMPONENT, template,
                  {"state_topic": f"event/{event}", "event_types": types, "icon": "mdi:bell-ring"})


def alerts_entities(webhook: bool) -> tuple[Entity, ...]:
    """Problem binary sensors per severity (the active ones as attributes), the event entities, webhook counters."""
    out = []
    for severity in LASTING:
        out.append(Entity(
            "binary_sensor", f"alerts_{severity}", f"{severity.title()} alerts", COMPONENT,
            f"{{{{ 'ON' if value_json.counts.{severity} > 0 else 'OFF' }}}}",
            {"device_class": "problem", "expire_after": STATE_EXPIRE_AFTER_S, "json_attributes_topic": COMPONENT,
             "json_attributes_template": "{{ {\"alerts\": value_json.active | selectattr(\"severity\", \"equalto\", \""
                                         + severity + "\") | list} | tojson }}"}))
    out += [event_entity(event) for event in EVENT_TYPES]
    if webhook:
        diag = {"entity_category": "diagnostic", "state_class": "total_increasing", "expire_after": STATE_EXPIRE_AFTER_S}
        for counter in ("sent", "failed", "suppressed"):
            out.append(Entity("sensor", f"alerts_webhook_{counter}", f"Webhook {counter}", COMPONENT,
                              f"{{{{ value_json.webhook.{counter} }}}}", {**diag, "icon": "mdi:webhook"}))
    return tuple(out)


class AlertsWorker(Worker):
    """Keeps `<root>/alerts` (the alerts active now) and hands raised alerts to the webhook sender."""

    critical = False

    def __init__(self, bus: Bus, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(COMPONENT, bus, tick_s=1.0, inbox=(Event, Request), inbox_size=2000, clock=clock)
        self.label = f"{cfg.device.name} ({cfg.device.id})"
        hook = cfg.alerts.webhook
        self.min_rank = SEVERITY_RANK[hook.min_severity]
        self.sender = WebhookSender(hook, clock=clock) if hook.target() else None
        self._active: dict[tuple[str, str], ActiveAlert] = {}
        self._acknowledged: set[str] = set()  # ids of raised alerts an operator acknowledged (hidden until raised anew)
        self._notified: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._disabled = WebhookCounters(enabled=False, min_severity=hook.min_severity)

    def setup(self) -> None:
        self.bus.publish(Discovery(self.name, self.entities()))
        if self.sender is not None:
            self.sender.start()
        for event in self.bus.alerts():  # raised before this worker started (or while it restarted)
            self._notify(event)
        self._sync()
        self.publish_state(self.own_state, force=True)

    def teardown(self) -> None:
        if self.sender is not None:
            self.sender.stop()

    def step(self) -> None:
        self.drain(wait_s=self.tick_s)
        self.publish_state(self.own_state, force=self._sync())

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Event) and msg.type == "alert":
            self._notify(msg)
        elif isinstance(msg, Request):
            self.answer(msg)

    def entities(self) -> tuple[Entity, ...]:
        return alerts_entities(self.sender is not None)

    @command("alerts/ack", AckArgs, example={"id": "9f1c2e4b7a30"},
             summary="Acknowledge an active alert: it leaves `<root>/alerts` until its source raises it again (for "
                     "alerts nothing clears, e.g. an Arduino fault code or a recovered database).")
    def _ack(self, req: Request, args: AckArgs) -> dict[str, Any]:
        found = next((a for a in self._active.values() if a.id == args.id), None)
        if found is None:
            known = ", ".join(f"{a.id} ({a.source}/{a.code})" for a in self._active.values()) or "none"
            raise RequestError(f"args.id: no active alert {args.id!r}; active: {known}")
        self._acknowledged.add(args.id)
        logger.info("alert %s/%s acknowledged by %s request", found.source, found.code, req.authority,
                    extra=ev("alert_acknowledged"))
        self.publish_state(self.own_state, force=self._sync())
        return {"acknowledged": found.to_json()}

    # -- the active set -------------------------------------------------------------

    def _sync(self) -> bool:
        """Rebuild the active set from the bus's alert ledger; whether it changed."""
        active: dict[tuple[str, str], ActiveAlert] = {}
        ledger = self.bus.alerts()
        self._acknowledged &= {event.id for event in ledger}  # a superseded alert needs no hiding any more
        for event in ledger:
            d = event.data
            if not d.get("active") or d.get("severity") not in LASTING or event.id in self._acknowledged:
                continue
            key = (str(d.get("source")), str(d.get("code")))
            before = self._active.get(key)
            active[key] = ActiveAlert(id=event.id, source=key[0], code=key[1], severity=str(d["severity"]),
                                      since=before.since if before is not None else iso_utc(event.ts),
                                      message=str(d.get("message", "")))
        changed = active != self._active
        for key in set(active) - set(self._active):
            logger.info("alert active: %s/%s (%s)", *key, active[key].severity)
        for key in set(self._active) - set(active):
            logger.info("alert no longer active: %s/%s", *key)
        self._active = active
        return changed

    def own_state(self) -> AlertsState:
        """The `alerts` state: the active alerts (oldest first), counts per severity, the webhook's counters."""
        active = sorted(self._active.values(), key=lambda a: (a.since, a.source, a.code))
        counts = AlertCounts(warning=sum(a.severity == "warning" for a in active),
                             critical=sum(a.severity == "critical" for a in active), total=len(active))
        webhook = self.sender.counters() if self.sender is not None else self._disabled
        return AlertsState(active=active, counts=counts, webhook=webhook)

    # -- the webhook ----------------------------------------------------------------

    def _notify(self, event: Event) -> None:
        """Hand a raised alert at or above the webhook's severity to the sender, once per event."""
        if event.id in self._notified:
            return
        self._notified[event.id] = None
        while len(self._notified) > NOTIFIED_MAX:
            self._notified.popitem(last=False)
        d = event.data
        if self.sender is None or not d.get("active"):
            return
        if SEVERITY_RANK.get(str(d.get("severity")), 0) >= self.min_rank:
            self.sender.submit(f"[{self.label}] {str(d.get('severity')).upper()} {d.get('code')} "
                               f"({d.get('source')}): {d.get('message')} — {iso_utc(event.ts)}")
