"""Wall-clock formatting. Intervals and timeouts use time.monotonic(); wall time is only for stamps."""

from __future__ import annotations

import datetime as dt


def iso_utc(ts: float) -> str:
    """Wall time as ISO-8601 UTC with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
