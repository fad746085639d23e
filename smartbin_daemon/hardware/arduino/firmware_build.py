"""Build the reference sketch for an Arduino Uno with Debian's AVR toolchain, and its simavr harness.

Debian 12 packages everything: gcc-avr, avr-libc, arduino-core-avr (the Arduino core and the Uno's
variant under /usr/share/arduino), simavr and libsimavr-dev. Nothing here downloads or flashes anything.

    python -m smartbin_daemon.hardware.arduino.firmware_build OUT_DIR [--simavr]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKETCH = HERE / "firmware" / "smartbin_fw" / "smartbin_fw.ino"
HARNESS_SOURCE = HERE / "firmware" / "simavr" / "smartbin_simavr.c"
CORE_ROOT = Path(os.environ.get("SMARTBIN_ARDUINO_CORE", "/usr/share/arduino/hardware/arduino/avr"))

FLASH_LIMIT = 32256
"""Uno flash without the 512-byte Optiboot bootloader (boards.txt uno.upload.maximum_size)."""
RAM_LIMIT = 2048
RAM_BUDGET = 0.75
"""Static RAM (.data + .bss + .noinit) may use this share of the 2 KB; the rest is the stack's."""

FIRMWARE_PACKAGES = ("gcc-avr", "avr-libc", "arduino-core-avr")
SIMAVR_PACKAGES = ("simavr", "libsimavr-dev", "gcc")
ARDUINO_VERSION = "10819"
MCU_FLAGS = ["-mmcu=atmega328p", "-DF_CPU=16000000L", f"-DARDUINO={ARDUINO_VERSION}", "-DARDUINO_AVR_UNO",
             "-DARDUINO_ARCH_AVR"]
COMMON_FLAGS = ["-Os", "-g", "-w", "-ffunction-sections", "-fdata-sections", "-MMD"]
C_FLAGS = ["-std=gnu11"]
# DECIMAL_DIG: gcc-avr 5.4's float.h lacks it and the core's WString.cpp needs it.
CPP_FLAGS = ["-std=gnu++11", "-fpermissive", "-fno-exceptions", "-fno-threadsafe-statics", "-DDECIMAL_DIG=17"]
LINK_FLAGS = ["-Os", "-Wl,--gc-sections"]


class ToolchainMissing(RuntimeError):
    """The Debian packages this build needs are not installed."""


class TooBig(RuntimeError):
    """The firmware does not fit the Uno (flash, or static RAM within its budget)."""


@dataclass(frozen=True)
class Firmware:
    """A built sketch: its ELF and HEX and what it occupies."""

    elf: Path
    hex: Path
    flash: int
    ram: int

    def report(self) -> str:
        """One line per memory, with the Uno's limit."""
        return (f"flash {self.flash} of {FLASH_LIMIT} bytes ({100 * self.flash / FLASH_LIMIT:.1f} %)\n"
                f"RAM   {self.ram} of {RAM_LIMIT} bytes ({100 * self.ram / RAM_LIMIT:.1f} %, "
                f"budget {RAM_BUDGET:.0%}; the rest is stack)")

    def check(self) -> None:
        """Raise TooBig unless it fits the Uno with room for the stack."""
        if self.flash > FLASH_LIMIT:
            raise TooBig(f"flash {self.flash} bytes > {FLASH_LIMIT} (Uno with bootloader)")
        if self.ram > RAM_LIMIT * RAM_BUDGET:
            raise TooBig(f"static RAM {self.ram} bytes > {RAM_BUDGET:.0%} of {RAM_LIMIT} (stack margin)")


def sketch_define(name: str, sketch: Path = SKETCH) -> str:
    """The value of `#define NAME value` in the sketch (e.g. PROTO_VERSION)."""
    match = re.search(rf"^#define {name} (\S+)", sketch.read_text(encoding="utf-8"), flags=re.M)
    if match is None:
        raise ValueError(f"{sketch} has no #define {name}")
    return match.group(1)


def missing_firmware_tools() -> list[str]:
    """Debian packages (of FIRMWARE_PACKAGES) whose files are absent."""
    missing = [pkg for pkg, tool in (("gcc-avr", "avr-g++"), ("gcc-avr", "avr-size")) if not shutil.which(tool)]
    if not Path("/usr/lib/avr/include/avr/io.h").exists() and not Path("/usr/avr/include/avr/io.h").exists():
        missing.append("avr-libc")
    if not (CORE_ROOT / "cores" / "arduino" / "Arduino.h").exists():
        missing.append("arduino-core-avr")
    return sorted(set(missing))


