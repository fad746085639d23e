"""The secrets grep: with an MQTT password and an HMAC secret configured, exercise the daemon and look for
either secret everywhere it could leak: every MQTT message, the daemon's log, a support bundle, the
state file and check-config's output."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from smartbin_daemon.config import Config

from .conftest import REPO, Broker, DaemonProcess, Probe, wait_until, write_config

DEVICE = "testbin"
ROOT = f"smartbin/{DEVICE}"
MQTT_USER, MQTT_PASSWORD = "smartbin", "mqtt-pw-8f3Kx!q2-secret"
PROBE_USER, PROBE_PASSWORD = "probe", "probe-pw-not-the-daemons"
HMAC_SECRET = "hmac-secret-Vb71-zz90-do-not-leak"
WEBHOOK_PATH = "/services/T0/B0/webhook-secret-Qm4t-do-not-leak"
HAS_SECURITY = "security" in Config.model_fields


@dataclass
class AuthProbe(Probe):
    """The conftest probe, logging in with a username and password."""

    username: str = PROBE_USER
    password: str = PROBE_PASSWORD

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                                  protocol=self.protocol)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self._connected.set() if not r.is_failure else None
        self.client.username_pw_set(self.username, self.password)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._connected.wait(5):
            raise RuntimeError("probe could not log in")


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path, password=(MQTT_USER, MQTT_PASSWORD))
    subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwd"), PROBE_USER, PROBE_PASSWORD], check=True)
    broker.start()
    yield broker
    broker.stop()


def secrets() -> list[str]:
    """Every secret this test configures."""
    return [MQTT_PASSWORD, HMAC_SECRET, WEBHOOK_PATH] if HAS_SECURITY else [MQTT_PASSWORD]


def leaks(text: str | bytes) -> list[str]:
    """The secrets found in `text`."""
    data = text.encode() if isinstance(text, str) else text
    return [s for s in secrets() if s.encode() in data]


def signed(command: str, args: dict[str, Any]) -> dict[str, Any]:
    """A signed request body (plain when the daemon has no signing)."""
    if not HAS_SECURITY:
        return {"args": args}
    from smartbin_daemon.runtime.auth import sign

    return {"args": args, "auth": sign(HMAC_SECRET, DEVICE, command, args)}


def test_no_secret_leaks_anywhere(tmp_path: Path, password_broker: Broker, daemon_factory: Callable[..., DaemonProcess]) -> None:
    (tmp_path / "mqtt-password").write_text(MQTT_PASSWORD + "\n")
    sections: dict[str, Any] = {"mqtt": {"username": MQTT_USER, "password_file": str(tmp_path / "mqtt-password")}}
    if HAS_SECURITY:
        sections["security"] = {"hmac_secret": HMAC_SECRET}
        # a webhook nobody listens on (posts fail, and their errors must not quote the URL)
        sections["alerts"] = {"webhook": {"url": f"http://127.0.0.1:9{WEBHOOK_PATH}", "min_severity": "warning",
                                          "retries": 0}}
        sections["health"] = {"thresholds": {"ram_pct": 0.1, "hysteresis_pct": 0.05}}  # ram_high: a post is tried
    cfg = write_config(tmp_path / "config.yaml", password_broker.port, tmp_path / "s", device_id=DEVICE, **sections)
    assert HMAC_SECRET in cfg.read_text() or not HAS_SECURITY, "the HMAC secret sits in the file, inline"

    probe = AuthProbe(password_broker.port)
    try:
        probe.subscribe("#")
        daemon = daemon_factory(cfg)
        probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
        probe.wait_for(f"{ROOT}/mqtt", lambda m: m.json()["status"] == "connected")

        # malformed JSON first (a raw request is matched by topic alone, so no earlier answer may be there)
        assert probe.request(ROOT, "ping", raw=b"{not json")["status"] == "error"
        # every kind of answer the daemon gives
        config = probe.request(ROOT, "config/get")["data"]
        assert config["mqtt"]["password"] == "**********"
        if HAS_SECURITY:
            assert config["security"]["hmac_secret"] == "**********"
            assert config["alerts"]["webhook"]["url"] == "**********"
        assert probe.request(ROOT, "status")["status"] == "ok"
        assert probe.request(ROOT, "help")["status"] == "ok"
        assert probe.request(ROOT, "ping")["status"] == "ok"
        bundle = probe.request(ROOT, "logs/bundle", {"args": {}}, timeout=20)
        assert bundle["status"] == "ok", bundle
        # bad requests: unknown command, invalid args, an unsigned and a wrongly signed privileged one
        assert probe.request(ROOT, "no/such/command")["status"] == "error"
        assert probe.request(ROOT, "restart", {"args": {"component": 5}})["status"] == "error"
        if HAS_SECURITY:
            assert probe.request(ROOT, "restart", {"args": {"component": "health"}})["status"] == "error"
            from smartbin_daemon.runtime.auth import sign

            forged = {"args": {"component": "health"}, "auth": sign("wrong-secret", DEVICE, "restart", {"component": "health"})}
            assert probe.request(ROOT, "restart", forged)["status"] == "error"
        # an invalid config/set (rejected, with its errors) and a valid privileged request
        rejected = probe.request(ROOT, "config/set", signed("config/set", {"config": {"mqtt": {"port": 0}}}))
        assert rejected["status"] == "error" and "mqtt.port" in rejected["error"], rejected
        assert probe.request(ROOT, "restart", signed("restart", {"component": "health"}))["status"] == "ok"
        wait_until(lambda: any(m.topic == f"{ROOT}/daemon" for m in probe.messages), what="the daemon state")
        if HAS_SECURITY:
            wait_until(lambda: "webhook: posting to http://127.0.0.1/… failed" in daemon.log(), timeout=20,
                       what="the failed webhook post in the log")
        daemon.stop()
        probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"offline", timeout=5)
    finally:
        probe.close()

    # 1. every MQTT message seen on '#'
    assert len(probe.messages) > 20
    for msg in probe.messages:
        assert not leaks(msg.payload), f"{msg.topic} leaks {leaks(msg.payload)}"
        assert not leaks(msg.topic)
    # 2. the daemon's log
    log = daemon.log_path.read_text(errors="replace")  # stopped: read the file itself
    assert "config/get" in log or "started" in log
    assert not leaks(log), f"the daemon log leaks {leaks(log)}"
    # 3. the support bundle
    out = tmp_path / "bundle"
    with tarfile.open(bundle["data"]["path"]) as tar:
        tar.extractall(out, filter="data")
    extracted = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(extracted) == 5
    for path in extracted:
        assert not leaks(path.read_bytes()), f"bundle file {path.name} leaks {leaks(path.read_bytes())}"
    # 4. the local state file
    state_file = tmp_path / "s" / "state.json"
    assert state_file.is_file() and not leaks(state_file.read_bytes())
    # 5. check-config, on the good file and on a broken one
    good = check_config(cfg)
    assert good.returncode == 0, good.stderr
    assert "**********" in good.stdout and not leaks(good.stdout + good.stderr)
    broken = tmp_path / "broken.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["mqtt"]["port"] = "not-a-port"
    doc["mqtt"]["password"] = MQTT_PASSWORD  # inline and a password_file: an error about both
    if HAS_SECURITY:
        doc["security"]["hmac_secret"] = [HMAC_SECRET]  # wrong type: the error must not echo the value
        doc["alerts"]["webhook"]["url"] = f"ftp://host{WEBHOOK_PATH}"  # invalid: named, never quoted
    broken.write_text(yaml.safe_dump(doc))
    bad = check_config(broken)
    assert bad.returncode == 78, bad.stdout + bad.stderr
    assert "mqtt.port" in bad.stderr
    assert not leaks(bad.stdout + bad.stderr), f"check-config's errors leak {leaks(bad.stdout + bad.stderr)}"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`smartbin-daemon check-config <path>`."""
    return subprocess.run([sys.executable, "-m", "smartbin_daemon", "check-config", str(path)], capture_output=True,
                          text=True, cwd=str(REPO), timeout=60, check=False)


def test_the_leak_check_would_see_a_leak() -> None:
    """Guard against a grep that can never fail."""
    assert leaks(json.dumps({"x": MQTT_PASSWORD})) == [MQTT_PASSWORD]
