"""The sorting workflow's model: its state, the events it reacts to and the effects it asks for (frozen
dataclasses, no behaviour; the transition is in sorting.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import BinsConfig
from ..messages import Decision
from ..states import CameraState, ConnectionStatus, DetectorState
from ..states.workflow import SortingState

AUTO, ASKED, UNTRUSTED = "auto", "asked", "untrusted"
"""Why the workflow's lid lock ends: the bin resumed on its own, a trusted request, an unsigned request."""
IDLE, ITEM_PRESENT, CLASSIFYING, ROUTING, CONFIRMING, ERROR, BLOCKED, MAINTENANCE = STATES = tuple(SortingState)
IN_FLIGHT = (ITEM_PRESENT, CLASSIFYING, ROUTING, CONFIRMING)
RESIDUAL = "residual"
COUNTS = ("sorted", "residual", "fallback", "refused", "failed", "interrupted", "unconfirmed")


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Now:
    """The moment of a transition: monotonic seconds for intervals, wall seconds for reports."""

    mono: float
    wall: float


@dataclass(frozen=True)
class Layout:
    """What the transition needs to know of the bin: its config, who owns route/lid/led/buzzer (None: nobody, the
    action is skipped), and which vision components are configured ({"camera": bool, "detector": bool})."""

    cfg: BinsConfig
    owners: Mapping[str, str | None]
    vision: Mapping[str, bool]


@dataclass(frozen=True)
class Item:
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
    command_id: str = ""
    route_attempts: int = 0
    request_id: str | None = None
    weight_at_route: float | None = None
    fill_at_route: float | None = None
    notes: tuple[str, ...] = ()
    snapshot: str | None = None
    """The decision's evidence snapshot (its reserved path), when one is saved."""


@dataclass(frozen=True)
class Sorting:
    """The whole workflow state: the phase and item, the fault and maintenance flags, and what it knows of the bin."""

    phase: str = IDLE
    item: Item | None = None
    deadline: float | None = None
    maintenance: bool = False
    maintenance_unlocked: bool = False
    """The lid was unlocked for maintenance: only by the service button or a trusted (signed) request."""
    maintenance_pending: bool = False
    pending_trusted: bool = False
    error: dict[str, Any] | None = None
    blocked: dict[str, Any] | None = None
    levels: Mapping[str, str | None] = field(default_factory=dict)
    fill: Mapping[str, float | None] = field(default_factory=dict)
    weight_g: float | None = None
    weight_mono: float = 0.0  # when weight_g was read
    landed_mono: float = 0.0  # when the previous item finished (landed, or timed out unconfirmed)
    landed_in: Mapping[str, float] = field(default_factory=dict)  # compartment -> when an item last finished there
    last_item: dict[str, Any] | None = None
    counts: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    workers: Mapping[str, str] = field(default_factory=dict)
    camera: CameraState | None = None
    detector: DetectorState | None = None
    actuators: Mapping[str, ConnectionStatus | None] = field(default_factory=dict)
    """The link status of each component that owns the lid, LED or buzzer (None: it has no link, e.g. GPIO)."""
    camera_down_since: float | None = None
    led: str | None = None
    lid: Mapping[str, str] = field(default_factory=dict)
    """The lid state each source last reported."""
    own_lock: bool = False
    """The workflow locked the lid (refusal, error) and has not released it."""
    foreign_lock: bool = False
    """When the workflow locked it, the lid was already locked by someone else (an operator's signed lock)."""
    presence_seen: bool = False
    """A presence sensor exists (it has reported): decisions never start items on their own then."""
    switched_off_in_block: bool = False
    """Detection was switched off during the current vision_down block: switching it on again is a `detection`
    request anyone may send, so that end of the block is no trusted cause and does not unlock."""


# -- events: what happened ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    """Fresh ids for an item the event may start (the worker draws them)."""

    item_id: str
    command_id: str


@dataclass(frozen=True)
class Interrupted:
    """A row left in the in-flight table by a previous run."""

    item_id: str
    state: str
    saved: Mapping[str, Any]


