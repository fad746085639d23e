"""A stand-in for NVIDIA's `Jetson.GPIO` (not ours, and there is no board here): it keeps the library's rules
(a mode first, setup before use, inputs for edge detection, hardware PWM only on the module's PWM pins,
duty cycle 0..100, cleanup), records every call, and delivers edges from one thread per watched channel, as
the library's event threads do. The header data is written out here from NVIDIA's Orin Nano pinmux table,
not taken from the daemon, so a wrong table in the daemon shows up as a failing test."""

from __future__ import annotations

import queue
import threading
import types
from collections.abc import Callable
from typing import Any

ORIN_NANO_PINS = (7, 11, 12, 13, 15, 16, 18, 19, 21, 22, 23, 24, 26, 29, 31, 32, 33, 35, 36, 37, 38, 40)
ORIN_NANO_PWM = (15, 32, 33)

BOARD, BCM, TEGRA_SOC, CVM = 10, 11, 1000, 1001
PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22
HIGH, LOW = 1, 0
RISING, FALLING, BOTH = 31, 32, 33
UNKNOWN, OUT, IN, HARD_PWM = -1, 0, 1, 43
_NO_PULL = object()


class FakePWM:
    """Jetson.GPIO.PWM: a hardware PWM channel; duty cycles are recorded."""

    def __init__(self, lib: FakeJetsonGPIO, channel: int, frequency_hz: float) -> None:
        lib._check_channel(channel)
        if channel not in lib.pwm_pins:
            raise ValueError(f"Channel {channel} is not a PWM")
        if lib.function.get(channel) == HARD_PWM:
            raise ValueError("Can't create duplicate PWM objects")
        lib.function[channel] = HARD_PWM  # (the library releases the GPIO line first)
        self.lib, self.channel, self.frequency = lib, channel, frequency_hz
        self.duty: float | None = None
        self.history: list[float] = []
        self.running = False
        lib.pwms[channel] = self

    def start(self, duty_cycle_percent: float) -> None:
        self.running = True
        self.ChangeDutyCycle(duty_cycle_percent)

    def ChangeDutyCycle(self, duty_cycle_percent: float) -> None:  # noqa: N802 - the library's name
        if not 0.0 <= duty_cycle_percent <= 100.0:
            raise ValueError("")
        self.duty = duty_cycle_percent
        self.history.append(duty_cycle_percent)

    def ChangeFrequency(self, frequency_hz: float) -> None:  # noqa: N802
        self.frequency = frequency_hz

    def stop(self) -> None:
        self.running = False


