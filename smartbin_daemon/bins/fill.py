"""Pure fill tracking for one compartment: distance filtering, fill %, levels, emptying and forecast.

Nothing here does I/O, sleeps or keeps a thread; every time is passed in. `mono` is
time.monotonic() seconds (filtering, confirmation delays); `ts` is wall-clock epoch seconds
(history and forecast, which must survive a restart).
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

SPEED_OF_SOUND_20C_M_S: float = 343.2
"""Speed of sound at 20 °C, which ultrasonic sensors assume when they convert echo time to mm."""


def speed_of_sound(celsius: float) -> float:
    """Speed of sound in dry air in m/s at `celsius`."""
    if celsius <= -273.15:
        raise ValueError(f"temperature {celsius} °C is at or below absolute zero")
    return 331.3 * math.sqrt(1.0 + celsius / 273.15)


def compensate(mm: float, celsius: float | None) -> float:
    """Correct a sensor distance (computed at 20 °C) for the air temperature; None leaves it unchanged."""
    if celsius is None:
        return mm
    return mm * speed_of_sound(celsius) / SPEED_OF_SOUND_20C_M_S


def fill_percent(distance_mm: float, empty_mm: float, full_mm: float) -> float:
    """Fill % from a distance: 0 at empty_mm, 100 at full_mm, linear, clamped to [0, 100], 0.1 steps."""
    if empty_mm <= full_mm:
        raise ValueError(f"empty_mm ({empty_mm}) must be greater than full_mm ({full_mm})")
    pct = (empty_mm - distance_mm) / (empty_mm - full_mm) * 100.0
    return round(min(100.0, max(0.0, pct)), 1)


# --------------------------------------------------------------------------- distance filter


@dataclass(frozen=True)
class FilterParams:
    """Tuning of DistanceFilter (defaults suit an HC-SR04 read every 0.5 s)."""

    min_mm: float = 30.0
    max_mm: float = 2000.0
    window: int = 15
    min_samples: int = 5
    max_age_s: float = 30.0
    jump_pct: float = 15.0
    confirm_s: float = 20.0
    settle_s: float = 5.0

    def __post_init__(self) -> None:
        """Reject parameter sets the filter cannot work with."""
        if not 0 <= self.min_mm < self.max_mm:
            raise ValueError(f"need 0 <= min_mm < max_mm, got {self.min_mm}, {self.max_mm}")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f"need 1 <= min_samples <= window, got {self.min_samples}, {self.window}")
        for name in ("max_age_s", "jump_pct", "confirm_s", "settle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


REJECT_REASONS: tuple[str, ...] = ("no_echo", "max_range", "near_zero", "lid_open", "settling")


class DistanceFilter:
    """Median filter with outlier rejection, lid gating and step confirmation for one compartment's ultrasonic sensor.

    Rejection order: lid open, then settling, then the reading itself (None / negative / NaN is
    no echo, >= max_mm max range, < min_mm near zero), so each sample is counted under one reason.
    """

    def __init__(self, params: FilterParams, span_mm: float) -> None:
        """Empty filter; span_mm = empty_mm - full_mm (> 0) scales jump_pct."""
        self.params = params
        self._span_mm = 0.0
        self.set_span(span_mm)
        self.rejected: collections.Counter[str] = collections.Counter()
        self._window: collections.deque[tuple[float, float]] = collections.deque(maxlen=params.window)
        self._accepted: float | None = None
        self.pending_since: float | None = None
        self._pending_side = 0
        self._lid_open = False
        self._settle_until: float | None = None

    @property
    def span_mm(self) -> float:
        """The current empty-full span in mm."""
        return self._span_mm

    def set_span(self, span_mm: float) -> None:
        """Use a new empty-full span (after a recalibration)."""
        if not span_mm > 0:
            raise ValueError(f"span_mm must be > 0, got {span_mm}")
        self._span_mm = float(span_mm)

    def lid(self, is_open: bool, mono: float) -> None:
        """Follow the lid: samples are rejected while it is open and for settle_s after it closes.

        Every open/closed transition clears the window and any pending jump (the accepted value
        stays): readings from before the lid opened must not decide about the bin after it
        closed, and a window frozen by the lid must not confirm a jump while nothing is measured.
        """
        is_open = bool(is_open)
        if is_open == self._lid_open:
            return
        self._lid_open = is_open
        self._window.clear()
        self._clear_pending()
        self._settle_until = None if is_open else mono + self.params.settle_s

    def add(self, mm: float | None, mono: float) -> bool:
        """Offer one reading; True if it entered the window, False if rejected (and counted)."""
        reason = self._reject_reason(mm, mono)
        if reason is not None:
            self.rejected[reason] += 1
            return False
        assert mm is not None
        self._window.append((mono, float(mm)))
        return True

    def _reject_reason(self, mm: float | None, mono: float) -> str | None:
        """Why this reading is rejected, or None if it is usable."""
        p = self.params
        if self._lid_open:
            return "lid_open"
        if self._settle_until is not None:
            if mono < self._settle_until:
                return "settling"
            self._settle_until = None
        if mm is None or math.isnan(mm) or mm < 0:
            return "no_echo"
        if mm >= p.max_mm:
            return "max_range"
        if mm < p.min_mm:
            return "near_zero"
        return None

    def candidate(self, mono: float) -> float | None:
        """Median of the window's samples no older than max_age_s; None if fewer than min_samples."""
        fresh = [mm for t, mm in self._window if mono - t <= self.params.max_age_s]
        if len(fresh) < self.params.min_samples:
            return None
        return float(statistics.median(fresh))

    def value(self, mono: float) -> float | None:
        """The accepted distance (None until one exists); each call advances step confirmation to `mono`.

        A change beyond jump_pct of the span is held as pending and accepted only after the
        candidate stayed beyond it, on the same side, for confirm_s: a hand in the beam or an
        object briefly on the rim must not show up as a fill change, a real emptying will. A
        stretch without any candidate (no usable readings for max_age_s) breaks the continuity.
        """
        cand = self.candidate(mono)
        if cand is None:
            self._clear_pending()
            return self._accepted
        if self._accepted is None:
            self._accepted = cand
            return cand
        diff = cand - self._accepted
        if abs(diff) <= self.params.jump_pct / 100.0 * self._span_mm:
            self._accepted = cand
            self._clear_pending()
            return cand
        side = 1 if diff > 0 else -1
        if self.pending_since is None or side != self._pending_side:
            self.pending_since = mono
            self._pending_side = side
        if mono - self.pending_since >= self.params.confirm_s:
            self._accepted = cand
            self._clear_pending()
        return self._accepted

    def _clear_pending(self) -> None:
        """Drop a pending jump."""
        self.pending_since = None
        self._pending_side = 0

    def reset(self) -> None:
        """Forget everything: window, pending jump, accepted value, lid state and counters."""
        self._window.clear()
        self._accepted = None
        self._clear_pending()
        self._lid_open = False
        self._settle_until = None
        self.rejected.clear()


