"""The whole bin through a real mosquitto: items in, `item_sorted` out in the right compartment, fill
counters that follow, and a `kill -9` mid-item that is reported, not lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartbin_daemon.app import App, actuator_owners
from smartbin_daemon.bins.workflow import SortingWorkflow
from smartbin_daemon.config import Config, parse_config
from smartbin_daemon.messages import Decision, PresenceChanged, SimulatedPresence
from smartbin_daemon.runtime.bus import Bus
from smartbin_daemon.runtime.worker import Worker

from .conftest import Broker, DaemonProcess, Probe, simulation_doc, wait_until

SIM_ROOT = "smartbin/sim-bin"
COMPARTMENTS = [
    {"id": "recycling", "name": "Recycling", "categories": ["plastic", "metal", "glass"],
     "sensor": {"source": "arduino", "channel": 1}},
    {"id": "paper", "name": "Paper", "categories": ["paper_cardboard"], "sensor": {"source": "arduino", "channel": 2}},
    {"id": "residual", "name": "Residual", "categories": ["residual", "organic"], "sensor": {"source": "arduino", "channel": 3}},
]


def fast_simulation_config(tmp_path: Path, port: int, **overrides: Any) -> Path:
    """config/simulation.yaml as shipped (real model, real workers), at a faster item rate, on the test broker."""
    doc = simulation_doc(tmp_path, port)
    doc["simulation"].update({"item_interval_s": 3, "item_dwell_s": 1.5, "seed": 7})
    doc["health"]["enabled"] = False  # keep the 2-core CI box for the detector
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / "simulation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def outcomes(probe: Probe) -> list[dict[str, Any]]:
    """Every item outcome event seen so far (sorted, refused, failed, interrupted), as event envelopes."""
    out = []
    for m in probe.under(f"{SIM_ROOT}/event/item_"):
        if m.topic.rsplit("/", 1)[1] in ("item_sorted", "item_refused", "item_failed", "item_interrupted"):
            out.append(m.json())
    return out


def test_simulated_items_with_the_shipped_model_each_end_in_the_compartment_their_category_maps_to(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    config = fast_simulation_config(tmp_path, broker.port)
    cfg = parse_config(yaml.safe_load(config.read_text()))
    probe = probe_factory(broker.port)
    probe.subscribe(f"{SIM_ROOT}/#")
    daemon_factory(config)
    n = 5
    wait_until(lambda: len(outcomes(probe)) >= n, timeout=120, what=f"{n} item outcomes")
    events = outcomes(probe)[:n]
    sorted_events = [e for e in events if e["type"] == "item_sorted"]
    assert len(sorted_events) == n, [e["type"] for e in events]  # empty compartments: nothing is refused
    per_compartment: dict[str, int] = {}
    for e in sorted_events:
        d = e["data"]
        expected = cfg.bins.compartment_for(d["category"])
        assert expected is not None and d["compartment"] == expected.id, d
        assert d["flap"] == cfg.bins.flap_of(expected)
        assert d["confirmed"] is True and d["confirmation"] in ("drop", "weight", "fill"), d
        lat = d["latency"]
        assert 0 < lat["presence_to_decision_ms"] <= lat["presence_to_route_ms"] <= lat["total_ms"], lat
        per_compartment[d["compartment"]] = per_compartment.get(d["compartment"], 0) + 1
    # The fill tracker counted each item in its compartment (retained `fill` state).
    def counted() -> bool:
        fill = probe.on(f"{SIM_ROOT}/fill")[-1].json()["compartments"]
        return all(fill[cid]["items_total"] >= count for cid, count in per_compartment.items())
    wait_until(counted, timeout=15, what="items counted per compartment")
    workflow = probe.on(f"{SIM_ROOT}/workflow")[-1].json()
    assert workflow["counts"]["sorted"] >= n and workflow["counts"]["failed"] == 0


class ScriptedDetector(Worker):
    """Stands in for the detector where a test needs exact classes: each presence gets the next scripted category."""

    def __init__(self, bus: Bus, categories: list[str]) -> None:
        super().__init__("detector", bus, tick_s=0.2, inbox=(PresenceChanged,))
        self.categories = list(categories)
        self.bus.set_state("detector", {"enabled": True, "model": "scripted"})

    def handle(self, msg: Any) -> None:
        if isinstance(msg, PresenceChanged) and msg.present and self.categories:
            category = self.categories.pop(0)
            self.bus.publish(Decision(f"det{len(self.categories)}", category, category, 0.93, None, 0.0, 0.93, False,
                                      None, None, 5, {category: 4.65}, 1, time.monotonic()))


@pytest.fixture
def bin_app(tmp_path: Path, broker: Broker) -> Iterator[Callable[[list[str], dict[str, Any]], App]]:
    """The daemon in-process (real MQTT, real pty Arduino, mock GPIO pins, real SQLite) with a scripted detector."""
    apps: list[App] = []

    def make(categories: list[str], workflow: dict[str, Any]) -> App:
        doc = {
            "device": {"id": "e2e-bin"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "state_interval_s": 2, "reconnect": {"min_s": 0.2, "max_s": 1}},
            "storage": {"path": str(tmp_path / "state")},
            "logging": {"journal": "off"},
            "health": {"enabled": False},
            "arduino": {"enabled": True, "backend": "simulator", "boot_wait_s": 0.2,
                        "simulator": {"compartments": 3, "item_mm": 60}},
            "gpio": {"enabled": True, "pin_factory": "mock", "presence": {"pin": "GPIO17", "settle_s": 0.05}},
            "bins": {"enabled": True, "compartments": COMPARTMENTS, "workflow": workflow,
                     "fill": {"filter": {"window": 3, "min_samples": 2, "confirm_s": 1, "settle_s": 0.5},
                              "emptying": {"confirm_s": 1}}},
        }
        cfg: Config = parse_config(doc)
        app = App(cfg)
        app.start()
        apps.append(app)
        # The detector is scripted: say so to the workflow (vision available) and plug it in.
        app.supervisor.replace(SortingWorkflow(app.bus, cfg.bins, app.store, owners=actuator_owners(cfg),  # type: ignore[arg-type]
                                               vision={"camera": False, "detector": True}))
        app.supervisor.add(ScriptedDetector(app.bus, categories))
        app.supervisor.start("detector")
        wait_until(lambda: app.bus.states().get("arduino", {}).get("status") == "connected", 15, what="arduino link")
        return app

    yield make
    for app in apps:
        app.stop()


def drop_items(app: App, count: int, probe: Probe, root: str, every_s: float = 1.2) -> None:
    """Break and restore the mock presence beam `count` times (the real GPIO path), one item each."""
    def seen() -> int:
        return len([m for m in probe.under(f"{root}/event/item_") if m.topic.endswith(("item_sorted", "item_refused"))])
    base = seen()
    for i in range(count):
        app.bus.publish(SimulatedPresence(True))
        time.sleep(0.3)
        app.bus.publish(SimulatedPresence(False))
        target = base + i + 1
        wait_until(lambda: seen() >= target, timeout=15, what=f"outcome of item {i + 1}")  # noqa: B023
        time.sleep(max(0.0, every_s - 0.3))


def test_scripted_items_are_routed_to_their_compartments_and_counted(
        bin_app: Callable[[list[str], dict[str, Any]], App], broker: Broker,
        probe_factory: Callable[..., Probe]) -> None:
    categories = ["plastic", "paper_cardboard", "glass", "organic", "residual", "metal", "e_waste"]
    expected = ["recycling", "paper", "recycling", "residual", "residual", "recycling", "residual"]  # e_waste: no taker
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/e2e-bin/#")
    app = bin_app(categories, {"confirm_timeout_s": 3})
    drop_items(app, len(categories), probe, "smartbin/e2e-bin")
    events = [m.json()["data"] for m in probe.on("smartbin/e2e-bin/event/item_sorted")]
    assert [e["category"] for e in events] == categories
    assert [e["compartment"] for e in events] == expected
    assert all(e["confirmation"] == "drop" for e in events), [e["confirmation"] for e in events]
    # The simulated Arduino's flap really went to those positions, once per item.
    flaps = {"recycling": 1, "paper": 2, "residual": 3}
    assert [b for _id, b in app.simulated_arduino.routes] == [flaps[c] for c in expected]
    wait_until(lambda: probe.on("smartbin/e2e-bin/fill")[-1].json()["compartments"]["recycling"]["items"] == 3,
               timeout=10, what="recycling counted 3 items")
    fill = probe.on("smartbin/e2e-bin/fill")[-1].json()["compartments"]
    assert (fill["paper"]["items"], fill["residual"]["items"]) == (1, 3)
    assert fill["recycling"]["fill_pct"] > fill["paper"]["fill_pct"] > 0


def test_a_full_compartment_sends_items_to_the_fallback_and_a_full_fallback_refuses_with_the_lid_locked(
        bin_app: Callable[[list[str], dict[str, Any]], App], broker: Broker,
        probe_factory: Callable[..., Probe]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/e2e-bin/#")
    app = bin_app(["paper_cardboard"] * 12, {"fallback_compartment": "residual", "confirm_timeout_s": 3})
    sim = app.simulated_arduino
    wait_until(lambda: app.bus.states().get("fill", {}).get("compartments", {}).get("paper", {}).get("level"), 10,
               what="a first paper reading")
    # Fill paper to the brim physically (as the ultrasonic sensor sees it) and wait for the tracker to say `full`.
    for _ in range(9):
        sim._drop(2, None)  # noqa: SLF001 - the simulated physics: an item lands without a ROUTE
    probe.wait_for("smartbin/e2e-bin/event/bin_level", lambda m: m.json()["data"]["level"] == "full", timeout=20)
    probe.wait_for("smartbin/e2e-bin/event/alert", lambda m: m.json()["data"]["code"] == "compartment_full_paper")
    drop_items(app, 1, probe, "smartbin/e2e-bin")
    item = probe.on("smartbin/e2e-bin/event/item_sorted")[-1].json()["data"]
    assert item["category"] == "paper_cardboard" and item["compartment"] == "residual"
    assert any("fallback residual" in n for n in item["notes"])
    # Now the fallback is full too: the next paper item is refused and the lid locks.
    for _ in range(9):
        sim._drop(3, None)  # noqa: SLF001
    probe.wait_for("smartbin/e2e-bin/event/bin_level",
                   lambda m: m.json()["data"]["compartment"] == "residual" and m.json()["data"]["level"] == "full", timeout=20)
    drop_items(app, 1, probe, "smartbin/e2e-bin")
    refused = probe.wait_for("smartbin/e2e-bin/event/item_refused").json()["data"]
    assert refused["code"] == "compartment_full"
    wait_until(lambda: sim.lid == "locked", 5, what="lid locked")
    assert probe.on("smartbin/e2e-bin/workflow")[-1].json()["state"] == "blocked"
    # Emptying paper lifts the block: the lid unlocks and sorting resumes.
    sim.empty(2)
    probe.wait_for("smartbin/e2e-bin/event/bin_emptied", lambda m: m.json()["data"]["compartment"] == "paper", timeout=30)
    wait_until(lambda: probe.on("smartbin/e2e-bin/workflow")[-1].json()["state"] == "idle", 10, what="workflow idle")
    wait_until(lambda: sim.lid == "closed", 5, what="lid unlocked")


def test_kill_9_mid_item_reports_the_item_interrupted_and_keeps_counters_and_levels(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    config = fast_simulation_config(tmp_path, broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{SIM_ROOT}/#")
    daemon = daemon_factory(config)
    wait_until(lambda: len(probe.on(f"{SIM_ROOT}/event/item_sorted")) >= 2, timeout=90, what="two sorted items")
    before = wait_until(lambda: next((m.json() for m in reversed(probe.on(f"{SIM_ROOT}/fill"))
                                      if sum(c["items_total"] for c in m.json()["compartments"].values()) >= 2), None),
                        timeout=15, what="two items counted")
    # Kill the daemon while an item is being classified (presence seen, no decision yet).
    seen = len(probe.on(f"{SIM_ROOT}/event/item_present"))
    wait_until(lambda: len(probe.on(f"{SIM_ROOT}/event/item_present")) > seen, timeout=20, what="next item")
    time.sleep(0.15)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    sorted_before = {m.json()["data"]["item_id"] for m in probe.on(f"{SIM_ROOT}/event/item_sorted")}
    probe.messages.clear()
    daemon_factory(config)
    interrupted = probe.wait_for(f"{SIM_ROOT}/event/item_interrupted", timeout=30).json()["data"]
    assert interrupted["item_id"] not in sorted_before
    assert interrupted["state"] in ("item_present", "classifying", "routing", "confirming")
    after = probe.wait_for(f"{SIM_ROOT}/fill", lambda m: not m.retain, timeout=30).json()
    for cid, c in before["compartments"].items():
        assert after["compartments"][cid]["items_total"] >= c["items_total"], cid
        assert after["compartments"][cid]["items"] >= c["items"], cid
        if c["level"] is not None:
            assert after["compartments"][cid]["level"] is not None
    # Reported exactly once.
    time.sleep(1)
    assert len(probe.on(f"{SIM_ROOT}/event/item_interrupted")) == 1
