"""The GPIO component on gpiozero's MockFactory: debounced inputs, distance sensors, actuators, pin errors."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import LED, DigitalInputDevice
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin, MockTriggerPin
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smartbin_daemon.config import GPIO_BOARD_TO_BCM, GpioConfig, format_validation_errors, gpio_pin_key
from smartbin_daemon.hardware.gpio import GpioWorker, gpio_request_specs, owned_commands
from smartbin_daemon.hardware.pins import Debouncer, board_model, build_pin_factory, factory_kind
from smartbin_daemon.messages import ButtonPressed, DistanceReading, DoorChanged, PresenceChanged
from smartbin_daemon.runtime.bus import Bus, Discovery, Event, Request, Response, StateUpdate, Subscription
from smartbin_daemon.runtime.supervisor import RestartPolicy, Supervisor
from smartbin_daemon.runtime.worker import FatalWorkerError, Worker

KINDS = [PresenceChanged, DoorChanged, ButtonPressed, DistanceReading, Event, Response, StateUpdate, Discovery]


def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")


class ListSink:
    """The durable event sink, in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def append(self, event: Event) -> None:
        self.events.append(event)


class PWMTriggerPin(MockTriggerPin, MockPWMPin):
    """gpiozero's trigger pin that echoes on another pin, usable on a factory whose pins are PWM pins."""


class Rig:
    """A GpioWorker on a MockFactory in its own thread, as the supervisor runs it, and a bus recorder."""

    def __init__(self, options: dict[str, Any], factory: MockFactory | None = None) -> None:
        self.factory = factory if factory is not None else MockFactory(pin_class=MockPWMPin)
        self.sink = ListSink()
        self.bus = Bus(self.sink)
        self.sub: Subscription = self.bus.subscribe("test", KINDS, maxsize=100_000)
        self.cfg = GpioConfig.model_validate({"enabled": True, "pin_factory": "mock", **options})
        self.worker = GpioWorker(self.bus, self.cfg, factory=self.factory)
        self.seen: list[Any] = []
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        until(lambda: "gpio" in self.bus.states(), what="the first gpio state")

    def pin(self, spec: int | str) -> MockPin:
        return self.factory.pin(spec)  # type: ignore[no-any-return]

    def of(self, kind: type, pred: Callable[[Any], bool] = lambda m: True) -> list[Any]:
        while (m := self.sub.get(0)) is not None:
            self.seen.append(m)
        return [m for m in self.seen if isinstance(m, kind) and pred(m)]

    def events(self, type_: str) -> list[Event]:
        return self.of(Event, lambda e: e.type == type_)

    def wait(self, kind: type, pred: Callable[[Any], bool] = lambda m: True, timeout: float = 5.0) -> Any:
        return until(lambda: (self.of(kind, pred) or [None])[-1], timeout, what=f"a {kind.__name__}")

    def state(self) -> dict[str, Any]:
        return self.bus.states()["gpio"]

    def request(self, command: str, args: dict[str, Any]) -> Response:
        rid = uuid.uuid4().hex
        self.bus.publish(Request("gpio", command, args, rid))
        return self.wait(Response, lambda r: r.request_id == rid)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(2)
        assert not self.thread.is_alive(), "the gpio worker did not stop within 2 s"


@pytest.fixture
def rig() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def start(options: dict[str, Any], factory: MockFactory | None = None) -> Rig:
        r = Rig(options, factory)
        made.append(r)
        return r

    yield start
    for r in made:
        r.stop()


def hold_level(pin: MockPin, active_low: bool, seconds: float) -> None:
    """Drive a mock input active for `seconds`, then release it."""
    (pin.drive_low if active_low else pin.drive_high)()
    time.sleep(seconds)
    (pin.drive_high if active_low else pin.drive_low)()


# --------------------------------------------------------------------------- config


def test_the_same_pin_given_twice_is_a_config_error_naming_both_key_paths() -> None:
    with pytest.raises(ValidationError) as ei:
        GpioConfig.model_validate({"presence": {"pin": 17}, "leds": {"status": 5},
                                   "door": {"pin": "BOARD11"}, "lid": {"kind": "relay", "pin": "gpio5"}})
    lines = format_validation_errors(ei.value, GpioConfig)
    text = " ".join(lines)
    assert "gpio.presence.pin (17) and gpio.door.pin ('BOARD11') are the same pin GPIO17" in text
    assert "gpio.leds.status (5) and gpio.lid.pin ('GPIO5') are the same pin GPIO5" in text


