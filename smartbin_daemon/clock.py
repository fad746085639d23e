"""Wall-clock formatting. Intervals and timeouts use time.monotonic(); wall time is only for stamps."""

from __future__ import annotations

import datetime as dt

CLOCK_SANE_AFTER = 1_600_000_000.0
"""Wall times before Sept 2020 mean the clock is not set yet (a Pi without RTC before NTP)."""


def iso_utc(ts: float) -> str:
    """Wall time as ISO-8601 UTC with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
