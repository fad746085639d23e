"""The GPIO component on a Jetson: board detection, the Jetson.GPIO pin factory (against a fake Jetson.GPIO that
keeps the library's rules), the same device behaviour as on the Pi's MockFactory, and the config errors."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero import DistanceSensor

from smartbin_daemon.__main__ import main
from smartbin_daemon.config import EX_CONFIG, GpioConfig, boards
from smartbin_daemon.config.boards import Board, detect_board, factory_kind, gpio_board_problems
from smartbin_daemon.hardware.gpio import GpioWorker
from smartbin_daemon.hardware.jetson_pins import JetsonGPIOFactory
from smartbin_daemon.hardware.pins import build_pin_factory, factory_name
from smartbin_daemon.messages import ButtonPressed, DistanceReading, DoorChanged, PresenceChanged
from smartbin_daemon.runtime.bus import Bus, Event
from smartbin_daemon.runtime.worker import FatalWorkerError

from .fake_jetson_gpio import HIGH, LOW, FakeJetsonGPIO
from .test_gpio import Rig, until

ORIN_NANO_TREE = (b"NVIDIA Jetson Orin Nano Developer Kit\x00",
                  b"nvidia,p3768-0000+p3767-0005\x00nvidia,p3767-0005\x00nvidia,tegra234\x00")
ORIN_NANO = Board("NVIDIA Jetson Orin Nano Developer Kit", ("nvidia,p3768-0000+p3767-0005", "nvidia,tegra234"))


def device_tree(path: Path, model: bytes | None, compatible: bytes | None) -> Path:
    """A fake /proc/device-tree with `model` and `compatible` (None: the file is absent)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in (("model", model), ("compatible", compatible)):
        if data is not None:
            (path / name).write_bytes(data)
    return path


@pytest.fixture
def fake_gpio(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJetsonGPIO]:
    """A fake `Jetson.GPIO` in sys.modules (an Orin Nano's header)."""
    fake = FakeJetsonGPIO()
    package = types.ModuleType("Jetson")
    package.GPIO = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "Jetson", package)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", fake)
    yield fake
    for watcher in list(fake.watchers.values()):
        watcher.stop()


@pytest.fixture
def jrig(fake_gpio: FakeJetsonGPIO) -> Iterator[Callable[..., Rig]]:
    """Start a GpioWorker on a JetsonGPIOFactory over the fake library, as the supervisor runs it."""
    made: list[Rig] = []

    def start(options: dict[str, Any]) -> Rig:
        r = Rig(options, JetsonGPIOFactory(ORIN_NANO))  # type: ignore[arg-type]
        made.append(r)
        return r

    yield start
    for r in made:
        r.stop()


def hold(fake: FakeJetsonGPIO, channel: int, level: int, seconds: float) -> None:
    """Drive an input wire to `level` for `seconds`, then back."""
    fake.drive(channel, level)
    time.sleep(seconds)
    fake.drive(channel, HIGH - level)


# --------------------------------------------------------------------------- board detection


def test_auto_picks_the_jetson_factory_from_the_device_tree(tmp_path: Path) -> None:
    orin = detect_board(device_tree(tmp_path / "orin", *ORIN_NANO_TREE))
    assert orin.jetson and orin.module == "JETSON_ORIN_NANO"
    assert factory_kind("auto", orin.model, orin) == "jetson"
    new_module = detect_board(device_tree(tmp_path / "new", b"Some carrier\x00", b"acme,x\x00nvidia,tegra264\x00"))
    assert new_module.jetson and new_module.module is None, "a Tegra SoC Jetson.GPIO does not know yet"
    pi5 = detect_board(device_tree(tmp_path / "pi5", b"Raspberry Pi 5 Model B Rev 1.0\x00", b"raspberrypi,5-model-b\x00"))
    assert not pi5.jetson and factory_kind("auto", pi5.model, pi5) == "lgpio"
    pi4 = detect_board(device_tree(tmp_path / "pi4", b"Raspberry Pi 4 Model B Rev 1.4\x00", None))
    assert factory_kind("auto", pi4.model, pi4) == "default"
    nothing = detect_board(tmp_path / "missing")
    assert nothing == Board(None, ()) and factory_kind("auto", None, nothing) == "default"
    assert factory_kind("jetson", pi4.model, pi4) == "jetson" and factory_kind("mock", orin.model, orin) == "mock"