@pytest.mark.parametrize(("options", "needle"), [
    ({"presence": {"pin": True}}, "presence.pin: must be a pin number or name"),
    ({"presence": {"pin": "PIN17"}}, "presence.pin: 'PIN17' is not a pin spec"),
    ({"presence": {"pin": 4, "pull_up": True, "active_high": True}}, "must be active-low"),
    ({"button": {"pin": 4, "hold_s": 0.01, "bounce_s": 0.05}}, "hold_s (0.01) must be longer than bounce_s"),
    ({"lid": {"kind": "servo", "pin": 12, "open_angle": 120}}, "open_angle (120.0) must be within"),
    ({"lid": {"kind": "servo", "pin": 12, "min_pulse_width_ms": 2, "max_pulse_width_ms": 1}}, "max_pulse_width_ms"),
    ({"distance": [{"compartment": 1, "trigger": 5, "echo": 6}, {"compartment": 1, "trigger": 7, "echo": 8}]},
     "compartment(s) 1 have more than one sensor"),
    ({"enabled": True}, "no device is configured"),
    ({"presence": {"pin": 4, "colour": "red"}}, "presence.colour: unknown key"),
])
def test_config_errors_name_the_key(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as ei:
        GpioConfig.model_validate(options)
    assert needle in " ".join(format_validation_errors(ei.value, GpioConfig))


def test_pin_specs_are_normalised() -> None:
    cfg = GpioConfig.model_validate({"presence": {"pin": " gpio17 "}, "door": {"pin": "27"}, "button": {"pin": "board15"},
                                     "leds": {"status": "j8:12"}})
    assert (cfg.presence and cfg.presence.pin) == "GPIO17"
    assert (cfg.door and cfg.door.pin) == 27
    assert (cfg.button and cfg.button.pin) == "BOARD15"
    assert (cfg.leds and cfg.leds.status) == "J8:12"
    assert (cfg.presence and cfg.presence.use_pull_up) is True  # break-beam default: active-low, pulled up


@given(st.integers(min_value=0, max_value=53))
def test_every_spelling_of_a_bcm_pin_is_one_pin(n: int) -> None:
    assert gpio_pin_key(n) == gpio_pin_key(f"GPIO{n}") == gpio_pin_key(f"BCM{n}") == f"GPIO{n}"


@given(st.sampled_from(sorted(GPIO_BOARD_TO_BCM)))
def test_header_positions_map_to_their_bcm_pin(board: int) -> None:
    assert gpio_pin_key(f"BOARD{board}") == gpio_pin_key(f"J8:{board}") == gpio_pin_key(GPIO_BOARD_TO_BCM[board])


# --------------------------------------------------------------------------- debouncing (pure)


@settings(max_examples=300, deadline=None)
@given(
    start=st.booleans(),
    durations=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30),
    on_ms=st.integers(min_value=0, max_value=200),
    off_ms=st.integers(min_value=0, max_value=200),
)
def test_debouncer_commits_exactly_the_levels_that_held_long_enough(
        start: bool, durations: list[int], on_ms: int, off_ms: int) -> None:
    deb = Debouncer(start, 0.0, on_ms / 1000, off_ms / 1000)
    expected, got = [], []
    reference = start
    t = 0.0
    level = start
    for ms in durations:  # alternating segments; the worker checks at every edge and at deadlines
        level = not level
        deb.edge(level, t)
        due = deb.deadline()
        end = t + ms / 1000
        if due is not None:
            assert deb.update(due - 1e-6) is None, "nothing counts before its time"
        if due is not None and due <= end:
            committed = deb.update(due)
            assert committed is not None and deb.update(due) is None
            got.append(committed)
        if level != reference and ms >= (on_ms if level else off_ms):
            reference = level
            expected.append(level)
        t = end
    assert got == expected
    assert deb.stable == reference


# --------------------------------------------------------------------------- pin factory


