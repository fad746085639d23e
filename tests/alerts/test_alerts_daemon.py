"""The alerts component in the real daemon: the retained state, its HA discovery, and a daemon restart."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import yaml

from ..conftest import Broker, DaemonProcess, Probe, write_config

ROOT = "smartbin/testbin"


def ram_high(msg: object) -> bool:
    state = msg.json()  # type: ignore[attr-defined]
    return any(a["source"] == "health" and a["code"] == "ram_high" for a in state["active"])


def test_the_active_alerts_are_retained_discovered_and_raised_again_after_a_restart(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    # a RAM threshold every machine exceeds: health raises ram_high (warning) on its first sample
    cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "s",
                       health={"thresholds": {"ram_pct": 0.1, "hysteresis_pct": 0.05}})
    probe = probe_factory(broker.port)
    probe.subscribe("#")
    daemon = daemon_factory(cfg)
    first = probe.wait_for(f"{ROOT}/alerts", ram_high, timeout=20).json()
    assert first["counts"]["warning"] >= 1 and first["webhook"]["enabled"] is False
    alert = next(a for a in first["active"] if a["code"] == "ram_high")
    assert alert["severity"] == "warning" and alert["since"].endswith("Z") and len(alert["id"]) == 32

    event = probe.wait_for("homeassistant/event/testbin/event_alert/config").json()
    assert event["state_topic"] == f"{ROOT}/event/alert" and "cleared" in event["event_types"]
    assert "expire_after" not in event
    problem = probe.wait_for("homeassistant/binary_sensor/testbin/alerts_warning/config").json()
    assert problem["device_class"] == "problem" and problem["json_attributes_topic"] == f"{ROOT}/alerts"
    assert problem["state_topic"] == f"{ROOT}/alerts"

    daemon.stop()
    seen = len(probe.on(f"{ROOT}/alerts"))
    daemon_factory(cfg)  # nothing is persisted: health raises ram_high again on its first sample
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    again = probe.wait_for(f"{ROOT}/alerts", lambda m: m in probe.on(f"{ROOT}/alerts")[seen:] and ram_high(m),
                           timeout=20).json()
    raised = next(a for a in again["active"] if a["code"] == "ram_high")
    assert raised["id"] != alert["id"] and raised["since"] > alert["since"]


def test_a_webhook_configured_by_sighup_restarts_the_alerts_worker_with_it(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "s")
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    daemon = daemon_factory(cfg)
    probe.wait_for(f"{ROOT}/alerts", lambda m: m.json()["webhook"]["enabled"] is False, timeout=20)
    doc = yaml.safe_load(cfg.read_text())
    doc["alerts"] = {"webhook": {"url": "http://127.0.0.1:9/hook-secret", "min_severity": "warning"}}
    cfg.write_text(yaml.safe_dump(doc))
    daemon.signal(signal.SIGHUP)
    event = probe.wait_for(f"{ROOT}/event/config_changed").json()
    assert event["data"]["applied"] == ["alerts.webhook.min_severity", "alerts.webhook.url"]
    state = probe.wait_for(f"{ROOT}/alerts", lambda m: m.json()["webhook"]["enabled"] is True).json()
    assert state["webhook"]["min_severity"] == "warning" and "hook-secret" not in daemon.log()
