"""Duration knobs for the fault-injection suite: short in CI, long on the bench (SMARTBIN_FAULT_LONG=1)."""

from __future__ import annotations

import os

LONG: bool = os.environ.get("SMARTBIN_FAULT_LONG", "") == "1"


def scaled(ci: float, long: float) -> float:
    """Return the ci value in CI and the long value in the bench run."""
    return long if LONG else ci