# --------------------------------------------------------------------------- levels

LEVELS: tuple[str, ...] = ("ok", "almost_full", "full")


@dataclass(frozen=True)
class LevelThresholds:
    """Fill % at which a compartment becomes almost_full / full, and how far below it must fall to go back."""

    almost_full_pct: float = 80.0
    full_pct: float = 95.0
    hysteresis_pct: float = 5.0

    def __post_init__(self) -> None:
        """Reject inconsistent thresholds."""
        if not self.almost_full_pct < self.full_pct:
            raise ValueError(f"need almost_full_pct < full_pct, got {self.almost_full_pct}, {self.full_pct}")
        if self.hysteresis_pct < 0:
            raise ValueError("hysteresis_pct must be >= 0")


def next_level(current: str | None, pct: float, t: LevelThresholds) -> str:
    """The level for `pct` given the current one: rising on the thresholds, falling only below them minus hysteresis."""
    if current is not None and current not in LEVELS:
        raise ValueError(f"unknown level {current!r}; expected one of {LEVELS}")
    if pct >= t.full_pct:
        plain = "full"
    elif pct >= t.almost_full_pct:
        plain = "almost_full"
    else:
        plain = "ok"
    if current is None or LEVELS.index(plain) >= LEVELS.index(current):
        return plain
    if current == "full" and pct >= t.full_pct - t.hysteresis_pct:
        return "full"
    if pct >= t.almost_full_pct - t.hysteresis_pct:
        return "almost_full"
    return "ok"


# --------------------------------------------------------------------------- emptying


@dataclass(frozen=True)
class EmptyingParams:
    """When a drop in fill counts as an emptying."""

    near_empty_pct: float = 10.0
    min_drop_pct: float = 20.0
    confirm_s: float = 30.0


