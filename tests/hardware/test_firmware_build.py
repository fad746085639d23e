"""The reference firmware builds for the Uno with Debian's toolchain, with every option, and fits it."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartbin_daemon.hardware.arduino.firmware_build import FLASH_LIMIT, RAM_LIMIT, Firmware, TooBig

from .firmware import build_or_skip


@pytest.mark.parametrize("defines", [(), ("HAVE_HX711",)], ids=["default", "hx711"])
def test_the_firmware_fits_the_uno_with_room_for_the_stack(tmp_path: Path, defines: tuple[str, ...]) -> None:
    fw = build_or_skip(tmp_path, defines)
    fw.check()
    assert 4096 < fw.flash <= FLASH_LIMIT and 256 < fw.ram <= RAM_LIMIT * 0.75
    assert fw.hex.read_text().startswith(":") and fw.elf.stat().st_size > fw.flash
    assert f"flash {fw.flash} of {FLASH_LIMIT} bytes" in fw.report()


def test_a_firmware_over_the_limits_is_refused(tmp_path: Path) -> None:
    def sized(flash: int, ram: int) -> Firmware:
        return Firmware(tmp_path / "fw.elf", tmp_path / "fw.hex", flash, ram)

    sized(FLASH_LIMIT, 1536).check()
    with pytest.raises(TooBig, match="flash 32257 bytes"):
        sized(FLASH_LIMIT + 1, 100).check()
    with pytest.raises(TooBig, match="static RAM 1537 bytes"):
        sized(1000, 1537).check()
