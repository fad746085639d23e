"""The whole config: simulation and runtime sections and the root model that checks them together."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from .alerts import AlertsConfig
from .base import _Model
from .bins import BinsConfig
from .core import DeviceConfig, HealthConfig, LoggingConfig, MqttConfig, SecurityConfig, StorageConfig
from .hardware import ArduinoConfig, GpioConfig
from .vision import CameraConfig, DetectorConfig, EvidenceConfig

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
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)

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


