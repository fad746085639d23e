"""Durable events: kept on disk until PUBACK, replayed in order after broker outages and daemon restarts."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartbin_daemon.clock import iso_utc
from smartbin_daemon.config import parse_config
from smartbin_daemon.mqtt.client import MqttWorker
from smartbin_daemon.mqtt.outbox import BACKLOG_CHECK_S, Backlog, Outbox
from smartbin_daemon.runtime.bus import Bus, Event
from smartbin_daemon.runtime.commands import RequestRegistry
from smartbin_daemon.store import DB_NAME, Store

from .conftest import Broker, DaemonProcess, Probe, wait_until, write_config

ROOT = "smartbin/obx"


class Harness:
    """An MQTT worker with its own durable outbox, run in a thread like the supervisor does."""

    def __init__(self, storage: Path, port: int, **outbox: Any) -> None:
        self.store = Store(storage / DB_NAME)
        self.outbox = Outbox(self.store, max_events=100_000)
        self.bus = Bus(self.outbox)
        self.alerts = self.bus.subscribe("alerts-seen", (Event,))
        cfg = parse_config({"device": {"id": "obx"}, "storage": {"path": str(storage)},
                            "mqtt": {"host": "127.0.0.1", "port": port, "reconnect": {"min_s": 0.1, "max_s": 0.5},
                                     "outbox": outbox}})
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
def harness_factory() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(storage: Path, port: int, **outbox: Any) -> Harness:
        h = Harness(storage, port, **outbox)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.thread.is_alive():
            h.close()


def delivered(probe: Probe, type_: str = "test") -> list[dict]:
    return [m.json() for m in probe.on(f"{ROOT}/event/{type_}")]


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


def backlog_alerts(h: Harness, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    while (msg := h.alerts.get(0) if len(h.alerts) else None) is not None:
        if msg.type == "alert" and msg.data["code"] == "outbox_backlog":
            seen.append(msg.data)
    return seen


def test_an_outbox_backlog_raises_a_warning_while_the_broker_is_down_and_clears_once_delivered(
        tmp_path: Path, durable_broker: Broker, harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(tmp_path, durable_broker.port, alert_events=20)
    wait_until(lambda: h.worker.status == "connected", what="connected")
    durable_broker.stop()
    wait_until(lambda: h.worker.status != "connected", what="disconnect noticed")
    seen: list[dict[str, Any]] = []
    h.emit(19)
    time.sleep(BACKLOG_CHECK_S + 0.5)
    assert backlog_alerts(h, seen) == [], "19 waiting is below the limit"
    h.emit(1)
    wait_until(lambda: backlog_alerts(h, seen), timeout=BACKLOG_CHECK_S + 3, what="the backlog alert")
    assert seen[0]["severity"] == "warning" and seen[0]["active"] and seen[0]["source"] == "mqtt"
    assert seen[0]["message"].startswith("event outbox backlog: 20 events waiting (limit 20)")
    durable_broker.start()
    wait_until(lambda: len(backlog_alerts(h, seen)) == 2, timeout=30, what="the alert cleared once delivered")
    assert seen[1]["active"] is False and len(h.outbox) < 18


def test_the_backlog_alert_also_watches_the_oldest_event_s_age() -> None:
    backlog = Backlog(max_events=1000, max_age_s=1800)
    assert backlog.check(0.0, 3, lambda: 1700.0) is None
    assert backlog.check(1.0, 3, lambda: 1900.0) is None, "checked at most every BACKLOG_CHECK_S"
    raised = backlog.check(BACKLOG_CHECK_S, 3, lambda: 1900.0)
    assert raised is not None and raised.active and "the oldest waiting for 32 min (limit 30)" in raised.message
    assert backlog.check(2 * BACKLOG_CHECK_S, 3, lambda: 1700.0) is None, "still within 90 % of the limit"
    cleared = backlog.check(3 * BACKLOG_CHECK_S, 0, lambda: None)
    assert cleared is not None and not cleared.active and backlog.oldest_age_s is None


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
        reloads = interval - 1
        wait_until(lambda: daemon.log().count("config reloaded") >= reloads, what="reload")  # noqa: B023
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


def test_acknowledged_events_are_forgotten_together_and_only_they(tmp_path: Path) -> None:
    ob = Outbox(Store(tmp_path / DB_NAME))
    for i in range(1200):  # more than one DELETE chunk
        ob.append(Event("test", {"i": i}, "t"))
    seqs = [e.seq for e in ob.pending(limit=2000)]
    ob.ack_many(seqs[:700] + seqs[701:1100] + [10**9])  # keep #700 and the tail; an unknown seq is ignored
    assert len(ob) == 101
    assert [e.data["i"] for e in ob.pending(limit=2000)] == [700, *range(1100, 1200)]


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


# -- timestamps of a bin whose wall clock is not set yet (Pi without RTC before NTP) --------------------


class FakeClocks:
    """A wall clock that can be stepped and a monotonic clock that only runs forward."""

    def __init__(self, wall: float, mono: float = 5_000.0) -> None:
        self.wall_now = wall
        self.mono_now = mono

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds


BOOT = "8d4c6f8a-1b2c-4d5e-9f00-112233445566"
NTP_TIME = 1_750_000_000.0  # what NTP steps the clock to


def clocked_outbox(store: Store, clocks: FakeClocks, boot: str = BOOT) -> Outbox:
    return Outbox(store, wall=clocks.wall, mono=clocks.mono, boot_id=boot)


def unsynced_event(clocks: FakeClocks, i: int) -> Event:
    return Event("test", {"i": i}, "t", ts=clocks.wall())


def test_events_stamped_before_the_clock_was_set_get_their_time_from_monotonic_time_once_it_is(tmp_path: Path) -> None:
    clocks = FakeClocks(wall=12.0)  # booted at 1970 + a few seconds
    ob = clocked_outbox(Store(tmp_path / DB_NAME), clocks)
    ob.append(unsynced_event(clocks, 0))
    clocks.advance(30)
    ob.append(unsynced_event(clocks, 1))
    clocks.advance(15)
    assert [(e.ts, e.ts_source) for e in ob.pending()] == [(12.0, "unsynced"), (42.0, "unsynced")]
    clocks.wall_now = NTP_TIME  # NTP steps the clock; monotonic time does not jump
    clocks.advance(5)
    got = ob.pending()
    assert [e.ts_source for e in got] == ["corrected", "corrected"]
    # The first event happened 50 s of monotonic time before "now", the second 20 s.
    assert [e.ts for e in got] == [pytest.approx(NTP_TIME + 5 - 50), pytest.approx(NTP_TIME + 5 - 20)]
    body = json.loads(got[0].payload("obx"))
    assert body["ts_source"] == "corrected" and body["ts"] == iso_utc(NTP_TIME - 45)
    ob.append(Event("test", {"i": 2}, "t", ts=clocks.wall()))
    assert [e.ts_source for e in ob.pending()] == ["corrected", "corrected", "clock"]


def test_stamps_are_corrected_by_the_next_event_even_while_nothing_is_sent_and_stay_corrected_after_a_restart(
        tmp_path: Path) -> None:
    clocks = FakeClocks(wall=100.0)
    store = Store(tmp_path / DB_NAME)
    ob = clocked_outbox(store, clocks)
    ob.append(unsynced_event(clocks, 0))
    clocks.advance(10)
    clocks.wall_now = NTP_TIME
    ob.append(Event("test", {"i": 1}, "t", ts=clocks.wall()))  # the broker is unreachable: no pending() call
    store.close()
    clocks.advance(3600)  # an hour later, after a daemon restart in the same boot
    ob2 = clocked_outbox(Store(tmp_path / DB_NAME), clocks)
    assert [(e.ts, e.ts_source) for e in ob2.pending()] == [(pytest.approx(NTP_TIME - 10), "corrected"),
                                                             (NTP_TIME, "clock")]


def test_events_from_an_earlier_boot_keep_their_unsynced_stamp(tmp_path: Path) -> None:
    clocks = FakeClocks(wall=20.0)
    store = Store(tmp_path / DB_NAME)
    ob = clocked_outbox(store, clocks, boot="earlier-boot")
    ob.append(unsynced_event(clocks, 0))
    store.close()
    # Power cut; the next boot starts at 1970 again with a new boot id and a restarted monotonic clock.
    clocks = FakeClocks(wall=8.0, mono=3.0)
    ob2 = clocked_outbox(Store(tmp_path / DB_NAME), clocks, boot="this-boot")
    ob2.append(unsynced_event(clocks, 1))
    clocks.wall_now = NTP_TIME
    got = ob2.pending()
    assert [(e.data["i"], e.ts, e.ts_source) for e in got] == [(0, 20.0, "unsynced"),
                                                              (1, NTP_TIME, "corrected")]


def test_without_a_boot_id_nothing_is_corrected(tmp_path: Path) -> None:
    clocks = FakeClocks(wall=20.0)
    ob = Outbox(Store(tmp_path / DB_NAME), wall=clocks.wall, mono=clocks.mono, boot_id=None)
    ob.boot_id = None  # e.g. not Linux: no /proc/sys/kernel/random/boot_id
    ob.append(unsynced_event(clocks, 0))
    clocks.wall_now = NTP_TIME
    assert [(e.ts, e.ts_source) for e in ob.pending()] == [(20.0, "unsynced")]


def test_replayed_payloads_are_byte_identical_until_the_stamp_is_corrected(tmp_path: Path) -> None:
    clocks = FakeClocks(wall=NTP_TIME)
    ob = clocked_outbox(Store(tmp_path / DB_NAME), clocks)
    ob.append(Event("test", {"b": 1, "a": [1, 2]}, "t", ts=clocks.wall()))
    first = ob.pending()[0].payload("obx")
    clocks.advance(3600)
    assert ob.pending()[0].payload("obx") == first  # a replay after reconnect or restart: the same bytes
    assert json.loads(first)["ts_source"] == "clock"

    clocks2 = FakeClocks(wall=50.0)
    ob2 = clocked_outbox(Store(tmp_path / "other.db"), clocks2)
    ob2.append(unsynced_event(clocks2, 0))
    unsynced = ob2.pending()[0].payload("obx")
    assert ob2.pending()[0].payload("obx") == unsynced
    clocks2.wall_now = NTP_TIME
    corrected = ob2.pending()[0].payload("obx")
    assert corrected != unsynced
    a, b = json.loads(unsynced), json.loads(corrected)
    assert (a["ts_source"], b["ts_source"]) == ("unsynced", "corrected")
    assert {k: v for k, v in a.items() if k not in ("ts", "ts_source")} == \
        {k: v for k, v in b.items() if k not in ("ts", "ts_source")}, "same id, seq and data"
    assert ob2.pending()[0].payload("obx") == corrected


def test_an_event_acknowledged_while_unsynced_is_gone_and_the_rest_are_corrected(tmp_path: Path) -> None:
    clocks = FakeClocks(wall=30.0)
    ob = clocked_outbox(Store(tmp_path / DB_NAME), clocks)
    ob.append(unsynced_event(clocks, 0))
    ob.append(unsynced_event(clocks, 1))
    ob.ack(ob.pending()[0].seq)  # delivered with its 1970 stamp and ts_source "unsynced"
    clocks.advance(2)
    clocks.wall_now = NTP_TIME
    assert [(e.data["i"], e.ts_source) for e in ob.pending()] == [(1, "corrected")]


def test_the_age_bound_never_drops_events_by_an_unsynced_stamp_nor_while_the_clock_is_unset(tmp_path: Path) -> None:
    clocks = FakeClocks(wall=1000.0)
    ob = Outbox(Store(tmp_path / DB_NAME), max_age_days=1, wall=clocks.wall, mono=clocks.mono, boot_id=BOOT)
    ob.append(unsynced_event(clocks, 0))
    assert ob.prune_expired() == 0 and ob.oldest_age_s() is None
    clocks.wall_now = NTP_TIME
    clocks.advance(10)
    assert ob.prune_expired() == 0
    assert ob.oldest_age_s() == pytest.approx(10.0), "corrected: its real age"


def test_an_outbox_from_before_the_timestamp_columns_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript("""
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
                             component TEXT NOT NULL, ts REAL NOT NULL, data TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO outbox (id, type, component, ts, data) VALUES ('a', 'test', 't', 1700000000.5, '{"i":0}');
        INSERT INTO outbox (id, type, component, ts, data) VALUES ('b', 'test', 't', 77.0, '{"i":1}');
    """)
    db.commit()
    db.close()
    clocks = FakeClocks(wall=NTP_TIME)
    ob = clocked_outbox(Store(tmp_path / DB_NAME), clocks)
    ob.append(Event("test", {"i": 2}, "t", id="c", ts=NTP_TIME))
    got = ob.pending()
    assert [(e.id, e.seq, e.ts, e.ts_source) for e in got] == [
        ("a", 1, 1700000000.5, "clock"), ("b", 2, 77.0, "unsynced"), ("c", 3, NTP_TIME, "clock")]
    columns = [r[1] for r in sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA table_info(outbox)")]
    assert columns[-3:] == ["ts_source", "mono", "boot"]
    assert len(ob) == 3


def test_a_duplicate_event_id_is_stored_once_and_counted_once(tmp_path: Path) -> None:
    ob = Outbox(Store(tmp_path / DB_NAME))
    event = Event("test", {}, "t")
    ob.append(event)
    ob.append(event)
    assert len(ob) == 1 and len(ob.pending()) == 1


def test_statements_given_with_an_event_commit_with_it_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path / DB_NAME)
    store.execute("CREATE TABLE item (id TEXT PRIMARY KEY)")
    store.execute("INSERT INTO item (id) VALUES ('a'), ('b')")
    ob = Outbox(store)
    ob.append(Event("item_sorted", {"item_id": "a"}, "t"), also=[("DELETE FROM item WHERE id = ?", ("a",))])
    assert store.query("SELECT id FROM item") == [("b",)] and len(ob) == 1
    with pytest.raises(sqlite3.OperationalError):
        ob.append(Event("item_sorted", {"item_id": "b"}, "t"),
                  also=[("DELETE FROM item WHERE id = ?", ("b",)), ("UPDATE no_such_table SET x = 1", ())])
    assert store.query("SELECT id FROM item") == [("b",)], "rolled back with the event"
    assert [e.data["item_id"] for e in ob.pending()] == ["a"] and len(ob) == 1