def test_auto_builds_the_jetson_factory_in_board_numbering(fake_gpio: FakeJetsonGPIO, tmp_path: Path) -> None:
    factory = build_pin_factory("auto", device_tree=device_tree(tmp_path, *ORIN_NANO_TREE))
    try:
        assert isinstance(factory, JetsonGPIOFactory) and factory_name(factory) == "jetson"
        assert fake_gpio.mode == fake_gpio.BOARD and factory.module == "JETSON_ORIN_NANO"
    finally:
        factory.close()
    assert fake_gpio.cleaned_all


def test_a_missing_library_on_a_jetson_is_fatal_and_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", None)
    monkeypatch.setattr(boards, "DEVICE_TREE", device_tree(tmp_path, *ORIN_NANO_TREE))
    worker = GpioWorker(Bus(), GpioConfig.model_validate({"enabled": True, "presence": {"pin": 7}}))
    with pytest.raises(FatalWorkerError) as ei:
        worker.run()
    text = str(ei.value)
    assert "gpio.pin_factory: cannot load the 'auto' pin factory" in text
    assert "pip install Jetson.GPIO" in text and "python3-jetson-gpio" in text and "99-gpio.rules" in text


# --------------------------------------------------------------------------- pin names


@pytest.mark.parametrize("name", [7, "BOARD7", "GPIO09", "GP167"])
def test_a_header_pin_answers_to_its_number_and_its_pinmux_names(fake_gpio: FakeJetsonGPIO, name: int | str) -> None:
    factory = JetsonGPIOFactory(ORIN_NANO)
    try:
        pin = factory.pin(name)
        assert pin is factory.pin(7) and pin.info.number == 7 and repr(pin) == "BOARD7"
        assert fake_gpio.function[7] == fake_gpio.IN, "a pin starts as an input, as on RPi.GPIO"
    finally:
        factory.close()


def test_pinmux_names_pass_the_config_and_nonsense_does_not() -> None:
    cfg = GpioConfig.model_validate({"presence": {"pin": "spi1_mosi"}, "door": {"pin": "gp122"},
                                     "button": {"pin": "UART1_RTS"}})
    assert (cfg.presence and cfg.presence.pin, cfg.door and cfg.door.pin) == ("SPI1_MOSI", "GP122")
    with pytest.raises(ValueError, match="not a pin spec"):
        GpioConfig.model_validate({"presence": {"pin": "SPI9_NOPE"}})


# --------------------------------------------------------------------------- the same behaviour as on the Pi


def test_presence_chatter_is_ignored_and_a_stable_break_fires_once(jrig: Callable[..., Rig],
                                                                   fake_gpio: FakeJetsonGPIO) -> None:
    fake_gpio.levels[11] = HIGH  # the beam's open collector output, pulled up on the board: unbroken = high
    r = jrig({"presence": {"pin": "UART1_RTS", "bounce_s": 0.05, "settle_s": 0.3}})
    assert r.state()["presence"] is False and r.state()["pin_factory"] == "jetson"
    assert fake_gpio.pull_warnings == [], "the pull is not passed to Jetson.GPIO (it ignores it, with a warning)"
    for _ in range(20):
        hold(fake_gpio, 11, LOW, 0.005)
        time.sleep(0.005)
    hold(fake_gpio, 11, LOW, 0.1)
    time.sleep(0.5)
    assert r.of(PresenceChanged) == [] and r.events("item_present") == []
    t0 = time.monotonic()
    fake_gpio.drive(11, LOW)
    msg = r.wait(PresenceChanged)
    assert msg.present is True and time.monotonic() - t0 >= 0.3 - 0.01
    [event] = r.events("item_present")
    assert event.data == {"present": True, "source": "gpio"}
    fake_gpio.drive(11, HIGH)
    assert r.wait(PresenceChanged, lambda m: not m.present).source == "gpio"
    until(lambda: r.state()["presence"] is False)
    assert len(r.events("item_present")) == 1