def test_auto_picks_lgpio_on_a_pi5_jetson_on_a_jetson_and_gpiozeros_default_elsewhere(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert board_model(model) == "Raspberry Pi 5 Model B Rev 1.0"
    assert factory_kind("auto", board_model(model)) == "lgpio"
    assert factory_kind("auto", "Raspberry Pi Compute Module 5 Rev 1.0") == "lgpio"
    assert factory_kind("auto", "Raspberry Pi 4 Model B Rev 1.4") == "default"
    assert factory_kind("auto", "NVIDIA Jetson Orin Nano Developer Kit") == "jetson"
    assert factory_kind("auto", None) == "default"
    assert factory_kind("rpigpio", "Raspberry Pi 5 Model B") == "rpigpio"
    assert board_model(tmp_path / "missing") is None


def test_mock_factory_has_pwm_pins_and_auto_uses_gpiozeros_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = build_pin_factory("mock")
    assert isinstance(f, MockFactory) and f.pin_class is MockPWMPin
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # gpiozero's default choice honours this
    (tmp_path / "model").write_text("Raspberry Pi 4 Model B Rev 1.4")
    assert isinstance(build_pin_factory("auto", device_tree=tmp_path), MockFactory)


def test_an_unloadable_pin_factory_is_fatal_and_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lgpio", None)
    monkeypatch.setitem(sys.modules, "gpiozero.pins.lgpio", None)
    worker = GpioWorker(Bus(), GpioConfig.model_validate({"enabled": True, "pin_factory": "lgpio", "presence": {"pin": 4}}))
    with pytest.raises(FatalWorkerError, match=r"gpio\.pin_factory: cannot load the 'lgpio' pin factory"):
        worker.run()


# --------------------------------------------------------------------------- inputs


def test_presence_chatter_is_ignored_and_a_stable_break_fires_once(rig: Callable[..., Rig]) -> None:
    r = rig({"presence": {"pin": 17, "bounce_s": 0.05, "settle_s": 0.3}})
    beam = r.pin(17)
    assert r.state()["presence"] is False and beam.state  # pulled up: an unbroken beam reads high
    for _ in range(20):  # contact chatter, 5 ms pulses
        hold_level(beam, active_low=True, seconds=0.005)
        time.sleep(0.005)
    hold_level(beam, active_low=True, seconds=0.1)  # a fly-through shorter than settle_s
    time.sleep(0.5)
    assert r.of(PresenceChanged) == [] and r.events("item_present") == []

    t0 = time.monotonic()
    beam.drive_low()
    msg = r.wait(PresenceChanged)
    assert time.monotonic() - t0 >= 0.3 - 0.01
    assert msg.present is True and msg.source == "gpio" and abs(msg.mono - t0) < 0.05
    time.sleep(0.4)
    assert len(r.of(PresenceChanged)) == 1
    [event] = r.events("item_present")
    assert event.data == {"present": True, "source": "gpio"} and event.component == "gpio"
    assert r.sink.events.count(event) == 1, "item_present is persisted before it is announced"
    until(lambda: r.state()["presence"] is True)

    beam.drive_high()
    cleared = r.wait(PresenceChanged, lambda m: not m.present)
    assert cleared.source == "gpio"
    time.sleep(0.3)
    assert len(r.events("item_present")) == 1, "clearing is a bus message and state, not an event"
    until(lambda: r.state()["presence"] is False)
    assert r.state()["counters"]["presence_events"] == 1


def test_an_active_high_pir_is_pulled_down(rig: Callable[..., Rig]) -> None:
    r = rig({"presence": {"pin": 4, "active_high": True, "settle_s": 0.05}})
    pir = r.pin(4)
    assert not pir.state and pir.pull == "down"
    pir.drive_high()
    assert r.wait(PresenceChanged).present is True


def test_door_switch_reports_open_and_closed(rig: Callable[..., Rig]) -> None:
    r = rig({"door": {"pin": 22, "bounce_s": 0.02}})
    reed = r.pin(22)
    assert r.state()["door"] == "open"  # no magnet: the switch is open, the pull-up reads high
    reed.drive_low()
    assert r.wait(DoorChanged).state == "closed"
    assert r.wait(Event, lambda e: e.type == "door_closed").data == {"source": "gpio"}
    reed.drive_high()
    assert r.wait(DoorChanged, lambda m: m.state == "open").source == "gpio"
    r.wait(Event, lambda e: e.type == "door_opened")
    until(lambda: r.state()["door"] == "open")
    assert [m.state for m in r.of(DoorChanged)] == ["closed", "open"]


def test_a_short_press_reports_short_and_blinks_the_status_led(rig: Callable[..., Rig]) -> None:
    r = rig({"button": {"pin": 27, "bounce_s": 0.02, "hold_s": 0.3}, "leds": {"status": 5}})
    led = r.pin(5)
    led.clear_states()
    hold_level(r.pin(27), active_low=True, seconds=0.1)
    press = r.wait(ButtonPressed)
    assert press.kind == "short"
    event = r.wait(Event, lambda e: e.type == "button_pressed")
    assert event.data["kind"] == "short" and 0.05 <= event.data["duration_s"] < 0.3
    until(lambda: len(led.states) >= 6, 2, "the status LED blinking")
    assert {s.state for s in led.states} >= {0.0, 1.0}
    time.sleep(1.2)
    assert led.state == 0 and r.state()["led"]["pattern"] == "off", "the requested pattern comes back"
    assert r.of(ButtonPressed) == [press] and r.state()["counters"]["button_presses"] == 1


def test_a_hold_reports_hold_while_still_pressed_and_no_short_on_release(rig: Callable[..., Rig]) -> None:
    r = rig({"button": {"pin": 27, "bounce_s": 0.02, "hold_s": 0.3}})
    button = r.pin(27)
    t0 = time.monotonic()
    button.drive_low()
    hold = r.wait(ButtonPressed)
    assert hold.kind == "hold" and time.monotonic() - t0 >= 0.3 - 0.01
    until(lambda: r.state()["button"] == "pressed")
    assert r.wait(Event, lambda e: e.type == "button_pressed").data["kind"] == "hold"
    time.sleep(0.3)
    button.drive_high()
    time.sleep(0.3)
    assert [m.kind for m in r.of(ButtonPressed)] == ["hold"]
    until(lambda: r.state()["button"] == "released")


def test_an_edge_flood_does_not_push_requests_out_of_the_inbox(rig: Callable[..., Rig]) -> None:
    r = rig({"presence": {"pin": 17}, "buzzer": {"pin": 18}})
    beam = r.pin(17)
    rid = uuid.uuid4().hex
    r.bus.publish(Request("gpio", "buzzer", {"pattern": "beep"}, rid))
    for _ in range(3000):  # 6000 edges from a loose wire, more than the inbox holds
        beam.drive_low()
        beam.drive_high()
    answer = r.wait(Response, lambda m: m.request_id == rid)
    assert answer.ok
    assert r.worker.inbox is not None and r.worker.inbox.dropped == 0


def test_state_updates_are_rate_limited_but_the_last_one_is_right(rig: Callable[..., Rig]) -> None:
    r = rig({"door": {"pin": 22, "bounce_s": 0.02}})
    reed = r.pin(22)
    r.of(StateUpdate)
    r.seen.clear()
    t0 = time.monotonic()
    for i in range(20):
        (reed.drive_low if i % 2 == 0 else reed.drive_high)()
        time.sleep(0.06)
    elapsed = time.monotonic() - t0
    until(lambda: len(r.of(DoorChanged)) == 20, what="every debounced door change")
    time.sleep(0.4)
    updates = r.of(StateUpdate, lambda s: s.component == "gpio")
    assert len(updates) <= elapsed / 0.25 + 3, len(updates)
    assert updates[-1].state["door"] == "open"


# --------------------------------------------------------------------------- distance


def test_distance_sensors_report_mm_and_none_without_echo(rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture) -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    echo = factory.pin(24)
    # The mock echo pulse is timed by a sleeping thread: it is never short, but it runs long on a busy
    # machine, so the bounds are generous above and the second check is relative.
    trigger = factory.pin(23, pin_class=PWMTriggerPin, echo_pin=echo, echo_time=0.004)  # 4 ms ≈ 686 mm
    r = rig({"distance_interval_s": 0.1,
             "distance": [{"compartment": 2, "trigger": 23, "echo": 24, "max_distance_m": 3.0},
                          {"compartment": 1, "trigger": 5, "echo": 6}]}, factory)
    near = r.wait(DistanceReading, lambda m: m.compartment == 2 and m.mm is not None)
    assert near.source == "gpio" and 600 <= near.mm <= 1400, near
    silent = r.wait(DistanceReading, lambda m: m.compartment == 1)
    assert silent.mm is None
    until(lambda: r.state()["distances"]["2"] is not None and r.state()["distances"]["1"] is None)

    trigger.echo_time = 0.010  # the compartment emptied: 1716 mm
    far = r.wait(DistanceReading, lambda m: m.compartment == 2 and m.mm is not None and m.mm > near.mm + 600)
    assert far.mm <= 3000

    trigger.echo_pin = factory.pin(26)  # the echo wire came off
    r.wait(DistanceReading, lambda m: m.compartment == 2 and m.mm is None and m.mono > far.mono)
    until(lambda: r.state()["distances"]["2"] is None)
    assert "distance sensor of compartment 2 gets no echo" in caplog.text


# --------------------------------------------------------------------------- wrong and busy pins


def test_a_busy_pin_is_fatal_names_pin_and_key_and_releases_what_was_made() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    other = DigitalInputDevice(17, pin_factory=factory)
    worker = GpioWorker(Bus(), GpioConfig.model_validate(
        {"enabled": True, "presence": {"pin": 4}, "door": {"pin": 17}, "leds": {"status": 5}}), factory=factory)
    with pytest.raises(FatalWorkerError) as ei:
        worker.run()
    message = str(ei.value)
    assert message.startswith("gpio.door.pin: pin 17: busy"), message
    assert "GPIO17" in message
    DigitalInputDevice(4, pin_factory=factory).close()  # the presence input made before the failure was closed
    LED(5, pin_factory=factory).close()
    other.close()


def test_a_busy_distance_pin_names_which_of_trigger_and_echo() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    other = LED(24, pin_factory=factory)
    worker = GpioWorker(Bus(), GpioConfig.model_validate(
        {"enabled": True, "distance": [{"compartment": 1, "trigger": 23, "echo": 24}]}), factory=factory)
    with pytest.raises(FatalWorkerError, match=r"^gpio\.distance\[0\]\.echo: pin 24: busy"):
        worker.run()
    other.close()


@pytest.mark.parametrize("pin", [99, "BOARD1"])
def test_an_invalid_pin_is_fatal_and_names_it(pin: int | str) -> None:
    worker = GpioWorker(Bus(), GpioConfig.model_validate({"enabled": True, "presence": {"pin": pin}}),
                        factory=MockFactory())
    with pytest.raises(FatalWorkerError) as ei:
        worker.run()
    assert str(ei.value).startswith(f"gpio.presence.pin: pin {pin!r}: not a usable GPIO pin on this board")


def test_a_servo_needs_pwm() -> None:
    worker = GpioWorker(Bus(), GpioConfig.model_validate({"enabled": True, "lid": {"kind": "servo", "pin": 12}}),
                        factory=MockFactory())  # plain MockPin: no PWM
    with pytest.raises(FatalWorkerError, match=r"^gpio\.lid\.pin: pin 12: needs PWM"):
        worker.run()


class Steady(Worker):
    """A worker that just keeps running."""

    def __init__(self, bus: Bus) -> None:
        super().__init__("steady", bus, tick_s=0.05)


def test_supervisor_marks_gpio_with_a_busy_pin_failed_at_once_and_the_rest_keeps_running() -> None:
    bus = Bus()
    events = bus.subscribe("test", [Event])
    factory = MockFactory(pin_class=MockPWMPin)
    squatter = DigitalInputDevice(17, pin_factory=factory)
    sup = Supervisor(bus, RestartPolicy(backoff_min_s=0.01, backoff_max_s=0.02, max_restarts=5, window_s=60))
    sup.add(GpioWorker(bus, GpioConfig.model_validate({"enabled": True, "presence": {"pin": 17}}), factory=factory))
    steady = Steady(bus)
    sup.add(steady)
    sup.start_all()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sup.table()["gpio"]["status"] != "failed":
            sup.check()
            time.sleep(0.01)
        for _ in range(30):  # keep supervising: a fatal error is never retried
            sup.check()
            time.sleep(0.01)
        table = sup.table()
        assert table["gpio"]["status"] == "failed" and table["gpio"]["restarts"] == 0
        assert "gpio.presence.pin: pin 17: busy" in table["gpio"]["last_error"]
        alerts = []
        while (e := events.get(0.2)) is not None:
            alerts.append(e)
        assert [(a.type, a.data["code"], a.data["source"]) for a in alerts] == [("alert", "worker_failed", "gpio")]
        assert "pin 17" in alerts[0].data["message"]
        assert table["steady"]["status"] == "running" and steady.heartbeat_age() < 1
    finally:
        sup.stop_all(2)
        squatter.close()


# --------------------------------------------------------------------------- actuators


def test_servo_lid_opens_and_closes_on_request(rig: Callable[..., Rig]) -> None:
    r = rig({"lid": {"kind": "servo", "pin": 12, "open_angle": 90, "closed_angle": 0,
                     "min_pulse_width_ms": 1.0, "max_pulse_width_ms": 2.0}})
    pwm = r.pin(12)
    assert pwm.frequency == 50 and pwm.state == pytest.approx(1.5 / 20)  # closed at start: 1.5 ms of 20 ms
    answer = r.request("lid", {"op": "open"})
    assert answer.ok and answer.data == {"op": "open", "lid": {"kind": "servo", "position": "open", "angle": 90.0}}
    assert pwm.state == pytest.approx(2.0 / 20) and r.worker.servo is not None and r.worker.servo.angle == 90
    until(lambda: r.state()["lid"]["position"] == "open")
    assert r.request("lid", {"op": "close"}).ok
    assert pwm.state == pytest.approx(1.5 / 20)
    refused = r.request("lid", {"op": "unlock"})
    assert not refused.ok and "this lid has no lock" in (refused.error or "")
    until(lambda: r.state()["counters"]["errors"] == 1)


def test_servo_pulses_stop_after_detach_after_s(rig: Callable[..., Rig]) -> None:
    r = rig({"lid": {"kind": "servo", "pin": 12, "detach_after_s": 0.2}})
    pwm = r.pin(12)
    until(lambda: pwm.frequency is None, 2, "the start-up move to be detached")
    assert r.request("lid", {"op": "open"}).ok
    assert pwm.frequency == 50 and pwm.state > 0
    until(lambda: pwm.frequency is None and pwm.state == 0, 2, "the servo pulses to stop")


@pytest.mark.parametrize("lock_active_high", [True, False])
def test_relay_lid_locks_and_unlocks(rig: Callable[..., Rig], lock_active_high: bool) -> None:
    r = rig({"lid": {"kind": "relay", "pin": 16, "lock_active_high": lock_active_high}})
    relay = r.pin(16)
    assert relay.state == lock_active_high, "start_locked: the lid is locked at start"
    answer = r.request("lid", {"op": "unlock"})
    assert answer.ok and answer.data["lid"] == {"kind": "relay", "locked": False}
    assert relay.state == (not lock_active_high)
    assert r.request("lid", {"op": "lock"}).ok and relay.state == lock_active_high
    refused = r.request("lid", {"op": "open"})
    assert not refused.ok and "lock relay" in (refused.error or "") and "cannot open or close" in (refused.error or "")


def test_led_patterns(rig: Callable[..., Rig]) -> None:
    r = rig({"leds": {"status": 5, "fault": 6}})
    status, fault = r.pin(5), r.pin(6)
    assert r.request("led", {"pattern": "on"}).ok and status.state == 1
    status.clear_states()
    assert r.request("led", {"pattern": "blink"}).ok
    until(lambda: len(status.states) >= 3, 3, "blinking")
    status.clear_states()
    assert r.request("led", {"pattern": "pulse"}).ok
    until(lambda: any(0 < s.state < 1 for s in status.states), 3, "a PWM level between off and on")
    answer = r.request("led", {"pattern": "error"})
    assert answer.ok and answer.data == {"pattern": "error", "fault": True} and fault.state == 1
    assert r.request("led", {"pattern": "ok"}).ok and fault.state == 0 and status.state == 1
    assert r.request("led", {"pattern": "off"}).ok and status.state == 0 and fault.state == 0
    until(lambda: r.state()["led"] == {"pattern": "off", "fault": False})


def test_error_without_fault_led_blinks_fast_and_pulse_needs_pwm(rig: Callable[..., Rig]) -> None:
    r = rig({"leds": {"status": 5}}, MockFactory())  # plain pins: the status LED falls back to on/off
    status = r.pin(5)
    status.clear_states()
    assert r.request("led", {"pattern": "error"}).ok
    time.sleep(0.5)
    assert len(status.states) >= 4, "fast blink: 0.1 s on, 0.1 s off"
    refused = r.request("led", {"pattern": "pulse"})
    assert not refused.ok and "needs PWM" in (refused.error or "")


def test_buzzer_patterns(rig: Callable[..., Rig]) -> None:
    r = rig({"buzzer": {"pin": 18}})
    buzzer = r.pin(18)
    buzzer.clear_states()
    assert r.request("buzzer", {"pattern": "beep"}).ok
    until(lambda: [s.state for s in buzzer.states][1:] == [1, 0], 2, "one beep")
    until(lambda: r.state()["buzzer"] == "off", 2, "the finished beep to read off")
    buzzer.clear_states()
    assert r.request("buzzer", {"pattern": "alarm"}).ok
    until(lambda: len(buzzer.states) >= 4, 3, "the alarm repeating")
    until(lambda: r.state()["buzzer"] == "alarm")
    assert r.request("buzzer", {"pattern": "off"}).ok
    time.sleep(0.1)
    n = len(buzzer.states)
    time.sleep(0.6)
    assert len(buzzer.states) == n and buzzer.state == 0


def test_request_errors_are_answered(rig: Callable[..., Rig]) -> None:
    r = rig({"presence": {"pin": 17}})
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("led", {"pattern": "on"}, "no status LED is configured on GPIO (gpio.leds)"),
        ("buzzer", {"pattern": "beep"}, "no buzzer is configured"),
        ("lid", {"op": "open"}, "no lid is configured"),
        ("led", {"pattern": "disco"}, "args.pattern"),
        ("lid", {"op": "open", "force": True}, "args.force"),
        ("route", {"compartment": 1}, "gpio does not handle 'route'"),
    ]
    for command, args, needle in cases:
        answer = r.request(command, args)
        assert not answer.ok and needle in (answer.error or ""), (command, answer)
    until(lambda: r.state()["counters"]["errors"] == 6)
    assert r.thread.is_alive()


