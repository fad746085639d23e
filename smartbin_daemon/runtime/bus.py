"""The one internal bus: typed messages, bounded per-subscriber queues, a last-value cache of state.

Why: workers never call each other or touch each other's attributes. A component publishes its
state, events, HA entities and request answers here, and whoever cares subscribes. Queues are
bounded (drop-oldest, counted) so a stalled consumer cannot grow memory without limit; what must
not be lost (events) is written to the durable sink *before* anyone is told about it.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .state import State

logger = logging.getLogger(__name__)

EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""Event types become topic levels: no '/', '+', '#'."""
ALERT_LEDGER_MAX = 1000
"""Alert keys (source, code) the bus remembers; the least recently raised are forgotten first."""


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class StateUpdate:
    """A component's whole current state; published retained on `<root>/<component>`."""

    component: str
    state: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """Something that happened; durable until the broker acknowledges it on `<root>/event/<type>`."""

    type: str
    data: dict[str, Any]
    component: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class BinaryPublish:
    """Raw bytes for `<root>/<subtopic>` (e.g. the latest snapshot JPEG for a Home Assistant image entity)."""

    subtopic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class EventsPending:
    """Wake-up for the outbox consumer: new durable events are waiting."""


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity a component declares; the MQTT component turns it into discovery config."""

    platform: str  # sensor, binary_sensor, button, switch, select, image, number, ...
    object_id: str  # stable, unique within the device: becomes part of unique_id
    name: str
    component: str  # whose state topic holds the value
    value_template: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # device_class, unit_of_measurement, icon, ...


@dataclass(frozen=True)
class Discovery:
    """The full set of HA entities of one component (an empty tuple removes them)."""

    component: str
    entities: tuple[Entity, ...]


INTERNAL, LOCAL, SIGNED, ACL, UNSIGNED = "internal", "local", "signed", "acl", "unsigned"
"""Who stands behind a request: the daemon's own logic, someone at the bin (service button), a verified signature,
the broker's ACL on a privileged topic (`security.privileged: broker_acl`), or nobody in particular."""
TRUSTED = frozenset({INTERNAL, LOCAL, SIGNED, ACL})


@dataclass(frozen=True)
class Request:
    """A validated operator request addressed to the component that owns the command.

    `authority` travels with the request (and with what a component does because of it), so an effect that needs
    privilege (unlocking the lid, say) is decided where it happens, whatever command led there.
    """

    target: str
    command: str
    args: dict[str, Any]
    request_id: str
    authority: str = INTERNAL
    key_id: str | None = None
    """The signing key of a `signed` request (for the audit log)."""
    transaction: Any = None
    """The requester's transaction id (for the audit log)."""

    @property
    def trusted(self) -> bool:
        """Whether the request may have privileged effects (signed, ACL-guarded, local or the daemon's own)."""
        return self.authority in TRUSTED


@dataclass(frozen=True)
class Response:
    """The owner's answer to a Request."""

    request_id: str
    command: str
    ok: bool
    data: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Alert:
    """Convenience view of an alert; published as Event(type='alert')."""

    source: str
    code: str
    severity: str  # info | warning | critical
    message: str
    active: bool = True

    def as_data(self) -> dict[str, Any]:
        """Event payload for `event/alert`."""
        return {
            "source": self.source,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "active": self.active,
        }


class EventSink(Protocol):
    """Durable store the bus writes events to before announcing them (the MQTT outbox)."""

    def append(self, event: Event, also: Sequence[tuple[str, tuple[object, ...]]] = ()) -> None:
        """Persist one event, and the `also` statements in the same transaction; durable when it returns."""


# --------------------------------------------------------------------------- subscriptions


class _Wake:
    """Sentinel that wakes a waiting consumer without carrying data."""


WAKE = _Wake()