def test_a_pir_door_and_button_report_through_edge_callbacks(jrig: Callable[..., Rig],
                                                             fake_gpio: FakeJetsonGPIO) -> None:
    fake_gpio.levels.update({13: HIGH, 29: HIGH})  # reed switch open, button released (pull-ups on the board)
    r = jrig({"presence": {"pin": 7, "active_high": True, "settle_s": 0.05}, "door": {"pin": "BOARD13", "bounce_s": 0.02},
              "button": {"pin": "GP65", "bounce_s": 0.02, "hold_s": 0.3}})
    assert {7, 13, 29} <= set(fake_gpio.watchers), "one edge detection per input"
    assert all(call[3] is None for call in fake_gpio.calls if call[0] == "add_event_detect"), "debounced by us"
    assert r.state()["door"] == "open" and r.state()["button"] == "released"
    fake_gpio.drive(7, HIGH)
    assert r.wait(PresenceChanged).present is True
    fake_gpio.drive(13, LOW)
    assert r.wait(DoorChanged).state == "closed"
    r.wait(Event, lambda e: e.type == "door_closed")
    hold(fake_gpio, 29, LOW, 0.1)
    assert r.wait(ButtonPressed).kind == "short"
    fake_gpio.drive(29, LOW)
    assert r.wait(ButtonPressed, lambda m: m.kind == "hold").kind == "hold"
    fake_gpio.drive(29, HIGH)
    until(lambda: r.state()["button"] == "released")
    assert [m.kind for m in r.of(ButtonPressed)] == ["short", "hold"]


def test_leds_and_buzzer_drive_outputs(jrig: Callable[..., Rig], fake_gpio: FakeJetsonGPIO) -> None:
    r = jrig({"leds": {"status": 32, "fault": 31}, "buzzer": {"pin": 12}})
    assert fake_gpio.function[31] == fake_gpio.OUT and fake_gpio.function[12] == fake_gpio.OUT
    assert r.request("led", {"pattern": "pulse"}).ok, "header pin 32 has hardware PWM: the status LED can pulse"
    until(lambda: any(0 < d < 100 for d in fake_gpio.pwms[32].history), 3, "a duty cycle between off and on")
    assert r.request("led", {"pattern": "error"}).ok and fake_gpio.levels[31] == HIGH
    assert r.request("led", {"pattern": "off"}).ok and fake_gpio.levels[31] == LOW
    until(lambda: fake_gpio.pwms[32].duty == 0)
    assert r.request("buzzer", {"pattern": "beep"}).ok
    until(lambda: ("output", 12, HIGH) in fake_gpio.calls, 2, "the beep")
    until(lambda: r.state()["buzzer"] == "off" and fake_gpio.levels[12] == LOW, 2, "the beep to end")


def test_a_status_led_without_pwm_blinks_but_cannot_pulse(jrig: Callable[..., Rig], fake_gpio: FakeJetsonGPIO) -> None:
    r = jrig({"leds": {"status": 16}})
    assert fake_gpio.pwms == {} and fake_gpio.function[16] == fake_gpio.OUT
    assert r.request("led", {"pattern": "blink"}).ok
    until(lambda: sum(1 for c in fake_gpio.calls if c[:2] == ("output", 16)) >= 3, 3, "blinking")
    refused = r.request("led", {"pattern": "pulse"})
    assert not refused.ok and "needs PWM" in (refused.error or "")


