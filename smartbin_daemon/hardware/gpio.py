"""Devices wired straight to the Pi/Jetson header, through one gpiozero pin factory built from config.

Why one worker thread owns everything: gpiozero calls back from its own threads. Those callbacks only
record the raw edge in a bounded deque and wake this worker (one coalesced inbox notice, so a
chattering wire cannot push operator requests out of the drop-oldest inbox); debouncing, bus
messages, durable events, request answers and state all happen in the worker thread. Debouncing is
done here, not with gpiozero's `bounce_time`: RPi.GPIO's bounce ignores the edge that ends a burst,
and the mock factory does not debounce at all, so the same code behaves the same on every factory.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gpiozero import (
    LED,
    PWMLED,
    AngularServo,
    Buzzer,
    DigitalInputDevice,
    OutputDevice,
)
from gpiozero.exc import (
    GPIOPinInUse,
    PinInvalidPin,
    PinPWMError,
)
from gpiozero.pins import Factory

from ..config import GpioConfig, GpioLidConfig
from ..logs import audit, ev
from ..messages import (
    ButtonPressed,
    BuzzerArgs,
    DistanceReading,
    DoorChanged,
    LedArgs,
    LidArgs,
    PresenceChanged,
    SimulatedPresence,
)
from ..runtime.bus import Bus, Discovery, Entity, Request
from ..runtime.commands import RequestError, RequestSpec, command, declared_specs
from ..runtime.worker import FatalWorkerError, Worker
from ..states.gpio import GpioState, StatusLed
from .pins import (
    Debouncer,
    TrackedDistanceSensor,
    build_pin_factory,
    factory_name,
    quiet_gpiozero_warnings,
)

logger = logging.getLogger(__name__)

SOURCE = "gpio"
"""`source` of the messages this component publishes."""


STATE_MIN_INTERVAL_S = 0.25
"""State changes are published at most this often (the latest state always goes out)."""
DISTANCE_GRACE_S = 3.0
"""A distance sensor that has not echoed this long after start-up is reported (logged) as silent."""
DISTANCE_CHANGE_MM = 10.0
"""A distance change smaller than this does not republish the state by itself."""
SHORT_FEEDBACK = (3, 0.15, 0.15)
"""Status LED blinks (n, on_s, off_s) acknowledging a short press of the service button."""
HOLD_FEEDBACK = (1, 1.0, 0.0)
"""One long status LED flash acknowledging a hold."""

BLINK = (0.5, 0.5)
"""Status LED on/off seconds of the `blink` pattern."""
ERROR_BLINK = (0.1, 0.1)
"""Fast status LED blink of `error` when there is no fault LED."""
BUZZER_PATTERNS: dict[str, tuple[float, float, int | None] | None] = {
    "off": None,
    "beep": (0.1, 0.1, 1),
    "alarm": (0.5, 0.5, None),  # until `off`
    "ok": (0.05, 0.05, 2),
}


# --------------------------------------------------------------------------- requests


def owned_commands(cfg: GpioConfig) -> list[str]:
    """The actuator commands GPIO answers with this config (the rest stay with the Arduino)."""
    if not cfg.enabled:
        return []
    out = []
    if cfg.lid is not None:
        out.append("lid")
    if cfg.leds is not None:
        out.append("led")
    if cfg.buzzer is not None:
        out.append("buzzer")
    return out


def gpio_request_specs(cfg: GpioConfig, owner: str = "gpio") -> list[RequestSpec]:
    """Catalogue entries of the commands in `owned_commands(cfg)`, as `GpioWorker` declares them."""
    specs = {spec.command: spec for spec in declared_specs(GpioWorker, owner)}
    return [specs[c] for c in owned_commands(cfg)]


@dataclass(frozen=True)
class _EdgesPending:
    """Inbox notice: raw edges are waiting in the worker's edge deque."""


@dataclass(frozen=True)
class _Edge:
    """One raw level change seen by a gpiozero callback thread."""

    key: str
    active: bool
    mono: float