class _Watcher:
    """One channel's edge detection: a thread that calls the callback for each queued edge."""

    def __init__(self, channel: int, edge: int, callback: Callable[[int], None] | None) -> None:
        self.channel, self.edge, self.callback = channel, edge, callback
        self.events: queue.Queue[int | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"fake-jetson-edge-{channel}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (channel := self.events.get()) is not None:
            if self.callback is not None:
                self.callback(channel)

    def stop(self) -> None:
        self.events.put(None)
        self.thread.join(2)


class FakeJetsonGPIO(types.ModuleType):
    """The fake module (installed as `Jetson.GPIO`); `drive()` is the test's hand on an input wire."""

    def __init__(self, model: str = "JETSON_ORIN_NANO", pins: tuple[int, ...] = ORIN_NANO_PINS,
                 pwm_pins: tuple[int, ...] = ORIN_NANO_PWM) -> None:
        super().__init__("Jetson.GPIO")
        for name, value in dict(BOARD=BOARD, BCM=BCM, TEGRA_SOC=TEGRA_SOC, CVM=CVM, PUD_OFF=PUD_OFF,
                                PUD_DOWN=PUD_DOWN, PUD_UP=PUD_UP, HIGH=HIGH, LOW=LOW, RISING=RISING,
                                FALLING=FALLING, BOTH=BOTH, UNKNOWN=UNKNOWN, OUT=OUT, IN=IN, HARD_PWM=HARD_PWM).items():
            setattr(self, name, value)
        self.model = model
        self.pins, self.pwm_pins = pins, pwm_pins
        self.PWM = lambda channel, frequency_hz: FakePWM(self, channel, frequency_hz)  # noqa: N803 - the library's name
        self.mode: int | None = None
        self.function: dict[int, int] = {}
        self.levels: dict[int, int] = {}  # what the wire says (inputs) or what we drive (outputs)
        self.watchers: dict[int, _Watcher] = {}
        self.pwms: dict[int, FakePWM] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.pull_warnings: list[int] = []
        self.cleaned_all = False
        self.lock = threading.Lock()

    # -- the library's API ---------------------------------------------------------------

    def setwarnings(self, state: bool) -> None:
        self.calls.append(("setwarnings", state))

    def setmode(self, mode: int) -> None:
        if mode not in (BOARD, BCM, TEGRA_SOC, CVM):
            raise ValueError("An invalid mode was passed to setmode()")
        if self.mode is not None and mode != self.mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode
        self.calls.append(("setmode", mode))

    def getmode(self) -> int | None:
        return self.mode

    def setup(self, channel: int, direction: int, pull_up_down: Any = _NO_PULL, initial: int | None = None,
              consumer: str = "Jetson-gpio") -> None:
        self._check_channel(channel)
        if direction not in (IN, OUT):
            raise ValueError("An invalid direction was passed to setup()")
        if pull_up_down is not _NO_PULL:
            if direction == OUT and pull_up_down != PUD_OFF:
                raise ValueError("pull_up_down parameter is not valid for outputs")
            self.pull_warnings.append(channel)  # "Jetson.GPIO ignores setup()'s pull_up_down parameter"
        self._release(channel)
        self.function[channel] = direction
        if direction == OUT:
            self.levels[channel] = HIGH if initial else LOW
        self.calls.append(("setup", channel, direction, initial))

    def input(self, channel: int) -> int:
        self._configured(channel)
        return self.levels.get(channel, LOW)

    def output(self, channel: int, value: int) -> None:
        if self._configured(channel) != OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        self.levels[channel] = HIGH if value else LOW
        self.calls.append(("output", channel, self.levels[channel]))

    def add_event_detect(self, channel: int, edge: int, callback: Callable[[int], None] | None = None,
                         bouncetime: int | None = None, polltime: float = 0.2) -> None:
        if self._configured(channel) != IN:
            raise RuntimeError("You must setup() the GPIO channel as an input first")
        if edge not in (RISING, FALLING, BOTH):
            raise ValueError("The edge must be set to RISING, FALLING, or BOTH")
        if bouncetime is not None and (type(bouncetime) is not int or bouncetime < 0):
            raise ValueError("bouncetime must be an integer greater than 0")
        if channel in self.watchers:
            raise RuntimeError("Conflicting edge detection already enabled for this GPIO channel")
        self.watchers[channel] = _Watcher(channel, edge, callback)
        self.calls.append(("add_event_detect", channel, edge, bouncetime))

    def remove_event_detect(self, channel: int, timeout: float = 0.5) -> None:
        self._check_channel(channel)
        watcher = self.watchers.pop(channel, None)
        if watcher is not None:
            watcher.stop()
        self.calls.append(("remove_event_detect", channel))

    def gpio_function(self, channel: int) -> int:
        self._check_channel(channel)
        return self.function.get(channel, UNKNOWN)

    def cleanup(self, channel: int | None = None) -> None:
        if channel is None:
            for ch in list(self.function):
                self._release(ch)
            self.cleaned_all = True
            self.mode = None
        else:
            self._check_channel(channel)
            self._release(channel)
        self.calls.append(("cleanup", channel))

    # -- rules and the test's hand ------------------------------------------------------------

    def _check_channel(self, channel: Any) -> None:
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD), ...")
        if self.mode != BOARD or channel not in self.pins:
            raise ValueError(f"Channel {channel} is invalid")

    def _configured(self, channel: int) -> int:
        self._check_channel(channel)
        if channel not in self.function:
            raise RuntimeError("You must setup() the GPIO channel first")
        return self.function[channel]

    def _release(self, channel: int) -> None:
        watcher = self.watchers.pop(channel, None)
        if watcher is not None:
            watcher.stop()
        pwm = self.pwms.pop(channel, None)
        if pwm is not None:
            pwm.stop()
        self.function.pop(channel, None)

    def drive(self, channel: int, level: int) -> None:
        """The wire on an input goes to `level`; a watched edge reaches the callback from the watcher thread."""
        with self.lock:
            old = self.levels.get(channel, LOW)
            self.levels[channel] = level
        watcher = self.watchers.get(channel)
        if watcher is None or old == level:
            return
        if watcher.edge == BOTH or watcher.edge == (RISING if level else FALLING):
            watcher.events.put(channel)

    def threads(self) -> list[threading.Thread]:
        """Edge threads still running."""
        return [w.thread for w in self.watchers.values() if w.thread.is_alive()]