def test_servo_lid_uses_hardware_pwm_within_its_pulse_limits(jrig: Callable[..., Rig], fake_gpio: FakeJetsonGPIO) -> None:
    r = jrig({"lid": {"kind": "servo", "pin": 33, "min_pulse_width_ms": 1.0, "max_pulse_width_ms": 2.0}})
    pwm = fake_gpio.pwms[33]
    assert pwm.frequency == 50 and pwm.duty == pytest.approx(7.5), "closed (0°): 1.5 ms of 20 ms"
    assert r.request("lid", {"op": "open"}).ok and pwm.duty == pytest.approx(10.0)
    assert r.request("lid", {"op": "close"}).ok and pwm.duty == pytest.approx(7.5)
    assert all(5.0 - 1e-9 <= d <= 10.0 + 1e-9 for d in pwm.history if d), "never outside 1..2 ms"


def test_relay_lid_locks_and_unlocks(jrig: Callable[..., Rig], fake_gpio: FakeJetsonGPIO) -> None:
    r = jrig({"lid": {"kind": "relay", "pin": 18}})
    assert fake_gpio.levels[18] == HIGH, "start_locked"
    assert r.request("lid", {"op": "unlock"}).ok and fake_gpio.levels[18] == LOW
    assert r.request("lid", {"op": "lock"}).ok and fake_gpio.levels[18] == HIGH


def test_a_servo_on_a_pin_without_pwm_is_fatal_and_names_the_pwm_pins(fake_gpio: FakeJetsonGPIO) -> None:
    cfg = GpioConfig.model_validate({"enabled": True, "pin_factory": "jetson", "lid": {"kind": "servo", "pin": 16}})
    worker = GpioWorker(Bus(), cfg, factory=JetsonGPIOFactory(ORIN_NANO))
    with pytest.raises(FatalWorkerError, match=r"gpio\.lid\.pin: pin 16: .*PWM pins: 15, 32, 33"):
        worker.run()


def test_an_hc_sr04_measures_through_edge_timing(jrig: Callable[..., Rig], fake_gpio: FakeJetsonGPIO) -> None:
    echo_s = {"value": 0.004}  # 4 ms ≈ 686 mm

    def sensor(channel: int, level: int) -> None:  # the HC-SR04: a trigger pulse's end starts the echo pulse
        if channel == 22 and level == LOW:
            threading.Thread(target=hold, args=(fake_gpio, 21, HIGH, echo_s["value"]), daemon=True).start()

    original = fake_gpio.output
    fake_gpio.output = lambda ch, v: (original(ch, v), sensor(ch, v))[0]  # type: ignore[method-assign]
    r = jrig({"distance_interval_s": 0.1, "distance": [{"compartment": 1, "trigger": 22, "echo": 21, "max_distance_m": 3.0}]})
    near = r.wait(DistanceReading, lambda m: m.mm is not None)
    assert 600 <= near.mm <= 1400, near
    echo_s["value"] = 0.010
    far = r.wait(DistanceReading, lambda m: m.mm is not None and m.mm > near.mm + 600)
    assert far.mm <= 3000 and isinstance(r.worker.distance_devs[1], DistanceSensor)


def test_close_releases_every_channel_and_joins_the_edge_threads(jrig: Callable[..., Rig],
                                                                 fake_gpio: FakeJetsonGPIO) -> None:
    r = jrig({"presence": {"pin": 7}, "door": {"pin": 11}, "button": {"pin": 13}, "leds": {"status": 32, "fault": 31},
              "buzzer": {"pin": 12}, "lid": {"kind": "servo", "pin": 15}})
    threads = [w.thread for w in fake_gpio.watchers.values()]
    assert len(threads) == 3 and len(fake_gpio.pwms) == 2
    r.stop()
    assert fake_gpio.function == {} and fake_gpio.watchers == {} and fake_gpio.pwms == {}
    assert not any(t.is_alive() for t in threads)
    assert {7, 11, 13, 32, 31, 12, 15} <= {c[1] for c in fake_gpio.calls if c[0] == "cleanup"}


# --------------------------------------------------------------------------- config errors (exit 78)