class GpioWorker(Worker):
    """The `gpio` component: header inputs to bus messages and events, actuator requests to header outputs."""

    critical = True

    def __init__(self, bus: Bus, cfg: GpioConfig, *, name: str = "gpio", factory: Factory | None = None) -> None:
        super().__init__(name, bus, tick_s=0.1, inbox=(Request, SimulatedPresence))
        self.cfg = cfg
        self._injected_factory = factory
        self.factory: Factory | None = factory
        self._edges: collections.deque[_Edge] = collections.deque(maxlen=1024)
        self._wake_sent = threading.Event()
        self.counters = {"presence_events": 0, "button_presses": 0, "errors": 0}
        self._reset()

    def _reset(self) -> None:
        """Forget every device and runtime state (before each setup)."""
        self._devices: list[tuple[str, Any]] = []  # (key path, device) in creation order
        self._inputs: dict[str, tuple[DigitalInputDevice, Debouncer]] = {}
        self.presence_dev: DigitalInputDevice | None = None
        self.door_dev: DigitalInputDevice | None = None
        self.button_dev: DigitalInputDevice | None = None
        self.distance_devs: dict[int, TrackedDistanceSensor] = {}
        self.status_led: LED | PWMLED | None = None
        self.fault_led: LED | None = None
        self.buzzer_dev: Buzzer | None = None
        self.servo: AngularServo | None = None
        self.lock_relay: OutputDevice | None = None
        self._factory_name = "none"
        self._presence: bool | None = None
        self._door: str | None = None
        self._button_pressed: bool | None = None
        self._press_mono = 0.0
        self._held = False
        self._distances: dict[int, float | None] = {}
        self._published_distances: dict[int, float | None] = {}
        self._next_distance = 0.0
        self._echo_status: dict[int, str] = {}  # compartment -> starting | ok | silent (for one log line per change)
        self._started = time.monotonic()
        self._led_pattern = "off"
        self._led_restore_at: float | None = None
        self._buzzer_pattern = "off"
        self._buzzer_done_at: float | None = None
        self._lid: dict[str, Any] | None = None
        self._servo_detach_at: float | None = None
        self._dirty = False
        self._last_state_mono = 0.0
        self._edges.clear()
        self._wake_sent.clear()

    # -- lifecycle ------------------------------------------------------------------

    def setup(self) -> None:
        """Build the pin factory and every configured device; a wrong or busy pin is fatal (not retried)."""
        self._reset()
        quiet_gpiozero_warnings()
        if self._injected_factory is None:
            try:
                self.factory = build_pin_factory(self.cfg.pin_factory)
            except Exception as exc:  # noqa: BLE001 - ImportError, BadPinFactory, RuntimeError: all unfixable by retrying
                raise FatalWorkerError(
                    f"gpio.pin_factory: cannot load the {self.cfg.pin_factory!r} pin factory: {type(exc).__name__}: {exc}"
                ) from exc
        assert self.factory is not None
        self._factory_name = factory_name(self.factory)
        try:
            self._create_devices()
        except BaseException:
            self._close_devices()
            raise
        self.bus.publish(Discovery(self.name, self.entities()))
        logger.info("gpio: %d device(s) ready on the %s pin factory", len(self._devices), self._factory_name,
                    extra=ev("gpio_ready"))
        self._publish_state(time.monotonic())

    def step(self) -> None:
        """Wait for a request or an edge (at most until the next timer), then service inputs and timers."""
        msg = self.next_message(self._wait_s(time.monotonic()))
        if msg is not None:
            self.handle(msg)
        self._service(time.monotonic())

    def handle(self, msg: Any) -> None:
        """Answer requests; edge notices are drained by `_service`."""
        if isinstance(msg, Request):
            self.answer(msg)
            self._dirty = True
        elif isinstance(msg, SimulatedPresence):
            self._simulate_presence(msg.present)

    def _simulate_presence(self, present: bool) -> None:
        """Drive the mock presence pin like a broken/restored beam (only with the `mock` pin factory).

        Why through the pin: the edge then takes the real path (gpiozero callback, debounce, settle).
        """
        if self.cfg.pin_factory != "mock" or self.presence_dev is None:
            logger.warning("gpio: ignoring simulated presence (needs pin_factory mock and a presence pin)")
            return
        pin = self.presence_dev.pin
        active_high = not self.presence_dev.pull_up  # inputs are built with pull_up=True exactly when active-low
        if present == active_high:
            pin.drive_high()
        else:
            pin.drive_low()

    def teardown(self) -> None:
        """Close every device (also after a crash) and a factory we built ourselves."""
        self._close_devices()

    # -- device creation ------------------------------------------------------------

    def _make(self, path: str, pins: dict[str, int | str], ctor: Callable[[], Any]) -> Any:
        """Construct one device; any failure becomes a FatalWorkerError naming the key path and pin."""
        try:
            device = ctor()
        except Exception as exc:  # noqa: BLE001 - gpiozero, lgpio.error, OSError, ValueError: all config/wiring faults
            raise FatalWorkerError(self._pin_error(path, pins, exc)) from exc
        self._devices.append((path, device))
        return device

    def _pin_error(self, path: str, pins: dict[str, int | str], exc: Exception) -> str:
        """`gpio.<path>: pin <pin>: <why>`, attributing multi-pin devices to the pin the error names."""
        if isinstance(exc, GPIOPinInUse):
            why = "busy (already used by another device)"
        elif isinstance(exc, PinInvalidPin):
            why = "not a usable GPIO pin on this board"
        elif isinstance(exc, PinPWMError):
            why = f"needs PWM, which the {self._factory_name} pin factory does not provide on this pin"
        elif "busy" in str(exc).lower():
            why = "busy (claimed by another process?)"
        else:
            why = "cannot be set up"
        text = str(exc)
        named = [(sub, pin) for sub, pin in pins.items()
                 if re.search(rf"(?<![\w:]){re.escape(self._canonical(pin))}(?!\w)", text)]
        if len(pins) == 1 or len(named) == 1:
            sub, pin = (list(pins.items()) if len(pins) == 1 else named)[0]
            where = f"gpio.{path}{'.' + sub if sub else ''}: pin {pin!r}"
        else:
            where = f"gpio.{path}: pins " + ", ".join(f"{sub}={pin!r}" for sub, pin in pins.items())
        return f"{where}: {why}: {type(exc).__name__}: {text}"

    def _canonical(self, pin: int | str) -> str:
        """The factory's name of a pin spec ('BOARD11' -> 'GPIO17'), or the spec itself."""
        try:
            for _header, info in self.factory.board_info.find_pin(pin):  # type: ignore[union-attr]
                return str(info.name)
        except Exception:  # noqa: BLE001 - only used to word an error
            pass
        return str(pin)

    def _input(self, key: str, path: str, pin: int | str, pull_up: bool, on_s: float, off_s: float) -> DigitalInputDevice:
        """A raw digital input whose edges go to the worker, debounced there."""
        dev: DigitalInputDevice = self._make(path, {"": pin}, lambda: DigitalInputDevice(
            pin, pull_up=pull_up, bounce_time=None, pin_factory=self.factory))
        now = time.monotonic()
        self._inputs[key] = (dev, Debouncer(bool(dev.is_active), now, on_s, off_s))
        dev.when_activated = lambda: self._on_edge(key, True)
        dev.when_deactivated = lambda: self._on_edge(key, False)
        return dev

    def _create_devices(self) -> None:
        """Create every configured device in a fixed order (inputs, distance, LEDs, buzzer, lid)."""
        cfg, f = self.cfg, self.factory
        if cfg.presence is not None:
            p = cfg.presence
            self.presence_dev = self._input("presence", "presence.pin", p.pin, p.use_pull_up,
                                            max(p.bounce_s, p.settle_s), p.bounce_s)
            self._presence = self._inputs["presence"][1].stable
        if cfg.door is not None:
            d = cfg.door
            self.door_dev = self._input("door", "door.pin", d.pin, d.pull_up, d.bounce_s, d.bounce_s)
            self._door = self._door_state(self._inputs["door"][1].stable)
        if cfg.button is not None:
            b = cfg.button
            self.button_dev = self._input("button", "button.pin", b.pin, b.pull_up, b.bounce_s, b.bounce_s)
            self._button_pressed = self._inputs["button"][1].stable
            self._held = self._button_pressed  # pressed at start: neither short nor hold until released
        for i, ds in enumerate(cfg.distance):
            self.distance_devs[ds.compartment] = self._make(
                f"distance[{i}]", {"trigger": ds.trigger, "echo": ds.echo}, functools.partial(
                    TrackedDistanceSensor, echo=ds.echo, trigger=ds.trigger, max_distance=ds.max_distance_m,
                    threshold_distance=ds.max_distance_m / 2, queue_len=1, partial=True, pin_factory=f))
            self._distances[ds.compartment] = None
        if cfg.leds is not None:
            leds = cfg.leds
            self.status_led = self._status_led(leds.status, leds.active_high)
            fault = leds.fault
            if fault is not None:
                self.fault_led = self._make("leds.fault", {"": fault}, lambda: LED(
                    fault, active_high=leds.active_high, initial_value=False, pin_factory=f))
        if cfg.buzzer is not None:
            bz = cfg.buzzer
            self.buzzer_dev = self._make("buzzer.pin", {"": bz.pin}, lambda: Buzzer(
                bz.pin, active_high=bz.active_high, initial_value=False, pin_factory=f))
        if cfg.lid is not None:
            self._create_lid(cfg.lid)

    def _status_led(self, pin: int | str, active_high: bool) -> LED | PWMLED:
        """A PWMLED (for `pulse`) where the factory can do PWM, else a plain LED."""
        try:
            led = PWMLED(pin, active_high=active_high, initial_value=0, pin_factory=self.factory)
        except PinPWMError:
            logger.info("gpio: no PWM on the status LED pin %s; the 'pulse' pattern is unavailable", pin,
                        extra=ev("gpio_no_pwm"))
        except Exception:  # noqa: BLE001 - retried as a plain LED below, which reports the real error
            pass
        else:
            self._devices.append(("leds.status", led))
            return led
        return self._make("leds.status", {"": pin}, lambda: LED(  # type: ignore[no-any-return]
            pin, active_high=active_high, initial_value=False, pin_factory=self.factory))

    def _create_lid(self, lid: GpioLidConfig) -> None:
        """A servo lid starts closed; a relay lid starts locked or unlocked as configured."""
        if lid.kind == "servo":
            self.servo = self._make("lid.pin", {"": lid.pin}, lambda: AngularServo(
                lid.pin, initial_angle=lid.closed_angle, min_angle=lid.min_angle, max_angle=lid.max_angle,
                min_pulse_width=lid.min_pulse_width_ms / 1000.0, max_pulse_width=lid.max_pulse_width_ms / 1000.0,
                pin_factory=self.factory))
            self._lid = {"kind": "servo", "position": "closed", "angle": lid.closed_angle}
            if lid.detach_after_s is not None:
                self._servo_detach_at = time.monotonic() + lid.detach_after_s
        else:
            self.lock_relay = self._make("lid.pin", {"": lid.pin}, lambda: OutputDevice(
                lid.pin, active_high=lid.lock_active_high, initial_value=lid.start_locked, pin_factory=self.factory))
            self._lid = {"kind": "relay", "locked": lid.start_locked}

    def _close_devices(self) -> None:
        """Close devices newest first, each on its own; then the factory if we built it."""
        for path, device in reversed(self._devices):
            try:
                device.close()
            except Exception:  # noqa: BLE001 - keep closing the others
                logger.exception("gpio: closing %s failed", path)
        self._devices = []
        self._inputs = {}
        if self._injected_factory is None and self.factory is not None:
            try:
                self.factory.close()
            except Exception:  # noqa: BLE001
                logger.exception("gpio: closing the pin factory failed")
            self.factory = None

    # -- gpiozero callback threads ------------------------------------------------------

    def _on_edge(self, key: str, active: bool) -> None:
        """gpiozero thread: record the raw edge and wake the worker; nothing else happens here."""
        self._edges.append(_Edge(key, active, time.monotonic()))
        if not self._wake_sent.is_set() and self.inbox is not None:
            self._wake_sent.set()
            self.inbox.put(_EdgesPending())

    # -- worker thread: inputs and timers -----------------------------------------------

    def _wait_s(self, now: float) -> float:
        """How long step() may wait: until the earliest timer, at most tick_s."""
        deadlines = [d for _dev, deb in self._inputs.values() if (d := deb.deadline()) is not None]
        if self._button_pressed and not self._held and self.cfg.button is not None:
            deadlines.append(self._press_mono + self.cfg.button.hold_s)
        deadlines += [t for t in (self._led_restore_at, self._buzzer_done_at, self._servo_detach_at) if t is not None]
        if self.distance_devs:
            deadlines.append(self._next_distance)
        deadlines.append(self._last_state_mono + (STATE_MIN_INTERVAL_S if self._dirty else self.cfg.state_interval_s))
        return max(0.0, min(self.tick_s, min(deadlines) - now))

    def _service(self, now: float) -> None:
        """Debounce inputs, fire holds, run timers, read distances, publish state when due."""
        self._wake_sent.clear()
        while True:
            try:
                edge = self._edges.popleft()
            except IndexError:
                break
            if edge.key in self._inputs:
                self._inputs[edge.key][1].edge(edge.active, edge.mono)
        for key, (dev, deb) in list(self._inputs.items()):
            try:
                deb.sample(bool(dev.is_active), now)
            except Exception as exc:  # noqa: BLE001 - a read error must not kill the other inputs
                self._device_error(key, exc)
                continue
            level = deb.update(now)
            if level is not None:
                self._on_stable(key, level, deb.stable_since, now)
        if (self.cfg.button is not None and self._button_pressed and not self._held
                and now >= self._press_mono + self.cfg.button.hold_s):
            self._held = True
            self._on_button("hold", self._press_mono + self.cfg.button.hold_s, now - self._press_mono)
        self._run_timers(now)
        if self.distance_devs and now >= self._next_distance:
            self._next_distance = now + self.cfg.distance_interval_s
            self._read_distances(now)
        due = self._last_state_mono + (STATE_MIN_INTERVAL_S if self._dirty else self.cfg.state_interval_s)
        if now >= due:
            self._publish_state(now)

    def _on_stable(self, key: str, level: bool, since: float, now: float) -> None:
        """A debounced level change of one input."""
        self._dirty = True
        if key == "presence":
            self._presence = level
            self.bus.publish(PresenceChanged(SOURCE, level, since))
            logger.debug("gpio: presence %s", level)
            if level:
                self.counters["presence_events"] += 1
                self._emit("item_present", {"present": True, "source": SOURCE})
        elif key == "door":
            state = self._door_state(level)
            self._door = state
            self.bus.publish(DoorChanged(SOURCE, state, since))
            logger.info("gpio: door %s", state, extra=ev("gpio_door"))
            self._emit("door_opened" if state == "open" else "door_closed", {"source": SOURCE})
        elif key == "button":
            self._button_pressed = level
            if level:
                self._press_mono = since
                self._held = False
            elif not self._held:
                self._on_button("short", since, since - self._press_mono)

    def _door_state(self, active: bool) -> str:
        """`open` or `closed` for a debounced switch level."""
        assert self.cfg.door is not None
        return "open" if active == self.cfg.door.open_when_active else "closed"

    def _on_button(self, kind: Literal["short", "hold"], mono: float, duration_s: float) -> None:
        """Report a short press or a hold, with LED feedback."""
        self.counters["button_presses"] += 1
        self._dirty = True
        self.bus.publish(ButtonPressed(kind, mono))
        logger.info("gpio: service button %s (%.1fs)", kind, duration_s, extra=ev("gpio_button"))
        self._emit("button_pressed", {"kind": kind, "duration_s": round(duration_s, 2), "source": SOURCE})
        self._feedback(*(SHORT_FEEDBACK if kind == "short" else HOLD_FEEDBACK))

    def _feedback(self, n: int, on_s: float, off_s: float) -> None:
        """Blink the status LED `n` times, then restore the requested pattern."""
        if self.status_led is None:
            return
        try:
            self.status_led.blink(on_time=on_s, off_time=off_s, n=n, background=True)
        except Exception as exc:  # noqa: BLE001
            self._device_error("leds.status", exc)
            return
        self._led_restore_at = time.monotonic() + n * (on_s + off_s) + 0.05

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        """A durable event; a storage failure is logged and counted, it does not stop the inputs."""
        try:
            self.bus.emit_event(type_, data, self.name)
        except Exception:  # noqa: BLE001
            self.counters["errors"] += 1
            logger.exception("gpio: cannot persist event %s", type_, extra=ev("gpio_event_lost"))

    def _device_error(self, what: str, exc: Exception) -> None:
        """Count and log a device fault during operation."""
        self.counters["errors"] += 1
        self._dirty = True
        logger.warning("gpio: %s: %s: %s", what, type(exc).__name__, exc, extra=ev("gpio_device_error"))

    def _run_timers(self, now: float) -> None:
        """LED restore after feedback, end of a finite buzzer pattern, servo detach."""
        if self._led_restore_at is not None and now >= self._led_restore_at:
            self._led_restore_at = None
            try:
                self._apply_led(self._led_pattern)
            except Exception as exc:  # noqa: BLE001
                self._device_error("leds", exc)
        if self._buzzer_done_at is not None and now >= self._buzzer_done_at:
            self._buzzer_done_at = None
            self._buzzer_pattern = "off"
            self._dirty = True
        if self._servo_detach_at is not None and now >= self._servo_detach_at:
            self._servo_detach_at = None
            if self.servo is not None:
                try:
                    self.servo.detach()
                except Exception as exc:  # noqa: BLE001
                    self._device_error("lid", exc)

    def _read_distances(self, now: float) -> None:
        """Publish one DistanceReading per sensor; log when a sensor goes silent or echoes again."""
        for compartment, sensor in self.distance_devs.items():
            try:
                mm = sensor.mm(now)
            except Exception as exc:  # noqa: BLE001
                self._device_error(f"distance compartment {compartment}", exc)
                mm = None
            status = self._echo_status.get(compartment, "starting")
            if mm is not None and status != "ok":
                if status == "silent":
                    logger.info("gpio: distance sensor of compartment %d echoes again", compartment,
                                extra=ev("gpio_distance_ok"))
                self._echo_status[compartment] = "ok"
            elif mm is None and (status == "ok" or (status == "starting" and now - self._started >= DISTANCE_GRACE_S)):
                logger.warning("gpio: distance sensor of compartment %d gets no echo (wiring? 5V->3.3V divider on echo?)",
                               compartment, extra=ev("gpio_distance_no_echo"))
                self._echo_status[compartment] = "silent"
            self._distances[compartment] = mm
            published = self._published_distances.get(compartment)
            if (published is None) != (mm is None) or (
                    mm is not None and published is not None and abs(mm - published) >= DISTANCE_CHANGE_MM):
                self._dirty = True
            self.bus.publish(DistanceReading(SOURCE, compartment, mm, now))

    # -- requests -----------------------------------------------------------------------

    def offer(self, spec: RequestSpec) -> RequestSpec | None:
        """Only the actuator commands of configured devices (`owned_commands`); the Arduino answers the others."""
        return spec if spec.command in owned_commands(self.cfg) else None

    def refuse(self, req: Request, error: str, data: Any = None) -> None:
        """Answer ok=False with a message for the operator; counted and logged."""
        self.counters["errors"] += 1
        self._dirty = True
        logger.info("gpio: request %s refused: %s", req.command, error, extra=ev("gpio_request_refused"))
        super().refuse(req, error, data)

    def request_crashed(self, req: Request, exc: Exception) -> None:
        """A device fault answers the request and counts as a device error (not as a refusal)."""
        self._device_error(req.command, exc)
        super().refuse(req, f"{type(exc).__name__}: {exc}")

    # opening a servo lid or unlocking a relay lid gives access to the bin: privileged (signed or broker ACL)
    @command("lid", LidArgs, example={"op": "open"}, privileged_when=RequestSpec.arg_in("op", "open", "unlock"),
             summary="Open or close the lid servo, or lock/unlock the lid relay (GPIO).")
    def _lid_request(self, req: Request, args: LidArgs) -> dict[str, Any]:
        """open/close move a servo lid; lock/unlock switch a relay lid; the other combination is refused."""
        audit(logger, "lid", f"op={args.op}", authority=req.authority, key=req.key_id, transaction=req.transaction)
        lid = self.cfg.lid
        if lid is None:
            raise RequestError("no lid is configured on GPIO (gpio.lid)")
        if lid.kind == "servo":
            if args.op in ("lock", "unlock"):
                raise RequestError("this lid has no lock (gpio.lid.kind is 'servo'): use open or close")
            assert self.servo is not None and self._lid is not None
            angle = lid.open_angle if args.op == "open" else lid.closed_angle
            self.servo.angle = angle
            self._lid.update(position="open" if args.op == "open" else "closed", angle=angle)
            if lid.detach_after_s is not None:
                self._servo_detach_at = time.monotonic() + lid.detach_after_s
        else:
            if args.op in ("open", "close"):
                raise RequestError("this lid is a lock relay (gpio.lid.kind is 'relay'): it cannot open or close; "
                                   "use lock or unlock")
            assert self.lock_relay is not None and self._lid is not None
            if args.op == "lock":
                self.lock_relay.on()
            else:
                self.lock_relay.off()
            self._lid["locked"] = args.op == "lock"
        logger.info("gpio: lid %s", args.op, extra=ev("gpio_lid"))
        return {"op": args.op, "lid": dict(self._lid)}

    @command("led", LedArgs, example={"pattern": "blink"},
             summary="Set the status LED pattern (error/ok also drive the fault LED) (GPIO).")
    def _led_request(self, req: Request, args: LedArgs) -> dict[str, Any]:
        """Apply and remember a status LED pattern (it is restored after button feedback)."""
        if self.status_led is None:
            raise RequestError("no status LED is configured on GPIO (gpio.leds)")
        self._apply_led(args.pattern)
        self._led_pattern = args.pattern
        self._led_restore_at = None
        return {"pattern": args.pattern, "fault": self._fault_on()}

    def _apply_led(self, pattern: str) -> None:
        """Drive the LEDs for a pattern: off/on/blink/pulse on the status LED; error/ok also set the fault LED."""
        status, fault = self.status_led, self.fault_led
        assert status is not None
        if pattern == "pulse" and not isinstance(status, PWMLED):
            raise RequestError("pattern 'pulse' needs PWM, which the status LED pin does not have here; "
                                 "use blink")
        if pattern == "off":
            status.off()
            if fault is not None:
                fault.off()
        elif pattern == "on":
            status.on()
        elif pattern == "blink":
            status.blink(on_time=BLINK[0], off_time=BLINK[1], background=True)
        elif pattern == "pulse":
            status.pulse(fade_in_time=1.0, fade_out_time=1.0, background=True)  # type: ignore[union-attr]
        elif pattern == "error":
            if fault is not None:
                fault.on()
            else:
                status.blink(on_time=ERROR_BLINK[0], off_time=ERROR_BLINK[1], background=True)
        elif pattern == "ok":
            if fault is not None:
                fault.off()
            status.on()
        else:
            raise RequestError(f"unknown LED pattern {pattern!r}")

    def _fault_on(self) -> bool | None:
        """Whether the fault LED is lit (None without one)."""
        return None if self.fault_led is None else bool(self.fault_led.is_active)

    @command("buzzer", BuzzerArgs, example={"pattern": "beep"},
             summary="Play a buzzer pattern; alarm sounds until 'off' (GPIO).")
    def _buzzer_request(self, req: Request, args: BuzzerArgs) -> dict[str, Any]:
        """Play a buzzer pattern; finite ones read `off` in the state once done."""
        if self.buzzer_dev is None:
            raise RequestError("no buzzer is configured on GPIO (gpio.buzzer)")
        spec = BUZZER_PATTERNS[args.pattern]
        if spec is None:
            self.buzzer_dev.off()
            self._buzzer_done_at = None
        else:
            on_s, off_s, n = spec
            self.buzzer_dev.beep(on_time=on_s, off_time=off_s, n=n, background=True)
            self._buzzer_done_at = None if n is None else time.monotonic() + n * (on_s + off_s)
        self._buzzer_pattern = args.pattern
        return {"pattern": args.pattern}

    # -- state and entities ---------------------------------------------------------------

    def own_state(self) -> GpioState:
        """The retained `<root>/gpio` state."""
        return GpioState(
            pin_factory=self._factory_name,
            presence=self._presence,
            door=self._door,
            button=None if self._button_pressed is None else ("pressed" if self._button_pressed else "released"),
            lid=None if self._lid is None else dict(self._lid),
            led=None if self.status_led is None else StatusLed(pattern=self._led_pattern, fault=self._fault_on()),
            buzzer=None if self.buzzer_dev is None else self._buzzer_pattern,
            distances={str(c): mm for c, mm in sorted(self._distances.items())},
            counters=dict(self.counters),
        )

    def _publish_state(self, now: float) -> None:
        """Publish the state now and restart the rate-limit and periodic clocks."""
        self._last_state_mono = now
        self._dirty = False
        self._published_distances = dict(self._distances)
        self.bus.set_state(self.name, self.own_state())

    def entities(self) -> tuple[Entity, ...]:
        """HA entities for the configured devices."""
        out: list[Entity] = []
        if self.cfg.presence is not None:
            out.append(Entity("binary_sensor", "gpio_presence", "Item present", self.name,
                              "{{ 'ON' if value_json.presence else 'OFF' }}", {"device_class": "occupancy"}))
        if self.cfg.door is not None:
            out.append(Entity("binary_sensor", "gpio_door", "Door", self.name,
                              "{{ 'ON' if value_json.door == 'open' else 'OFF' }}", {"device_class": "door"}))
        lid = self.cfg.lid
        if lid is not None:
            ops = [("open", "Lid open", "mdi:delete-empty-outline"), ("close", "Lid close", "mdi:delete-outline")]
            if lid.kind == "relay":
                ops = [("lock", "Lid lock", "mdi:lock"), ("unlock", "Lid unlock", "mdi:lock-open-variant")]
            for op, label, icon in ops:
                out.append(Entity("button", f"gpio_lid_{op}", label, self.name, None, {
                    "command_topic": "lid", "payload_press": json.dumps({"args": {"op": op}}), "icon": icon}))
        for d in self.cfg.distance:
            out.append(Entity("sensor", f"gpio_distance_{d.compartment}", f"Compartment {d.compartment} distance",
                              self.name, "{{ value_json.distances['" + str(d.compartment) + "'] }}",
                              {"device_class": "distance", "unit_of_measurement": "mm", "state_class": "measurement",
                               "entity_category": "diagnostic"}))
        return tuple(out)
