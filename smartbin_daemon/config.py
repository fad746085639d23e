"""The one typed configuration model: loading, validation with key-path errors, redaction."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus, so a bad config never restart-loops."""

TOPIC_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
"""Names that end up inside MQTT topics: no '/', '+', '#', spaces or upper case."""

REDACTED = "**********"


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds one line per problem, each naming its key path."""

    def __init__(self, path: str | os.PathLike[str], errors: list[str]) -> None:
        self.path = str(path)
        self.errors = errors
        super().__init__(f"{self.path}: {len(errors)} error(s)\n" + "\n".join(f"  - {e}" for e in errors))


class _Model(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def default_device_id() -> str:
    """Derive a topic-safe device id from the hostname (`Pi-Kitchen.local` -> `pi-kitchen`)."""
    host = socket.gethostname().split(".")[0].lower()
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", host).strip("-")
    return cleaned or "smartbin"


TopicName = Annotated[str, Field(pattern=TOPIC_NAME_RE.pattern, min_length=1, max_length=64)]


class DeviceConfig(_Model):
    """Identity of this bin."""

    id: TopicName = Field(default_factory=default_device_id)
    name: str = Field(default="SmartBin", min_length=1, max_length=64)
    model: str = Field(default="SmartBin", min_length=1, max_length=64)
    manufacturer: str = Field(default="SmartBin project", min_length=1, max_length=64)


class TlsConfig(_Model):
    """TLS towards the broker; a client certificate needs its key."""

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = Field(default=False, description="skip hostname verification (test benches only)")

    @model_validator(mode="after")
    def _cert_needs_key(self, info: ValidationInfo) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be given together")
        base_dir = (info.context or {}).get("base_dir") if info is not None else None
        missing = []
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is None or not self.enabled:
                continue
            path = Path(value) if Path(value).is_absolute() or base_dir is None else Path(base_dir) / value
            if not path.is_file():
                missing.append(f"{name}={str(value)!r}")
        if missing:
            raise ValueError(f"file(s) not found: {', '.join(missing)}")
        return self


class ReconnectConfig(_Model):
    """Reconnect backoff towards the broker."""

    min_s: float = Field(default=1.0, gt=0, le=60)
    max_s: float = Field(default=60.0, gt=0, le=3600)
    auth_failure_s: float = Field(default=60.0, gt=0, le=3600, description="retry delay after a rejected login")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_s < self.min_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= min_s ({self.min_s})")
        return self


class OutboxConfig(_Model):
    """Bounds of the durable event outbox; what is dropped is counted and reported."""

    max_events: int = Field(default=100_000, ge=100, le=10_000_000)
    max_age_days: float = Field(default=30.0, gt=0, le=3650)
    inflight: int = Field(default=50, ge=1, le=1000, description="events awaiting PUBACK at once")


class MqttConfig(_Model):
    """Broker connection and topic layout."""

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TlsConfig = Field(default_factory=TlsConfig)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(default=None, description="default: smartbin-<device.id>")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    base_topic: TopicName = "smartbin"
    discovery: bool = True
    discovery_prefix: TopicName = "homeassistant"
    state_interval_s: float = Field(default=60.0, ge=1, le=3600, description="republish retained state at least this often")
    request_max_bytes: int = Field(default=65536, ge=1024, le=1_048_576)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

    @field_validator("port", mode="before")
    @classmethod
    def _port_not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be an integer port number")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give mqtt.password or mqtt.password_file, not both")
        return self

    def root_topic(self, device_id: str) -> str:
        """`<base_topic>/<device_id>`: every topic of this bin lives below it."""
        return f"{self.base_topic}/{device_id}"


KeyId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class SigningKeyConfig(_Model):
    """One named request-signing key (a technician's, a dashboard's, the fleet's), revocable on its own."""

    secret: SecretStr | None = Field(default=None, description="the key's secret (prefer secret_file)")
    secret_file: Path | None = Field(
        default=None, description="file holding it; relative: $CREDENTIALS_DIRECTORY first, then next to the config")
    revoked: bool = Field(default=False, description="true: requests signed with this key are refused (named as revoked)")

    @model_validator(mode="after")
    def _one_secret(self) -> SigningKeyConfig:
        if (self.secret is None) == (self.secret_file is None) and not self.revoked:
            raise ValueError("give secret or secret_file (exactly one)")
        if self.secret is not None and not self.secret.get_secret_value().strip():
            raise ValueError("secret: must not be empty\n")
        return self


class SecurityConfig(_Model):
    """Who may send privileged requests (HMAC signatures or the broker's ACL) and request rate limits."""

    hmac_secret: SecretStr | None = Field(default=None, description="shared signing secret, key id 'default' (prefer hmac_secret_file)")
    hmac_secret_file: Path | None = Field(
        default=None, description="file holding the secret; relative: $CREDENTIALS_DIRECTORY first, then next to the config")
    keys: dict[KeyId, SigningKeyConfig] = Field(
        default_factory=dict, description="named signing keys: id -> {secret_file | secret, revoked}")
    privileged: Literal["hmac", "broker_acl"] = Field(
        default="hmac",
        description="hmac: privileged requests must be signed; broker_acl: the broker's ACL alone decides who may send them")
    max_skew_s: float = Field(default=300.0, gt=0, le=86400, description="allowed difference between auth.ts and the bin's clock")
    rate_limit_per_min: int = Field(default=60, ge=0, le=100_000, description="requests per minute per command; 0 disables")
    privileged_rate_limit_per_min: int = Field(default=30, ge=0, le=100_000,
                                               description="privileged requests per minute per command; 0 disables")

    @field_validator("rate_limit_per_min", "privileged_rate_limit_per_min", mode="before")
    @classmethod
    def _int_not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a whole number of requests per minute")
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> SecurityConfig:
        if self.hmac_secret is not None and self.hmac_secret_file is not None:
            raise ValueError("hmac_secret_file: give hmac_secret or hmac_secret_file, not both\n")
        if "default" in self.keys and (self.hmac_secret is not None or self.hmac_secret_file is not None):
            raise ValueError("keys.default: 'default' is the id of hmac_secret(_file); rename the key or drop those\n")
        if self.hmac_secret is not None and not self.hmac_secret.get_secret_value().strip():
            raise ValueError("hmac_secret: must not be empty\n")
        return self

    def secret(self) -> str | None:
        """The signing secret (already read from hmac_secret_file by the loader), or None."""
        return self.hmac_secret.get_secret_value() if self.hmac_secret is not None else None

    def signing_keys(self) -> dict[str, str]:
        """Active keys, id -> secret (files already read by the loader): `default` for hmac_secret, then `keys`."""
        out = {"default": self.secret()} if self.secret() else {}
        for key_id, key in self.keys.items():
            if not key.revoked and key.secret is not None:
                out[key_id] = key.secret.get_secret_value()
        return {k: v for k, v in out.items() if v}

    def revoked_keys(self) -> frozenset[str]:
        """Ids of the keys marked revoked."""
        return frozenset(k for k, v in self.keys.items() if v.revoked)


class StorageConfig(_Model):
    """Where state (SQLite, evidence, bundles) lives."""

    path: Path = Path("/var/lib/smartbin")


class LoggingConfig(_Model):
    """Log level, journald use and repeat suppression."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    journal: Literal["auto", "on", "off"] = Field(default="auto", description="auto: journald when run by systemd")
    repeat_window_s: float = Field(default=60.0, ge=0, le=3600, description="identical warnings within this window are folded; 0 disables")


class HealthThresholds(_Model):
    """Health limits; crossing one lowers the score and can raise an alert."""

    cpu_pct: float = Field(default=80.0, gt=0, le=100)
    ram_pct: float = Field(default=90.0, gt=0, le=100)
    disk_pct: float = Field(default=90.0, gt=0, le=100)
    temp_c: float = Field(default=80.0, gt=0, le=150)
    hysteresis_pct: float = Field(
        default=5.0, ge=0, le=50, description="percentage points below a % limit a value must fall to clear it"
    )
    temp_hysteresis_c: float = Field(default=5.0, ge=0, le=50, description="degrees below temp_c (or the critical temperature) to clear")
    disk_critical_pct: float = Field(default=98.0, gt=0, le=100, description="disk usage that is critical, not just a warning")
    temp_critical_margin_c: float = Field(default=10.0, gt=0, le=50, description="temp_c + this is critical")

    @model_validator(mode="after")
    def _consistent(self) -> HealthThresholds:
        for name in ("cpu_pct", "ram_pct", "disk_pct"):
            if self.hysteresis_pct >= getattr(self, name):
                raise ValueError(f"hysteresis_pct ({self.hysteresis_pct}) must be below {name} ({getattr(self, name)})")
        if self.temp_hysteresis_c >= self.temp_c:
            raise ValueError(f"temp_hysteresis_c ({self.temp_hysteresis_c}) must be below temp_c ({self.temp_c})")
        if self.disk_critical_pct < self.disk_pct:
            raise ValueError(f"disk_critical_pct ({self.disk_critical_pct}) must be >= disk_pct ({self.disk_pct})")
        return self


class HealthSources(_Model):
    """Where the health monitor reads the platform; every path is injectable so tests replay recordings."""

    thermal_glob: str = "/sys/class/thermal/thermal_zone*"
    vcgencmd: str | None = Field(default="vcgencmd", description="command for Raspberry Pi throttling; null disables")
    pi_throttled_sysfs: Path | None = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
    pi_command_timeout_s: float = Field(default=2.0, gt=0, le=30, description="timeout of the vcgencmd call")
    jetson_gpu_load: list[Path] = Field(
        default_factory=lambda: [
            Path("/sys/devices/gpu.0/load"),
            Path("/sys/devices/platform/gpu.0/load"),
            Path("/sys/devices/platform/17000000.ga10b/load"),
            Path("/sys/devices/platform/17000000.gpu/load"),
            Path("/sys/devices/platform/bus@0/17000000.gpu/load"),
        ],
        description="devfreq load files (per mille); the first existing one is used",
    )
    jetson_power_glob: str = "/sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*"
    nvml: bool = Field(default=True, description="query NVIDIA desktop/server GPUs through nvidia-ml-py when installed")


class HealthConfig(_Model):
    """System and GPU health worker."""

    enabled: bool = True
    interval_s: float = Field(default=10.0, ge=1, le=3600)
    thresholds: HealthThresholds = Field(default_factory=HealthThresholds)
    sources: HealthSources = Field(default_factory=HealthSources)


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
        if GPIO_PIN_NAME_RE.match(text):
            return text
        raise ValueError(f"{value!r} is not a pin spec: use a BCM number (17) or a name like 'GPIO17', 'BCM17', "
                         "'BOARD11' or 'J8:11'")
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
    pin_factory: Literal["auto", "lgpio", "rpigpio", "native", "mock"] = Field(
        default="auto",
        description="auto: lgpio on a Raspberry Pi 5, gpiozero's default elsewhere; mock: simulation and tests",
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
        for path, pin in self.pins():
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


# --------------------------------------------------------------------------- vision: camera


class CameraConfig(_Model):
    """Frame source and its watchdog."""

    enabled: bool = False
    source: str = Field(default="0", min_length=1, description=(
        "V4L2 index or /dev/videoN; 'picamera2'; a GStreamer pipeline ending in appsink; rtsp:// or http(s):// "
        "(MJPEG) URL; a video file; or a folder of images"))
    kind: Literal["auto", "v4l2", "picamera2", "gstreamer", "url", "video", "images"] = Field(
        default="auto", description="auto: guessed from `source`")
    width: int | None = Field(default=640, ge=16, le=7680,
                              description="asked of V4L2 and picamera2 devices; streams, files and pipelines keep their size")
    height: int | None = Field(default=480, ge=16, le=4320)
    fps: float = Field(default=15.0, gt=0, le=240,
                       description="asked of devices; paces files and folders; caps decoded MJPEG frames (surplus dropped)")
    exposure: float | None = Field(default=None, description="manual exposure (V4L2 units / picamera2 µs); null = auto")
    loop: bool = Field(default=True, description="video files and image folders start over at the end")
    stall_timeout_s: float = Field(default=10.0, gt=0, le=600, description="no frame for this long: release and re-open")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    max_frame_age_s: float = Field(default=1.0, gt=0, le=60, description="older frames are never analysed")

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


# --------------------------------------------------------------------------- vision: detector and evidence


class MotionGateConfig(_Model):
    """Frame-difference motion detector, used as the presence gate when no sensor is fitted."""

    width: int = Field(default=160, ge=32, le=640, description="frames are downscaled to this width first")
    pixel_threshold: int = Field(default=25, ge=1, le=255, description="grey-level change that counts as motion")
    min_area_pct: float = Field(default=2.0, gt=0, le=100, description="changed share of the view that means an item")
    interval_s: float = Field(default=0.2, ge=0.02, le=5, description="how often a frame is checked while idle")
    quiet_s: float = Field(default=1.5, gt=0, le=60, description="no motion this long = the item has gone")


def classmap_path_for(model_path: Path) -> Path:
    """`x.onnx` / `x.pt` / `x_ncnn_model/` → `x.classes.yaml` beside it."""
    stem = model_path.name
    for suffix in ("_ncnn_model", "_openvino_model", "_saved_model"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = model_path.stem
    return model_path.with_name(f"{stem}.classes.yaml")


def resolve_backend(model: Path, requested: str) -> str:
    """`auto` picks onnxruntime for an `.onnx` file and ultralytics for every other format."""
    if requested != "auto":
        return requested
    return "onnxruntime" if model.suffix.lower() == ".onnx" else "ultralytics"


def missing_backend(backend: str) -> str | None:
    """Why `backend` cannot run in this install (naming the extra to install), or None when it can."""
    module, extra = {"onnxruntime": ("onnxruntime", "vision"), "ultralytics": ("ultralytics", "ultralytics")}[backend]
    if importlib.util.find_spec(module) is not None:
        return None
    hint = " (or ./install.sh --with-ultralytics)" if extra == "ultralytics" else ""
    return f"the {backend} backend needs the '{extra}' extra, which is not installed: pip install 'smartbin-daemon[{extra}]'{hint}"


class DetectorConfig(_Model):
    """YOLO detector: model, inference settings, gating and the multi-frame vote."""

    enabled: bool = False
    model: Path = Field(default=Path("/opt/smartbin/models/smartbin-waste-nano.onnx"),
                        description=".onnx (onnxruntime), or .pt, .engine, NCNN/OpenVINO folder (ultralytics)")
    classmap: Path | None = Field(default=None, description="default: <model stem>.classes.yaml beside the model")
    backend: Literal["auto", "onnxruntime", "ultralytics"] = Field(
        default="auto", description="auto: onnxruntime for .onnx, ultralytics for every other format")
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:[0-9]+)?|[0-9]+)$")
    threads: int = Field(default=0, ge=0, le=64, description="onnxruntime intra-op threads; 0: all cores but one")
    imgsz: int | None = Field(default=None, ge=32, le=1920,
                              description="inference size; unset: the model's own (its classes.yaml, else 320)")
    conf: float = Field(default=0.25, gt=0, lt=1)
    iou: float = Field(default=0.45, gt=0, lt=1)
    max_det: int = Field(default=20, ge=1, le=300)
    gate: Literal["presence", "motion", "continuous"] = Field(
        default="presence", description="presence: GPIO/Arduino sensor; motion: frame difference; continuous: debug")
    settle_s: float = Field(default=0.3, ge=0, le=10, description="wait after presence before the first frame")
    frames_per_decision: int = Field(default=5, ge=1, le=50, description="K frames aggregated into one decision")
    decision_timeout_s: float = Field(default=4.0, gt=0, le=60, description="decide with the frames gathered by then")
    min_confidence: float | None = Field(
        default=None, ge=0, le=1,
        description="below this mean confidence: uncertain → residual; unset: the model's own (its classes.yaml), else 0.5")
    min_margin: float | None = Field(
        default=None, ge=0, le=1,
        description="below this margin over the runner-up: uncertain; unset: the model's own, else 0.15")
    motion: MotionGateConfig = Field(default_factory=MotionGateConfig)

    @model_validator(mode="after")
    def _backend_installed(self) -> DetectorConfig:
        if self.enabled:
            backend = resolve_backend(self.model, self.backend)
            problem = missing_backend(backend)
            if problem is not None:
                key = "backend" if self.backend != "auto" else "model"
                raise ValueError(f"{key}: {problem}\n")
            if backend == "onnxruntime" and self.model.suffix.lower() != ".onnx":
                raise ValueError(f"backend: onnxruntime runs .onnx models only, not {self.model.name!r}\n")
        return self


class EvidenceConfig(_Model):
    """Annotated snapshots per decision and the active-learning dataset, both capped."""

    snapshots: bool = True
    snapshot_quota_mb: float = Field(default=200.0, gt=0, le=100_000)
    snapshot_max_age_days: float = Field(default=30.0, gt=0, le=3650)
    jpeg_quality: int = Field(default=85, ge=30, le=100)
    publish_snapshot: bool = Field(default=True, description="publish the latest snapshot JPEG for HA (image entity)")
    active_learning: bool = Field(default=True, description="save uncertain frames with predicted boxes as a YOLO dataset")
    dataset_quota_mb: float = Field(default=500.0, gt=0, le=100_000)
    dataset_max_images: int = Field(default=2000, ge=1, le=1_000_000)


# --------------------------------------------------------------------------- bins (compartments, fill, workflow)


WASTE_CATEGORIES = ("plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual")
"""The product's waste categories (the detector's class map sends every class to one of them)."""

WasteCategory = Literal["plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual"]


class SensorRef(_Model):
    """Where a compartment's ultrasonic distance comes from."""

    source: Literal["arduino", "gpio"] = Field(default="arduino", description="arduino: TEL d=...; gpio: gpio.distance[]")
    channel: int = Field(ge=1, le=16, description="arduino: position in TEL d= (1-based); gpio: gpio.distance[].compartment")


