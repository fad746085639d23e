"""Sections of the daemon itself: device, MQTT (TLS, reconnect, outbox), security, storage, logging, health."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .base import TopicName, _Model, default_device_id


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
    alert_events: int = Field(default=1000, ge=1, le=10_000_000,
                              description="this many events waiting (at most max_events): warning alert outbox_backlog")
    alert_age_min: float = Field(default=30.0, gt=0, le=525_600,
                                 description="the oldest waiting event this old (minutes): warning alert outbox_backlog")


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
    high_water_pct: float = Field(default=90.0, gt=0, le=100, description=(
        "storage disk usage that makes the detector's evidence writer prune evidence and the dataset, oldest first"))
    low_water_pct: float = Field(default=80.0, gt=0, le=100, description="... down to this usage")

    @model_validator(mode="after")
    def _water_marks(self) -> StorageConfig:
        if self.low_water_pct >= self.high_water_pct:
            raise ValueError(f"low_water_pct ({self.low_water_pct}) must be below high_water_pct ({self.high_water_pct})")
        return self


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
    pi_command_timeout_s: float = Field(default=2.0, gt=0, le=30, description="timeout of the vcgencmd (and iwgetid) call")
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
    os_release: Path = Field(default=Path("/etc/os-release"), description="OS name (PRETTY_NAME)")
    cpuinfo: Path = Field(default=Path("/proc/cpuinfo"), description="CPU model (x86) or board (Raspberry Pi Model)")
    wireless: Path = Field(default=Path("/proc/net/wireless"), description="Wi-Fi link quality and signal")
    iwgetid: str | None = Field(default="iwgetid", description="command naming the Wi-Fi SSID; absent or null: no SSID")
    adjtimex: bool = Field(default=True, description="read the kernel's NTP sync state (what timedatectl reports)")
    timesync_flag: Path | None = Field(default=Path("/run/systemd/timesync/synchronized"),
                                       description="systemd-timesyncd's flag file, the fallback for the NTP sync state")
    mountinfo: Path = Field(default=Path("/proc/self/mountinfo"),
                            description="tells whether /proc hides other users' processes (ProtectProc=)")


class HealthClock(_Model):
    """When the wall clock is not to be trusted."""

    min_year: int = Field(default=2024, ge=1970, le=9999, description="a wall clock before this year is unset")
    ntp_alert_after_s: float = Field(default=900.0, ge=0, le=604800,
                                     description="alert when NTP is not synchronised this long; 0 disables")


class HealthConfig(_Model):
    """System and GPU health worker."""

    enabled: bool = True
    interval_s: float = Field(default=10.0, ge=1, le=3600)
    history_days: float = Field(default=90.0, gt=0, le=3650, description="health history (10-minute rollup) kept this long")
    history_full_days: float = Field(default=7.0, gt=0, le=3650, description="every health sample kept this long")
    thresholds: HealthThresholds = Field(default_factory=HealthThresholds)
    sources: HealthSources = Field(default_factory=HealthSources)
    identity_interval_s: float = Field(default=3600.0, ge=10, le=86400,
                                       description="re-read the slow-changing system identity (OS, kernel, CPU model)")
    clock: HealthClock = Field(default_factory=HealthClock)
    storage_interval_s: float = Field(default=600.0, ge=10, le=86400,
                                      description="recompute the storage breakdown (a walk of storage.path) this often")
    storage_walk_max_entries: int = Field(default=200_000, ge=100, le=10_000_000,
                                          description="a breakdown walks at most this many entries (else complete: false)")
    storage_walk_budget_s: float = Field(default=2.0, gt=0, le=30, description="... and for at most this long")


