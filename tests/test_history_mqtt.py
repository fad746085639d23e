"""The history requests over MQTT, against a real daemon in simulation and a real mosquitto: each answers, bad
arguments get an error naming the field, and `smartbinctl history` prints them as a table, CSV and JSON lines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Broker, DaemonProcess, Probe, simulation_doc, wait_until
from .test_bin_e2e import outcomes
from .test_ctl import run_ctl

SIM_ROOT = "smartbin/sim-bin"


@dataclass
class Sim:
    """The simulated bin of this module, after a few items."""

    config: Path
    probe: Probe
    sorted_ids: list[str]

    def ask(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.probe.request(SIM_ROOT, command, {"args": args}, timeout=20)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """The shipped simulation with health every second and a fill point every second, once two items were sorted."""
    tmp = tmp_path_factory.mktemp("history-sim")
    broker = Broker(tmp)
    broker.start()
    doc = simulation_doc(tmp, broker.port)
    doc["logging"] = {"level": "INFO", "journal": "off"}
    doc["simulation"].update({"item_interval_s": 3, "item_dwell_s": 1.5, "seed": 7})
    doc["health"].update({"enabled": True, "interval_s": 1})
    doc["bins"]["fill"]["history_interval_s"] = 1
    config = tmp / "simulation.yaml"
    config.write_text(yaml.safe_dump(doc))
    probe = Probe(broker.port)
    probe.subscribe(f"{SIM_ROOT}/#")
    daemon = DaemonProcess(config)
    try:
        wait_until(lambda: sum(o["type"] == "item_sorted" for o in outcomes(probe)) >= 2, 150, what="two sorted items")
        ids = [o["data"]["item_id"] for o in outcomes(probe) if o["type"] == "item_sorted"]
        yield Sim(config, probe, ids)
    finally:
        probe.close()
        daemon.stop()
        broker.stop()


def test_each_history_request_answers_over_mqtt(sim: Sim) -> None:
    fill = sim.ask("history/fill", {"compartment": "recycling", "hours": 1, "limit": 20})
    assert fill["status"] == "ok", fill
    assert fill["data"]["points"] and {"at", "fill_pct", "min_pct", "max_pct", "samples"} <= set(fill["data"]["points"][0])

    health = sim.ask("history/health", {"hours": 1})
    assert health["status"] == "ok", health
    assert health["data"]["source"] == "samples" and health["data"]["points"][-1]["cpu_pct"] is not None

    items = sim.ask("history/items", {"limit": 500})
    assert items["status"] == "ok", items
    listed = {i["item_id"]: i for i in items["data"]["items"]}
    assert set(sim.sorted_ids) <= set(listed), "every sorted item is listed"
    first = listed[sim.sorted_ids[0]]
    assert first["outcome"] == "sorted" and first["category"] and first["compartment"]
    assert first["snapshot"] and first["snapshot"].endswith(".jpg"), "the item names its evidence snapshot"

    counts = sim.ask("history/counts", {"hours": 1, "by": "outcome"})
    assert counts["status"] == "ok", counts
    assert counts["data"]["totals"].get("sorted", 0) >= len(sim.sorted_ids)


@pytest.mark.parametrize("command, args, field", [
    ("history/fill", {"compartment": "glass"}, "args.compartment"),
    ("history/fill", {"compartment": "paper", "since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
     "args.since"),
    ("history/health", {"limit": 501}, "args.limit"),
    ("history/items", {"limit": 1000}, "args.limit"),
    ("history/items", {"compartment": "glass"}, "args.compartment"),
    ("history/counts", {"hours": 24 * 60, "period": "hour"}, "args.period"),
])
def test_a_bad_history_request_gets_an_error_naming_the_field(sim: Sim, command: str, args: dict[str, Any],
                                                              field: str) -> None:
    resp = sim.ask(command, args)
    assert resp["status"] == "error" and field in resp["error"], resp


def test_smartbinctl_history_items_as_csv_parses_back_and_as_jsonl_line_by_line(sim: Sim) -> None:
    as_csv = run_ctl("history", "items", "--limit", "50", "--csv", config=sim.config)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert set(sim.sorted_ids) <= {r["item_id"] for r in rows}
    assert {"at", "item_id", "outcome", "category", "confidence", "compartment", "snapshot"} <= set(rows[0])

    as_jsonl = run_ctl("history", "items", "--limit", "50", "--jsonl", config=sim.config)
    assert as_jsonl.returncode == 0, as_jsonl.stderr
    parsed = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    newer = len(parsed) - len(rows)  # items sorted between the two calls come first
    assert newer >= 0 and [p["item_id"] for p in parsed][newer:] == [r["item_id"] for r in rows]
    assert parsed[-1]["confidence"] == float(rows[-1]["confidence"]), "the same values, typed"


def test_smartbinctl_history_prints_fill_health_and_counts(sim: Sim) -> None:
    table = run_ctl("history", "fill", "recycling", "--hours", "1", "--limit", "5", config=sim.config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("fill of recycling ") and lines[1].split()[:2] == ["at", "fill_pct"]

    health = run_ctl("history", "health", "--hours", "1", "--csv", config=sim.config)
    assert health.returncode == 0, health.stderr
    assert "cpu_pct" in next(csv.reader(io.StringIO(health.stdout)))

    counts = run_ctl("history", "counts", "--by", "compartment", "--period", "day", config=sim.config)
    assert counts.returncode == 0 and "totals:" in counts.stdout, counts.stdout + counts.stderr

    bad = run_ctl("history", "fill", "glass", config=sim.config)
    assert bad.returncode == 1 and "args.compartment" in bad.stderr
    usage = run_ctl("history", "fill", config=sim.config)
    assert usage.returncode == 2 and "needs a compartment" in usage.stderr
