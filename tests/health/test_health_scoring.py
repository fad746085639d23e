"""The pure scoring: thresholds, hysteresis, score bounds and status transitions."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from smartbin_daemon.config import HealthThresholds
from smartbin_daemon.health.scoring import (
    OK,
    Metrics,
    evaluate,
    metrics_from_state,
    rules,
    transitions,
)

TH = HealthThresholds()  # cpu 80, ram 90, disk 90 (critical 98), temp 80 (critical 90), hysteresis 5 / 5 °C

CALM = Metrics(
    cpu_pct=10,
    ram_pct=30,
    disk_pct=40,
    disk_path="/var/lib/smartbin",
    temp_c=45,
    throttled=False,
    under_voltage=False,
)


def run(values: list[Metrics], th: HealthThresholds = TH) -> list[frozenset[str]]:
    """Feed snapshots in order, carrying the active set; the active codes after each."""
    previous: frozenset[str] = frozenset()
    out = []
    for metrics in values:
        previous = evaluate(metrics, th, previous).codes
        out.append(previous)
    return out


@pytest.mark.parametrize(
    ("field", "below", "at", "code"),
    [
        ("cpu_pct", 79.9, 80.0, "cpu_high"),
        ("ram_pct", 89.9, 90.0, "ram_high"),
        ("disk_pct", 89.9, 90.0, "disk_high"),
        ("temp_c", 79.9, 80.0, "temp_high"),
    ],
)
def test_each_limit_trips_at_the_threshold_and_not_below(field, below, at, code):
    assert evaluate(replace(CALM, **{field: below}), TH).codes == frozenset()
    result = evaluate(replace(CALM, **{field: at}), TH)
    assert result.codes == {code}
    assert result.status == "warn"


def test_critical_levels():
    assert evaluate(Metrics(disk_pct=98.0), TH).codes == {"disk_high", "disk_critical"}
    assert evaluate(Metrics(temp_c=90.0), TH).codes == {"temp_high", "temp_critical"}
    assert evaluate(Metrics(temp_c=89.9), TH).codes == {"temp_high"}
    uv = evaluate(Metrics(under_voltage=True), TH)
    assert uv.codes == {"under_voltage"} and uv.status == "critical"


def test_pi_throttling_is_a_warning():
    result = evaluate(Metrics(throttled=True, under_voltage=False), TH)
    assert result.codes == {"throttled"}
    assert result.status == "warn"
    assert result.score == 80


def test_configured_thresholds_are_used():
    th = HealthThresholds(cpu_pct=50, hysteresis_pct=2)
    assert evaluate(Metrics(cpu_pct=55), th).codes == {"cpu_high"}
    assert evaluate(Metrics(cpu_pct=55), TH).codes == frozenset()


def test_value_oscillating_just_under_the_limit_never_trips():
    assert run([Metrics(cpu_pct=v) for v in (79.9, 79.0, 79.9, 78.5, 79.99)]) == [frozenset()] * 5


def test_hysteresis_keeps_a_condition_until_it_falls_below_limit_minus_hysteresis():
    codes = run([Metrics(cpu_pct=v) for v in (80, 79, 77, 80, 76, 75.0, 74.9, 79, 80)])
    on, off = frozenset({"cpu_high"}), frozenset()
    assert codes == [on, on, on, on, on, on, off, off, on]


def test_temperature_hysteresis_is_in_degrees():
    th = HealthThresholds(temp_c=70, temp_hysteresis_c=3)
    codes = run([Metrics(temp_c=v) for v in (70.5, 67.5, 67.0, 66.9)], th)
    assert codes == [{"temp_high"}, {"temp_high"}, {"temp_high"}, frozenset()]


def test_critical_level_has_its_own_hysteresis():
    codes = run([Metrics(temp_c=v) for v in (91, 86, 84.9, 74.9)])
    assert codes == [
        {"temp_high", "temp_critical"},
        {"temp_high", "temp_critical"},  # 86 >= 90 - 5
        {"temp_high"},
        frozenset(),
    ]


def test_unknown_reading_keeps_the_previous_state():
    codes = run(
        [
            Metrics(temp_c=85, throttled=True),
            Metrics(temp_c=None, throttled=None),
            Metrics(temp_c=60, throttled=False),
        ]
    )
    assert codes == [{"temp_high", "throttled"}, {"temp_high", "throttled"}, frozenset()]
    assert run([Metrics()]) == [frozenset()]


def test_score_formula():
    assert evaluate(CALM, TH).score == 100
    assert evaluate(Metrics(cpu_pct=85), TH).score == 90
    assert evaluate(Metrics(ram_pct=95), TH).score == 85
    assert evaluate(Metrics(under_voltage=True), TH).score == 60
    assert evaluate(Metrics(disk_pct=99), TH).score == 50  # disk_high 15 + disk_critical 35
    everything = Metrics(
        cpu_pct=100, ram_pct=100, disk_pct=100, temp_c=120, throttled=True, under_voltage=True
    )
    result = evaluate(everything, TH)
    assert result.score == 0
    assert result.codes == {r.code for r in rules(TH)}


@given(
    cpu=st.one_of(st.none(), st.floats(0, 100)),
    ram=st.one_of(st.none(), st.floats(0, 100)),
    disk=st.one_of(st.none(), st.floats(0, 100)),
    temp=st.one_of(st.none(), st.floats(-40, 150)),
    throttled=st.one_of(st.none(), st.booleans()),
    under_voltage=st.one_of(st.none(), st.booleans()),
    previous=st.sets(st.sampled_from([r.code for r in rules(TH)])),
)
def test_score_is_bounded_and_status_matches_conditions(
    cpu, ram, disk, temp, throttled, under_voltage, previous
):
    metrics = Metrics(
        cpu_pct=cpu, ram_pct=ram, disk_pct=disk, temp_c=temp, throttled=throttled, under_voltage=under_voltage
    )

    result = evaluate(metrics, TH, previous)

    assert 0 <= result.score <= 100
    assert result.score == max(0, 100 - sum(c.weight for c in result.conditions))
    severities = {c.severity for c in result.conditions}
    expected = "critical" if "critical" in severities else ("warn" if severities else "ok")
    assert result.status == expected
    assert evaluate(metrics, TH, previous) == result  # deterministic


def test_status_transitions_through_warn_and_critical_and_back():
    steps = [
        CALM,
        replace(CALM, cpu_pct=90),
        replace(CALM, cpu_pct=90, under_voltage=True),
        replace(CALM, cpu_pct=90),
        CALM,
    ]
    previous = OK
    seen = []
    for metrics in steps:
        current = evaluate(metrics, TH, previous.codes)
        raised, cleared = transitions(previous, current)
        seen.append((current.status, [c.code for c in raised], [c.code for c in cleared]))
        previous = current
    assert seen == [
        ("ok", [], []),
        ("warn", ["cpu_high"], []),
        ("critical", ["under_voltage"], []),
        ("warn", [], ["under_voltage"]),
        ("ok", [], ["cpu_high"]),
    ]


def test_messages_name_value_limit_and_disk():
    result = evaluate(Metrics(disk_pct=93.25, disk_path="/var/lib/smartbin"), TH).by_code()
    assert result["disk_high"].message == "disk usage on /var/lib/smartbin 93.2 % >= 90 %"
    disk_rule = {r.code: r for r in rules(TH)}["disk_high"]
    assert (
        disk_rule.clear_message(80.0, Metrics(disk_path="/")) == "disk usage on / back to 80.0 % (below 85 %)"
    )


def test_metrics_from_state_takes_the_worst_disk_and_hottest_of_cpu_and_gpu():
    state = {
        "cpu": {"percent": 12.5},
        "memory": {"percent": 40.0},
        "disk": {"storage": {"path": "/data", "percent": 50.0}, "root": {"path": "/", "percent": 91.0}},
        "temperatures": {"cpu_c": 48.5, "gpu_c": 62.0, "zones": [{"type": "PMIC-Die", "temp_c": 100.0}]},
        "pi": {
            "now": {
                "under_voltage": False,
                "arm_freq_capped": True,
                "throttled": False,
                "soft_temp_limit": False,
            }
        },
        "gpu": {"present": False},
    }

    metrics = metrics_from_state(state)

    assert metrics == Metrics(
        cpu_pct=12.5,
        ram_pct=40.0,
        disk_pct=91.0,
        disk_path="/",
        temp_c=62.0,
        throttled=True,
        under_voltage=False,
    )
    assert metrics_from_state({"pi": None, "disk": {"storage": None, "root": None}}) == Metrics()


def test_thresholds_reject_hysteresis_that_could_never_clear():
    with pytest.raises(ValidationError, match="hysteresis_pct"):
        HealthThresholds(cpu_pct=4, hysteresis_pct=5)
    with pytest.raises(ValidationError, match="temp_hysteresis_c"):
        HealthThresholds(temp_c=5, temp_hysteresis_c=5)
    with pytest.raises(ValidationError, match="disk_critical_pct"):
        HealthThresholds(disk_pct=99)
