"""`kill -9` at random points: the real daemon in simulation (real model, pty Arduino, mock GPIO, SQLite) against a
real mosquitto is killed again and again, restarted each time, then stopped cleanly. Nothing it persisted is
lost, duplicates are only QoS 1 redeliveries of events unacknowledged at a kill, an item in flight at a kill is
reported `item_interrupted` exactly once, and the fill counters equal the `item_sorted` events."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.store import DB_NAME

from ..conftest import Broker, DaemonProcess, Probe, live_query, wait_until
from ..test_bin_e2e import SIM_ROOT, fast_simulation_config
from .knobs import LONG, scaled

KILLS = int(scaled(3, 15))
SEED = 90210
OUTCOMES = ("item_sorted", "item_refused", "item_failed", "item_interrupted")
ITEM_STARTED = re.compile(r"workflow idle -> item_present \[item ([0-9a-f]+)\]")


@dataclass
class KillSnapshot:
    """What the daemon's database held right after one kill."""

    when: str
    outbox: dict[int, str]
    """seq -> event id: persisted, not yet acknowledged by the broker."""
    in_flight: dict[str, str] = field(default_factory=dict)
    """item id -> workflow state of the item the kill interrupted."""


def crash_config(tmp_path: Path, port: int, vision: bool) -> Path:
    """The shipped simulation, items every 2.5 s, quick MQTT reconnects; without vision the workflow's degraded
    policy sends every item to residual (no model to load: a restart takes 1-2 s instead of 5-10 s)."""
    off = {} if vision else {"camera": {"enabled": False}, "detector": {"enabled": False}}
    return fast_simulation_config(tmp_path, port, simulation={"item_interval_s": 2.5, "item_dwell_s": 1.2},
                                  mqtt={"reconnect": {"min_s": 0.2, "max_s": 1.0}}, **off)


