"""`smartbinctl firmware`: where the installed sketch is and the commands that flash it (never flashes itself)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import ArduinoConfig, ConfigError
from ..hardware.arduino.board import BoardSpec
from ..hardware.arduino.firmware_build import SKETCH, TooBig, ToolchainMissing, build, sketch_define
from ..hardware.arduino.protocol import PROTOCOL_VERSION
from .session import EXIT_ERROR, EXIT_OK, load_ctl_config

UDEV_PORT = "/dev/smartbin-arduino"
"""The symlink install.sh's udev rule creates for the Arduino (./install.sh --arduino-usb VID:PID)."""
FQBN = "arduino:avr:uno"
CLI_BUILD_DIR = "/tmp/smartbin-fw"


def _arduino_section(config: str) -> ArduinoConfig:
    """The config's `arduino` section; only that section is read when the rest does not validate (e.g. TLS files)."""
    try:
        return load_ctl_config(config).cfg.arduino
    except ConfigError:
        doc = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        return ArduinoConfig.model_validate(doc.get("arduino") or {})


def serial_port(config: str) -> tuple[str, str]:
    """The Arduino's port from the daemon's config, and where it came from."""
    try:
        arduino = _arduino_section(config)
    except (OSError, yaml.YAMLError, ValidationError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
        return UDEV_PORT, f"the udev symlink; no arduino section read from {config}: {reason}"
    if arduino.backend == "serial" and arduino.port:
        return arduino.port, f"arduino.port in {config}"
    if arduino.backend == "serial" and arduino.vid_pid:
        return UDEV_PORT, f"the udev symlink for arduino.vid_pid {arduino.vid_pid} (install.sh --arduino-usb)"
    return UDEV_PORT, f"the udev symlink; no arduino.port in {config} (arduino.backend {arduino.backend})"


def flash_commands(port: str, hex_file: str) -> list[str]:
    """The arduino-cli and avrdude command lines for the installed sketch."""
    sketch_dir = shlex.quote(str(SKETCH.parent))
    q_port = shlex.quote(port)
    return [
        "arduino-cli core update-index && arduino-cli core install arduino:avr   # once",
        f"arduino-cli compile --fqbn {FQBN} --output-dir {CLI_BUILD_DIR} {sketch_dir}",
        f"arduino-cli upload --fqbn {FQBN} -p {q_port} --input-dir {CLI_BUILD_DIR} {sketch_dir}",
        f"avrdude -p atmega328p -c arduino -P {q_port} -b 115200 -U flash:w:{shlex.quote(hex_file)}:i",
    ]


def cmd_firmware(args: argparse.Namespace) -> int:
    """Print the installed sketch, its protocol version and how to flash it; --build DIR makes the .hex."""
    sketch_proto = int(sketch_define("PROTO_VERSION"))
    if sketch_proto != PROTOCOL_VERSION:
        print(f"smartbinctl: the installed sketch speaks protocol {sketch_proto}, this daemon {PROTOCOL_VERSION}")
        return EXIT_ERROR
    port, source = serial_port(args.config)
    hex_file = f"{CLI_BUILD_DIR}/{SKETCH.name}.hex"
    board = BoardSpec()
    print(f"firmware: {board.fw} {board.version}, protocol {PROTOCOL_VERSION}, for an Arduino Uno (ATmega328P)")
    print(f"sketch:   {SKETCH}")
    print(f"port:     {port} ({source})")
    if args.build:
        try:
            fw = build(Path(args.build))
            fw.check()
        except (ToolchainMissing, TooBig, RuntimeError) as exc:
            print(f"smartbinctl: cannot build the firmware: {exc}")
            return EXIT_ERROR
        hex_file = str(fw.hex)
        print(f"built:    {fw.hex}")
        for line in fw.report().splitlines():
            print(f"          {line}")
    cli_prep, compile_, upload, avrdude = flash_commands(port, hex_file)
    print("\nStop the daemon first (it holds the port):  sudo systemctl stop smartbin")
    if not args.build:
        print("\nWith arduino-cli:")
        for line in (cli_prep, compile_, upload):
            print(f"  {line}")
        print("\nOr with avrdude and the .hex of the compile above (or of `smartbinctl firmware --build DIR`):")
    else:
        print("\nFlash the built .hex with avrdude:")
    print(f"  {avrdude}")
    print("\nThen:  sudo systemctl start smartbin   (smartbinctl status shows the firmware the link found)")
    return EXIT_OK


def add_firmware_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `firmware` subcommand."""
    p = sub.add_parser("firmware", parents=[common], help="the installed Arduino sketch and the commands that flash it",
                       description="Print where the sketch matching this daemon's protocol is installed and the exact "
                                   "arduino-cli and avrdude commands to flash it to the Uno on the configured port. "
                                   "Nothing is flashed.")
    p.add_argument("--build", metavar="DIR", help="also build the .hex into DIR with Debian's AVR toolchain "
                                                  "(gcc-avr, avr-libc, arduino-core-avr)")
    return p
