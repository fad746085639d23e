"""The simulated SmartBin Arduino's board: its spec, the protocol's value sets and the lid state machine.

The value sets and the lid transitions are the firmware's (PROTOCOL.md, firmware/smartbin_fw); tests compare them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .protocol import PROTOCOL_VERSION

SENSOR_NAMES = ("us", "lid", "lock", "hx711", "temp", "drop")
LID_STATES = ("open", "closed", "locked")
LID_OPS = ("open", "close", "lock", "unlock")
LED_PATTERNS = ("off", "on", "blink", "pulse", "error", "ok")
BUZ_PATTERNS = ("off", "beep", "alarm", "ok")
FAULT_CODES = ("servo_stall", "sensor_timeout", "hx711", "brownout", "watchdog")
NAK_CODES = ("bad_arg", "busy", "unknown", "fault", "locked")
DEDUPE_DEPTH = 8
MAX_COMPARTMENTS = 8
MIN_DISTANCE_MM = 30.0
"""Closest echo an HC-SR04 reports when a compartment is full to the brim."""
ITEM_WEIGHT_G = (20.0, 400.0)


def lid_transition(state: str, op: str) -> tuple[str, str | None]:
    """The lid state machine shared with the firmware: (new state, NAK code or None).

    open: closed→open, open→open, locked→NAK locked.  close: open→closed, else unchanged.
    lock: closed→locked, locked→locked, open→NAK busy (the bolt cannot engage an open lid).
    unlock: locked→closed, else unchanged.
    """
    if op == "open":
        return (state, "locked") if state == "locked" else ("open", None)
    if op == "close":
        return ("closed", None) if state == "open" else (state, None)
    if op == "lock":
        return (state, "busy") if state == "open" else ("locked", None)
    if op == "unlock":
        return ("closed", None) if state == "locked" else (state, None)
    raise ValueError(f"unknown lid op {op!r}")


@dataclass
class BoardSpec:
    """What the simulated board is (smartbin-fw on an Uno with these sensors) and how fast it talks; checked on creation."""

    compartments: int = 3
    empty_mm: float = 600.0
    item_mm: float = 12.0
    telemetry_interval_s: float = 0.5
    heartbeat_interval_s: float = 1.0
    boot_delay_s: float = 0.2
    fw: str = "smartbin-fw"
    version: str = "1.0.0"
    proto: int = PROTOCOL_VERSION
    sensors: tuple[str, ...] = ("us", "lid", "hx711", "temp", "drop")
    seed: int | None = None
    drop_delay_s: float = 0.2
    no_echo_rate: float = 0.002
    reset_on_open: bool = True
    temperature_c: float = 21.5

    def __post_init__(self) -> None:
        if not 1 <= self.compartments <= MAX_COMPARTMENTS:
            raise ValueError(f"compartments must be 1..{MAX_COMPARTMENTS}, not {self.compartments}")
        unknown = set(self.sensors) - set(SENSOR_NAMES)
        if unknown:
            raise ValueError(f"unknown sensors {sorted(unknown)}; known: {', '.join(SENSOR_NAMES)}")
        if self.empty_mm <= MIN_DISTANCE_MM or self.item_mm <= 0:
            raise ValueError("empty_mm must exceed the minimum distance and item_mm must be positive")
        if min(self.telemetry_interval_s, self.heartbeat_interval_s) <= 0 or min(self.boot_delay_s,
                                                                                 self.drop_delay_s) < 0:
            raise ValueError("intervals must be positive and delays non-negative")
        self.sensors = tuple(self.sensors)

    def echoes(self, fill_mm: list[float], stuck: dict[int, int | None], rng: random.Random) -> list[int]:
        """The distances a TEL frame reports: -1 for no echo (no sensor, or a random miss), a stuck reading as set."""
        distances = []
        for i, fill in enumerate(fill_mm):
            if (reading := stuck.get(i)) is not None:
                distances.append(reading)
            elif "us" not in self.sensors or rng.random() < self.no_echo_rate:
                distances.append(-1)
            else:
                distances.append(round(self.empty_mm - fill + rng.uniform(-2.0, 2.0)))
        return distances
