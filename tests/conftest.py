"""Shared fixtures: a real mosquitto on a free port, an MQTT probe client, and the daemon as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartbin_daemon.store import DB_NAME

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-client tests (tests/clients/) run last: their installs overlap the rest (see clients/installs.py)."""
    items.sort(key=lambda item: Path(str(item.fspath)).is_relative_to(REPO / "tests" / "clients"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")


class SteppedClock:
    """A worker's clock (`Worker(clock=...)`) that a test moves forward: time.monotonic() plus the steps taken, so
    timeouts expire when the test says while stamps from other threads stay comparable."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Broker:
    """A private mosquitto process that tests can stop and start again on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "", password: tuple[str, str] | None = None,
                 persistence: bool = False) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed (apt-get install mosquitto); the suite needs a real broker")
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        persist = ["persistence true", f"persistence_location {workdir}/"] if persistence else ["persistence false"]
        lines = [f"listener {self.port} 127.0.0.1", *persist, "log_dest file " + str(self.log_path),
                 "log_type all", "max_inflight_messages 0"]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto drops to its own user and cannot read tmp_path
        if password is not None:
            pwfile = workdir / "passwd"
            pwfile.write_text("")
            subprocess.run(["mosquitto_passwd", "-b", str(pwfile), password[0], password[1]], check=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra_conf)

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        """Stop it (SIGTERM, by its own pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port."""
        self.stop()
        self.start()


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps sessions and queued messages across its own restarts (persistence on)."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir, persistence=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh anonymous mosquitto on a free port."""
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@dataclass
class Received:
    """One message seen by the probe."""

    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


@dataclass
class Probe:
    """A test-side MQTT client that records everything under its subscriptions."""

    port: int
    protocol: int = paho.MQTTv5
    persistent: bool = False
    """A durable session (clean_start False, long expiry): the broker queues for us while we are away."""
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=self.protocol)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self._connected.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._connected.wait(5):
            raise RuntimeError("probe could not connect")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), getattr(msg, "properties", None)))

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1) and give the broker a moment to deliver retained messages."""
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS
        time.sleep(0.2)

    def on(self, topic: str) -> list[Received]:
        """Messages seen so far on an exact topic."""
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def under(self, prefix: str) -> list[Received]:
        """Messages seen so far on topics starting with prefix."""
        with self.lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def wait_for(self, topic: str, predicate: Callable[[Received], bool] = lambda m: True, timeout: float = 10.0) -> Received:
        """The first message on `topic` matching predicate (waiting for it)."""
        def find() -> Received | None:
            for m in self.on(topic):
                try:
                    if predicate(m):
                        return m
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
            return None
        return wait_until(find, timeout, what=f"a matching message on {topic}")  # type: ignore[no-any-return]

    def request(self, root: str, command: str, payload: Any = None, timeout: float = 10.0, raw: bytes | None = None) -> dict[str, Any]:
        """Publish a request and wait for the response carrying our transaction id."""
        transaction = uuid.uuid4().hex
        body = raw if raw is not None else json.dumps({"transaction": transaction, **(payload or {})}).encode()
        self.subscribe(f"{root}/response/{command}")
        self.client.publish(f"{root}/request/{command}", body, qos=1)
        if raw is not None:
            return self.wait_for(f"{root}/response/{command}", timeout=timeout).json()  # type: ignore[no-any-return]
        return self.wait_for(f"{root}/response/{command}", lambda m: m.json()["transaction"] == transaction, timeout).json()  # type: ignore[no-any-return]

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish and wait until it left."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def probe_factory() -> Iterator[Callable[..., Probe]]:
    """Make probes bound to a broker port; all are closed at teardown."""
    made: list[Probe] = []

    def make(port: int, protocol: int = paho.MQTTv5, persistent: bool = False) -> Probe:
        p = Probe(port, protocol, persistent)
        made.append(p)
        return p

    yield make
    for p in made:
        try:
            p.close()
        except Exception:  # noqa: BLE001
            pass


def simulation_doc(workdir: Path, port: int) -> dict[str, Any]:
    """config/simulation.yaml as shipped, on a test broker with its storage (and scene) under `workdir/state`.

    The shipped file's relative paths are relative to config/: they are resolved into the repo.
    """
    doc: dict[str, Any] = yaml.safe_load((REPO / "config" / "simulation.yaml").read_text())
    doc["mqtt"].update({"port": port, "host": "127.0.0.1"})
    doc["storage"]["path"] = str(workdir / "state")
    doc["detector"]["model"] = str((REPO / "config" / doc["detector"]["model"]).resolve())
    doc["simulation"]["samples"] = str((REPO / "config" / doc["simulation"]["samples"]).resolve())
    doc["camera"]["source"] = str(workdir / "state" / "sim-scene")
    return doc


def write_config(path: Path, broker_port: int, storage: Path, device_id: str = "testbin", **sections: Any) -> Path:
    """A daemon config for tests: real broker port, private storage, fast intervals."""
    doc: dict[str, Any] = {
        "device": {"id": device_id},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "state_interval_s": 2,
                 "reconnect": {"min_s": 0.2, "max_s": 1.0, "auth_failure_s": 2.0}},
        "storage": {"path": str(storage)},
        "health": {"interval_s": 1},
        "logging": {"level": "DEBUG", "journal": "off"},
        "runtime": {"stop_timeout_s": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = _merge(doc[key], value)
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class DaemonProcess:
    """`python -m smartbin_daemon run` as a real subprocess."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.config = config
        self.log_path = log or config.with_suffix(".log")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        for var in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if var not in (env or {}):
                full_env.pop(var, None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "smartbin_daemon", "run", "--config", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO))

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit; return the exit code."""
        return self.proc.wait(timeout)

    def log(self) -> str:
        """Everything it printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if needed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons; every one still running at teardown is stopped."""
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def live_query(storage: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query a running daemon's database in `storage` (a WAL reader never blocks it)."""
    db = sqlite3.connect(storage / DB_NAME, timeout=5)
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()