class EmptyingDetector:
    """Detects a sustained drop to near empty after the compartment had filled."""

    def __init__(self, params: EmptyingParams, peak_pct: float = 0.0) -> None:
        """Detector with the peak fill since the last emptying (restored from persistence)."""
        self.params = params
        self.peak_pct = float(peak_pct)
        self._near_empty_since: float | None = None

    def update(self, pct: float, mono: float) -> bool:
        """Feed the current fill %; True exactly once per emptying, after which the peak restarts at pct."""
        p = self.params
        if pct <= p.near_empty_pct and self.peak_pct >= p.min_drop_pct:
            if self._near_empty_since is None:
                self._near_empty_since = mono
            if mono - self._near_empty_since >= p.confirm_s:
                self.reset(pct)
                return True
            return False
        self._near_empty_since = None
        self.peak_pct = max(self.peak_pct, float(pct))
        return False

    def reset(self, pct: float = 0.0) -> None:
        """Start over (after a manual `emptied`): peak := pct, nothing pending."""
        self.peak_pct = float(pct)
        self._near_empty_since = None


# --------------------------------------------------------------------------- forecast

THEIL_SEN_MAX_POINTS = 200
MAX_FORECAST_S = 365 * 86400.0


@dataclass(frozen=True)
class Forecast:
    """Fill rate and when the compartment will be full."""

    rate_pct_per_h: float | None
    full_at: float | None
    seconds_to_full: float | None
    samples: int


def theil_sen(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the Theil–Sen line through (x, y) points.

    The slope is the median of all pairwise slopes (pairs with equal x skipped), so up to ~29 %
    gross outliers barely move it. Above 200 points an evenly spaced subsample (by x order) of
    200 is used, which keeps the O(n²) pair count bounded and the result deterministic.
    """
    pts = sorted((float(x), float(y)) for x, y in points)
    n = len(pts)
    if n > THEIL_SEN_MAX_POINTS:
        m = THEIL_SEN_MAX_POINTS
        pts = [pts[round(i * (n - 1) / (m - 1))] for i in range(m)]
    slopes = [
        (yj - yi) / (xj - xi)
        for i, (xi, yi) in enumerate(pts)
        for xj, yj in pts[i + 1:]
        if xj != xi
    ]
    if not slopes:
        raise ValueError("theil_sen needs at least 2 distinct x values")
    slope = float(statistics.median(slopes))
    intercept = float(statistics.median(y - slope * x for x, y in pts))
    return slope, intercept


def forecast(
    history: Sequence[tuple[float, float]],
    current_pct: float,
    now_ts: float,
    full_pct: float,
    min_samples: int = 3,
    min_span_s: float = 600.0,
) -> Forecast:
    """Robust fill rate from (ts, pct) history since the last emptying, and when it reaches full_pct.

    A compartment already at/above full_pct reports seconds_to_full 0 and full_at now_ts even
    without enough history (it is full now); the rate is still None then.
    """
    n = len(history)
    slope: float | None = None
    if n >= min_samples and n >= 2:
        ts = [p[0] for p in history]
        if max(ts) - min(ts) >= min_span_s:
            try:
                slope = theil_sen(history)[0]
            except ValueError:
                slope = None
    rate = None if slope is None else round(slope * 3600.0, 2)
    if current_pct >= full_pct:
        return Forecast(rate, now_ts, 0.0, n)
    if slope is None or slope <= 1e-9:
        return Forecast(rate, None, None, n)
    seconds = (full_pct - current_pct) / slope
    if seconds > MAX_FORECAST_S:
        return Forecast(rate, None, None, n)
    return Forecast(rate, now_ts + seconds, seconds, n)


def downsample(history: Sequence[tuple[float, float]], interval_s: float) -> list[tuple[float, float]]:
    """One point per interval_s bucket (floor(ts / interval_s)): (mean ts, median pct), sorted by ts."""
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    buckets: dict[int, list[tuple[float, float]]] = {}
    for ts, pct in history:
        buckets.setdefault(math.floor(ts / interval_s), []).append((float(ts), float(pct)))
    out = [
        (statistics.fmean(ts for ts, _ in pts), float(statistics.median(pct for _, pct in pts)))
        for pts in buckets.values()
    ]
    out.sort()
    return out
