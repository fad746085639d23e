"""The one typed configuration model, one module per concern: `base` (error, strict model), `core` (device, MQTT,
security, storage, logging, health), `hardware`, `vision`, `bins`, `root` (the whole config) and `loading`
(key-path errors, secret files, redaction, diffs)."""

from .alerts import SEVERITY_RANK, AlertsConfig, WebhookConfig  # noqa: F401
from .base import (  # noqa: F401
    EX_CONFIG,
    REDACTED,
    TOPIC_NAME_RE,
    ConfigError,
    TopicName,
    default_device_id,
)
from .bins import (  # noqa: F401
    WASTE_CATEGORIES,
    BinsConfig,
    CalibrationConfig,
    CompartmentConfig,
    EmptyingConfig,
    FillConfig,
    FillFilterConfig,
    SensorRef,
    WasteCategory,
    WorkflowConfig,
)
from .core import (  # noqa: F401
    DeviceConfig,
    HealthClock,
    HealthConfig,
    HealthSources,
    HealthThresholds,
    KeyId,
    LoggingConfig,
    MqttConfig,
    OutboxConfig,
    ReconnectConfig,
    SecurityConfig,
    SigningKeyConfig,
    StorageConfig,
    TlsConfig,
)
from .hardware import (  # noqa: F401
    GPIO_BOARD_TO_BCM,
    GPIO_PIN_NAME_RE,
    ArduinoConfig,
    ArduinoSimulatorConfig,
    GpioButtonConfig,
    GpioBuzzerConfig,
    GpioConfig,
    GpioDistanceConfig,
    GpioDoorConfig,
    GpioLedsConfig,
    GpioLidConfig,
    GpioPin,
    GpioPresenceConfig,
    gpio_pin_key,
    gpio_pin_spec,
)
from .loading import (  # noqa: F401
    config_diff,
    format_validation_errors,
    load_config,
    parse_config,
    redacted_dict,
    resolve_secret_file,
)
from .root import (  # noqa: F401
    Config,
    RuntimeConfig,
    SimulationConfig,
)
from .vision import (  # noqa: F401
    CameraConfig,
    DetectorConfig,
    EvidenceConfig,
    MotionGateConfig,
    classmap_path_for,
    missing_backend,
    resolve_backend,
)

__all__ = ["SEVERITY_RANK", "AlertsConfig", "WebhookConfig", "EX_CONFIG", "REDACTED", "TOPIC_NAME_RE", "ConfigError", "TopicName", "default_device_id", "DeviceConfig", "HealthClock", "HealthConfig", "HealthSources", "HealthThresholds", "KeyId", "LoggingConfig", "MqttConfig", "OutboxConfig", "ReconnectConfig", "SecurityConfig", "SigningKeyConfig", "StorageConfig", "TlsConfig", "GPIO_BOARD_TO_BCM", "GPIO_PIN_NAME_RE", "ArduinoConfig", "ArduinoSimulatorConfig", "GpioButtonConfig", "GpioBuzzerConfig", "GpioConfig", "GpioDistanceConfig", "GpioDoorConfig", "GpioLedsConfig", "GpioLidConfig", "GpioPin", "GpioPresenceConfig", "gpio_pin_key", "gpio_pin_spec", "CameraConfig", "DetectorConfig", "EvidenceConfig", "MotionGateConfig", "classmap_path_for", "missing_backend", "resolve_backend", "WASTE_CATEGORIES", "BinsConfig", "CalibrationConfig", "CompartmentConfig", "EmptyingConfig", "FillConfig", "FillFilterConfig", "SensorRef", "WasteCategory", "WorkflowConfig", "Config", "RuntimeConfig", "SimulationConfig", "config_diff", "format_validation_errors", "load_config", "parse_config", "redacted_dict", "resolve_secret_file"]
