"""The hardware self-test (`selftest`): one check per part, each a small generator the `workflow` worker drives.

Why generators: a check waits for answers (an ACK, a fresh reading, a frame) without blocking the workflow's
thread; it yields what it waits for (`Ask`, `Pause`, `AwaitDrop`) and returns its `Outcome`. The run sends requests
to the owners over the bus like the workflow does, reads the other components' states from the bus cache through
their typed models, and bounds every wait on the monotonic clock: a check still waiting after its time fails with
"no answer in N s".
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso_utc
from ..config import BinsConfig
from ..runtime.bus import Response
from ..runtime.status import ConnectionStatus
from ..states import ArduinoState, CameraState
from ..states.selftest import MAX_RUN_S, MOVING, PARTS, PartResult, PartStatus, SelfTestState, SelfTestStatus

Part = Literal["ultrasonic", "drop", "scale", "lid", "routes", "led", "buzzer", "camera", "detector"]

FRESH_WAIT_S = 3.0
"""How long a sensor check waits for telemetry newer than the start of the check."""
CAMERA_WAIT_S = 3.0
DETECTOR_TIMEOUT_S = 15.0
ROUTE_SETTLE_S = 3.0
"""After a ROUTE's ACK, how long to wait for the MCU's `EVT drop` (the flap's movement done) before moving on."""
POLL_S = 0.2
WEIGHT_RANGE_G = (-500.0, 50_000.0)
"""A load cell reading outside this is not plausible (unplugged HX711s read huge or negative values)."""


class SelfTestArgs(BaseModel):
    """`selftest`: exercise the parts present; moving parts only when `move` is true (then it must be signed)."""

    model_config = ConfigDict(extra="forbid")
    parts: list[Part] | None = Field(default=None, min_length=1, max_length=len(PARTS),
                                     description="default: every part present")
    move: bool = Field(default=True, description="false: skip the lid, the flap routes, the LED and the buzzer")


@dataclass(frozen=True)
class Ask:
    """Send `command` to its owner; resume with its Response, or None when none came within `timeout_s`."""

    command: str
    args: Mapping[str, Any]
    timeout_s: float


@dataclass(frozen=True)
class Pause:
    """Resume after `seconds` (with None)."""

    seconds: float


@dataclass(frozen=True)
class AwaitDrop:
    """Resume with True when the MCU reports a drop into flap `flap` within `timeout_s`, else False."""

    flap: int
    timeout_s: float


Step = Ask | Pause | AwaitDrop


@dataclass(frozen=True)
class Outcome:
    """What a check found."""

    status: PartStatus
    value: Any = None
    unit: str | None = None
    detail: str | None = None


Check = Generator[Step, Any, Outcome]


@dataclass(frozen=True)
class Probe:
    """What a check may look at: the clock, the bus's state cache, the bin's config and the actuator owners."""

    clock: Callable[[], float]
    states: Callable[[], Mapping[str, Mapping[str, Any]]]
    cfg: BinsConfig
    owners: Mapping[str, str | None]
    readings: dict[tuple[str, int], float | None] = field(default_factory=dict)
    """Distance readings (mm, None: no echo) by (source, channel) that arrived since the run started."""
    weights: list[float] = field(default_factory=list)
    """Load cell readings (g) that arrived since the run started."""

    def state(self, component: str) -> Mapping[str, Any] | None:
        """A component's latest published state (None: never published)."""
        return self.states().get(component)


def passed(value: Any = None, unit: str | None = None, detail: str | None = None) -> Outcome:
    """A check that passed."""
    return Outcome(PartStatus.PASS, value, unit, detail)


def failed(detail: str, value: Any = None, unit: str | None = None) -> Outcome:
    """A check that failed, and why."""
    return Outcome(PartStatus.FAIL, value, unit, detail)


def skipped(detail: str) -> Outcome:
    """A check not run, and why."""
    return Outcome(PartStatus.SKIPPED, detail=detail)


def ask(command: str, args: Mapping[str, Any], timeout_s: float) -> Generator[Step, Any, tuple[Any, str | None]]:
    """`(data, None)` from an ok answer, else `(None, why)`: the refusal, or no answer in time."""
    response = yield Ask(command, dict(args), timeout_s)
    if response is None:
        return None, f"no answer in {timeout_s:g} s"
    assert isinstance(response, Response)
    return (response.data, None) if response.ok else (None, str(response.error))


def _no_check(outcome: Outcome) -> Check:
    """A check that is decided before it starts (skipped, or failed for want of something)."""
    return outcome
    yield  # pragma: no cover - makes this a generator


# --------------------------------------------------------------------------- sensors


def _await(probe: Probe, arrived: Callable[[], bool]) -> Generator[Step, Any, bool]:
    """Wait (at most FRESH_WAIT_S) until a reading that arrived during the run is there."""
    deadline = probe.clock() + FRESH_WAIT_S
    while not arrived():
        if probe.clock() >= deadline:
            return False
        yield Pause(POLL_S)
    return True


def _link(probe: Probe) -> ArduinoState | None:
    """The Arduino's state when its link is up and fresh (None: not connected or stale)."""
    state = ArduinoState.from_json(probe.state("arduino") or {})
    return state if state.status == ConnectionStatus.CONNECTED else None


def ultrasonic(probe: Probe, source: str, channel: int) -> Check:
    """One compartment's distance sensor: a reading taken during the run within bins.fill.filter [min_mm, max_mm]."""
    lo, hi = probe.cfg.fill.filter.min_mm, probe.cfg.fill.filter.max_mm
    key = (source, channel)
    if not (yield from _await(probe, lambda: key in probe.readings)):
        return failed(f"no reading from {source} channel {channel} in {FRESH_WAIT_S:g} s")
    reading = probe.readings[key]
    if reading is None:
        return failed(f"no echo on {source} channel {channel}")
    if not lo <= reading <= hi:
        return failed(f"{reading:g} mm is outside [{lo:g}, {hi:g}] mm ({source} channel {channel})", reading, "mm")
    return passed(reading, "mm", f"{source} channel {channel}, range [{lo:g}, {hi:g}] mm")


def drop_sensor(probe: Probe) -> Check:
    """The drop beam: the MCU reports it fitted and its link is fresh (it is exercised by an item falling)."""
    state = _link(probe)
    if state is None:
        return failed("the Arduino link is not connected")
    if "drop" not in state.sensors:
        return skipped("the Arduino reports no drop sensor")
    return passed("present", None, "reported by the MCU; a drop during a route test confirms it")
    yield  # pragma: no cover - a check is a generator


def scale(probe: Probe) -> Check:
    """The load cell: a plausible weight read during the run (no tare)."""
    state = _link(probe)
    if state is None:
        return failed("the Arduino link is not connected")
    if "hx711" not in state.sensors:
        return skipped("the Arduino reports no load cell")
    if not (yield from _await(probe, lambda: bool(probe.weights))):
        return failed(f"no weight reading in {FRESH_WAIT_S:g} s")
    grams = probe.weights[-1]
    lo, hi = WEIGHT_RANGE_G
    if not lo <= grams <= hi:
        return failed(f"{grams:g} g is not plausible (expected {lo:g} to {hi:g} g)", grams, "g")
    return passed(grams, "g")


# --------------------------------------------------------------------------- actuators


def lid(timeout_s: float) -> Check:
    """Lock, then unlock the lid, each acknowledged by its owner."""
    _, why = yield from ask("lid", {"op": "lock"}, timeout_s)
    if why is not None:
        return failed(f"lock: {why}")
    data, why = yield from ask("lid", {"op": "unlock"}, timeout_s)
    if why is not None:
        return failed(f"unlock: {why}")
    state = data.get("lid") if isinstance(data, dict) else None
    return passed(state, None, "locked and unlocked")


def route(probe: Probe, flap: int, timeout_s: float) -> Check:
    """Move the flap to one compartment: the ACK, then the MCU's drop (or a fault) within ROUTE_SETTLE_S."""
    start = probe.clock()
    data, why = yield from ask("route", {"compartment": flap, "command_id": secrets.token_hex(4)}, timeout_s)
    if why is not None:
        return failed(why)
    ack_ms = round((probe.clock() - start) * 1000.0, 1)
    done = yield AwaitDrop(flap, ROUTE_SETTLE_S)
    fault = ArduinoState.from_json(probe.state("arduino") or {}).fault if probe.owners.get("route") == "arduino" \
        else None
    if fault:
        return failed(f"ACK, then the MCU reports fault {fault}", ack_ms, "ms")
    detail = f"flap {flap}: ACK in {ack_ms:g} ms, " + ("drop reported" if done else
                                                       f"no drop reported in {ROUTE_SETTLE_S:g} s (no item)")
    return passed(ack_ms, "ms", detail)


def signal(command: str, pattern: str, timeout_s: float) -> Check:
    """Play a short LED or buzzer pattern, acknowledged by its owner."""
    _, why = yield from ask(command, {"pattern": pattern}, timeout_s)
    if why is not None:
        return failed(why)
    return passed(pattern, None, f"{command} {pattern} acknowledged")


# --------------------------------------------------------------------------- vision


def camera(probe: Probe) -> Check:
    """New frames arrive: the frame counter grows by two within CAMERA_WAIT_S; the value is the camera's fps."""
    start = CameraState.from_json(probe.state("camera") or {})
    deadline = probe.clock() + CAMERA_WAIT_S
    while probe.clock() < deadline:
        state = CameraState.from_json(probe.state("camera") or {})
        if state.status == ConnectionStatus.CONNECTED and (state.frames or 0) >= (start.frames or 0) + 2:
            return passed(state.fps, "fps", f"{state.frames - (start.frames or 0)} new frames, {state.resolution}")
        yield Pause(POLL_S)
    state = CameraState.from_json(probe.state("camera") or {})
    return failed(f"no new frames in {CAMERA_WAIT_S:g} s (camera {state.status or 'not running'}"
                  f"{': ' + state.last_error if state.last_error else ''})", state.fps, "fps")


def detector() -> Check:
    """One timed inference on the current frame (`detector/test`)."""
    data, why = yield from ask("detector/test", {}, DETECTOR_TIMEOUT_S)
    if why is not None:
        return failed(why)
    top = data.get("top_class")
    detail = f"top class {top} ({data.get('top_confidence'):.2f})" if top else "nothing detected"
    return passed(data.get("inference_ms"), "ms", detail)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Planned:
    """One check to run: the part, the check's name, and the check (a fresh generator)."""

    part: str
    name: str
    check: Check


def plan(probe: Probe, parts: Iterable[str], *, move_refused: str | None, timeout_s: float,
         vision: Mapping[str, bool]) -> list[Planned]:
    """The checks of the selected parts; moving parts are skipped with `move_refused` when that is set."""
    out: list[Planned] = []
    selected = set(parts)
    for part in PARTS:
        if part not in selected:
            continue
        if part in MOVING and move_refused is not None:
            out.append(Planned(part, part, _no_check(skipped(move_refused))))
            continue
        out += _part(probe, part, timeout_s, vision)
    return out


def _part(probe: Probe, part: str, timeout_s: float, vision: Mapping[str, bool]) -> list[Planned]:
    """The checks of one part (several for the ultrasonic channels and the routes; a skip when it is absent)."""
    owners, comps = probe.owners, probe.cfg.compartments
    if part == "ultrasonic":
        found = [Planned(part, c.id, ultrasonic(probe, c.sensor.source, c.sensor.channel))
                 for c in comps if c.sensor is not None]
        return found or [Planned(part, part, _no_check(skipped("no compartment has a fill sensor")))]
    if part in ("drop", "scale"):
        if owners.get("route") is None:
            return [Planned(part, part, _no_check(skipped("no Arduino")))]
        return [Planned(part, part, drop_sensor(probe) if part == "drop" else scale(probe))]
    if part == "routes":
        return _routes(probe, timeout_s)
    if part in ("lid", "led", "buzzer"):
        if owners.get(part) is None:
            return [Planned(part, part, _no_check(skipped(f"no {part} configured")))]
        if part == "lid":
            return [Planned(part, part, lid(timeout_s))]
        return [Planned(part, part, signal(part, "blink" if part == "led" else "beep", timeout_s))]
    if not vision.get(part, False):
        return [Planned(part, part, _no_check(skipped(f"{part} disabled in the config")))]
    return [Planned(part, part, camera(probe) if part == "camera" else detector())]


def _routes(probe: Probe, timeout_s: float) -> list[Planned]:
    """A route to every compartment with a flap, then back to the residual (home) compartment."""
    if probe.owners.get("route") is None:
        return [Planned("routes", "routes", _no_check(skipped("no flap (no Arduino)")))]
    comps, flap_of = probe.cfg.compartments, probe.cfg.flap_of
    if not comps:
        return [Planned("routes", "routes", _no_check(skipped("no compartments configured")))]
    out = [Planned("routes", c.id, route(probe, flap_of(c), timeout_s)) for c in comps]
    home = next((c for c in comps if "residual" in c.categories), comps[-1])
    out.append(Planned("routes", f"home ({home.id})", route(probe, flap_of(home), timeout_s)))
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class _Running:
    """The check being run and what it waits for."""

    planned: Planned
    started: float
    started_wall: float
    step: Step | None = None
    request_id: str | None = None
    deadline: float = 0.0


@dataclass
class SelfTestRun:
    """One self-test: runs its checks in order, one at a time; `send(command, args, request_id)` reaches the owners."""

    checks: list[Planned]
    clock: Callable[[], float]
    wall: Callable[[], float]
    send: Callable[[str, Mapping[str, Any], str], None]
    move: bool
    authority: str
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    results: list[PartResult] = field(default_factory=list)
    started_wall: float = 0.0
    started: float = 0.0
    current: _Running | None = None
    finished: bool = False
    _seq: int = 0

    def start(self) -> None:
        """Begin with the first check."""
        self.started, self.started_wall = self.clock(), self.wall()
        self._next()

    @property
    def wake_at(self) -> float | None:
        """When the current wait ends (None: nothing to wait for)."""
        return None if self.current is None or self.finished else self.current.deadline

    def owns(self, request_id: str) -> bool:
        """Whether a response belongs to this run."""
        return request_id.startswith(f"selftest-{self.run_id}-")

    def on_response(self, response: Response) -> None:
        """An owner answered."""
        cur = self.current
        if cur is not None and isinstance(cur.step, Ask) and response.request_id == cur.request_id:
            self._resume(response)

    def on_drop(self, flap: int) -> None:
        """The MCU reported a drop into `flap`."""
        cur = self.current
        if cur is not None and isinstance(cur.step, AwaitDrop) and cur.step.flap == flap:
            self._resume(True)

    def tick(self) -> None:
        """Time passes: a pause ends, a wait runs out."""
        cur = self.current
        if cur is None or self.finished or self.clock() < cur.deadline:
            return
        self._resume(False if isinstance(cur.step, AwaitDrop) else None)

    def _next(self) -> None:
        index = len(self.results)
        if index >= len(self.checks):
            self.current, self.finished = None, True
            return
        self.current = _Running(self.checks[index], self.clock(), self.wall())
        self._resume(None, first=True)

    def _resume(self, value: Any, first: bool = False) -> None:
        """Feed the current check until it waits again or ends (then start the next one)."""
        cur = self.current
        assert cur is not None
        if not first and self.clock() - self.started > MAX_RUN_S:
            self._record(cur, failed(f"the whole self-test ran past {MAX_RUN_S:g} s"))
            return
        try:
            step = next(cur.planned.check) if first else cur.planned.check.send(value)
        except StopIteration as stop:
            self._record(cur, stop.value if isinstance(stop.value, Outcome) else failed("the check ended without a result"))
            return
        except Exception as exc:  # noqa: BLE001 - one broken check fails, the run goes on
            self._record(cur, failed(f"{type(exc).__name__}: {exc}"))
            return
        cur.step = step
        if isinstance(step, Ask):
            self._seq += 1
            cur.request_id = f"selftest-{self.run_id}-{self._seq}"
            cur.deadline = self.clock() + step.timeout_s
            self.send(step.command, step.args, cur.request_id)
        else:
            cur.deadline = self.clock() + (step.seconds if isinstance(step, Pause) else step.timeout_s)

    def _record(self, cur: _Running, outcome: Outcome) -> None:
        self.results.append(PartResult(
            part=cur.planned.part, name=cur.planned.name, status=outcome.status, value=outcome.value,
            unit=outcome.unit, detail=outcome.detail, at=iso_utc(self.wall()),
            duration_ms=round((self.clock() - cur.started) * 1000.0, 1)))
        self._next()

    def state(self) -> SelfTestState:
        """The run as published: running until every check has a result, then pass or fail."""
        counts = {s: sum(r.status == s for r in self.results) for s in PartStatus}
        status = SelfTestStatus.RUNNING if not self.finished else (
            SelfTestStatus.FAIL if counts[PartStatus.FAIL] else SelfTestStatus.PASS)
        return SelfTestState(
            status=status, started_at=iso_utc(self.started_wall), move=self.move, authority=self.authority,
            finished_at=iso_utc(self.wall()) if self.finished else None,
            duration_s=round(self.clock() - self.started, 2) if self.finished else None,
            passed=counts[PartStatus.PASS], failed=counts[PartStatus.FAIL], skipped=counts[PartStatus.SKIPPED],
            parts=list(self.results))
