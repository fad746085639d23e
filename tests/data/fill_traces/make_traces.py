"""Generate the synthetic ultrasonic fill traces in this directory (run once; the CSVs are committed).

    python tests/data/fill_traces/make_traces.py

Deterministic: every trace has its own seeded random.Random, so re-running reproduces the files
byte for byte. See README.md for what the traces model and what they do not.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

EMPTY_MM = 700.0  # sensor to the bin floor
FULL_MM = 120.0  # sensor to the "full" line
DT_S = 0.5
JITTER_MM = 3.0
HAND_MM = 150.0  # a hand held ~15 cm under the sensor
LID_MM = 80.0  # with the lid open the sensor sees the lid / ceiling
MAX_RANGE_MM = 4000  # what the driver reports for an echo timeout at max range
SETTLE_WOBBLE_S = 3.0  # after the lid closes, bag and lid still move for a moment


@dataclass
class Spec:
    """One trace: truth as (t_s, fill %) breakpoints (a repeated t is a step) plus injected events."""

    name: str
    seed: int
    duration_s: float
    description: str
    truth: list[tuple[float, float]]
    hands: list[tuple[float, float]] = field(default_factory=list)
    lids: list[tuple[float, float]] = field(default_factory=list)
    bursts: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, no_echo|max_range|near_zero)
    p_no_echo: float = 0.02
    p_max_range: float = 0.01
    p_near_zero: float = 0.01


SPECS = [
    Spec(
        name="slow_fill_hand",
        seed=101,
        duration_s=1200.0,
        description="slow fill 10 -> 40 % over 20 min; hands in the beam for 4 s, 12 s and 17 s",
        truth=[(0.0, 10.0), (1200.0, 40.0)],
        hands=[(300.0, 304.0), (700.0, 712.0), (1000.0, 1017.0)],
    ),
    Spec(
        name="lid_deposit",
        seed=202,
        duration_s=600.0,
        description="lid opened 20 s and a load dropped in (+8 %, within jump_pct); lid opened 20 s with no change; a 5 s hand",
        truth=[(0.0, 45.0), (210.0, 46.0), (210.0, 54.0), (600.0, 56.0)],
        hands=[(320.0, 325.0)],
        lids=[(200.0, 220.0), (420.0, 440.0)],
    ),
    Spec(
        name="emptying",
        seed=303,
        duration_s=480.0,
        description="compartment at ~88 %, lid opened 20 s and the bag taken out (-> 1 %); a 6 s hand; a 3 s near-zero burst",
        truth=[(0.0, 88.0), (250.0, 89.0), (250.0, 1.0), (480.0, 1.0)],
        hands=[(330.0, 336.0)],
        lids=[(240.0, 260.0)],
        bursts=[(380.0, 383.0, "near_zero")],
    ),
    Spec(
        name="noisy_bursts",
        seed=404,
        duration_s=600.0,
        description="bad sensor day at ~60 %: 5 % no echo, 3 % max range, 2 % near zero, bursts of each; a 15 s hand",
        truth=[(0.0, 60.0), (600.0, 63.0)],
        hands=[(400.0, 415.0)],
        bursts=[(100.0, 106.0, "no_echo"), (200.0, 203.0, "max_range"), (300.0, 302.0, "near_zero")],
        p_no_echo=0.05,
        p_max_range=0.03,
        p_near_zero=0.02,
    ),
]


def true_fill(truth: list[tuple[float, float]], t: float) -> float:
    """Piecewise-linear truth at t; at a step (repeated t) the value after the step."""
    value = truth[0][1]
    for (t0, f0), (t1, f1) in zip(truth, truth[1:]):
        if t1 == t0:
            if t >= t1:
                value = f1
            continue
        if t0 <= t <= t1:
            value = f0 + (f1 - f0) * (t - t0) / (t1 - t0)
        elif t > t1:
            value = f1
    return value


def fill_to_mm(pct: float) -> float:
    """Distance the sensor would see at a fill %."""
    return EMPTY_MM - pct / 100.0 * (EMPTY_MM - FULL_MM)


def _inside(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= t < b for a, b in spans)


def _artefact(kind: str, rng: random.Random) -> str:
    if kind == "no_echo":
        return ""
    if kind == "max_range":
        return str(MAX_RANGE_MM)
    return str(rng.randint(5, 20))


def rows(spec: Spec) -> list[str]:
    """The CSV lines (without header) of one trace."""
    rng = random.Random(spec.seed)
    out = []
    for i in range(round(spec.duration_s / DT_S)):
        t = i * DT_S
        true_mm = fill_to_mm(true_fill(spec.truth, t))
        lid = "open" if _inside(t, spec.lids) else "closed"
        burst = next((k for a, b, k in spec.bursts if a <= t < b), None)
        if lid == "open":
            mm = "" if rng.random() < 0.3 else str(round(LID_MM + rng.uniform(-JITTER_MM, JITTER_MM)))
        elif any(b <= t < b + SETTLE_WOBBLE_S for _, b in spec.lids):
            mm = str(round(true_mm + rng.uniform(-60.0, 60.0)))
        elif burst is not None:
            mm = _artefact(burst, rng)
        elif _inside(t, spec.hands):
            mm = str(round(HAND_MM + rng.uniform(-8.0, 8.0)))
        else:
            r = rng.random()
            if r < spec.p_no_echo:
                mm = _artefact("no_echo", rng)
            elif r < spec.p_no_echo + spec.p_max_range:
                mm = _artefact("max_range", rng)
            elif r < spec.p_no_echo + spec.p_max_range + spec.p_near_zero:
                mm = _artefact("near_zero", rng)
            else:
                mm = str(round(true_mm + rng.uniform(-JITTER_MM, JITTER_MM)))
        out.append(f"{t:.1f},{mm},{lid}")
    return out


def main() -> None:
    """Write every trace CSV and traces.json (geometry, truth and events for the tests)."""
    manifest: dict[str, object] = {
        "empty_mm": EMPTY_MM,
        "full_mm": FULL_MM,
        "dt_s": DT_S,
        "traces": {},
    }
    traces: dict[str, object] = {}
    for spec in SPECS:
        path = HERE / f"{spec.name}.csv"
        path.write_text("t_s,mm,lid\n" + "\n".join(rows(spec)) + "\n", encoding="ascii")
        traces[spec.name] = {
            "file": path.name,
            "description": spec.description,
            "truth": [list(p) for p in spec.truth],
            "hands": [list(h) for h in spec.hands],
            "lids": [list(lid) for lid in spec.lids],
            "bursts": [list(b) for b in spec.bursts],
        }
    manifest["traces"] = traces
    (HERE / "traces.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="ascii")


if __name__ == "__main__":
    main()
