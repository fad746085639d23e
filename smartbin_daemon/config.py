"""The one typed configuration model: loading, validation with key-path errors, redaction."""

from __future__ import annotations

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
    storage: StorageConfig = Field(default_factory=StorageConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @property
    def root_topic(self) -> str:
        """`<base_topic>/<device_id>`."""
        return self.mqtt.root_topic(self.device.id)


# --------------------------------------------------------------------------- loading


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


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
    return out


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key, out)
    elif a != b:
        out.append(prefix)
