"""Hardware sections: the Arduino link and GPIO (pins, presence, distance, buttons, door, LEDs, buzzer, lid)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from .base import _Model
from .jetson_header import JETSON_HEADERS

# --------------------------------------------------------------------------- hardware: Arduino link


class ArduinoSimulatorConfig(_Model):
    """The built-in Arduino simulator (backend `simulator`): the real protocol on a pseudo-terminal."""

    link: Path = Field(default=Path("arduino-sim.tty"), description="symlink to the pty, relative to storage.path")
    compartments: int = Field(default=3, ge=1, le=16)
    empty_mm: float = Field(default=600.0, gt=0, le=5000, description="simulated distance of an empty compartment")
    item_mm: float = Field(default=12.0, gt=0, le=1000, description="simulated fill height added per routed item")
    telemetry_interval_s: float = Field(default=0.5, gt=0, le=60)


class ArduinoConfig(_Model):
    """Arduino on USB serial: port selection, timing of ACKs, staleness and reconnects."""

    enabled: bool = False
    backend: Literal["serial", "simulator"] = "serial"
    port: str | None = Field(default=None, description="explicit path or udev symlink, e.g. /dev/smartbin-arduino")
    vid_pid: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$",
                                description="auto-detect by USB VID:PID when no port is given (e.g. 2341:0043)")
    baudrate: int = Field(default=115200, ge=1200, le=2_000_000)
    boot_wait_s: float = Field(default=2.5, ge=0, le=30, description="wait for the BOOT banner after open (DTR reset)")
    ack_timeout_s: float = Field(default=0.5, gt=0, le=30)
    retries: int = Field(default=2, ge=0, le=10)
    stale_after_s: float = Field(default=3.0, gt=0, le=600)
    reconnect_after_s: float = Field(default=6.0, gt=0, le=3600)
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    incompatible_retry_s: float = Field(default=60.0, gt=0, le=86400)
    alert_after_s: float = Field(default=120.0, gt=0, le=86400,
                                 description="link not connected this long (also from start): critical alert link_down")
    simulator: ArduinoSimulatorConfig = Field(default_factory=ArduinoSimulatorConfig)

    @model_validator(mode="after")
    def _port_source(self) -> ArduinoConfig:
        if self.enabled and self.backend == "serial" and not self.port and not self.vid_pid:
            raise ValueError("with backend 'serial', give arduino.port or arduino.vid_pid")
        if self.reconnect_after_s < self.stale_after_s:
            raise ValueError("reconnect_after_s must be >= stale_after_s")
        return self


# --------------------------------------------------------------------------- hardware: GPIO
# (GpioConfig and its parts live here.)

GPIO_PIN_NAME_RE = re.compile(r"^(?:(?:GPIO|BCM|BOARD|WPI)\d{1,3}|[A-Z][A-Z0-9]*:\d{1,3})$")
"""gpiozero pin names: GPIO17 / BCM17 (Broadcom numbers), BOARD11 / J8:11 (header positions), WPI0 (wiringPi)."""

GPIO_BOARD_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10, 21: 9, 22: 25,
    23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21,
}
"""The 40-pin header (every 40-pin Pi): physical position -> BCM number, to spot one pin given two ways."""

JETSON_PIN_NAMES = frozenset(name.upper() for rows in JETSON_HEADERS.values() for _b, cvm, soc, _p in rows
                             for name in (cvm, soc))
"""Every name NVIDIA's pinmux tables give a Jetson header pin ('SPI1_MOSI', 'GP122'); checked per module at load."""

GpioPin = Annotated[int | str, Field(description="gpiozero pin spec: BCM number (17) or name ('GPIO17', 'BOARD11', 'J8:11')")]


def gpio_pin_spec(value: Any) -> Any:
    """Normalise a pin spec: '17' -> 17, 'gpio17' -> 'GPIO17'; reject what gpiozero could never resolve."""
    if isinstance(value, bool):
        raise ValueError("must be a pin number or name such as 17, 'GPIO17' or 'BOARD11', not a boolean")
    if isinstance(value, int):
        if not 0 <= value <= 999:
            raise ValueError("a BCM pin number must be between 0 and 999")
        return value
    if isinstance(value, str):
        text = value.strip().upper()
        if text.isdigit():
            return gpio_pin_spec(int(text))
        if GPIO_PIN_NAME_RE.match(text) or text in JETSON_PIN_NAMES:
            return text
        raise ValueError(f"{value!r} is not a pin spec: use a BCM number (17) or a name like 'GPIO17', 'BCM17', "
                         "'BOARD11' or 'J8:11' (on a Jetson: the header number or a pinmux name like 'GP122')")
    raise ValueError("must be a pin number or name such as 17, 'GPIO17' or 'BOARD11'")


