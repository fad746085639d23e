"""Pure health scoring: active conditions with hysteresis, a 0–100 score and an ok|warn|critical status.

Conditions (code, severity, weight):

    cpu_high        warning   10   cpu % >= thresholds.cpu_pct
    ram_high        warning   15   ram % >= thresholds.ram_pct
    disk_high       warning   15   max(storage, /) disk % >= thresholds.disk_pct
    disk_critical   critical  35   max(storage, /) disk % >= thresholds.disk_critical_pct (98)
    temp_high       warning   15   max(cpu, gpu) °C >= thresholds.temp_c
    temp_critical   critical  35   max(cpu, gpu) °C >= thresholds.temp_c + temp_critical_margin_c (+10)
    throttled       warning   20   Pi firmware limits performance now (throttled, ARM capped or soft temp limit)
    under_voltage   critical  40   Pi under-voltage now

Hysteresis: a condition is raised when its value reaches the limit and clears only when the
value falls below `limit - hysteresis`: `hysteresis_pct` percentage points for the % metrics,
`temp_hysteresis_c` degrees for temperatures. Flags (throttled, under-voltage) follow the firmware
bit directly. A metric that cannot be read this time (None) keeps its condition as it was, so a
flaky sensor neither raises nor clears anything.

Score = clamp(100 - sum(weights of active conditions), 0, 100).
Status = critical if any active condition is critical, warn if any is active, else ok.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from ..config import HealthThresholds

Status = Literal["ok", "warn", "critical"]
Severity = Literal["warning", "critical"]

STATUS_RANK: dict[str, int] = {"ok": 0, "warn": 1, "critical": 2}
"""Order of statuses, for "better" / "worse" comparisons."""


@dataclass(frozen=True)
class Metrics:
    """The values the score depends on, taken from one snapshot (None: not readable this time)."""

    cpu_pct: float | None = None
    ram_pct: float | None = None
    disk_pct: float | None = None
    disk_path: str | None = None
    temp_c: float | None = None
    throttled: bool | None = None
    under_voltage: bool | None = None


@dataclass(frozen=True)
class Rule:
    """One condition: which metric, its limit and hysteresis (None for flags), severity and weight."""

    code: str
    severity: Severity
    weight: int
    metric: str  # attribute of Metrics
    limit: float | None
    hysteresis: float
    label: str
    unit: str

    def value(self, metrics: Metrics) -> float | bool | None:
        """This rule's value in `metrics`."""
        return getattr(metrics, self.metric)

    def active(self, value: float | bool | None, was_active: bool) -> bool:
        """Whether the condition holds, given its previous state (hysteresis; unknown keeps the state)."""
        if value is None:
            return was_active
        if self.limit is None:
            return bool(value)
        if value >= self.limit:
            return True
        return was_active and value >= self.limit - self.hysteresis

    def raise_message(self, value: float | bool | None, metrics: Metrics) -> str:
        """Human text for an active condition."""
        if self.limit is None:
            return f"{self.label} now"
        where = f" on {metrics.disk_path}" if self.metric == "disk_pct" and metrics.disk_path else ""
        if value is None:
            return f"{self.label}{where} at or above {self.limit:g} {self.unit} (no current reading)"
        return f"{self.label}{where} {float(value):.1f} {self.unit} >= {self.limit:g} {self.unit}"

    def clear_message(self, value: float | bool | None, metrics: Metrics) -> str:
        """Human text for a condition that cleared."""
        if self.limit is None:
            return f"{self.label} no longer"
        where = f" on {metrics.disk_path}" if self.metric == "disk_pct" and metrics.disk_path else ""
        shown = "unknown" if value is None else f"{float(value):.1f} {self.unit}"
        return f"{self.label}{where} back to {shown} (below {self.limit - self.hysteresis:g} {self.unit})"


