"""Wall-clock stamps. Intervals and timeouts use time.monotonic(); wall time is only for stamps."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

CLOCK_SANE_AFTER = 1_600_000_000.0
"""Wall times before Sept 2020 mean the clock is not set yet (a Pi without RTC before NTP)."""

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def iso_utc(ts: float) -> str:
    """Wall time as ISO-8601 UTC with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock_is_set(ts: float) -> bool:
    """Whether a wall time can come from a set clock (not a Pi's 1970 before NTP)."""
    return ts >= CLOCK_SANE_AFTER


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """The kernel's id of this boot (monotonic times are comparable only within one), or None off Linux."""
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip() or None
    except OSError:
        return None
