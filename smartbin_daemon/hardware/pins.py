"""GPIO building blocks: the pin factory chosen by config and board, input debouncing, a distance sensor that
reports its own freshness."""

from __future__ import annotations

import collections
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

from gpiozero import (
    Device,
    DistanceSensor,
)
from gpiozero.exc import (
    DistanceSensorNoEcho,
    PWMSoftwareFallback,
)
from gpiozero.pins import Factory

from ..config.boards import board_model, detect_board, factory_kind

__all__ = ["board_model", "build_pin_factory", "factory_kind", "factory_name"]  # board_model, factory_kind: config/boards.py

logger = logging.getLogger(__name__)

DISTANCE_STALE_S = 1.0
"""A distance sensor without a successful echo for this long reads None (no echo)."""

# --------------------------------------------------------------------------- pin factory


def quiet_gpiozero_warnings() -> None:
    """Silence DistanceSensor's pigpio advice and its per-sample no-echo warning (we report mm=None ourselves)."""
    warnings.filterwarnings("ignore", category=PWMSoftwareFallback)
    warnings.filterwarnings("ignore", category=DistanceSensorNoEcho)


def build_pin_factory(setting: str, *, device_tree: Path | None = None) -> Factory:
    """One pin factory instance for `gpio.pin_factory` (the process-global Device.pin_factory is left alone)."""
    board = detect_board(device_tree) if setting in ("auto", "jetson") else None
    kind = factory_kind(setting, board.model if board else None, board)
    if kind == "jetson":
        from .jetson_pins import JetsonGPIOFactory

        assert board is not None
        return JetsonGPIOFactory(board)
    if kind == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)  # PWM-capable mock pins: servo and PWMLED work in simulation
    if kind == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if kind == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    if kind == "native":
        from gpiozero.pins.native import NativeFactory

        return NativeFactory()
    # gpiozero's own preference order (lgpio, RPi.GPIO, pigpio, native), honouring GPIOZERO_PIN_FACTORY.
    return Device._default_pin_factory()  # type: ignore[no-any-return]


def factory_name(factory: Factory) -> str:
    """Short name of a factory instance for the state ('lgpio', 'mock', ...)."""
    names = {"LGPIOFactory": "lgpio", "RPiGPIOFactory": "rpigpio", "NativeFactory": "native",
             "MockFactory": "mock", "PiGPIOFactory": "pigpio", "JetsonGPIOFactory": "jetson"}
    for cls in type(factory).__mro__:
        if cls.__name__ in names:
            return names[cls.__name__]
    return type(factory).__name__


# --------------------------------------------------------------------------- debouncing


class Debouncer:
    """Software debounce of one input: a new level counts once it has held for `on_s` (active) or `off_s`."""

    def __init__(self, level: bool, now: float, on_s: float, off_s: float) -> None:
        self.raw = level
        self.raw_since = now
        self.stable = level
        self.stable_since = now
        self.on_s = on_s
        self.off_s = off_s

    def edge(self, level: bool, mono: float) -> None:
        """An edge reported at `mono`; the same level twice means an edge in between was missed: restart."""
        self.raw = level
        self.raw_since = mono

    def sample(self, level: bool, now: float) -> None:
        """A polled level (catches edges a driver lost)."""
        if level != self.raw:
            self.raw = level
            self.raw_since = now

    def deadline(self) -> float | None:
        """When the pending level would count, or None when nothing is pending."""
        if self.raw == self.stable:
            return None
        return self.raw_since + (self.on_s if self.raw else self.off_s)

    def update(self, now: float) -> bool | None:
        """Commit the pending level if it held long enough; returns the new stable level, or None."""
        due = self.deadline()
        if due is None or now < due:
            return None
        self.stable = self.raw
        self.stable_since = self.raw_since
        return self.stable


# --------------------------------------------------------------------------- devices


class TrackedDistanceSensor(DistanceSensor):  # type: ignore[misc]
    """A DistanceSensor that keeps its recent echoes with their time, so a dead sensor reads None, not its last value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # (monotonic time, 0..1 of max_distance); set before gpiozero freezes the attribute set
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=5)
        super().__init__(*args, **kwargs)

    def _read(self) -> float | None:
        """gpiozero's reader thread: one ping; a successful echo is kept with its time."""
        try:
            value = super()._read()
        except AttributeError:
            if self._trigger is None:  # closing: gpiozero drops the trigger before it stops this reader thread
                return None
            raise
        if value is not None:
            self.recent.append((time.monotonic(), float(value)))
        return value  # type: ignore[no-any-return]

    def mm(self, now: float) -> float | None:
        """Median of the echoes of the last DISTANCE_STALE_S in mm (capped at max_distance); None without one."""
        values = [v for t, v in tuple(self.recent) if now - t <= DISTANCE_STALE_S]
        if not values:
            return None
        return round(statistics.median(values) * float(self.max_distance) * 1000.0, 1)