def missing_simavr_tools() -> list[str]:
    """Debian packages needed for the simavr harness whose files are absent."""
    missing = [] if shutil.which("gcc") else ["gcc"]
    if not Path("/usr/include/simavr/parts/uart_pty.h").exists():
        missing.append("libsimavr-dev")
    return missing


def _run(cmd: Sequence[str | Path]) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(str(c) for c in cmd)} failed:\n{proc.stderr.strip()}")


def _compile_command(src: Path, obj: Path, includes: list[str], defines: Sequence[str]) -> list[str | Path]:
    extra = [f"-D{d}" for d in defines]
    if src.suffix == ".c":
        return ["avr-gcc", "-c", *MCU_FLAGS, *COMMON_FLAGS, *C_FLAGS, *extra, *includes, src, "-o", obj]
    if src.suffix == ".S":
        return ["avr-gcc", "-c", "-x", "assembler-with-cpp", *MCU_FLAGS, "-g", *extra, *includes, src, "-o", obj]
    lang = ["-x", "c++"] if src.suffix == ".ino" else []
    return ["avr-g++", "-c", *MCU_FLAGS, *COMMON_FLAGS, *CPP_FLAGS, *extra, *includes, *lang, src, "-o", obj]


def memory_use(elf: Path) -> tuple[int, int]:
    """(flash, static RAM) in bytes from `avr-size -A`: flash = .text + .data, RAM = .data + .bss + .noinit."""
    out = subprocess.run(["avr-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\w+)\s+(\d+)\s+\d+", out, flags=re.M)}
    data = sizes.get(".data", 0)
    return sizes.get(".text", 0) + data, data + sizes.get(".bss", 0) + sizes.get(".noinit", 0)


def build(out_dir: Path, defines: Sequence[str] = (), sketch: Path = SKETCH) -> Firmware:
    """Compile the Arduino core and the sketch for the Uno into out_dir; the sizes are not checked here."""
    missing = missing_firmware_tools()
    if missing:
        raise ToolchainMissing(f"missing Debian packages: {' '.join(missing)} (apt-get install {' '.join(missing)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    core = CORE_ROOT / "cores" / "arduino"
    includes = [f"-I{core}", f"-I{CORE_ROOT / 'variants' / 'standard'}",
                f"-I{CORE_ROOT / 'libraries' / 'EEPROM' / 'src'}"]
    sources = sorted(p for p in core.iterdir() if p.suffix in (".c", ".cpp", ".S")) + [sketch]
    objects = [out_dir / f"{src.name}.o" for src in sources]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda pair: _run(_compile_command(pair[0], pair[1], includes, defines)),
                      zip(sources, objects)))
    elf = out_dir / f"{sketch.stem}.elf"
    hex_file = out_dir / f"{sketch.stem}.hex"
    _run(["avr-gcc", *MCU_FLAGS[:1], *LINK_FLAGS, "-o", elf, *objects, "-lm"])
    _run(["avr-objcopy", "-O", "ihex", "-R", ".eeprom", elf, hex_file])
    flash, ram = memory_use(elf)
    return Firmware(elf, hex_file, flash, ram)


def build_harness(out_dir: Path) -> Path:
    """Compile the simavr harness (UART on a pty, modelled lid switch and drop beam) with the host's gcc."""
    missing = missing_simavr_tools()
    if missing:
        raise ToolchainMissing(f"missing Debian packages: {' '.join(missing)} (apt-get install {' '.join(missing)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "smartbin_simavr"
    _run(["gcc", "-O2", "-Wall", "-I/usr/include/simavr", "-o", exe, HARNESS_SOURCE,
          "-lsimavrparts", "-lsimavr", "-lpthread", "-lutil"])
    return exe


def main(argv: Sequence[str] | None = None) -> int:
    """Build into OUT_DIR, print the sizes against the Uno's limits; exit 1 when it does not fit."""
    parser = argparse.ArgumentParser(prog="firmware_build", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("-D", dest="defines", action="append", default=[], help="extra #define, e.g. -D HAVE_HX711")
    parser.add_argument("--simavr", action="store_true", help="also build the simavr harness")
    args = parser.parse_args(argv)
    try:
        fw = build(args.out_dir, args.defines)
        print(f"{fw.hex}\n{fw.report()}")
        fw.check()
        if args.simavr:
            print(build_harness(args.out_dir))
    except (ToolchainMissing, TooBig, RuntimeError) as err:
        print(f"firmware_build: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
