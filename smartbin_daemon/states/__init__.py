"""The typed retained state of every component, one module per component (the MQTT contract's payloads).

Workers build these models; they become the published JSON dict only at `Bus.set_state` (runtime/state.py).
Components read each other's states by parsing the dict back (`parse_state`), never by importing each other.
"""

from __future__ import annotations

from ..runtime.state import State
from ..runtime.status import ConnectionStatus
from .alerts import ActiveAlert, AlertsState
from .arduino import ArduinoState
from .camera import CameraState
from .daemon import DaemonState
from .detector import DetectorState, GateState
from .fill import BinLevel, CompartmentFill, FillState
from .gpio import GpioState
from .health import HealthState, HealthStatus
from .mqtt import MqttState
from .selftest import PartResult, PartStatus, SelfTestState, SelfTestStatus
from .simulation import SimulationState
from .workflow import SortingState, WorkflowState

STATE_MODELS: dict[str, type[State]] = {
    "daemon": DaemonState,
    "mqtt": MqttState,
    "health": HealthState,
    "arduino": ArduinoState,
    "gpio": GpioState,
    "camera": CameraState,
    "detector": DetectorState,
    "fill": FillState,
    "workflow": WorkflowState,
    "simulation": SimulationState,
    "alerts": AlertsState,
    "selftest": SelfTestState,
}
"""The model of each component's `<root>/<component>` state, by component name."""


def parse_state(component: str, data: object) -> State | None:
    """A published state parsed into its component's model (None for an unknown component)."""
    model = STATE_MODELS.get(component)
    return None if model is None else model.from_json(data)


__all__ = [
    "STATE_MODELS", "ActiveAlert", "AlertsState", "ArduinoState", "BinLevel", "CameraState", "CompartmentFill", "ConnectionStatus", "DaemonState",
    "DetectorState", "FillState", "GateState", "GpioState", "HealthState", "HealthStatus", "MqttState",
    "PartResult", "PartStatus", "SelfTestState", "SelfTestStatus", "SimulationState", "SortingState", "State", "WorkflowState", "parse_state",
]