# --------------------------------------------------------------------------- entities, requests, teardown


def test_entities_and_request_specs_follow_the_configured_devices(rig: Callable[..., Rig]) -> None:
    r = rig({"presence": {"pin": 17}, "door": {"pin": 22}, "lid": {"kind": "servo", "pin": 12},
             "leds": {"status": 5}, "distance": [{"compartment": 3, "trigger": 23, "echo": 24}]})
    [discovery] = r.of(Discovery)
    entities = {e.object_id: e for e in discovery.entities}
    assert set(entities) == {"gpio_presence", "gpio_door", "gpio_lid_open", "gpio_lid_close", "gpio_distance_3"}
    assert entities["gpio_presence"].options["device_class"] == "occupancy"
    assert entities["gpio_door"].options["device_class"] == "door"
    assert entities["gpio_lid_open"].options["command_topic"] == "lid"
    assert entities["gpio_lid_open"].options["payload_press"] == '{"args": {"op": "open"}}'
    assert entities["gpio_distance_3"].options["entity_category"] == "diagnostic"
    assert entities["gpio_distance_3"].value_template == "{{ value_json.distances['3'] }}"
    specs = {s.command: s for s in r.worker.requests()}
    assert set(specs) == {"lid", "led"} and {s.owner for s in specs.values()} == {"gpio"}
    assert specs["lid"].example == {"op": "open"} and not specs["lid"].privileged
    state = r.state()
    assert state["pin_factory"] == "mock" and state["distances"] == {"3": None} and state["buzzer"] is None

    relay = GpioConfig.model_validate({"enabled": True, "lid": {"kind": "relay", "pin": 16}, "buzzer": {"pin": 18}})
    assert owned_commands(relay) == ["lid", "buzzer"]
    assert [s.command for s in gpio_request_specs(relay)] == ["lid", "buzzer"]
    assert owned_commands(relay.model_copy(update={"enabled": False})) == []
    objects = {e.object_id for e in GpioWorker(Bus(), relay).entities()}
    assert objects == {"gpio_lid_lock", "gpio_lid_unlock"}


def test_teardown_releases_every_pin(rig: Callable[..., Rig]) -> None:
    r = rig({"presence": {"pin": 17}, "door": {"pin": 22}, "button": {"pin": 27}, "leds": {"status": 5, "fault": 6},
             "buzzer": {"pin": 18}, "lid": {"kind": "servo", "pin": 12}})
    r.stop()
    for pin in (17, 22, 27, 5, 6, 18, 12):
        LED(pin, pin_factory=r.factory).close()