def read_db(storage: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query a copy of the database files (the daemon's own files stay exactly as the kill left them)."""
    copy = storage.parent / "db-copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        src = storage / f"{DB_NAME}{suffix}"
        if src.exists():
            shutil.copy2(src, copy / src.name)
    if not (copy / DB_NAME).exists():
        return []  # killed before the database was created
    db = sqlite3.connect(copy / DB_NAME)
    try:
        return list(db.execute(sql).fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # killed before that table was created
        raise
    finally:
        db.close()


def envelopes(probe: Probe) -> list[dict[str, Any]]:
    """Every event the consumer received, duplicates included, in arrival order."""
    return [m.json() for m in probe.under(f"{SIM_ROOT}/event/")]


def last_seq(storage: Path, query: Callable[[Path, str], list[tuple[Any, ...]]]) -> int:
    """The highest seq the outbox ever handed out (AUTOINCREMENT: gap-free from 1 unless an event is lost)."""
    rows = query(storage, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
    return int(rows[0][0]) if rows else 0


@pytest.mark.parametrize("vision", [
    pytest.param(False, id="degraded"),
    pytest.param(True, id="vision", marks=pytest.mark.skipif(not LONG, reason="bench only (SMARTBIN_FAULT_LONG=1): "
                                                               "each restart loads the model")),
])
def test_kill_9_at_random_points_loses_no_event_reports_each_interrupted_item_once_and_keeps_counters(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess], vision: bool) -> None:
    config = crash_config(tmp_path, broker.port, vision)
    storage = tmp_path / "state"
    log_path = config.with_suffix(".log")
    probe = probe_factory(broker.port)
    probe.subscribe(f"{SIM_ROOT}/event/#")
    probe.subscribe(f"{SIM_ROOT}/fill")
    rng = random.Random(SEED)

    def log_since(mark: int) -> str:
        return log_path.read_text(errors="replace")[mark:] if log_path.exists() else ""

    snapshots: list[KillSnapshot] = []
    for k in range(KILLS):
        mark = len(log_path.read_text(errors="replace")) if log_path.exists() else 0
        daemon = daemon_factory(config)
        if k % 2 == 0:  # anywhere: during start-up, idle, or mid-item
            delay = rng.uniform(0.3, 14.0 if vision else 6.0)
            time.sleep(delay)
            when = f"{delay:.2f}s after spawn"
        else:  # inside an item: after its presence, at a random point of classifying, routing or confirming
            nth, delay = rng.choice((1, 2)), rng.uniform(0.0, 1.5 if vision else 0.35)  # degraded items take ~0.3 s
            while True:
                started = wait_until(lambda: ITEM_STARTED.findall(log_since(mark))[nth - 1:],  # noqa: B023
                                     timeout=30, what=f"item {nth} after start {k + 1}")
                time.sleep(delay)
                if f"item {started[0]} sorted" not in log_since(mark):
                    break
                nth, delay = nth + 1, delay / 2  # it was done already: aim at the next one, earlier
            when = f"{delay:.2f}s after item {nth} started"
        assert daemon.proc.poll() is None, f"the daemon exited by itself before kill {k + 1}:\n{daemon.log()[-3000:]}"
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        outbox = {int(s): str(i) for s, i in read_db(storage, "SELECT seq, id FROM outbox")}
        in_flight = {str(i): str(s) for i, s in read_db(storage, "SELECT id, state FROM workflow_item")}
        snapshots.append(KillSnapshot(when, outbox, in_flight))

    # The last start runs until every interrupted item is reported and one more item is sorted, then stops cleanly.
    mark = len(log_path.read_text(errors="replace"))
    daemon = daemon_factory(config)
    wait_until(lambda: " sorted: " in log_since(mark), timeout=40,
               what="an item sorted after the last restart")
    interrupted_expected = {i for s in snapshots for i in s.in_flight}

    def reported() -> set[str]:
        return {e["data"]["item_id"] for e in envelopes(probe) if e["type"] == "item_interrupted"}

    wait_until(lambda: interrupted_expected <= reported(), timeout=20, what="every interrupted item reported")
    wait_until(lambda: {e["seq"] for e in envelopes(probe)} >= set(range(1, last_seq(storage, live_query) + 1)),
               timeout=20, what="every persisted event at the consumer")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    time.sleep(0.5)  # anything published on the way down reaches the probe

    # -- no event lost: seq is gap-free from 1, so every seq up to the last one must have arrived -------------
    n = last_seq(storage, read_db)
    got = envelopes(probe)
    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    seqs_by_id: dict[str, set[int]] = defaultdict(set)
    for e in got:
        ids_by_seq[e["seq"]].add(e["id"])
        seqs_by_id[e["id"]].add(e["seq"])
    missing = set(range(1, n + 1)) - set(ids_by_seq)
    assert not missing, f"events persisted but never delivered: seq {sorted(missing)}"
    assert all(len(v) == 1 for v in ids_by_seq.values()) and all(len(v) == 1 for v in seqs_by_id.values()), \
        "one id per seq and one seq per id"
    assert read_db(storage, "SELECT COUNT(*) FROM outbox") == [(0,)], "the outbox drained before the clean stop"
    in_outbox_at_a_kill = {i for s in snapshots for i in s.outbox.values()}
    assert in_outbox_at_a_kill <= set(seqs_by_id), "everything unacknowledged at a kill arrived later"

    # -- duplicates: only QoS 1 redeliveries of events the broker had not acknowledged when the daemon died ---
    copies = Counter(e["id"] for e in got)
    duplicated = {i for i, c in copies.items() if c > 1}
    assert duplicated <= in_outbox_at_a_kill, f"duplicates of events acknowledged before any kill: {duplicated - in_outbox_at_a_kill}"

    # -- items: one outcome each; the item in flight at a kill ends as item_interrupted, exactly once ----------
    unique = {e["id"]: e for e in got}.values()
    outcomes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in unique:
        if e["type"] in OUTCOMES:
            outcomes[e["data"]["item_id"]].append(e)
    started = set(ITEM_STARTED.findall(log_path.read_text(errors="replace")))
    for item in started | interrupted_expected:
        assert len(outcomes[item]) == 1, f"item {item}: {[e['type'] for e in outcomes[item]]} (one outcome expected)"
    for snap in snapshots:
        for item, state in snap.in_flight.items():
            (outcome,) = outcomes[item]
            assert outcome["type"] == "item_interrupted" and outcome["data"]["state"] == state, (snap.when, outcome)
    spurious = {i for i, es in outcomes.items() if es[0]["type"] == "item_interrupted"} - interrupted_expected
    assert not spurious, f"item_interrupted for items that were not in flight at a kill: {spurious}"

    # -- counters: the fill tracker counted exactly the item_sorted events, per compartment -------------------
    sorted_per = Counter(e["data"]["compartment"] for e in unique if e["type"] == "item_sorted")
    emptied_per: Counter[str] = Counter()
    for e in unique:
        if e["type"] == "bin_emptied":
            emptied_per[e["data"]["compartment"]] += int(e["data"]["items"])
    counters = {str(c): (int(i), int(t)) for c, i, t in read_db(storage, "SELECT compartment, items, items_total FROM fill_state")}
    for cid, (items, total) in counters.items():
        assert total == sorted_per[cid], f"{cid}: items_total {total} != {sorted_per[cid]} item_sorted events"
        assert items + emptied_per[cid] == total, f"{cid}: {items} since emptying + {emptied_per[cid]} emptied != {total}"
    assert set(sorted_per) <= set(counters)
    fill = [m.json() for m in probe.on(f"{SIM_ROOT}/fill")][-1]["compartments"]
    assert {cid: (c["items"], c["items_total"]) for cid, c in fill.items() if cid in counters} == counters, \
        "the published fill state shows the persisted counters"

    mid_item = sum(1 for s in snapshots if s.in_flight)
    print(f"\ncrash: {KILLS} kills ({mid_item} mid-item: {[next(iter(s.in_flight.values())) for s in snapshots if s.in_flight]}), "
          f"{n} events, {len(got) - len(copies)} duplicate deliveries of {len(duplicated)} event(s), "
          f"{len(started)} items ({sum(sorted_per.values())} sorted), unacknowledged at kills: "
          f"{[len(s.outbox) for s in snapshots]}, kill points: {[s.when for s in snapshots]}")
    assert mid_item >= 1, "at least one kill interrupted an item (the odd kills aim inside one)"
