"""A gpiozero pin factory on NVIDIA's Jetson.GPIO (the RPi.GPIO-compatible library JetPack ships).

Modelled on gpiozero's RPiGPIOFactory: the library is driven in BOARD numbering (header positions); gpiozero
finds a pin by any name of `jetson_pin_names` (7, 'BOARD7', 'GPIO09', 'GP167'). Differences from the Pi:
Jetson.GPIO cannot set internal pulls (the pull is recorded for gpiozero's active level, the resistor must be
on the board), and PWM is the SoC's hardware PWM on a few header pins only (`jetson_pwm_pins`).
"""

from __future__ import annotations

import logging
from threading import RLock
from time import monotonic
from types import ModuleType
from typing import Any

from gpiozero.exc import (
    PinFixedPull,
    PinInvalidBounce,
    PinInvalidFunction,
    PinInvalidPull,
    PinInvalidState,
    PinPWMUnsupported,
    PinSetInput,
)
from gpiozero.pins import BoardInfo, HeaderInfo, PinInfo
from gpiozero.pins.local import LocalPiPin
from gpiozero.pins.pi import PiFactory

from ..config.boards import JETSON_INSTALL_HINT, PINMUX_HINT, Board, jetson_pin_names, jetson_pwm_pins
from ..config.jetson_header import JETSON_HEADERS

logger = logging.getLogger(__name__)

HEADER = "J12"
"""gpiozero's name of the 40-pin header (names like 'J12:7' are not offered; use 7 or 'BOARD7')."""


def import_jetson_gpio() -> ModuleType:
    """`Jetson.GPIO`, or an ImportError that says how to install it."""
    try:
        from Jetson import GPIO  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(f"Jetson.GPIO is not installed ({exc}); {JETSON_INSTALL_HINT}") from exc
    return GPIO  # type: ignore[no-any-return]


def jetson_board_info(module: str, model: str | None) -> BoardInfo:
    """gpiozero's description of the module's 40-pin header (odd positions left, even right)."""
    names = jetson_pin_names(module)
    pwm = set(jetson_pwm_pins(module))
    pins = {n: PinInfo(number=n, name=f"BOARD{n}", names=names[n], pull="", row=(n + 1) // 2, col=2 - n % 2,
                       interfaces=frozenset({"gpio", "pwm"} if n in pwm else {"gpio"}))
            for n in sorted(names)}
    header = HeaderInfo(name=HEADER, rows=20, columns=2, pins=pins)
    return BoardInfo(revision=module, model=model or module, pcb_revision="unknown", released="unknown",
                     soc="Tegra", manufacturer="NVIDIA", memory=None, storage=None, usb=None, usb3=None,
                     ethernet=None, eth_speed=None, wifi=None, bluetooth=None, csi=None, dsi=None,
                     headers={HEADER: header}, board="")


class JetsonGPIOFactory(PiFactory):  # type: ignore[misc]
    """gpiozero factory whose pins are Jetson.GPIO channels in BOARD mode."""

    def __init__(self, board: Board) -> None:
        self.GPIO = import_jetson_gpio()  # before anything else: a missing library must not leave a half factory
        super().__init__()
        library_module = getattr(self.GPIO, "model", None)
        self.module = library_module if library_module in JETSON_HEADERS else board.module
        if self.module is None:
            raise RuntimeError(f"unknown Jetson module ({board.model!r}); Jetson.GPIO knows {', '.join(JETSON_HEADERS)}")
        self._info = jetson_board_info(self.module, board.model)
        self.GPIO.setwarnings(False)
        self.GPIO.setmode(self.GPIO.BOARD)
        self.pin_class = JetsonGPIOPin

    def close(self) -> None:
        """Close every pin, then release the whole library (Jetson.GPIO's cleanup)."""
        super().close()
        self.GPIO.cleanup()

    def _get_board_info(self) -> BoardInfo:
        return self._info

    @staticmethod
    def ticks() -> float:
        """Seconds, monotonic (what gpiozero's local factories use)."""
        return monotonic()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier


class JetsonGPIOPin(LocalPiPin):  # type: ignore[misc]
    """One header pin through Jetson.GPIO: input with edges, output, hardware PWM where the module has it."""

    def __init__(self, factory: JetsonGPIOFactory, info: PinInfo) -> None:
        # not PiPin.__init__: it parses a 'GPIOn' name; the rest of what it sets is set here
        self._factory = factory
        self._info = info
        self._number = info.number
        self._when_changed_lock = RLock()
        self._when_changed = None
        self.GPIO = factory.GPIO
        self._pull = "floating"
        self._pwm: Any = None
        self._frequency: float | None = None
        self._duty_cycle: float | None = None
        self._bounce: int | None = None
        self._edges = self.GPIO.BOTH
        self.GPIO.setup(self._number, self.GPIO.IN)

    def close(self) -> None:
        """Stop PWM and edge detection, release the channel."""
        self.frequency = None
        self.when_changed = None
        self.GPIO.cleanup(self._number)

    def output_with_state(self, state: Any) -> None:
        self._pull = "floating"
        self.GPIO.setup(self._number, self.GPIO.OUT, initial=self.GPIO.HIGH if state else self.GPIO.LOW)

    def input_with_pull(self, pull: str) -> None:
        self._set_function("input")
        self._set_pull(pull)

    def _get_function(self) -> str:
        func = self.GPIO.gpio_function(self._number)
        return {self.GPIO.IN: "input", self.GPIO.OUT: "output", self.GPIO.HARD_PWM: "pwm"}.get(func, "unknown")

    def _set_function(self, value: str) -> None:
        if value == "input":
            self.GPIO.setup(self._number, self.GPIO.IN)
        elif value == "output":
            self._pull = "floating"
            self.GPIO.setup(self._number, self.GPIO.OUT)
        else:
            raise PinInvalidFunction(f'invalid function "{value}" for pin {self!r}')

    def _get_state(self) -> Any:
        return self._duty_cycle if self._pwm is not None else self.GPIO.input(self._number)

    def _set_state(self, value: Any) -> None:
        if self._pwm is not None:
            try:
                self._pwm.ChangeDutyCycle(value * 100)
            except ValueError as exc:
                raise PinInvalidState(f'invalid state "{value}" for pin {self!r}') from exc
            self._duty_cycle = value
            return
        try:
            self.GPIO.output(self._number, self.GPIO.HIGH if value else self.GPIO.LOW)
        except ValueError as exc:
            raise PinInvalidState(f'invalid state "{value}" for pin {self!r}') from exc
        except RuntimeError as exc:
            raise PinSetInput(f"cannot set state of pin {self!r}") from exc

    def _get_pull(self) -> str:
        return self._pull

    def _set_pull(self, value: str) -> None:
        """Jetson.GPIO has no pull setting: the level gpiozero expects is kept, the resistor is the wiring's."""
        if self.function != "input":
            raise PinFixedPull(f"cannot set pull on non-input pin {self!r}")
        if value not in ("up", "down", "floating"):
            raise PinInvalidPull(f'invalid pull "{value}" for pin {self!r}')
        if value != "floating":
            logger.info("gpio: header pin %d wants a pull-%s; Jetson.GPIO cannot set one: fit a 10 kΩ resistor to "
                        "%s", self._number, value, "3V3" if value == "up" else "GND")
        self._pull = value

    def _get_frequency(self) -> float | None:
        return self._frequency

    def _set_frequency(self, value: float | None) -> None:
        if value is not None and "pwm" not in self._info.interfaces:
            pwm = ", ".join(map(str, jetson_pwm_pins(self._factory.module))) or "none"
            raise PinPWMUnsupported(f"header pin {self._number} has no hardware PWM on the {self._factory.module} "
                                    f"(PWM pins: {pwm}; {PINMUX_HINT})")
        if self._frequency is None and value is not None:
            self._pwm = self.GPIO.PWM(self._number, value)
            self._pwm.start(0)
            self._duty_cycle = 0
            self._frequency = value
        elif self._frequency is not None and value is not None:
            self._pwm.ChangeFrequency(value)
            self._frequency = value
        elif self._frequency is not None and value is None:
            self._pwm.stop()
            self._pwm = None
            self._duty_cycle = None
            self._frequency = None

    def _get_bounce(self) -> float | None:
        return None if self._bounce is None else self._bounce / 1000

    def _set_bounce(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise PinInvalidBounce("bounce must be 0 or greater")
        f = self.when_changed
        self.when_changed = None
        try:
            self._bounce = None if value is None else int(value * 1000)
        finally:
            self.when_changed = f

    def _get_edges(self) -> str:
        return {self.GPIO.BOTH: "both", self.GPIO.RISING: "rising", self.GPIO.FALLING: "falling"}[self._edges]

    def _set_edges(self, value: str) -> None:
        f = self.when_changed
        self.when_changed = None
        try:
            self._edges = {"both": self.GPIO.BOTH, "rising": self.GPIO.RISING, "falling": self.GPIO.FALLING}[value]
        finally:
            self.when_changed = f

    def _call_when_changed(self, channel: int | None = None) -> None:  # type: ignore[override]
        """Jetson.GPIO's event thread: the channel is ours; ticks and level are read now."""
        super()._call_when_changed()

    def _enable_event_detect(self) -> None:
        self.GPIO.add_event_detect(self._number, self._edges, callback=self._call_when_changed,
                                   bouncetime=self._bounce)

    def _disable_event_detect(self) -> None:
        self.GPIO.remove_event_detect(self._number)