@dataclass(frozen=True)
class Restore:
    """A (re)start: the persisted meta, the rows of interrupted items and the bus's last-value cache of states."""

    meta: Mapping[str, Any]
    interrupted: tuple[Interrupted, ...]
    states: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Start:
    """After the restore: take the state the persisted flags ask for."""


@dataclass(frozen=True)
class Presence:
    """The presence sensor reported."""

    present: bool
    mono: float
    ids: Ids


@dataclass(frozen=True)
class Decided:
    """The detector decided what an item is."""

    decision: Decision
    ids: Ids


@dataclass(frozen=True)
class RouteAnswer:
    """The answer to a route request."""

    request_id: str
    ok: bool
    error: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class Dropped:
    """The drop sensor saw an item fall through a flap."""

    flap: int


@dataclass(frozen=True)
class Weighed:
    """A load cell reading."""

    grams: float | None


@dataclass(frozen=True)
class FillChanged:
    """The fill tracker's level of one compartment."""

    compartment: str
    fill_pct: float | None
    level: str | None


@dataclass(frozen=True)
class ServiceButtonHeld:
    """Someone at the bin held the service button (local presence)."""


@dataclass(frozen=True)
class LidReported:
    """A lid source reported its state."""

    source: str
    state: str


@dataclass(frozen=True)
class ComponentState:
    """Another component's published state (camera, detector, the actuators' owners)."""

    component: str
    state: Mapping[str, Any]


@dataclass(frozen=True)
class WorkerStatuses:
    """The supervisor's table of worker statuses."""

    statuses: Mapping[str, str]


@dataclass(frozen=True)
class Tick:
    """Time passed: timeouts and the camera's grace."""


@dataclass(frozen=True)
class ClearError:
    """`workflow/clear_error`."""

    trusted: bool
    authority: str


@dataclass(frozen=True)
class MaintenanceAsked:
    """`maintenance` (or the self-test holding the workflow while it moves the lid and flap)."""

    on: bool
    trusted: bool
    why: str = "request"


Event = (Restore | Start | Presence | Decided | RouteAnswer | Dropped | Weighed | FillChanged | ServiceButtonHeld
         | LidReported | ComponentState | WorkerStatuses | Tick | ClearError | MaintenanceAsked)


# -- effects: what the worker does ------------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    """A journal line."""

    level: int
    message: str
    args: tuple[Any, ...] = ()
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PublishState:
    """Publish this state now (forced), as `view()` shows it."""

    state: Sorting


@dataclass(frozen=True)
class SaveItem:
    """Write the in-flight item's row."""

    item: Item
    phase: str
    wall: float


@dataclass(frozen=True)
class SaveMeta:
    """Persist one of the workflow's flags (maintenance, maintenance_unlocked, error)."""

    key: str
    value: Any


@dataclass(frozen=True)
class Emit:
    """Emit an event; with it, in one transaction: forget the in-flight row, hand the item to the fill tracker,
    save a meta key."""

    type: str
    data: dict[str, Any]
    forget: str | None = None
    handoff: tuple[str, str] | None = None
    meta: tuple[str, Any] | None = None


@dataclass(frozen=True)
class RaiseAlert:
    """Raise (or end) an alert."""

    code: str
    severity: str
    message: str
    active: bool = True


@dataclass(frozen=True)
class Actuate:
    """Ask the owner of lid / led / buzzer for something (skipped when nobody owns it)."""

    command: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class SendRoute:
    """Ask the flap's owner to route the item."""

    owner: str
    args: Mapping[str, Any]
    request_id: str


@dataclass(frozen=True)
class HandOff:
    """Tell the fill tracker an item landed in a compartment."""

    compartment: str
    item_id: str
    mono: float


@dataclass(frozen=True)
class AnnounceMaintenance:
    """Tell the other components that maintenance mode changed."""

    on: bool
    mono: float


@dataclass(frozen=True)
class Answer:
    """The answer to the request being served: data, or the refusal's message."""

    data: Any = None
    error: str | None = None


Effect = (Log | PublishState | SaveItem | SaveMeta | Emit | RaiseAlert | Actuate | SendRoute | HandOff
          | AnnounceMaintenance | Answer)
