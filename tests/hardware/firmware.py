"""The reference firmware as a test backend: built once per session with Debian's AVR toolchain and run under
simavr on a pseudo-terminal (or a real board named by SMARTBIN_FW_PORT).

In CI (CI=true) a missing toolchain fails the tests that need it; elsewhere they skip and say why.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smartbin_daemon.hardware.arduino.firmware_build import (
    FIRMWARE_PACKAGES,
    SIMAVR_PACKAGES,
    Firmware,
    build,
    build_harness,
    missing_firmware_tools,
    missing_simavr_tools,
)

from .test_simulator import Host

PTY_WAIT_S = 10.0


@dataclass
class FirmwareBoard:
    """Where the firmware runs: the pty of a simavr process (or a board's port) and the build it runs."""

    port: str
    firmware: Firmware | None
    process: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)


STATS: dict[str, float] = {"seconds": 0.0, "tests": 0}
"""Time spent in tests against the firmware (for the terminal summary)."""
BUILT: list[Firmware] = []


def unavailable(reason: str) -> None:
    """Skip with the reason; in CI (CI=true) fail instead, because CI must run these tests."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the firmware tests must run; ./install.sh --test installs the toolchain)")
    pytest.skip(reason)


def require_toolchain() -> None:
    """Skip (fail in CI) unless Debian's AVR toolchain and Arduino core are installed."""
    missing = missing_firmware_tools()
    if missing:
        unavailable(f"AVR toolchain missing (Debian: {' '.join(FIRMWARE_PACKAGES)}; absent: {' '.join(missing)})")


def build_or_skip(out: Path, defines: Sequence[str] = ()) -> Firmware:
    """The sketch built for the Uno into `out`, or a skip (a failure in CI) naming the missing packages."""
    require_toolchain()
    fw = build(out, defines)
    if not BUILT and not defines:
        BUILT.append(fw)
    return fw


def _read_pty_path(proc: subprocess.Popen[bytes], lines: list[str]) -> str:
    """The pty the harness announces on stdout ("PTY /dev/pts/N")."""
    assert proc.stdout is not None
    deadline = time.monotonic() + PTY_WAIT_S
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        pending += chunk
        *done, pending = pending.split(b"\n")
        for raw in done:
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith("PTY "):
                return line[4:].strip()
    raise AssertionError(f"simavr announced no pty within {PTY_WAIT_S}s: {lines}")


@pytest.fixture(scope="session")
def firmware_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirmwareBoard]:
    """The firmware running on a simulated ATmega328P (simavr) behind a pty, for the whole session."""
    port = os.environ.get("SMARTBIN_FW_PORT")
    if port:  # a real board (or a harness started by hand)
        yield FirmwareBoard(port, None)
        return
    out = tmp_path_factory.mktemp("firmware")
    fw = build_or_skip(out)
    fw.check()
    missing = missing_simavr_tools()
    if missing:
        unavailable(f"simavr harness cannot be built (Debian: {' '.join(SIMAVR_PACKAGES)}; absent: {' '.join(missing)})")
    harness = build_harness(out)
    proc = subprocess.Popen([str(harness), str(fw.elf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=out)
    board = FirmwareBoard("", fw, proc)
    try:
        board.port = _read_pty_path(proc, board.output)
        yield board
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def reset_board(port: str) -> None:
    """RESET the MCU and wait for its BOOT: empty ROUTE id memory, lid from the switch, patterns off."""
    host = Host(port)
    try:
        host.ser.reset_input_buffer()
        ack = host.command("RESET", timeout=2.0)
        assert ack.type == "ACK", ack
        host.wait_boot(timeout=5.0, start=host.frames.index(ack) + 1)  # not a BOOT still queued from before
    finally:
        host.close()


@pytest.fixture
def firmware_port(firmware_board: FirmwareBoard) -> str:
    """The firmware's port, the MCU freshly reset (no state left over from the previous test)."""
    if firmware_board.process is not None and firmware_board.process.poll() is not None:
        raise AssertionError(f"simavr exited ({firmware_board.process.returncode}): {firmware_board.output}")
    reset_board(firmware_board.port)
    return firmware_board.port
