"""The daemon as a real process against a real mosquitto: availability, LWT, shutdown, requests, discovery."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartbin_daemon.mqtt.client import DISCOVERY_SETTLE_S

from .conftest import DB_NAME, Broker, DaemonProcess, Probe, live_query, wait_until, write_config

ROOT = "smartbin/testbin"


@pytest.fixture
def running(tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
            daemon_factory: Callable[..., DaemonProcess]) -> tuple[DaemonProcess, Probe]:
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/#")
    probe.subscribe("homeassistant/#")
    cfg = write_config(tmp_path / "config.yaml", broker.port, tmp_path / "state")
    daemon = daemon_factory(cfg)
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    return daemon, probe


def test_online_is_retained_after_connect(running: tuple[DaemonProcess, Probe], broker: Broker,
                                          probe_factory: Callable[..., Probe]) -> None:
    late = probe_factory(broker.port)
    late.subscribe(f"{ROOT}/availability")
    msg = late.wait_for(f"{ROOT}/availability")
    assert msg.payload == b"online" and msg.retain


def test_kill_9_makes_the_broker_publish_offline(running: tuple[DaemonProcess, Probe]) -> None:
    daemon, probe = running
    daemon.signal(signal.SIGKILL)
    daemon.wait(5)
    # mosquitto sends the will after the keepalive expires or at once when the socket closes.
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"offline", timeout=60)


def test_sigterm_publishes_offline_and_exits_0_within_10s(running: tuple[DaemonProcess, Probe]) -> None:
    daemon, probe = running
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(10)
    elapsed = time.monotonic() - t0
    assert code == 0, daemon.log()
    assert elapsed < 10
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"offline", timeout=2)
    assert "stopped" in daemon.log()


def test_ping_status_and_config_get_round_trip(running: tuple[DaemonProcess, Probe]) -> None:
    _, probe = running
    pong = probe.request(ROOT, "ping")
    assert pong["status"] == "ok" and pong["data"]["pong"] is True and pong["error"] is None
    probe.wait_for(f"{ROOT}/health")  # health state exists before we ask for status
    status = probe.request(ROOT, "status")
    assert status["status"] == "ok"
    components = status["data"]["components"]
    assert {"mqtt", "daemon", "health"} <= set(components)
    assert components["mqtt"]["status"] == "connected"
    cfg = probe.request(ROOT, "config/get")
    assert cfg["status"] == "ok" and cfg["data"]["device"]["id"] == "testbin"
    catalogue = probe.request(ROOT, "help")["data"]
    assert {"ping", "status", "config/get", "help"} <= set(catalogue)
    assert catalogue["ping"]["args_schema"]["type"] == "object"


@pytest.mark.parametrize(
    ("command", "raw", "error_part"),
    [
        ("ping", b"{not json", "not valid JSON"),
        ("ping", b"[1,2]", "must be a JSON object"),
        ("ping", b"\xff\xfe", "not valid UTF-8"),
        ("ping", json.dumps({"transaction": "t", "args": {"x": 1}}).encode(), "args.x: unknown field"),
        ("ping", json.dumps({"transaction": "t", "args": 5}).encode(), "args: must be a JSON object"),
        ("ping", json.dumps({"transaction": "t", "colour": 1}).encode(), "unknown top-level field(s): colour"),
        ("no/such/command", b"{}", "unknown command 'no/such/command'"),
        ("ping", b'{"transaction":"' + b"x" * 70_000 + b'"}', "payload too large"),
    ],
)
def test_garbage_requests_get_error_responses_and_the_daemon_survives(
        running: tuple[DaemonProcess, Probe], command: str, raw: bytes, error_part: str) -> None:
    daemon, probe = running
    resp = probe.request(ROOT, command, raw=raw)
    assert resp["status"] == "error"
    assert error_part in resp["error"]
    assert daemon.proc.poll() is None
    assert probe.request(ROOT, "ping")["status"] == "ok"


def test_mqtt5_response_topic_and_correlation_data_are_honoured(running: tuple[DaemonProcess, Probe]) -> None:
    _, probe = running
    probe.subscribe("client/replies/42")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "client/replies/42"
    props.CorrelationData = b"corr-7"
    probe.client.publish(f"{ROOT}/request/ping", b'{"transaction": "abc"}', qos=1, properties=props)
    msg = probe.wait_for("client/replies/42")
    assert msg.json()["transaction"] == "abc"
    assert msg.properties.CorrelationData == b"corr-7"


def test_health_state_is_retained_and_updates(running: tuple[DaemonProcess, Probe], broker: Broker,
                                              probe_factory: Callable[..., Probe]) -> None:
    _, probe = running
    probe.wait_for(f"{ROOT}/health")
    late = probe_factory(broker.port)
    late.subscribe(f"{ROOT}/health")
    assert late.wait_for(f"{ROOT}/health").retain, "a late subscriber gets the retained copy"
    wait_until(lambda: len({m.json().get("ts") for m in probe.on(f"{ROOT}/health")}) >= 3, timeout=15,
               what="three distinct health updates")
    state = probe.on(f"{ROOT}/health")[-1].json()
    assert state["status"] in {"ok", "warn", "critical"}
    assert 0 <= state["score"] <= 100


def test_discovery_is_published_and_repeated_on_ha_birth(running: tuple[DaemonProcess, Probe]) -> None:
    _, probe = running
    topic = "homeassistant/sensor/testbin/daemon_version/config"
    first = probe.wait_for(topic)
    cfg = first.json()
    assert cfg["unique_id"] == "smartbin_testbin_daemon_version"
    assert cfg["device"]["identifiers"] == ["smartbin_testbin"]
    assert cfg["availability"][0]["topic"] == f"{ROOT}/availability"
    assert cfg["state_topic"] == f"{ROOT}/daemon"
    assert cfg["origin"]["name"] == "smartbin-daemon"
    assert cfg["expire_after"] == 6  # 3 x mqtt.state_interval_s (2 s in the test config): a dead daemon goes unavailable
    wait_until(lambda: probe.under("homeassistant/sensor/testbin/health_"), what="health entities")
    before = len(probe.on(topic))
    probe.publish("homeassistant/status", "online")
    wait_until(lambda: len(probe.on(topic)) > before, what="discovery republished after HA birth")


def test_state_is_republished_after_a_broker_restart(running: tuple[DaemonProcess, Probe], broker: Broker,
                                                     probe_factory: Callable[..., Probe]) -> None:
    broker.restart()  # persistence false: the broker forgets every retained message
    fresh = probe_factory(broker.port)
    fresh.subscribe("smartbin/#")
    fresh.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    fresh.wait_for(f"{ROOT}/daemon", timeout=10)
    fresh.wait_for(f"{ROOT}/mqtt", lambda m: m.json()["connects"] >= 2, timeout=10)


def test_mqtt_311_is_selectable(tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
                                daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port, paho.MQTTv311)
    probe.subscribe("smartbin/#")
    cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "s", mqtt={"protocol": "3.1.1"})
    daemon_factory(cfg)
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    assert probe.request(ROOT, "ping")["status"] == "ok"


def test_auth_failure_is_reported_and_retried_slowly(tmp_path: Path, probe_factory: Callable[..., Probe],
                                                     daemon_factory: Callable[..., DaemonProcess]) -> None:
    secured = Broker(tmp_path, password=("bin", "right-password"))
    secured.start()
    try:
        cfg = write_config(tmp_path / "c.yaml", secured.port, tmp_path / "s",
                           mqtt={"username": "bin", "password": "wrong-password"})
        daemon = daemon_factory(cfg)
        wait_until(lambda: "authentication failed" in daemon.log(), timeout=20, what="auth failure in the log")
        time.sleep(5)  # auth_failure_s is 2 s in tests: at most ~3 attempts in 5 s, not dozens
        log = daemon.log()
        attempts = log.count("broker refused our credentials")
        assert 1 <= attempts <= 4, log
        assert "wrong-password" not in log
    finally:
        secured.stop()


def test_discovery_configs_an_earlier_run_left_are_cleared_and_the_new_ones_remembered(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    """A config left by an earlier run (an entity of a component disabled since) is emptied after the settle time."""
    stale = "homeassistant/sensor/testbin/gpio_distance_9/config"
    probe = probe_factory(broker.port)
    probe.publish(stale, json.dumps({"name": "left over"}), retain=True)
    storage = tmp_path / "state"
    storage.mkdir()
    db = sqlite3.connect(storage / DB_NAME)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('discovery_topics', ?)", (json.dumps([stale]),))
    db.commit()
    db.close()
    probe.subscribe("homeassistant/#")
    daemon = daemon_factory(write_config(tmp_path / "config.yaml", broker.port, storage))
    wait_until(lambda: any(m.payload == b"" for m in probe.on(stale)), timeout=DISCOVERY_SETTLE_S + 15,
               what="the stale discovery config emptied")
    live = {m.topic for m in probe.under("homeassistant/sensor/testbin/") if m.payload}
    assert "homeassistant/sensor/testbin/daemon_version/config" in live
    assert not any(m.payload == b"" for m in probe.under("homeassistant/") if m.topic != stale), "live ones kept"
    remembered = set(json.loads(live_query(storage, "SELECT value FROM meta WHERE key = 'discovery_topics'")[0][0]))
    assert stale not in remembered and "homeassistant/sensor/testbin/daemon_version/config" in remembered
    assert "cleared 1 discovery config(s)" in daemon.log()
