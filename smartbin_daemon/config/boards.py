"""Which board this is (device tree), which pin factory `gpio.pin_factory` means on it, and the config checks
only the board can answer (a Jetson header's pins, its PWM pins, Jetson.GPIO installed). Part of config, not
of the gpio component: `check-config` runs these without gpiozero and without touching a pin."""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .hardware import GPIO_PIN_NAME_RE, GpioConfig
from .jetson_header import JETSON_COMPATIBLES, JETSON_HEADERS

DEVICE_TREE = Path("/proc/device-tree")
"""Where `model` and `compatible` are read (tests point this at a fake tree)."""
PI5_MODEL_RE = re.compile(r"Raspberry Pi (?:5|500|Compute Module 5)\b")
JETSON_INSTALL_HINT = (
    "install it: `pip install Jetson.GPIO` in the daemon's venv (created with --system-site-packages) or "
    "`sudo apt install python3-jetson-gpio`; the service user needs the `gpio` group and Jetson.GPIO's udev rule "
    "(99-gpio.rules in /etc/udev/rules.d) - install.sh sets both up on a Jetson")
PINMUX_HINT = "enable the PWM function of that pin in the pinmux first (sudo /opt/nvidia/jetson-io/jetson-io.py)"


@dataclass(frozen=True)
class Board:
    """What the device tree says: the model string, the compatible list, and the Jetson module if it is one."""

    model: str | None
    compatibles: tuple[str, ...] = ()

    @property
    def jetson(self) -> bool:
        """An NVIDIA Tegra/Jetson board (whether or not Jetson.GPIO knows the module)."""
        return any(c.startswith("nvidia,tegra") or "jetson" in c for c in self.compatibles) or (
            self.model is not None and "jetson" in self.model.lower())

    @property
    def module(self) -> str | None:
        """Jetson.GPIO's name of the module ('JETSON_ORIN_NANO'), or None."""
        for module, compatibles in JETSON_COMPATIBLES.items():
            if any(c in self.compatibles for c in compatibles):
                return module
        return None


def board_model(path: Path | None = None) -> str | None:
    """The device-tree model string ('Raspberry Pi 5 Model B Rev 1.0'), or None off a device-tree board."""
    try:
        data = (path if path is not None else DEVICE_TREE / "model").read_bytes()
    except OSError:
        return None
    return data.rstrip(b"\x00").decode("utf-8", "replace").strip() or None


def detect_board(device_tree: Path | None = None) -> Board:
    """Read `model` and `compatible` (NUL-separated) from the device tree."""
    tree = device_tree if device_tree is not None else DEVICE_TREE
    try:
        raw = (tree / "compatible").read_bytes()
    except OSError:
        raw = b""
    compatibles = tuple(c for c in raw.decode("utf-8", "replace").split("\x00") if c)
    return Board(board_model(tree / "model"), compatibles)


def factory_kind(setting: str, model: str | None, board: Board | None = None) -> str:
    """Which factory `setting` means here: 'auto' is jetson on a Jetson, lgpio on a Pi 5, gpiozero's default else."""
    if setting != "auto":
        return setting
    if (board is not None and board.jetson) or (model is not None and "jetson" in model.lower()):
        return "jetson"
    return "lgpio" if model is not None and PI5_MODEL_RE.search(model) else "default"


# --------------------------------------------------------------------------- the Jetson header


def jetson_pin_names(module: str) -> dict[int, frozenset[int | str]]:
    """Header position -> every name a config may give it: 7, 'BOARD7', the CVM and the TEGRA_SOC name."""
    return {board: frozenset({board, f"BOARD{board}", cvm.upper(), soc.upper()})
            for board, cvm, soc, _pwm in JETSON_HEADERS[module]}


def jetson_pwm_pins(module: str) -> list[int]:
    """Header positions with a hardware PWM controller on this module."""
    return [board for board, _cvm, _soc, pwm in JETSON_HEADERS[module] if pwm]


def resolve_jetson_pin(module: str, pin: int | str) -> int | None:
    """The header position a pin spec names on this module, or None."""
    spec: int | str = pin
    if isinstance(pin, str):
        m = re.fullmatch(r"(?:BOARD|J\d+:)(\d+)", pin)
        spec = int(m.group(1)) if m else pin.upper()
    for board, names in jetson_pin_names(module).items():
        if spec in names:
            return board
    return None


def jetson_allowed(module: str) -> str:
    """One line naming what a config may give on this module's header."""
    rows = JETSON_HEADERS[module]
    return (f"header numbers {', '.join(str(b) for b, *_ in rows)} (also as BOARD<n>), or the pinmux names "
            + ", ".join(f"{cvm}/{soc}" for _b, cvm, soc, _p in rows))


def jetson_gpio_installed() -> bool:
    """Whether `import Jetson.GPIO` can find the library (without importing it: that reads the board)."""
    if "Jetson.GPIO" in sys.modules:
        return sys.modules["Jetson.GPIO"] is not None
    try:
        return importlib.util.find_spec("Jetson.GPIO") is not None
    except (ImportError, ValueError):
        return False


def _jetson_problems(cfg: GpioConfig, board: Board) -> list[str]:
    """Pins that are not on this module's header, one header pin given twice, a servo lid on a non-PWM pin."""
    module = board.module
    if module is None:
        what = f"this Jetson ({board.model or 'model unknown'})" if board.jetson else \
            f"this board ({board.model or 'no device-tree model'}) is not a Jetson and"
        return [f"gpio.pin_factory: {what} is not a module Jetson.GPIO knows ({', '.join(JETSON_HEADERS)}); "
                "use a Jetson or another pin_factory"]
    problems: list[str] = []
    seen: dict[int, str] = {}
    for path, pin in cfg.pins():
        position = resolve_jetson_pin(module, pin)
        if position is None:
            problems.append(f"gpio.{path}: pin {pin!r} does not exist on the {module} header; allowed: "
                            f"{jetson_allowed(module)}")
        elif position in seen:
            problems.append(f"gpio.{seen[position]} and gpio.{path} are the same header pin {position}")
        else:
            seen[position] = path
    lid = cfg.lid
    if lid is not None and lid.kind == "servo":
        position = resolve_jetson_pin(module, lid.pin)
        pwm = jetson_pwm_pins(module)
        if position is not None and position not in pwm:
            allowed = ", ".join(map(str, pwm)) if pwm else "none"
            problems.append(f"gpio.lid.pin: a servo needs hardware PWM, which header pin {position} does not have on "
                            f"the {module}; PWM pins there: {allowed} ({PINMUX_HINT})")
    if not jetson_gpio_installed():
        problems.append(f"gpio.pin_factory: this is a Jetson but the Jetson.GPIO library is missing; {JETSON_INSTALL_HINT}")
    return problems


def gpio_board_problems(cfg: GpioConfig, board: Board | None = None) -> list[str]:
    """Config errors only the board can find (none when GPIO is off); each line names its key path."""
    if not cfg.enabled:
        return []
    board = board if board is not None else detect_board()
    kind = factory_kind(cfg.pin_factory, board.model, board)
    if kind == "jetson":
        return _jetson_problems(cfg, board)
    return [f"gpio.{path}: {pin!r} is a Jetson pinmux name, but the {kind} pin factory drives a Raspberry Pi header: "
            "use a BCM number (17) or a name like 'GPIO17' or 'BOARD11'"
            for path, pin in cfg.pins() if isinstance(pin, str) and not GPIO_PIN_NAME_RE.match(pin)]