def check_config(tmp_path: Path, gpio: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`smartbin-daemon check-config` on a config with this gpio section: exit code and stderr."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"gpio": {"enabled": True, **gpio}, "storage": {"path": str(tmp_path / "data")}}))
    code = main(["check-config", str(path)])
    return code, capsys.readouterr().err


@pytest.fixture
def on_orin_nano(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(boards, "DEVICE_TREE", device_tree(tmp_path / "dt", *ORIN_NANO_TREE))


@pytest.mark.usefixtures("on_orin_nano", "fake_gpio")
@pytest.mark.parametrize(("gpio", "needles"), [
    ({"presence": {"pin": 3}}, ["gpio.presence.pin: pin 3 does not exist on the JETSON_ORIN_NANO header",
                                "allowed: header numbers 7, 11, 12", "UART1_RTS/GP72_UART1_RTS_N"]),
    ({"door": {"pin": "GPIO17"}}, ["gpio.door.pin: pin 'GPIO17' does not exist"]),
    ({"lid": {"kind": "servo", "pin": "GP122"}}, ["gpio.lid.pin: a servo needs hardware PWM, which header pin 12",
                                                  "PWM pins there: 15, 32, 33", "jetson-io"]),
    ({"presence": {"pin": 7}, "door": {"pin": "GP167"}}, ["gpio.presence.pin and gpio.door.pin are the same header pin 7"]),
])
def test_check_config_names_the_pin_and_what_the_module_allows(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               gpio: dict[str, Any], needles: list[str]) -> None:
    code, err = check_config(tmp_path, gpio, capsys)
    assert code == EX_CONFIG and "Traceback" not in err
    for needle in needles:
        assert needle in err


@pytest.mark.usefixtures("on_orin_nano", "fake_gpio")
def test_the_readme_jetson_wiring_passes_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("#### GPIO on a Jetson"):]
    example = yaml.safe_load(section[section.index("```yaml") + 7:section.index("```", section.index("```yaml") + 7)])
    gpio = example["gpio"]
    assert gpio.pop("enabled") is True and gpio["lid"]["kind"] == "servo"
    assert check_config(tmp_path, gpio, capsys) == (0, "")


@pytest.mark.usefixtures("on_orin_nano")
def test_check_config_without_jetson_gpio_says_how_to_install_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", None)
    code, err = check_config(tmp_path, {"presence": {"pin": 7}}, capsys)
    assert code == EX_CONFIG and "Traceback" not in err
    assert "gpio.pin_factory: this is a Jetson but the Jetson.GPIO library is missing" in err
    assert "pip install Jetson.GPIO" in err and "apt install python3-jetson-gpio" in err and "`gpio` group" in err


@pytest.mark.usefixtures("fake_gpio")
def test_pi_numbering_does_not_judge_jetson_pins() -> None:
    cfg = GpioConfig.model_validate({"enabled": True, "pin_factory": "jetson", "presence": {"pin": "GPIO09"},
                                     "door": {"pin": "BOARD21"}})  # header 7 and 21 (a Pi's GPIO9 is its BOARD21)
    assert gpio_board_problems(cfg, ORIN_NANO) == []


def test_jetson_names_off_a_jetson_and_jetson_on_a_pi_are_config_errors(tmp_path: Path) -> None:
    pi4 = Board("Raspberry Pi 4 Model B Rev 1.4")
    cfg = GpioConfig.model_validate({"enabled": True, "presence": {"pin": "GP122"}, "door": {"pin": 17}})
    assert gpio_board_problems(cfg, pi4) == [
        "gpio.presence.pin: 'GP122' is a Jetson pinmux name, but the default pin factory drives a Raspberry Pi "
        "header: use a BCM number (17) or a name like 'GPIO17' or 'BOARD11'"]
    forced = GpioConfig.model_validate({"enabled": True, "pin_factory": "jetson", "door": {"pin": 17}})
    [problem] = gpio_board_problems(forced, pi4)
    assert problem.startswith("gpio.pin_factory: this board (Raspberry Pi 4 Model B Rev 1.4) is not a Jetson")
    assert gpio_board_problems(GpioConfig.model_validate({"presence": {"pin": "GP122"}}), pi4) == [], "GPIO off"