class Subscription:
    """A bounded inbox for one consumer; when full, the oldest message is dropped and counted."""

    def __init__(self, name: str, kinds: tuple[type, ...], maxsize: int) -> None:
        self.name = name
        self.kinds = kinds
        self.maxsize = maxsize
        self.dropped = 0
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._waker: Callable[[], None] | None = None

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """Also call `waker()` after each put, for consumers that block on something else (a serial read)."""
        self._waker = waker

    def accepts(self, msg: Any) -> bool:
        """Whether this subscriber wants `msg`: right type, and addressed to it if addressed at all."""
        if not isinstance(msg, self.kinds):
            return False
        target = getattr(msg, "target", None)
        return target is None or target == self.name

    def put(self, msg: Any) -> None:
        """Enqueue without blocking."""
        with self._cond:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(msg)
            self._cond.notify()
        waker = self._waker
        if waker is not None:
            try:
                waker()
            except Exception:  # noqa: BLE001 - waking is best effort; the consumer polls anyway
                pass

    def wake(self) -> None:
        """Wake a consumer blocked in get()."""
        with self._cond:
            self._items.append(WAKE)
            self._cond.notify()

    def get(self, timeout: float | None) -> Any | None:
        """Next message, or None after `timeout` seconds or a wake-up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
        return None if item is WAKE else item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


# --------------------------------------------------------------------------- the bus


class Bus:
    """Publish/subscribe between workers, plus the last-known state and entities of each component."""

    def __init__(self, sink: EventSink | None = None) -> None:
        self._sink = sink
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}
        self._entities: dict[str, tuple[Entity, ...]] = {}
        self._alerts: dict[tuple[str, str], Event] = {}

    def attach_sink(self, sink: EventSink) -> None:
        """Set the durable event store (done once at start-up, before workers run)."""
        self._sink = sink

    def subscribe(self, name: str, kinds: Iterable[type], maxsize: int = 1000) -> Subscription:
        """Register a consumer for the given message types (addressed messages only if `target == name`)."""
        sub = Subscription(name, tuple(kinds), maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a consumer."""
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, msg: Any) -> int:
        """Deliver to every interested subscriber; returns how many received it."""
        if isinstance(msg, StateUpdate):
            with self._lock:
                self._states[msg.component] = msg.state
        elif isinstance(msg, Discovery):
            with self._lock:
                self._entities[msg.component] = msg.entities
        with self._lock:
            subs = [s for s in self._subs if s.accepts(msg)]
        for sub in subs:
            sub.put(msg)
        return len(subs)

    # convenience ----------------------------------------------------------

    def set_state(self, component: str, state: State | dict[str, Any]) -> None:
        """Publish a component's full state; a typed model becomes its JSON dict here (the bus carries dicts)."""
        self.publish(StateUpdate(component, state.to_json() if isinstance(state, State) else state))

    @property
    def has_sink(self) -> bool:
        """Whether events are persisted (a durable sink is attached)."""
        return self._sink is not None

    def emit_event(self, type_: str, data: dict[str, Any], component: str,
                   also: Sequence[tuple[str, tuple[object, ...]]] = ()) -> Event:
        """Persist an event in the durable sink, then announce it; raises if it cannot be persisted.

        `also`: SQL statements committed in the same transaction as the event (the state change it reports),
        so that a crash keeps both or neither. Only with a sink that shares the caller's database.
        """
        if not EVENT_TYPE_RE.match(type_):
            raise ValueError(f"invalid event type {type_!r}: must match {EVENT_TYPE_RE.pattern}")
        if also and self._sink is None:
            raise ValueError("emit_event(also=...) needs a durable sink")
        event = Event(type=type_, data=data, component=component)
        if self._sink is not None:
            if also:
                self._sink.append(event, also)
            else:
                self._sink.append(event)
        self.publish(event)
        self.publish(EventsPending())
        return event

    def raise_alert(self, alert: Alert) -> Event:
        """Emit an `alert` event; the last one of each (source, code) stays in the alert ledger."""
        event = self.emit_event("alert", alert.as_data(), alert.source)
        with self._lock:
            self._alerts.pop((alert.source, alert.code), None)
            self._alerts[(alert.source, alert.code)] = event
            while len(self._alerts) > ALERT_LEDGER_MAX:  # codes an MCU makes up cannot grow it without bound
                del self._alerts[next(iter(self._alerts))]
        return event

    def alerts(self) -> list[Event]:
        """The last `alert` event of each (source, code) raised since start, oldest first: what a consumer that
        starts late (the `alerts` component) needs to know which alerts are active."""
        with self._lock:
            return list(self._alerts.values())

    def states(self) -> dict[str, dict[str, Any]]:
        """Copy of the latest state of every component."""
        with self._lock:
            return dict(self._states)

    def entities(self) -> dict[str, tuple[Entity, ...]]:
        """Copy of the declared HA entities of every component."""
        with self._lock:
            return dict(self._entities)

    def dropped(self) -> dict[str, int]:
        """Messages dropped per subscriber because its queue was full."""
        with self._lock:
            return {s.name: s.dropped for s in self._subs if s.dropped}
