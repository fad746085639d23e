"""`smartbinctl firmware`: the sketch installed with the daemon, and the commands that flash it (it never flashes)."""

from __future__ import annotations

import os
import re
import stat
from importlib import resources
from pathlib import Path

import pytest
import yaml

from smartbin_daemon import ctl
from smartbin_daemon.hardware.arduino.firmware_build import sketch_define
from smartbin_daemon.hardware.arduino.protocol import PROTOCOL_VERSION

from .hardware.firmware import require_toolchain


def test_the_package_carries_the_sketch_of_its_protocol_version() -> None:
    arduino = resources.files("smartbin_daemon.hardware.arduino")
    sketch = arduino / "firmware" / "smartbin_fw" / "smartbin_fw.ino"
    assert sketch.is_file()
    assert (arduino / "firmware" / "simavr" / "smartbin_simavr.c").is_file()
    assert int(sketch_define("PROTO_VERSION", Path(str(sketch)))) == PROTOCOL_VERSION


@pytest.fixture
def fake_flashers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """avrdude and arduino-cli on PATH that leave a mark when anything runs them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "flashed"
    for name in ("avrdude", "arduino-cli"):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {marker}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return marker


def _config(tmp_path: Path, arduino: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    # Only the arduino section matters here; an mqtt.tls file that is missing must not hide it.
    path.write_text(yaml.safe_dump({"device": {"id": "bin1"}, "arduino": arduino,
                                    "mqtt": {"tls": {"enabled": True, "ca": str(tmp_path / "missing.crt")}}}))
    return path


def test_firmware_prints_the_sketch_and_the_commands_for_the_configured_port(
        tmp_path: Path, fake_flashers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, {"enabled": True, "port": "/dev/ttyACM7"})
    assert ctl.main(["firmware", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    sketch = Path(re.search(r"^sketch: +(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert sketch.is_file() and sketch.name == "smartbin_fw.ino"
    assert f"protocol {PROTOCOL_VERSION}" in out
    assert f"port:     /dev/ttyACM7 (arduino.port in {config})" in out
    assert f"arduino-cli upload --fqbn arduino:avr:uno -p /dev/ttyACM7 --input-dir /tmp/smartbin-fw {sketch.parent}" in out
    assert "avrdude -p atmega328p -c arduino -P /dev/ttyACM7 -b 115200 -U flash:w:/tmp/smartbin-fw/smartbin_fw.ino.hex:i" in out
    assert not fake_flashers.exists(), "smartbinctl never runs a flasher"


def test_without_a_port_in_the_config_the_udev_symlink_is_named(tmp_path: Path, fake_flashers: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, {"enabled": True, "vid_pid": "2341:0043"})
    assert ctl.main(["firmware", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "port:     /dev/smartbin-arduino (the udev symlink for arduino.vid_pid 2341:0043" in out
    assert ctl.main(["firmware", "--config", str(tmp_path / "absent.yaml")]) == 0
    assert "-P /dev/smartbin-arduino " in capsys.readouterr().out
    assert not fake_flashers.exists()


def test_firmware_build_makes_the_hex_and_names_it_in_the_avrdude_command(
        tmp_path: Path, fake_flashers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_toolchain()  # skips (fails in CI) without it
    out_dir = tmp_path / "fw"
    config = _config(tmp_path, {"enabled": True, "port": "/dev/ttyUSB3"})
    assert ctl.main(["firmware", "--config", str(config), "--build", str(out_dir)]) == 0
    out = capsys.readouterr().out
    hex_file = out_dir / "smartbin_fw.hex"
    assert hex_file.read_text().startswith(":") and hex_file.read_text().rstrip().endswith(":00000001FF")
    assert re.search(r"flash \d+ of 32256 bytes", out) and re.search(r"RAM +\d+ of 2048 bytes", out)
    assert f"avrdude -p atmega328p -c arduino -P /dev/ttyUSB3 -b 115200 -U flash:w:{hex_file}:i" in out
    assert not fake_flashers.exists()
