"""The daemon in simulation over MQTT: a live Arduino link, routing moves the flap, unplug and recovery."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from smartbin_daemon.hardware.arduino.simulator import SimulatedArduino

from .conftest import REPO, Broker, DaemonProcess, Probe, simulation_doc, write_config

ROOT = "smartbin/sim-bin"


def simulation_config(tmp_path: Path, port: int) -> Path:
    """config/simulation.yaml as shipped, pointed at the test broker and a private storage folder."""
    doc = simulation_doc(tmp_path, port)
    path = tmp_path / "simulation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_simulation_shows_a_live_link_and_routing_fills_a_compartment(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/#")
    probe.subscribe("homeassistant/#")
    daemon_factory(simulation_config(tmp_path, broker.port))
    state = probe.wait_for(f"{ROOT}/arduino", lambda m: m.json()["status"] == "connected", timeout=20).json()
    assert state["firmware"] == "smartbin-fw" and state["compartments"] == 3
    before = probe.wait_for(f"{ROOT}/arduino", lambda m: len(m.json()["distances_mm"]) == 3 and m.json()["distances_mm"][1] is not None).json()["distances_mm"][1]
    for _ in range(3):
        resp = probe.request(ROOT, "route", {"args": {"compartment": 2}})
        assert resp["status"] == "ok", resp
        assert resp["data"]["acked"] is True
    # 3 items x 12 mm: the compartment's distance drops by ~36 mm (telemetry noise is +-2 mm)
    probe.wait_for(f"{ROOT}/arduino", lambda m: m.json()["distances_mm"][1] < before - 25, timeout=10)
    gpio = probe.wait_for(f"{ROOT}/gpio").json()
    assert gpio["pin_factory"] == "mock"
    entity = probe.wait_for("homeassistant/binary_sensor/sim-bin/arduino_connected/config").json()
    assert entity["state_topic"] == f"{ROOT}/arduino"


def test_a_closed_pty_turns_the_link_disconnected_and_it_recovers(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    link = tmp_path / "arduino.tty"
    with SimulatedArduino(link, compartments=3) as sim:
        probe = probe_factory(broker.port)
        probe.subscribe("smartbin/#")
        cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "state",
                           arduino={"enabled": True, "backend": "serial", "port": str(link), "boot_wait_s": 0.5,
                                    "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                           security={"privileged": "broker_acl"})  # unsigned route requests (auth: tests/test_auth.py)
        daemon_factory(cfg)
        root = "smartbin/testbin"
        probe.wait_for(f"{root}/arduino", lambda m: m.json()["status"] == "connected", timeout=20)
        sim.unplug()
        probe.wait_for(f"{root}/arduino", lambda m: m.json()["status"] == "disconnected", timeout=5)
        sim.replug()
        recovered = probe.wait_for(f"{root}/arduino", lambda m: m.json()["status"] == "connected"
                                   and m.json()["counters"]["reconnects"] >= 1, timeout=10).json()
        assert recovered["port"] == str(link)
        assert probe.request(root, "route", {"args": {"compartment": 1}})["status"] == "ok"
        assert [b for _, b in sim.routes] == [1]


def test_simulated_items_trigger_detections_with_the_shipped_model(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    """The whole vision path in simulation: sample image → file camera → mock presence pin → detector → MQTT."""
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/#")
    path = simulation_config(tmp_path, broker.port)
    doc = yaml.safe_load(path.read_text())
    doc["simulation"].update(item_interval_s=3, item_dwell_s=1.5, seed=1)
    path.write_text(yaml.safe_dump(doc))
    daemon = daemon_factory(path)
    event = probe.wait_for(f"{ROOT}/event/detection", timeout=60).json()["data"]
    assert event["category"] in {"plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual"}
    assert event["frames"] == 5 and event["model"] == "smartbin-waste-s.onnx"
    assert event["snapshot"] and Path(event["snapshot"]).is_file(), "the event references a saved snapshot"
    snapshot = probe.wait_for(f"{ROOT}/detector/snapshot")
    assert snapshot.payload[:2] == b"\xff\xd8", "a JPEG for the HA image entity"
    detector = probe.wait_for(f"{ROOT}/detector", lambda m: m.json()["decisions"] >= 1).json()
    assert detector["inference_ms"]["p50"] is not None and detector["gate"] == "presence"
    assert probe.wait_for(f"{ROOT}/simulation", lambda m: m.json()["items"] >= 1).json()["samples"] >= 10
    camera = probe.wait_for(f"{ROOT}/camera", lambda m: m.json()["status"] == "connected").json()
    assert camera["kind"] == "images"
    assert "Traceback" not in daemon.log()


def test_the_simulation_sorts_the_samples_as_the_model_card_says(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    """Each of the 20 sample images shown once to the file camera: the daemon, at the thresholds its model brings,
    routes about as many to the expected compartment as the card claims (the simulation re-encodes each image),
    and sorts some into a compartment other than residual as the card says it does."""
    model = REPO / "config" / yaml.safe_load((REPO / "config" / "simulation.yaml").read_text())["detector"]["model"]
    classes = yaml.safe_load(model.with_name(f"{model.stem}.classes.yaml").read_text())
    compartment = {c["category"]: c["compartment"] for c in classes["classes"]}
    card = json.loads(model.with_name(f"{model.stem}.metrics.json").read_text())["samples"]
    claimed = card["correct"]
    sorted_into = {r["compartment"] for r in card["rows"] if r["correct"] and r["compartment"] != "residual"}
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/#")
    path = simulation_config(tmp_path, broker.port)
    doc = yaml.safe_load(path.read_text())
    doc["simulation"].update(item_interval_s=2.5, item_dwell_s=1.5, seed=3)
    path.write_text(yaml.safe_dump(doc))
    daemon = daemon_factory(path)
    probe.wait_for(f"{ROOT}/simulation", lambda m: m.json()["items"] >= 21, timeout=150)
    routed: list[tuple[str, str]] = []  # (expected category, compartment decided), in arrival order
    showing: str | None = None
    for m in probe.under(ROOT):
        if m.topic == f"{ROOT}/simulation" and m.json()["current"] is not None:
            showing = m.json()["expected_category"]
        elif m.topic == f"{ROOT}/event/detection" and showing is not None:
            routed.append((showing, m.json()["data"]["compartment"]))
    assert len(routed) >= 20, routed
    routed = routed[:20]
    right = sum(1 for expected, got in routed if compartment[expected] == got)
    assert right >= claimed - 2, routed
    assert sorted_into and sorted_into & {got for _, got in routed}, (sorted_into, routed)  # not all to residual
    assert "Traceback" not in daemon.log()
