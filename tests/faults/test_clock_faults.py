"""Wall-clock steps, as on a Pi without RTC: the daemon boots at 1970 with no network, NTP then steps the clock
to the real time, later back by an hour and forward by a day. Items keep flowing at the configured interval,
timeouts neither fire early nor late, requests keep working, MQTT stays connected, no event is lost, and the
events stamped while the clock was unset arrive with their real time (`ts_source: corrected`).

The daemon runs under tests/faults/clockshift.py, which shifts only its wall clock (see there why)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from smartbin_daemon.clock import CLOCK_SANE_AFTER
from smartbin_daemon.runtime.auth import sign
from smartbin_daemon.store import DB_NAME

from ..conftest import REPO, Broker, DaemonProcess, Probe, live_query, wait_until
from ..test_bin_e2e import SIM_ROOT, fast_simulation_config
from . import clockshift
from .knobs import LONG, scaled

DEVICE = "sim-bin"
INTERVAL_S = 2.5
"""simulation.item_interval_s: one item every INTERVAL_S seconds of monotonic time, whatever the wall clock says."""
BOOT_WALL = 1000.0
"""Where the bin's wall clock starts: 1970-01-01T00:16:40Z."""
STEPS = [("back 1 h", -3600.0), ("forward 1 day", 86400.0)]
ITEMS_PER_PHASE = int(scaled(2, 8))
SECRET = "clock-test-secret-0123456789abcdef"
ITEM_STARTED = re.compile(r"workflow idle -> item_present \[item ([0-9a-f]+)\]")


class ShiftedDaemon(DaemonProcess):
    """The daemon under clockshift: its wall clock is the real one plus the offset in `offset_file`."""

    def __init__(self, config: Path, offset_file: Path) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(clockshift.command(offset_file, config), stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(REPO))


class Arrivals:
    """When (real wall time and monotonic time) each message reached the probe."""

    def __init__(self, probe: Probe) -> None:
        self.items: list[tuple[float, float, str, bytes]] = []
        self._lock = threading.Lock()
        original = probe.client.on_message

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            with self._lock:
                self.items.append((time.time(), time.monotonic(), msg.topic, bytes(msg.payload)))
            if original is not None:
                original(client, userdata, msg)

        probe.client.on_message = on_message

    def events(self, type_: str | None = None) -> list[tuple[float, float, dict[str, Any]]]:
        """(real wall, monotonic, envelope) of every event received, duplicates included."""
        prefix = f"{SIM_ROOT}/event/" + (type_ or "")
        with self._lock:
            return [(w, m, json.loads(p)) for w, m, t, p in self.items if t.startswith(prefix)]


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker (not started) that keeps the consumer's session while it is down."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir, persistence=True)
    yield b
    b.stop()