def rules(th: HealthThresholds) -> tuple[Rule, ...]:
    """The conditions for these thresholds, in reporting order."""
    pct, deg = th.hysteresis_pct, th.temp_hysteresis_c
    return (
        Rule("under_voltage", "critical", 40, "under_voltage", None, 0.0, "Raspberry Pi under-voltage", ""),
        Rule(
            "temp_critical",
            "critical",
            35,
            "temp_c",
            th.temp_c + th.temp_critical_margin_c,
            deg,
            "temperature",
            "°C",
        ),
        Rule("disk_critical", "critical", 35, "disk_pct", th.disk_critical_pct, pct, "disk usage", "%"),
        Rule("throttled", "warning", 20, "throttled", None, 0.0, "Raspberry Pi throttled", ""),
        Rule("temp_high", "warning", 15, "temp_c", th.temp_c, deg, "temperature", "°C"),
        Rule("disk_high", "warning", 15, "disk_pct", th.disk_pct, pct, "disk usage", "%"),
        Rule("ram_high", "warning", 15, "ram_pct", th.ram_pct, pct, "memory usage", "%"),
        Rule("cpu_high", "warning", 10, "cpu_pct", th.cpu_pct, pct, "CPU usage", "%"),
    )


@dataclass(frozen=True)
class Condition:
    """An active condition."""

    code: str
    severity: Severity
    weight: int
    value: float | bool | None
    limit: float | None
    message: str


@dataclass(frozen=True)
class Assessment:
    """Result of one evaluation."""

    conditions: tuple[Condition, ...]
    score: int
    status: Status

    @property
    def codes(self) -> frozenset[str]:
        """Codes of the active conditions."""
        return frozenset(c.code for c in self.conditions)

    def by_code(self) -> dict[str, Condition]:
        """Active conditions keyed by code."""
        return {c.code: c for c in self.conditions}


OK = Assessment(conditions=(), score=100, status="ok")
"""The assumed state before the first evaluation."""


def score_of(conditions: Collection[Condition]) -> int:
    """100 minus the weights of the active conditions, clamped to 0..100."""
    return max(0, min(100, 100 - sum(c.weight for c in conditions)))


def status_of(conditions: Collection[Condition]) -> Status:
    """critical if any condition is critical, warn if any is active, else ok."""
    if any(c.severity == "critical" for c in conditions):
        return "critical"
    return "warn" if conditions else "ok"


def evaluate(metrics: Metrics, thresholds: HealthThresholds, previous: Collection[str] = ()) -> Assessment:
    """Active conditions (with hysteresis against `previous` codes), score and status for one snapshot."""
    prev = frozenset(previous)
    active: list[Condition] = []
    for rule in rules(thresholds):
        value = rule.value(metrics)
        if rule.active(value, rule.code in prev):
            active.append(
                Condition(
                    rule.code,
                    rule.severity,
                    rule.weight,
                    value,
                    rule.limit,
                    rule.raise_message(value, metrics),
                )
            )
    return Assessment(conditions=tuple(active), score=score_of(active), status=status_of(active))


def transitions(previous: Assessment, current: Assessment) -> tuple[list[Condition], list[Condition]]:
    """(newly raised, cleared) conditions between two assessments; cleared ones as they were when active."""
    raised = [c for c in current.conditions if c.code not in previous.codes]
    cleared = [c for c in previous.conditions if c.code not in current.codes]
    return raised, cleared


def metrics_from_state(state: dict[str, object]) -> Metrics:
    """Pick the scored values out of a health state dict (the layout built by the monitor)."""
    cpu = _dict(state.get("cpu"))
    memory = _dict(state.get("memory"))
    disk = _dict(state.get("disk"))
    temps = _dict(state.get("temperatures"))
    pi = state.get("pi")

    disk_pct: float | None = None
    disk_path: str | None = None
    for key in ("storage", "root"):
        entry = _dict(disk.get(key))
        percent = entry.get("percent")
        if isinstance(percent, (int, float)) and (disk_pct is None or percent > disk_pct):
            disk_pct, disk_path = float(percent), str(entry.get("path"))

    readings = [t for t in (temps.get("cpu_c"), temps.get("gpu_c")) if isinstance(t, (int, float))]
    throttled = under_voltage = None
    if isinstance(pi, dict):
        now = _dict(pi.get("now"))
        throttled = bool(now.get("throttled") or now.get("arm_freq_capped") or now.get("soft_temp_limit"))
        under_voltage = bool(now.get("under_voltage"))
    return Metrics(
        cpu_pct=_num(cpu.get("percent")),
        ram_pct=_num(memory.get("percent")),
        disk_pct=disk_pct,
        disk_path=disk_path,
        temp_c=float(max(readings)) if readings else None,
        throttled=throttled,
        under_voltage=under_voltage,
    )


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