def gpio_pin_key(pin: int | str) -> str:
    """One name per physical pin, so `17`, 'BCM17', 'BOARD11' and 'J8:11' compare equal."""
    if isinstance(pin, int):
        return f"GPIO{pin}"
    m = re.match(r"^(?:GPIO|BCM)(\d+)$", pin)
    if m:
        return f"GPIO{int(m.group(1))}"
    m = re.match(r"^(?:BOARD|J8:)(\d+)$", pin)
    if m:
        board = int(m.group(1))
        return f"GPIO{GPIO_BOARD_TO_BCM[board]}" if board in GPIO_BOARD_TO_BCM else f"BOARD{board}"
    return pin


class GpioPresenceConfig(_Model):
    """Item presence sensor on one input: an IR break-beam receiver or a PIR module."""

    pin: GpioPin
    active_high: bool = Field(
        default=False,
        description="false for an IR break-beam receiver (open collector: an interrupted beam pulls the line low); "
                    "true for a PIR module (drives the line high on motion)",
    )
    pull_up: bool | None = Field(
        default=None,
        description="internal pull: true = up (the input idles high, so it must be active-low), false = down "
                    "(active-high); null = derived from active_high",
    )
    bounce_s: float = Field(default=0.05, ge=0, le=5, description="a level counts only once it held this long")
    settle_s: float = Field(default=0.1, ge=0, le=30, description="the beam must stay interrupted this long before item_present fires")

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return gpio_pin_spec(v)

    @model_validator(mode="after")
    def _pull_matches_level(self) -> GpioPresenceConfig:
        if self.pull_up is True and self.active_high:
            raise ValueError("pull_up: true makes the input idle high, so it must be active-low (active_high: false)")
        if self.pull_up is False and not self.active_high:
            raise ValueError("pull_up: false makes the input idle low, so it must be active-high (active_high: true)")
        return self

    @property
    def use_pull_up(self) -> bool:
        """The internal pull to configure: up for an active-low sensor, down for an active-high one."""
        return (not self.active_high) if self.pull_up is None else self.pull_up


