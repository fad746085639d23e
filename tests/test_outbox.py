"""Durable events: kept on disk until PUBACK, replayed in order after broker outages and daemon restarts."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from smartbin_daemon.config import parse_config
from smartbin_daemon.mqtt.client import MqttWorker
from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.bus import Bus, Event
from smartbin_daemon.runtime.commands import RequestRegistry
from smartbin_daemon.store import DB_NAME, Store

from .conftest import Broker, DaemonProcess, Probe, wait_until, write_config

ROOT = "smartbin/obx"


class Harness:
    """An MQTT worker with its own durable outbox, run in a thread like the supervisor does."""

    def __init__(self, storage: Path, port: int) -> None:
        self.store = Store(storage / DB_NAME)
        self.outbox = Outbox(self.store, max_events=100_000)
        self.bus = Bus(self.outbox)
        cfg = parse_config({"device": {"id": "obx"}, "storage": {"path": str(storage)},
                            "mqtt": {"host": "127.0.0.1", "port": port, "reconnect": {"min_s": 0.1, "max_s": 0.5}}})
        self.worker = MqttWorker(self.bus, cfg, self.outbox, RequestRegistry())
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def emit(self, n: int, type_: str = "test", start: int = 0) -> list[str]:
        return [self.bus.emit_event(type_, {"i": i}, "test").id for i in range(start, start + n)]

    def close(self) -> None:
        self.worker.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.store.close()


@pytest.fixture
def harness_factory() -> Iterator[Callable[[Path, int], Harness]]:
    made: list[Harness] = []

    def make(storage: Path, port: int) -> Harness:
        h = Harness(storage, port)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.thread.is_alive():
            h.close()


def delivered(probe: Probe, type_: str = "test") -> list[dict]:
    return [m.json() for m in probe.on(f"{ROOT}/event/{type_}")]


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps sessions and queued messages across its own restarts (persistence on)."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir, persistence=True)
    b.start()
    yield b
    b.stop()


def test_events_emitted_while_the_broker_is_down_all_arrive_in_order(
        tmp_path: Path, durable_broker: Broker, probe_factory: Callable[..., Probe],
        harness_factory: Callable[[Path, int], Harness]) -> None:
    probe = probe_factory(durable_broker.port, persistent=True)
    probe.subscribe(f"{ROOT}/event/#")
    h = harness_factory(tmp_path, durable_broker.port)
    wait_until(lambda: h.worker.status == "connected", what="connected")
    durable_broker.stop()
    wait_until(lambda: h.worker.status != "connected", what="disconnect noticed")
    ids = h.emit(300)
    assert len(h.outbox) == 300
    durable_broker.start()
    wait_until(lambda: len(h.outbox) == 0, timeout=30, what="outbox drained")
    wait_until(lambda: len({e["id"] for e in delivered(probe)}) >= 300, timeout=15, what="all events at the consumer")
    got = delivered(probe)
    unique = list(dict.fromkeys(e["id"] for e in got))  # consumer rule: dedupe by id
    assert unique == ids
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(seqs)


def test_broker_restarts_while_events_flow_lose_nothing(
        tmp_path: Path, durable_broker: Broker, probe_factory: Callable[..., Probe],
        harness_factory: Callable[[Path, int], Harness]) -> None:
    probe = probe_factory(durable_broker.port, persistent=True)
    probe.subscribe(f"{ROOT}/event/#")
    h = harness_factory(tmp_path, durable_broker.port)
    wait_until(lambda: h.worker.status == "connected", what="connected")
    sent: list[str] = []
    for cycle in range(3):
        sent += h.emit(50, start=cycle * 100)
        durable_broker.stop()  # mid-flow: some events are in flight, some not yet sent
        sent += h.emit(50, start=cycle * 100 + 50)
        durable_broker.start()
        wait_until(lambda: len(h.outbox) == 0, timeout=30, what=f"outbox drained after restart {cycle}")
    wait_until(lambda: set(sent) <= {e["id"] for e in delivered(probe)}, timeout=15,
               what=f"all {len(sent)} events at the consumer")
    first_seen = list(dict.fromkeys(e["id"] for e in delivered(probe)))
    assert first_seen == sent, "in order per type after dedupe by id"


def test_a_daemon_restart_while_offline_loses_nothing(
        tmp_path: Path, probe_factory: Callable[..., Probe], daemon_factory: Callable[..., DaemonProcess]) -> None:
    broker = Broker(tmp_path)  # not started: the bin is offline
    cfg_path = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "state", device_id="obx")
    daemon = daemon_factory(cfg_path)
    wait_until(lambda: "started as obx" in daemon.log(), timeout=20, what="daemon start")
    for interval in (2, 3, 4):  # each SIGHUP with a change emits one config_changed event
        doc = yaml.safe_load(cfg_path.read_text())
        doc["health"]["interval_s"] = interval
        cfg_path.write_text(yaml.safe_dump(doc))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda i=interval: daemon.log().count("config reloaded") >= i - 1, what="reload")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    rows = sqlite3.connect(tmp_path / "state" / DB_NAME).execute("SELECT type FROM outbox ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ["config_changed"] * 3

    broker.start()
    try:
        probe = probe_factory(broker.port)
        probe.subscribe(f"{ROOT}/event/#")
        daemon_factory(cfg_path)
        wait_until(lambda: len(probe.on(f"{ROOT}/event/config_changed")) >= 3, timeout=20, what="replayed events")
        got = [m.json() for m in probe.on(f"{ROOT}/event/config_changed")]
        assert [e["data"]["applied"] for e in got[:3]] == [["health.interval_s"]] * 3
        wait_until(lambda: sqlite3.connect(tmp_path / "state" / DB_NAME).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0,
                   what="outbox emptied after PUBACK")
    finally:
        broker.stop()


def test_outbox_survives_reopen_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / DB_NAME)
    ob = Outbox(store)
    for i in range(5):
        ob.append(Event("test", {"i": i}, "t"))
    store.close()
    store2 = Store(tmp_path / DB_NAME)
    ob2 = Outbox(store2)
    assert len(ob2) == 5
    assert [e.data["i"] for e in ob2.pending()] == [0, 1, 2, 3, 4]
    ob2.ack(ob2.pending()[0].seq)
    assert [e.data["i"] for e in ob2.pending()] == [1, 2, 3, 4]


def test_outbox_bound_drops_oldest_and_counts_it(tmp_path: Path) -> None:
    ob = Outbox(Store(tmp_path / DB_NAME), max_events=100)
    for i in range(130):
        ob.append(Event("test", {"i": i}, "t"))
    assert len(ob) == 100
    assert ob.pending(limit=1)[0].data["i"] == 30
    assert ob.dropped() == {"dropped": 30, "dropped_size": 30}


def test_outbox_age_bound_ignores_unsynced_clock_stamps(tmp_path: Path) -> None:
    ob = Outbox(Store(tmp_path / DB_NAME), max_age_days=1)
    now = time.time()
    ob.append(Event("test", {"k": "old"}, "t", ts=now - 3 * 86400))
    ob.append(Event("test", {"k": "1970"}, "t", ts=1000.0))  # Pi booted without RTC and NTP
    ob.append(Event("test", {"k": "new"}, "t", ts=now))
    assert ob.prune_expired(now) == 1
    assert [e.data["k"] for e in ob.pending()] == ["1970", "new"]
    assert ob.dropped()["dropped_age"] == 1


def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_starts(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a sqlite database" * 100)
    store = Store(db)
    assert store.recovered_from is not None and store.recovered_from.exists()
    ob = Outbox(store)
    ob.append(Event("test", {}, "t"))
    assert len(ob) == 1


def test_event_types_cannot_inject_topic_levels() -> None:
    bus = Bus()
    for bad in ("a/b", "a+", "#", "", "Upper"):
        with pytest.raises(ValueError):
            bus.emit_event(bad, {}, "t")