@pytest.fixture
def shifted() -> Iterator[Callable[[Path, Path], ShiftedDaemon]]:
    """Start daemons under clockshift; any still running at teardown is stopped."""
    started: list[ShiftedDaemon] = []

    def start(config: Path, offset_file: Path) -> ShiftedDaemon:
        d = ShiftedDaemon(config, offset_file)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def iso_to_ts(iso: str) -> float:
    """`1970-01-01T00:16:40.123Z` -> unix seconds."""
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("vision", [
    pytest.param(False, id="degraded"),
    pytest.param(True, id="vision", marks=pytest.mark.skipif(not LONG, reason="bench only (SMARTBIN_FAULT_LONG=1): "
                                                               "loading the model adds 5-10 s")),
])
def test_wall_clock_steps_from_1970_and_back_and_forth_change_only_the_stamps(
        tmp_path: Path, durable_broker: Broker, probe_factory: Callable[..., Probe],
        shifted: Callable[[Path, Path], ShiftedDaemon], vision: bool) -> None:
    secret_file = tmp_path / "hmac-secret"
    secret_file.write_text(SECRET + "\n")
    off = {} if vision else {"camera": {"enabled": False}, "detector": {"enabled": False}}
    config = fast_simulation_config(
        tmp_path, durable_broker.port, simulation={"item_interval_s": INTERVAL_S, "item_dwell_s": 1.2},
        mqtt={"reconnect": {"min_s": 0.2, "max_s": 1.0}, "state_interval_s": 2},
        security={"privileged": "hmac", "hmac_secret_file": str(secret_file)},
        arduino={"simulator": {"compartments": 3, "item_mm": 10}},  # residual takes every item: keep it from filling
        **off)
    storage = tmp_path / "state"
    log_path = config.with_suffix(".log")

    # A consumer with a durable session: it gets what the bin sends while it is away or the broker is down.
    durable_broker.start()
    probe = probe_factory(durable_broker.port, persistent=True)
    probe.subscribe(f"{SIM_ROOT}/event/#")
    probe.subscribe(f"{SIM_ROOT}/mqtt")
    probe.subscribe(f"{SIM_ROOT}/availability")
    arrivals = Arrivals(probe)
    durable_broker.stop()

    def log() -> str:
        return log_path.read_text(errors="replace") if log_path.exists() else ""

    # -- boot: clock at 1970, no network ----------------------------------------------------------------------
    offset_file = tmp_path / "clock-offset"
    offset = BOOT_WALL - time.time()
    clockshift.set_offset(offset_file, offset)
    spawned_wall = time.time()
    daemon = shifted(config, offset_file)
    clockshift.wait_applied(offset_file, offset, timeout_s=20)
    first_sorted_seen = 0.0
    deadline = time.monotonic() + 20 + (10 if vision else 0) + 2 * INTERVAL_S * ITEMS_PER_PHASE
    while log().count(" sorted: ") < ITEMS_PER_PHASE:  # watch closely: when did the first item really finish?
        if not first_sorted_seen and " sorted: " in log():
            first_sorted_seen = time.time()
        assert time.monotonic() < deadline, "items sorted while the clock is unset and the broker unreachable"
        time.sleep(0.02)
    rows = live_query(storage, "SELECT ts, ts_source FROM outbox")
    assert rows and all(ts < CLOCK_SANE_AFTER and src == "unsynced" for ts, src in rows), rows

    # -- NTP steps the clock to the real time, then the broker becomes reachable ------------------------------
    clockshift.set_offset(offset_file, 0.0)
    clockshift.wait_applied(offset_file, 0.0)
    stepped_wall = time.time()
    durable_broker.start()

    def last_seq() -> int:
        return int(live_query(storage, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")[0][0])

    def all_arrived() -> bool:
        return {e["seq"] for _, _, e in arrivals.events()} >= set(range(1, last_seq() + 1))

    wait_until(all_arrived, timeout=20, what="the outbox replayed after the broker came back")
    online_mono = time.monotonic()
    unsynced_era = [e for _, _, e in arrivals.events() if e["ts_source"] != "clock"]
    assert unsynced_era and {e["ts_source"] for e in unsynced_era} == {"corrected"}, \
        "every event stamped at 1970 was still queued when the clock was set: all corrected"
    for e in unsynced_era:
        assert spawned_wall - 1.0 <= iso_to_ts(e["ts"]) <= stepped_wall + 0.5, e
    first_sorted = min((e for e in unsynced_era if e["type"] == "item_sorted"), key=lambda e: e["seq"])
    assert first_sorted_seen - 1.5 <= iso_to_ts(first_sorted["ts"]) <= first_sorted_seen + 0.1, \
        "the corrected stamp is when the item really was sorted"
    by_seq = sorted({e["id"]: e for _, _, e in arrivals.events()}.values(), key=lambda e: e["seq"])
    stamps = [iso_to_ts(e["ts"]) for e in by_seq]
    assert stamps == sorted(stamps), "corrected stamps keep the events' order"
    assert probe.request(SIM_ROOT, "ping")["status"] == "ok"

    # -- steps of the set clock: back an hour, forward a day ----------------------------------------------------
    for name, step in STEPS:
        clockshift.set_offset(offset_file, step)
        clockshift.wait_applied(offset_file, step)
        stepped_mono = time.monotonic()
        seen = log().count(" sorted: ")
        wait_until(lambda: log().count(" sorted: ") >= seen + ITEMS_PER_PHASE,  # noqa: B023
                   timeout=10 + 4 * INTERVAL_S * ITEMS_PER_PHASE, what=f"items sorted after the step {name}")
        wait_until(all_arrived, timeout=10, what=f"events delivered after the step {name}")
        for wall, mono, e in arrivals.events():
            if mono > stepped_mono + 0.5:  # emitted after the step: stamped by the stepped clock, as it should be
                assert e["ts_source"] == "clock" and abs(iso_to_ts(e["ts"]) - (wall + step)) < 2.0, (name, e)
        assert probe.request(SIM_ROOT, "ping")["status"] == "ok"
        args = {"what": ["dataset"]}
        signed_by_bin_clock = {"args": args, "auth": sign(SECRET, DEVICE, "storage/cleanup", args, ts=time.time() + step)}
        answer = probe.request(SIM_ROOT, "storage/cleanup", signed_by_bin_clock)
        assert answer["status"] == "ok", (name, answer)
        signed_by_real_clock = {"args": args, "auth": sign(SECRET, DEVICE, "storage/cleanup", args)}
        answer = probe.request(SIM_ROOT, "storage/cleanup", signed_by_real_clock)
        assert answer["status"] == "error" and "stale or from the future" in answer["error"], \
            "the documented skew check: the bin's clock is off by more than security.max_skew_s"

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    time.sleep(0.3)

    # -- nothing lost, nothing duplicated, connected throughout --------------------------------------------------
    n = int(sqlite3.connect(storage / DB_NAME).execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0])
    events = [e for _, _, e in arrivals.events()]
    assert {e["seq"] for e in events} == set(range(1, n + 1)), "every persisted event arrived"
    assert sqlite3.connect(storage / DB_NAME).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    duplicates = sum(Counter(e["id"] for e in events).values()) - len({e["id"] for e in events})
    mqtt_state = [m.json() for m in probe.on(f"{SIM_ROOT}/mqtt")][-1]
    assert (mqtt_state["connects"], mqtt_state["disconnects"]) == (1, 0), "one connection, never dropped"
    availability = [m.payload for m in probe.on(f"{SIM_ROOT}/availability") if not m.retain]
    assert availability[-1] == b"offline" and b"offline" not in availability[:-1], "offline only at the clean stop"

    # -- timeouts: none fired early (a forward step) and nothing waited for the wall clock (a backward step) -----
    unique = list({e["id"]: e for e in events}.values())
    sorted_items = [e["data"] for e in unique if e["type"] == "item_sorted"]
    # With vision, the first items wait for the model to load (5-10 s): judge those sorted once online.
    checked = [e["data"] for _, mono, e in arrivals.events("item_sorted") if mono > online_mono] if vision \
        else sorted_items
    assert checked
    for d in checked:
        assert d["confirmation"] in ("drop", "weight", "fill"), d
        assert not any("no decision within" in note for note in d["notes"]), d
        assert 0 < d["latency"]["total_ms"] < (5000 if vision else 3000), d["latency"]
    outcomes = Counter(e["data"]["item_id"] for e in unique
                       if e["type"] in ("item_sorted", "item_refused", "item_failed", "item_interrupted"))
    started = ITEM_STARTED.findall(log())
    assert all(outcomes[i] == 1 for i in started), "one outcome per item"
    presents = [mono for _, mono, e in sorted(arrivals.events("item_present"), key=lambda a: a[1])
                if mono > online_mono]
    gaps = [b - a for a, b in zip(presents, presents[1:])]
    assert gaps and min(gaps) > 0.5 * INTERVAL_S and max(gaps) < 1.6 * INTERVAL_S + 0.5, gaps
    mean_gap = sum(gaps) / len(gaps)
    assert abs(mean_gap - INTERVAL_S) < 0.2 * INTERVAL_S, gaps
    print(f"\nclock: {n} events ({len(unsynced_era)} corrected, {duplicates} duplicate deliveries), "
          f"{len(sorted_items)} items sorted, item gaps after the steps {min(gaps):.2f}-{max(gaps):.2f}s "
          f"(mean {mean_gap:.2f}s, configured {INTERVAL_S}s), latency total_ms max "
          f"{max(d['latency']['total_ms'] for d in checked)}")