class CalibrationConfig(_Model):
    """Distances (mm, sensor to surface) of an empty and of a full compartment; `bin/calibrate` overrides them."""

    empty_mm: float = Field(default=600.0, gt=0, le=5000)
    full_mm: float = Field(default=100.0, gt=0, le=5000)

    @model_validator(mode="after")
    def _ordered(self) -> CalibrationConfig:
        if self.empty_mm - self.full_mm < 20:
            raise ValueError(f"empty_mm ({self.empty_mm}) must exceed full_mm ({self.full_mm}) by at least 20 mm")
        return self


class CompartmentConfig(_Model):
    """One compartment: what it accepts, where its flap and its fill sensor are."""

    id: TopicName
    name: str = Field(min_length=1, max_length=64)
    categories: list[WasteCategory] = Field(min_length=1, description="waste categories routed here")
    flap: int | None = Field(default=None, ge=1, le=16,
                             description="Arduino ROUTE position; default: the sensor channel, else the list position")
    sensor: SensorRef | None = Field(default=None, description="null: no fill sensor (items are still counted)")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    capacity_l: float | None = Field(default=None, gt=0, le=10_000, description="volume, to report free litres")


class FillFilterConfig(_Model):
    """Cleaning ultrasonic readings: range limits, a median window, step confirmation, lid gating."""

    min_mm: float = Field(default=30.0, ge=0, le=1000, description="closer echoes are ringing/near-zero: rejected")
    max_mm: float = Field(default=2000.0, gt=0, le=10_000, description="echoes this far or farther are max-range: rejected")
    window: int = Field(default=15, ge=1, le=1000, description="median over this many accepted readings")
    min_samples: int = Field(default=5, ge=1, le=1000)
    max_age_s: float = Field(default=30.0, gt=0, le=3600)
    jump_pct: float = Field(default=15.0, gt=0, le=100, description="a bigger change (share of the empty-full span) ...")
    confirm_s: float = Field(default=20.0, ge=0, le=3600, description="... must hold this long to count (a hand, a lid)")
    settle_s: float = Field(default=5.0, ge=0, le=600, description="readings after the lid closes are ignored this long")

    @model_validator(mode="after")
    def _consistent(self) -> FillFilterConfig:
        if self.max_mm <= self.min_mm:
            raise ValueError("max_mm must exceed min_mm")
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) must not exceed window ({self.window})")
        return self