class GpioDistanceConfig(_Model):
    """One HC-SR04-style ultrasonic sensor above a compartment (echo through a 5V->3.3V divider)."""

    compartment: int = Field(ge=1, le=16)
    trigger: GpioPin
    echo: GpioPin
    max_distance_m: float = Field(default=1.5, ge=0.1, le=4.5, description="farther readings are reported as this")

    @field_validator("trigger", "echo", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return gpio_pin_spec(v)


class GpioButtonConfig(_Model):
    """The service button: a short press blinks the status LED, a hold reports `hold` (maintenance mode)."""

    pin: GpioPin
    pull_up: bool = Field(default=True, description="true: button to GND with the internal pull-up (active-low); false: to 3V3 with pull-down")
    bounce_s: float = Field(default=0.05, ge=0, le=1)
    hold_s: float = Field(default=5.0, gt=0, le=60, description="held this long = `hold` instead of a short press")

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return gpio_pin_spec(v)

    @model_validator(mode="after")
    def _hold_after_bounce(self) -> GpioButtonConfig:
        if self.hold_s <= self.bounce_s:
            raise ValueError(f"hold_s ({self.hold_s}) must be longer than bounce_s ({self.bounce_s})")
        return self


class GpioDoorConfig(_Model):
    """The door/lid switch (typically a reed switch to GND)."""

    pin: GpioPin
    pull_up: bool = Field(default=True, description="true: switch to GND with the internal pull-up (active = switch closed)")
    open_when_active: bool = Field(
        default=False,
        description="false for a normally-open reed switch that the magnet closes while the door is shut",
    )
    bounce_s: float = Field(default=0.05, ge=0, le=5)

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return gpio_pin_spec(v)


class GpioLedsConfig(_Model):
    """Status LED (patterns, button feedback) and an optional fault LED."""

    status: GpioPin
    fault: GpioPin | None = None
    active_high: bool = Field(default=True, description="false when the LED is wired from 3V3 to the pin")

    @field_validator("status", "fault", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return None if v is None else gpio_pin_spec(v)


class GpioBuzzerConfig(_Model):
    """An active buzzer (it sounds while its pin is on)."""

    pin: GpioPin
    active_high: bool = True

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return gpio_pin_spec(v)


class GpioLidConfig(_Model):
    """The lid actuator: a hobby servo (open/close) or a lock relay (lock/unlock)."""

    kind: Literal["servo", "relay"]
    pin: GpioPin
    open_angle: float = Field(default=90.0, description="servo angle of the open lid")
    closed_angle: float = Field(default=0.0, description="servo angle of the closed lid (also the start position)")
    min_angle: float = Field(default=-90.0, description="angle at min_pulse_width_ms")
    max_angle: float = Field(default=90.0, description="angle at max_pulse_width_ms")
    min_pulse_width_ms: float = Field(default=1.0, ge=0.3, le=3.0)
    max_pulse_width_ms: float = Field(default=2.0, ge=0.3, le=3.0)
    detach_after_s: float | None = Field(default=None, gt=0, le=60,
                                         description="stop the servo pulses this long after a move (no jitter, no hum); null holds")
    lock_active_high: bool = Field(default=True, description="relay: driving the pin high locks (false: low locks)")
    start_locked: bool = Field(default=True, description="relay: lock when the daemon starts")

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> Any:
        return gpio_pin_spec(v)

    @model_validator(mode="after")
    def _servo_geometry(self) -> GpioLidConfig:
        if self.kind != "servo":
            return self
        if self.max_pulse_width_ms <= self.min_pulse_width_ms:
            raise ValueError(f"max_pulse_width_ms ({self.max_pulse_width_ms}) must be > min_pulse_width_ms ({self.min_pulse_width_ms})")
        if self.max_angle == self.min_angle:
            raise ValueError("min_angle and max_angle must differ")
        low, high = sorted((self.min_angle, self.max_angle))
        for name in ("open_angle", "closed_angle"):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} ({getattr(self, name)}) must be within min_angle..max_angle ({low}..{high})")
        if self.open_angle == self.closed_angle:
            raise ValueError("open_angle and closed_angle must differ")
        return self


class GpioConfig(_Model):
    """Devices wired straight to the Pi/Jetson header, driven through one gpiozero pin factory."""

    enabled: bool = False
    pin_factory: Literal["auto", "lgpio", "rpigpio", "native", "jetson", "mock"] = Field(
        default="auto",
        description="auto: jetson (Jetson.GPIO) on an NVIDIA Jetson, lgpio on a Raspberry Pi 5, gpiozero's default "
                    "elsewhere; mock: simulation and tests",
    )
    presence: GpioPresenceConfig | None = None
    distance: list[GpioDistanceConfig] = Field(default_factory=list)
    button: GpioButtonConfig | None = None
    door: GpioDoorConfig | None = None
    leds: GpioLedsConfig | None = None
    buzzer: GpioBuzzerConfig | None = None
    lid: GpioLidConfig | None = None
    distance_interval_s: float = Field(default=0.5, ge=0.1, le=60, description="how often each distance sensor is reported")
    state_interval_s: float = Field(default=10.0, ge=1, le=3600, description="republish the gpio state at least this often")

    def pins(self) -> list[tuple[str, int | str]]:
        """Every configured pin with its key path below `gpio` (e.g. ('distance[0].echo', 24))."""
        out: list[tuple[str, int | str]] = []
        if self.presence is not None:
            out.append(("presence.pin", self.presence.pin))
        for i, d in enumerate(self.distance):
            out += [(f"distance[{i}].trigger", d.trigger), (f"distance[{i}].echo", d.echo)]
        if self.button is not None:
            out.append(("button.pin", self.button.pin))
        if self.door is not None:
            out.append(("door.pin", self.door.pin))
        if self.leds is not None:
            out.append(("leds.status", self.leds.status))
            if self.leds.fault is not None:
                out.append(("leds.fault", self.leds.fault))
        if self.buzzer is not None:
            out.append(("buzzer.pin", self.buzzer.pin))
        if self.lid is not None:
            out.append(("lid.pin", self.lid.pin))
        return out

    @model_validator(mode="after")
    def _consistent(self) -> GpioConfig:
        seen: dict[str, tuple[str, int | str]] = {}
        clashes: list[str] = []
        for path, pin in self.pins() if self.pin_factory != "jetson" else ():  # a Jetson's: by header position, at load
            key = gpio_pin_key(pin)
            if key in seen:
                first_path, first_pin = seen[key]
                clashes.append(f"gpio.{first_path} ({first_pin!r}) and gpio.{path} ({pin!r}) are the same pin {key}")
            else:
                seen[key] = (path, pin)
        compartments = [d.compartment for d in self.distance]
        dupes = sorted({c for c in compartments if compartments.count(c) > 1})
        if dupes:
            clashes.append(f"gpio.distance: compartment(s) {', '.join(map(str, dupes))} have more than one sensor")
        if self.enabled and not self.pins():
            clashes.append("gpio.enabled is true but no device is configured")
        if clashes:
            raise ValueError("; ".join(clashes))
        return self


