"""Run the daemon with a steppable wall clock: `python -m tests.faults.clockshift --offset-file F -- run --config X`.

Why a launcher: the clock tests need a bin whose wall clock starts at 1970 (a Pi without RTC) or at a
stale time and is then stepped by NTP, backwards and forwards. The wall clock is the one thing in these
tests that is not ours: this machine's clock must not be stepped (and cannot be, in CI), and
libfaketime breaks Python 3.11's time.sleep. So this launcher replaces only `time.time` and
`time.time_ns` in the daemon's own process with the real time plus an offset (seconds, a float) read
from the file F, then calls the daemon's real entry point (`smartbin_daemon.__main__.main`).
`time.monotonic`, sleeps, waits, timeouts, sockets and the kernel stay real, exactly as on a bin whose
wall clock is stepped.

The offset is re-read every 50 ms by a small thread, and at once on SIGUSR2. After a new value is in
effect the launcher writes it to `F.applied`, so a test knows when the step has happened
(`set_offset()` + `wait_applied()`). A missing or unreadable file keeps the previous offset (0 at start).

It must patch before the daemon is imported: `Event.ts` takes `time.time` as its default factory at
import time. Not shifted (they read the C clock directly): `datetime.now()`, `time.localtime()`/
`gmtime()`/`strftime()` without an argument, file times. The daemon stamps events, logs and signed
request checks with `time.time()`, which is what the tests step.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

POLL_S = 0.05

_real_time = time.time
_real_time_ns = time.time_ns


class _Shift:
    """The current offset, read from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self.offset_ns = 0
        self._lock = threading.Lock()

    def time(self) -> float:
        """Shifted time.time()."""
        return _real_time() + self.offset

    def time_ns(self) -> int:
        """Shifted time.time_ns()."""
        return _real_time_ns() + self.offset_ns

    def reload(self) -> None:
        """Read the offset file; apply and acknowledge a new value."""
        try:
            value = float(self.path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return
        with self._lock:
            if value == self.offset and applied_path(self.path).exists():
                return
            self.offset_ns = int(round(value * 1e9))
            self.offset = value
            tmp = self.path.with_name(self.path.name + ".applied.tmp")
            tmp.write_text(repr(value), encoding="ascii")
            os.replace(tmp, applied_path(self.path))

    def watch(self, stop: threading.Event) -> None:
        """Re-read the file every POLL_S until stopped."""
        while not stop.wait(POLL_S):
            self.reload()


def applied_path(offset_file: Path) -> Path:
    """Where the launcher acknowledges the offset it applied."""
    return offset_file.with_name(offset_file.name + ".applied")


def set_offset(offset_file: Path, offset_s: float) -> None:
    """Test side: ask for a new offset (atomically; picked up within POLL_S)."""
    tmp = offset_file.with_name(offset_file.name + ".tmp")
    tmp.write_text(repr(float(offset_s)), encoding="ascii")
    os.replace(tmp, offset_file)


def wait_applied(offset_file: Path, offset_s: float, timeout_s: float = 5.0) -> None:
    """Test side: wait until the daemon runs with this offset."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if float(applied_path(offset_file).read_text(encoding="ascii")) == float(offset_s):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the daemon did not apply the clock offset {offset_s} within {timeout_s}s")


def command(offset_file: Path, config: Path) -> list[str]:
    """Test side: the argv that runs the daemon on `config` with a shifted clock."""
    return [sys.executable, "-m", "tests.faults.clockshift", "--offset-file", str(offset_file), "--",
            "run", "--config", str(config)]


def main(argv: Sequence[str] | None = None) -> int:
    """Patch the wall clock, then hand over to the daemon's CLI with the arguments after `--`."""
    parser = argparse.ArgumentParser(prog="clockshift", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--offset-file", required=True, type=Path)
    parser.add_argument("daemon_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    daemon_args = list(args.daemon_args)
    if daemon_args[:1] == ["--"]:
        daemon_args = daemon_args[1:]
    shift = _Shift(args.offset_file)
    shift.reload()
    time.time = shift.time
    time.time_ns = shift.time_ns
    stop = threading.Event()
    threading.Thread(target=shift.watch, args=(stop,), name="clockshift", daemon=True).start()

    def on_usr2(signum: int, frame: FrameType | None) -> None:
        shift.reload()

    signal.signal(signal.SIGUSR2, on_usr2)
    from smartbin_daemon.__main__ import main as daemon_main  # only now: it must see the shifted clock

    try:
        return daemon_main(daemon_args)
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
