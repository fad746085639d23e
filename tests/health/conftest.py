"""Shared fixtures for the health tests: the recorded platform trees and a vcgencmd replayer."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data" / "health"


@pytest.fixture
def data_dir() -> Path:
    """Root of the recorded platform outputs."""
    return DATA


@pytest.fixture
def fake_command(tmp_path: Path) -> Callable[..., str]:
    """Write an executable script that replays a recorded output (or fails/hangs) and return its path."""
    counter = iter(range(1000))

    def make(
        output_file: Path | None = None, *, exit_code: int = 0, sleep_s: float = 0.0, stdout: str = ""
    ) -> str:
        script = tmp_path / f"vcgencmd_{next(counter)}"
        lines = ["#!/bin/sh", '[ "$1" = get_throttled ] || { echo "usage: $0 get_throttled" >&2; exit 2; }']
        if sleep_s:
            lines.append(f"sleep {sleep_s}")
        if output_file is not None:
            lines.append(f"cat '{output_file}'")
        if stdout:
            lines.append(f"printf '%s\\n' '{stdout}'")
        if exit_code:
            lines.append(f"echo 'VCHI initialization failed' >&2; exit {exit_code}")
        script.write_text("\n".join(lines) + "\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return str(script)

    return make
