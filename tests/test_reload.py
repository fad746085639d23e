"""SIGHUP: reload the config, apply what can be applied live, report what needs a restart."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import Broker, DaemonProcess, Probe, wait_until, write_config

ROOT = "smartbin/testbin"


def edit(path: Path, change: Callable[[dict], None]) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
def running(tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
            daemon_factory: Callable[..., DaemonProcess]) -> tuple[DaemonProcess, Probe, Path]:
    """A daemon online on a test broker, a probe subscribed to its topics, and its config file."""
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/#")
    cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "s")
    daemon = daemon_factory(cfg)
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    return daemon, probe, cfg


def test_sighup_applies_live_changes_and_reports_restart_required(
        running: tuple[DaemonProcess, Probe, Path]) -> None:
    daemon, probe, cfg = running

    def change(doc: dict) -> None:
        doc["health"]["thresholds"] = {"cpu_pct": 99}
        doc["logging"]["level"] = "INFO"
        doc["device"]["id"] = "renamed"

    edit(cfg, change)
    daemon.signal(signal.SIGHUP)
    event = probe.wait_for(f"{ROOT}/event/config_changed").json()
    assert sorted(event["data"]["applied"]) == ["health.thresholds.cpu_pct", "logging.level"]
    assert event["data"]["restart_required"] == ["device.id"]
    probe.wait_for(f"{ROOT}/daemon", lambda m: m.json()["restart_required"] == ["device.id"])
    # the live config answers with the new threshold and still the old id
    got = probe.request(ROOT, "config/get")["data"]
    assert got["health"]["thresholds"]["cpu_pct"] == 99
    assert got["device"]["id"] == "testbin"


def test_sighup_with_a_broken_config_keeps_the_running_one(
        running: tuple[DaemonProcess, Probe, Path], broker: Broker) -> None:
    daemon, probe, cfg = running
    edit(cfg, lambda doc: doc["mqtt"].update(port=-5))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "config reload rejected" in daemon.log(), what="the rejection in the log")
    assert "mqtt.port" in daemon.log()
    assert daemon.proc.poll() is None
    assert probe.request(ROOT, "config/get")["data"]["mqtt"]["port"] == broker.port
