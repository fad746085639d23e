"""The wall clock's trustworthiness: unset (before a plausible date) or not NTP-synchronised for too long.

Why it matters here: event timestamps, the HMAC signatures' allowed skew and the fill forecast all use wall time;
a Pi without an RTC boots with a stale clock until NTP answers. Pure logic: the monitor feeds it readings and
emits the alerts it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..runtime.bus import Alert

SOURCE = "health"
CLOCK_UNSET = "clock_unset"
NTP_UNSYNCHRONIZED = "ntp_unsynchronized"


@dataclass
class ClockWatch:
    """Tracks how long NTP has been unsynchronised and which clock alerts are active (committed after emission)."""

    min_year: int
    ntp_alert_after_s: float
    active: set[str] = field(default_factory=set)
    _unsynced_since: float | None = None

    def assess(self, now_mono: float, wall_ts: float, synced: bool | None, how: str) -> tuple[dict[str, Any], set[str]]:
        """The `clock` section of the health state and the alert codes that should be active now."""
        wall = datetime.fromtimestamp(wall_ts, timezone.utc)
        valid = wall.year >= self.min_year
        if synced is False:
            if self._unsynced_since is None:
                self._unsynced_since = now_mono
        else:
            self._unsynced_since = None
        unsynced_s = None if self._unsynced_since is None else round(now_mono - self._unsynced_since, 1)
        wanted = set() if valid else {CLOCK_UNSET}
        if unsynced_s is not None and self.ntp_alert_after_s > 0 and unsynced_s >= self.ntp_alert_after_s:
            wanted.add(NTP_UNSYNCHRONIZED)
        section = {
            "wall_time": wall.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "valid": valid,
            "ntp_synchronized": synced,
            "ntp_source": how,
            "unsynchronized_for_s": unsynced_s,
        }
        return section, wanted

    def alerts(self, wanted: set[str], section: dict[str, Any]) -> list[Alert]:
        """Alerts for the codes that became active or cleared (call `commit(wanted)` once they were emitted)."""
        out: list[Alert] = []
        for code in sorted(self.active - wanted):
            message = ("wall clock set again: " + section["wall_time"] if code == CLOCK_UNSET
                       else "NTP synchronised again")
            out.append(Alert(SOURCE, code, "info", message, active=False))
        for code in sorted(wanted - self.active):
            if code == CLOCK_UNSET:
                message = (f"wall clock unset: {section['wall_time']} is before {self.min_year}; timestamps and "
                           "signed requests are wrong until NTP sets it")
                out.append(Alert(SOURCE, code, "critical", message, active=True))
            else:
                message = (f"NTP not synchronised for {section['unsynchronized_for_s']:.0f} s "
                           f"(alert after {self.ntp_alert_after_s:g} s)")
                out.append(Alert(SOURCE, code, "warning", message, active=True))
        return out

    def commit(self, wanted: set[str]) -> None:
        """Record the alerts as emitted."""
        self.active = set(wanted)
