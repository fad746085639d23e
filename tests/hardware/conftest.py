"""Fixtures of the hardware tests: the reference firmware under simavr (see firmware.py)."""

from __future__ import annotations

import time
from collections.abc import Generator

import pytest

from .firmware import BUILT, STATS, firmware_board, firmware_port

__all__ = ["firmware_board", "firmware_port"]


def _on_firmware(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return "firmware_board" in getattr(item, "fixturenames", ()) or (
        callspec is not None and "firmware" in callspec.params.values())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Time the tests that run against the firmware."""
    t0 = time.monotonic()
    yield
    if _on_firmware(item):
        STATS["seconds"] += time.monotonic() - t0
        STATS["tests"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The firmware's size against the Uno's limits and the time of the tests run against it."""
    if not BUILT and not STATS["tests"]:
        return
    terminalreporter.section("firmware (Arduino Uno, simavr)")
    if BUILT:
        terminalreporter.write_line(BUILT[0].report())
    if STATS["tests"]:
        terminalreporter.write_line(f"{int(STATS['tests'])} tests against the firmware in {STATS['seconds']:.1f} s")