class EmptyingConfig(_Model):
    """Automatic emptying detection: a sustained drop to near empty after the compartment had filled."""

    near_empty_pct: float = Field(default=10.0, ge=0, le=50)
    min_drop_pct: float = Field(default=20.0, gt=0, le=100, description="it must have reached at least this fill first")
    confirm_s: float = Field(default=30.0, ge=0, le=3600)


class FillConfig(_Model):
    """Fill tracking of every compartment."""

    almost_full_pct: float = Field(default=80.0, gt=0, le=100)
    full_pct: float = Field(default=95.0, gt=0, le=100)
    hysteresis_pct: float = Field(default=5.0, ge=0, le=50)
    temperature_compensation: bool = Field(default=True, description="correct the speed of sound with the MCU's t=")
    filter: FillFilterConfig = Field(default_factory=FillFilterConfig)
    emptying: EmptyingConfig = Field(default_factory=EmptyingConfig)
    history_interval_s: float = Field(default=300.0, ge=1, le=86400, description="one history point per compartment this often")
    history_retention_days: float = Field(default=90.0, gt=0, le=3650)
    forecast_min_span_s: float = Field(default=1800.0, ge=0, le=30 * 86400,
                                       description="history since the last emptying must span this before a forecast")
    forecast_min_points: int = Field(default=3, ge=2, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> FillConfig:
        if self.almost_full_pct >= self.full_pct:
            raise ValueError(f"almost_full_pct ({self.almost_full_pct}) must be below full_pct ({self.full_pct})")
        if self.emptying.near_empty_pct >= self.emptying.min_drop_pct:
            raise ValueError("emptying.near_empty_pct must be below emptying.min_drop_pct")
        return self


class WorkflowConfig(_Model):
    """The sorting workflow's timeouts and fault policies."""

    decision_timeout_s: float = Field(default=10.0, gt=0, le=300, description="no decision by then: the item goes to residual")
    route_timeout_s: float = Field(default=5.0, gt=0, le=120, description="no answer to ROUTE by then counts as no ACK")
    confirm_timeout_s: float = Field(default=8.0, gt=0, le=300, description="no drop/weight/fill change by then: unconfirmed")
    weight_step_g: float = Field(default=5.0, gt=0, le=10_000, description="a load change this big confirms a drop")
    fill_step_pct: float = Field(default=1.0, gt=0, le=100, description="a fill rise this big confirms a drop")
    fallback_compartment: TopicName | None = Field(
        default=None, description="where items go when their compartment is full; null: refuse them (lid locked)")
    degraded_policy: Literal["residual", "refuse"] = Field(
        default="residual", description="camera or detector down: send everything to residual, or refuse items")
    vision_grace_s: float = Field(default=10.0, ge=0, le=3600, description="a camera gap shorter than this is not 'down'")


class BinsConfig(_Model):
    """The bin itself: compartments, fill tracking and the sorting workflow."""

    enabled: bool = False
    compartments: list[CompartmentConfig] = Field(default_factory=list)
    fill: FillConfig = Field(default_factory=FillConfig)
    workflow: WorkflowConfig = Field(default_factory=WorkflowConfig)

    @model_validator(mode="after")
    def _consistent(self) -> BinsConfig:
        if not self.enabled:
            return self
        problems: list[str] = []
        if not self.compartments:
            problems.append("compartments: at least one compartment is needed when bins.enabled is true")
        ids = [c.id for c in self.compartments]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            problems.append(f"compartments: duplicate id(s) {', '.join(dupes)}")
        flaps = [self.flap_of(c) for c in self.compartments]
        dup_flaps = sorted({f for f in flaps if flaps.count(f) > 1})
        if dup_flaps:
            problems.append(f"compartments: two compartments share flap position(s) {dup_flaps}")
        sensors = [(c.sensor.source, c.sensor.channel) for c in self.compartments if c.sensor is not None]
        if len(set(sensors)) != len(sensors):
            problems.append("compartments: two compartments read the same sensor")
        if self.compartments and not any("residual" in c.categories for c in self.compartments):
            problems.append("compartments: one compartment must accept 'residual' (uncertain items go there)")
        fallback = self.workflow.fallback_compartment
        if fallback is not None and fallback not in ids:
            problems.append(f"workflow.fallback_compartment: {fallback!r} is not a compartment id ({', '.join(ids)})")
        if problems:
            raise ValueError("\n".join(problems + [""]))
        return self

    def flap_of(self, c: CompartmentConfig) -> int:
        """The Arduino ROUTE position of a compartment."""
        if c.flap is not None:
            return c.flap
        if c.sensor is not None:
            return c.sensor.channel
        return self.compartments.index(c) + 1

    def compartment_for(self, category: str) -> CompartmentConfig | None:
        """The first compartment accepting `category`, else the one accepting residual."""
        for c in self.compartments:
            if category in c.categories:
                return c
        for c in self.compartments:
            if "residual" in c.categories:
                return c
        return None


# --------------------------------------------------------------------------- simulation


class SimulationConfig(_Model):
    """Simulated items for the demo/simulation: sample images shown to the camera, presence on the mock pin."""

    enabled: bool = False
    samples: Path = Field(default=Path("../tests/data/samples"),
                          description="folder of sample images (+ samples.yaml with expected categories); relative to this file")
    scene: Path = Field(default=Path("sim-scene"),
                        description="folder (relative to storage.path) the feeder writes the current view into; point camera.source at it")
    item_interval_s: float = Field(default=8.0, gt=0.5, le=3600, description="a new item arrives this often")
    item_dwell_s: float = Field(default=3.0, gt=0.1, le=600, description="how long an item stays in view")
    presence: Literal["gpio", "none"] = Field(default="gpio", description="gpio: drive the mock presence pin; none: rely on the motion gate")
    seed: int | None = None
    empty_after_s: float | None = Field(
        default=60.0, gt=0, le=86400,
        description="a simulated operator empties a full compartment after this long; null: only by request")

    @model_validator(mode="after")
    def _dwell_fits(self) -> SimulationConfig:
        if self.item_dwell_s >= self.item_interval_s:
            raise ValueError("item_dwell_s must be shorter than item_interval_s")
        return self


class RuntimeConfig(_Model):
    """Supervision of worker threads."""

    restart_backoff_min_s: float = Field(default=1.0, gt=0, le=60)
    restart_backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    max_restarts: int = Field(default=5, ge=1, le=1000, description="crashes within restart_window_s before a worker is marked failed")
    restart_window_s: float = Field(default=600.0, gt=0, le=86400)
    heartbeat_timeout_s: float = Field(default=30.0, ge=1, le=3600, description="a critical worker silent this long stops the systemd watchdog")
    stop_timeout_s: float = Field(default=8.0, gt=0, le=60)


class Config(_Model):
    """The whole daemon configuration (one YAML file)."""

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    arduino: ArduinoConfig = Field(default_factory=ArduinoConfig)
    gpio: GpioConfig = Field(default_factory=GpioConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    bins: BinsConfig = Field(default_factory=BinsConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @property
    def root_topic(self) -> str:
        """`<base_topic>/<device_id>`."""
        return self.mqtt.root_topic(self.device.id)

    @model_validator(mode="after")
    def _bins_sensors_exist(self) -> Config:
        if not self.bins.enabled:
            return self
        gpio_channels = {d.compartment for d in self.gpio.distance} if self.gpio.enabled else set()
        problems: list[str] = []
        for i, c in enumerate(self.bins.compartments):
            if c.sensor is None:
                continue
            where = f"bins.compartments[{i}].sensor"
            if c.sensor.source == "gpio" and c.sensor.channel not in gpio_channels:
                problems.append(f"{where}: no gpio.distance sensor with compartment {c.sensor.channel} (gpio enabled: "
                                f"{self.gpio.enabled})")
            if c.sensor.source == "arduino" and not self.arduino.enabled:
                problems.append(f"{where}: source arduino needs arduino.enabled: true")
        if problems:
            raise ValueError("\n".join(problems + [""]))
        return self


# --------------------------------------------------------------------------- loading


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif _PLAIN_KEY_RE.match(str(item)):
            parts.append(("." if parts else "") + str(item))
        else:  # an odd key (empty, spaces, dots, non-ASCII) is quoted so the path stays unambiguous
            parts.append(f"[{json.dumps(str(item))}]")
    return "".join(parts) or "<root>"


_PLAIN_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """Walk the model along `loc` (without its last item) and list the keys allowed there."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or item not in fields:
            return None
        annotation = fields[item].annotation
        current = _first_model(annotation)
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_errors(exc: ValidationError, model: type[BaseModel] = Config) -> list[str]:
    """One line per error: `key.path: bad value -> what is allowed`; secrets are never echoed."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        path = _format_loc(loc)
        value = err.get("input")
        secret = any(str(p) in {"password", "secret", "hmac_secret"} for p in loc)
        shown = REDACTED if secret else _short(value)
        if err.get("type") == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{path}: unknown key{hint}")
        elif err.get("type") == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            msg = str(err.get("msg", "invalid value"))
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if err.get("type") == "string_pattern_mismatch" and TOPIC_NAME_RE.pattern in msg:
                msg = "must be lower-case letters, digits, '-' or '_' (it is used inside MQTT topics)"
            if "\n" in msg:  # a section validator naming several problems, each `sub.path: text`
                lines.extend(line if path == "<root>" else f"{path}.{line}" for line in msg.split("\n") if line)
                continue
            got = "" if isinstance(value, dict) else f" (got {shown})"
            lines.append(f"{path}: {msg}{got}")
    return lines


def resolve_secret_file(path: Path) -> Path:
    """Resolve a relative secret file against $CREDENTIALS_DIRECTORY (systemd LoadCredential=) first."""
    if path.is_absolute():
        return path
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / path).exists():
        return Path(cred_dir) / path
    return path


def _read_secret_file(path: Path, base_dir: Path | None) -> str:
    resolved = resolve_secret_file(path)
    if not resolved.is_absolute() and not resolved.exists() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved.read_text(encoding="utf-8").strip()


def _resolve_relative(cfg: Config, base_dir: Path) -> None:
    """Relative file paths in the config are relative to the config file's directory, not to the CWD."""
    if not cfg.storage.path.is_absolute():
        cfg.storage.path = (base_dir / cfg.storage.path).resolve()
    if not cfg.simulation.samples.is_absolute():
        cfg.simulation.samples = (base_dir / cfg.simulation.samples).resolve()
    det = cfg.detector
    if not det.model.is_absolute():
        det.model = (base_dir / det.model).resolve()
    if det.classmap is not None and not det.classmap.is_absolute():
        det.classmap = (base_dir / det.classmap).resolve()
    tls = cfg.mqtt.tls
    for name in ("ca", "cert", "key"):
        value = getattr(tls, name)
        if value is not None and not value.is_absolute():
            setattr(tls, name, (base_dir / value).resolve())


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem by key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"<root>: the file must hold a mapping of sections, got {type(data).__name__}"])
    try:
        cfg = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, format_validation_errors(exc)) from None
    if base_dir is not None:
        _resolve_relative(cfg, base_dir)
    errors: list[str] = []
    if cfg.mqtt.password_file is not None:
        try:
            secret = _read_secret_file(cfg.mqtt.password_file, base_dir)
        except OSError as exc:
            errors.append(f"mqtt.password_file: cannot read {str(cfg.mqtt.password_file)!r}: {exc.strerror or exc}")
        else:
            if not secret:
                errors.append(f"mqtt.password_file: {str(cfg.mqtt.password_file)!r} is empty")
            cfg.mqtt.password = SecretStr(secret)
    if cfg.security.hmac_secret_file is not None:
        try:
            secret = _read_secret_file(cfg.security.hmac_secret_file, base_dir)
        except OSError as exc:
            errors.append(f"security.hmac_secret_file: cannot read {str(cfg.security.hmac_secret_file)!r}: "
                          f"{exc.strerror or exc}")
        except UnicodeDecodeError:
            errors.append(f"security.hmac_secret_file: {str(cfg.security.hmac_secret_file)!r} is not UTF-8 text")
        else:
            if not secret:
                errors.append(f"security.hmac_secret_file: {str(cfg.security.hmac_secret_file)!r} is empty")
            else:
                cfg.security.hmac_secret = SecretStr(secret)
    for key_id, key in cfg.security.keys.items():
        if key.secret_file is None or key.revoked:
            continue
        where = f"security.keys.{key_id}.secret_file"
        try:
            secret = _read_secret_file(key.secret_file, base_dir)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{where}: cannot read {str(key.secret_file)!r}: {getattr(exc, 'strerror', None) or exc}")
        else:
            if not secret:
                errors.append(f"{where}: {str(key.secret_file)!r} is empty")
            key.secret = SecretStr(secret)
    if errors:
        raise ConfigError(source, errors)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(p, [f"<file>: cannot read {str(p)!r}: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(p, [f"<yaml>: syntax error{where}: {problem}"]) from None
    return parse_config(data, str(p), p.resolve().parent)


def redacted_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain JSON-able data, with every secret replaced."""
    data = cfg.model_dump(mode="json")
    _redact(data)
    return data


_SECRET_KEYS = {"password", "secret", "hmac_secret", "token"}


def _redact(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _SECRET_KEYS and value is not None:
                node[key] = REDACTED
            else:
                _redact(value)
    elif isinstance(node, list):
        for item in node:
            _redact(item)


def config_diff(old: Config, new: Config) -> list[str]:
    """Dotted paths of leaf values that differ between two configs."""
    out: list[str] = []
    _diff(old.model_dump(mode="json"), new.model_dump(mode="json"), "", out)

    def secret(c: Config) -> str | None:
        return c.mqtt.password.get_secret_value() if c.mqtt.password is not None else None

    if secret(old) != secret(new) and "mqtt.password" not in out:
        out.append("mqtt.password")
    if old.security.secret() != new.security.secret() and "security.hmac_secret" not in out:
        out.append("security.hmac_secret")  # the path only: a secret's value never leaves this function
    return out


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key, out)
    elif a != b:
        out.append(prefix)
