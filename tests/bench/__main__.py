"""The whole bench in one command: `python -m tests.bench [--quick] [--only a,b] [--out FILE]`.

Runs, in this order, each part's `bench()` and writes every figure to one JSON file (bench-results.json by
default), then prints a summary with each target and whether it was met:

- `pipeline`: detector pipeline vs a bare onnxruntime `session.run` loop on prepared blobs, side by side
  (target >= 0.95), and the onnxruntime backend vs ultralytics' predict on the same frames (tests/bench/pipeline.py);
- `idle`: daemon CPU at camera 15 fps with no item (target <= 1.5 %), RSS with the ONNX and a .pt model, libtorch
  not mapped with the ONNX model (tests/bench/idle.py);
- `system`: item latency, start-up (ready to detect <= 2 s), MQTT round trip, outbox replay of 10,000 events
  (tests/bench/system.py);
- `history`: the history queries over 90 days of fill, health and item history (p95 <= 200 ms each), and their
  round trip through a real daemon (tests/bench/history.py);
- `fuzz`: the hypothesis properties (requests, auth, config, serial frames) at 10,000 cases each;
- `faults`: the fault-injection suite (tests/faults) in its long variant (SMARTBIN_FAULT_LONG=1).

The 30-minute soak is its own command (`python -m tests.bench.soak --minutes 30`) because of its length; it
judges the RSS cap (<= 200 MB at the 10-minute mark, shipped ONNX model).
Every `target_met` in a part's figures, nested ones included, is listed at the end as MET or MISSED.
`--quick` runs every part at smoke size (what CI's smoke tests do) to check the bench itself works.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PARTS = ("pipeline", "idle", "system", "history", "fuzz", "faults")
FUZZ_TARGETS = ["tests/test_fuzz.py", "tests/hardware/test_protocol.py"]
FUZZ_SELECT = "fuzz or every_request or any_"
FUZZ_CASES = 10_000
_STATS = re.compile(r"^(tests/\S+::\S+):\s*$|(\d+) passing, (\d+) failing, and (\d+) invalid", re.M)
_SUMMARY = re.compile(r"(\d+) (passed|failed|error|errors|skipped|xfailed|xpassed)")


def _pytest(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run pytest in a subprocess; return its exit status, output and wall time."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def _summary(output: str) -> dict[str, int]:
    """pytest's closing line as counts, e.g. {'passed': 8}."""
    last = [line for line in output.splitlines() if " in " in line and _SUMMARY.search(line)]
    return {kind.rstrip("s") if kind == "errors" else kind: int(n) for n, kind in _SUMMARY.findall(last[-1])} if last else {}


def fuzz_bench(quick: bool = False) -> dict[str, Any]:
    """Every hypothesis property at FUZZ_CASES cases (quick: 200), with the case counts hypothesis reports."""
    cases = 200 if quick else FUZZ_CASES
    rc, out, wall = _pytest([*FUZZ_TARGETS, "-k", FUZZ_SELECT, "--hypothesis-show-statistics"],
                            {"SMARTBIN_FUZZ_EXAMPLES": str(cases)})
    properties: dict[str, dict[str, int]] = {}
    current = ""
    for m in _STATS.finditer(out):
        if m.group(1):
            current = m.group(1)
        elif current:
            stats = properties.setdefault(current, {"passing": 0, "failing": 0, "invalid": 0})
            stats["passing"] += int(m.group(2))
            stats["failing"] += int(m.group(3))
            stats["invalid"] += int(m.group(4))
    least = min((p["passing"] for p in properties.values()), default=0)
    return {
        "cases_per_property": cases,
        "properties": properties,
        "least_passing_cases": least,
        "pytest": _summary(out),
        "wall_s": round(wall, 1),
        "target": f">= {cases} cases per property, no failure",
        "target_met": rc == 0 and bool(properties) and least >= cases,
        "tail": out[-1500:] if rc else "",
    }


def faults_bench(quick: bool = False) -> dict[str, Any]:
    """The fault-injection suite: the long variant (the CI variant when quick)."""
    env = {} if quick else {"SMARTBIN_FAULT_LONG": "1"}
    rc, out, wall = _pytest(["tests/faults", "--durations=0"], env)
    durations = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)s call\s+(tests/faults/\S+)", line)
        if m:
            durations[m.group(2)] = float(m.group(1))
    return {
        "variant": "ci" if quick else "long",
        "pytest": _summary(out),
        "test_call_s": durations,
        "wall_s": round(wall, 1),
        "target": "every fault test passes",
        "target_met": rc == 0,
        "tail": out[-3000:] if rc else "",
    }


def run_part(name: str, quick: bool) -> dict[str, Any]:
    """One part's figures, or the error that stopped it."""
    t0 = time.monotonic()
    try:
        if name == "fuzz":
            result = fuzz_bench(quick)
        elif name == "faults":
            result = faults_bench(quick)
        else:
            result = importlib.import_module(f"tests.bench.{name}").bench(quick=quick)
    except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others' figures
        result = {"error": f"{type(exc).__name__}: {exc}", "target_met": False}
    result.setdefault("wall_s", round(time.monotonic() - t0, 1))
    return result


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(part/key, target, met) for every `target_met` found in the results, nested ones included."""
    out: list[tuple[str, str, bool]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            if "target_met" in node:
                out.append((prefix, str(node.get("target", "")), bool(node["target_met"])))
            for key, value in node.items():
                if isinstance(value, dict) and key != "properties":
                    walk(f"{prefix}.{key}", value)

    for part, node in results.items():
        walk(part, node)
    return out


def main() -> None:
    """Run the chosen parts, write the JSON, print the targets; exit 1 when one is missed or a part broke."""
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: checks the bench runs, figures mean little")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results.json")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    results: dict[str, Any] = {}
    meta = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick}
    for part in parts:
        print(f"== {part} ...", flush=True)
        results[part] = run_part(part, args.quick)
        print(json.dumps(results[part], indent=1, default=str)[:4000], flush=True)
        args.out.write_text(json.dumps({"meta": meta, **results}, indent=1, default=str))
    print("\n== targets")
    rows = targets(results)
    for where, target, met in rows:
        print(f"{'MET   ' if met else 'MISSED'} {where}: {target}")
    broken = [p for p, r in results.items() if "error" in r]
    for part in broken:
        print(f"BROKEN {part}: {results[part]['error']}")
    print(f"\nfigures written to {args.out}")
    sys.exit(1 if broken or not all(met for _, _, met in rows) else 0)


if __name__ == "__main__":
    main()
