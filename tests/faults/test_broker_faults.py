"""Broker outages while events flow: the real daemon against a real mosquitto that is stopped and started
in a loop. Every event the daemon emitted reaches a durable consumer exactly once after dedupe by id, none is
lost, and each event type arrives in `seq` order."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smartbin_daemon.hardware.arduino.simulator import SimulatedArduino
from smartbin_daemon.store import DB_NAME

from ..conftest import REPO, Broker, DaemonProcess, Probe, wait_until, write_config
from .knobs import LONG, scaled

logger = logging.getLogger(__name__)

ROOT = "smartbin/testbin"
CYCLES = int(scaled(4, 20))
UP_S = scaled(2.0, 3.0)
"""Events flow with the broker up this long before each stop."""
DOWN_S = scaled(1.5, 2.5)
"""The broker stays down this long (the daemon keeps emitting into its outbox)."""
LID_PERIOD_S = 0.1
"""The steady event source: the simulated MCU's lid changes this often (one door event each)."""
RECOVERY_BOUND_S = 10.0
COMPARTMENTS = [
    {"id": "recycling", "name": "Recycling", "categories": ["plastic", "metal", "glass"],
     "sensor": {"source": "arduino", "channel": 1}},
    {"id": "paper", "name": "Paper", "categories": ["paper_cardboard"], "sensor": {"source": "arduino", "channel": 2}},
    {"id": "residual", "name": "Residual", "categories": ["residual", "organic"], "sensor": {"source": "arduino", "channel": 3}},
]


class Outbox:
    """The daemon's side of the count, read from its SQLite file (the outbox's seq is gap-free from 1)."""

    def __init__(self, storage: Path) -> None:
        self.path = storage / DB_NAME

    def _one(self, sql: str) -> int:
        if not self.path.exists():
            return 0
        db = sqlite3.connect(self.path, timeout=10)
        try:
            row = db.execute(sql).fetchone()
        except sqlite3.OperationalError:  # the daemon has not created the table yet
            return 0
        finally:
            db.close()
        return int(row[0]) if row and row[0] is not None else 0

    def last_seq(self) -> int:
        """The seq of the newest event the daemon ever emitted (all of 1..last were emitted)."""
        return self._one("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")

    def pending(self) -> int:
        """Events not yet acknowledged by the broker."""
        return self._one("SELECT COUNT(*) FROM outbox")


class Stimulus:
    """Background physics for the daemon: the lid moves steadily and a full residual bag gets changed."""

    def __init__(self, sim: SimulatedArduino) -> None:
        self.sim = sim
        self.toggles = 0
        self.emptied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-faults-stimulus", daemon=True)

    def start(self) -> None:
        """Start moving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop moving and leave the lid closed."""
        self._stop.set()
        self._thread.join(5)
        self.sim.set_lid("closed")

    def _run(self) -> None:
        state = "closed"
        while not self._stop.wait(LID_PERIOD_S):
            state = "open" if state == "closed" else "closed"
            self.sim.set_lid(state)
            self.toggles += 1
            if self.sim.fill_mm(3) >= 240:
                self.sim.empty(3)
                self.emptied += 1


def daemon_config(tmp_path: Path, port: int, link: Path) -> Path:
    """Serial Arduino on the test's pty, mock presence, the sorting workflow and simulated items (no vision)."""
    return write_config(
        tmp_path / "c.yaml", port, tmp_path / "state",
        health={"enabled": False},
        arduino={"enabled": True, "backend": "serial", "port": str(link), "boot_wait_s": 0.5,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        gpio={"enabled": True, "pin_factory": "mock", "presence": {"pin": "GPIO17", "settle_s": 0.05}},
        bins={"enabled": True, "compartments": COMPARTMENTS,
              "workflow": {"confirm_timeout_s": 3},
              "fill": {"filter": {"window": 3, "min_samples": 2, "confirm_s": 1, "settle_s": 0},
                       "emptying": {"confirm_s": 1}}},
        simulation={"enabled": True, "samples": str(REPO / "tests" / "data" / "samples"),
                    "item_interval_s": 1.0, "item_dwell_s": 0.4, "empty_after_s": None},
    )


def envelopes(probe: Probe) -> list[dict[str, Any]]:
    """Every event envelope the consumer received, duplicates included, in arrival order."""
    return [m.json() for m in probe.under(f"{ROOT}/event/")]


def test_broker_restarts_while_events_flow_deliver_every_event_once_in_order_per_type(
        tmp_path: Path, durable_broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    t_start = time.monotonic()
    link = tmp_path / "arduino.tty"
    outbox = Outbox(tmp_path / "state")
    with SimulatedArduino(link, compartments=3, telemetry_interval_s=0.2, seed=3) as sim:
        probe = probe_factory(durable_broker.port, persistent=True)  # the broker queues for it while it is away
        probe.subscribe(f"{ROOT}/event/#")
        probe.subscribe(f"{ROOT}/availability")
        daemon = daemon_factory(daemon_config(tmp_path, durable_broker.port, link))

        def online() -> int:
            return sum(1 for m in probe.on(f"{ROOT}/availability") if m.payload == b"online")

        wait_until(lambda: online() >= 1, timeout=30, what="the daemon online")
        wait_until(lambda: probe.under(f"{ROOT}/event/item_sorted"), timeout=20, what="a first sorted item")
        stimulus = Stimulus(sim)
        stimulus.start()
        emitted_while_down: list[int] = []
        pending_peak = 0
        recoveries: list[float] = []
        try:
            for cycle in range(CYCLES):
                time.sleep(UP_S)
                connects = online()
                before = outbox.last_seq()
                durable_broker.stop()  # mid-flow: some events in flight, some not sent yet
                time.sleep(DOWN_S)
                emitted_while_down.append(outbox.last_seq() - before)
                pending_peak = max(pending_peak, outbox.pending())
                durable_broker.start()
                t0 = time.monotonic()
                wait_until(lambda: online() > connects, timeout=RECOVERY_BOUND_S,  # noqa: B023 - called at once
                           what=f"the daemon back online after restart {cycle + 1}")
                recoveries.append(time.monotonic() - t0)
        finally:
            stimulus.stop()
        # Everything emitted up to now must arrive (more keeps coming: the items do not stop).
        last = outbox.last_seq()

        def missing() -> set[int]:
            return set(range(1, last + 1)) - {e["seq"] for e in envelopes(probe)}

        try:
            wait_until(lambda: not missing(), timeout=30, what=f"all {last} events at the consumer")
        except AssertionError:
            raise AssertionError(f"events lost: {len(missing())} of {last}, e.g. seq {sorted(missing())[:20]}") from None
        got = envelopes(probe)
        lost = len(missing())
        assert daemon.proc.poll() is None, "the daemon died"
        assert "Traceback" not in daemon.log()

    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    seqs_by_id: dict[str, set[int]] = defaultdict(set)
    for e in got:
        ids_by_seq[e["seq"]].add(e["id"])
        seqs_by_id[e["id"]].add(e["seq"])
    assert all(len(v) == 1 for v in ids_by_seq.values()), "one seq carried two different events"
    assert all(len(v) == 1 for v in seqs_by_id.values()), "one event was published under two seqs"
    first_seen = list(dict.fromkeys(e["id"] for e in got))  # the consumer rule: dedupe by id
    by_id = {e["id"]: e for e in got}
    per_type: dict[str, list[int]] = defaultdict(list)
    for event_id in first_seen:
        per_type[by_id[event_id]["type"]].append(by_id[event_id]["seq"])
    out_of_order = {t: s for t, s in per_type.items() if s != sorted(s)}
    assert not out_of_order, f"events of a type arrived out of seq order: {out_of_order}"
    global_seqs = [by_id[i]["seq"] for i in first_seen]
    inversions = sum(1 for a, b in zip(global_seqs, global_seqs[1:]) if b < a)
    duplicates = len(got) - len(first_seen)
    assert {"door_opened", "door_closed", "item_present", "item_sorted"} <= set(per_type), sorted(per_type)
    assert all(n > 0 for n in emitted_while_down), f"no event was emitted during an outage: {emitted_while_down}"
    assert len(recoveries) == CYCLES and max(recoveries) < RECOVERY_BOUND_S
    figures = {
        "long": LONG, "cycles": CYCLES, "up_s": UP_S, "down_s": DOWN_S,
        "duration_s": round(time.monotonic() - t_start, 1),
        "emitted_checked": last, "received_messages": len(got), "unique_events": len(first_seen),
        "duplicates": duplicates, "lost": lost, "global_inversions": inversions,
        "types": {t: len(s) for t, s in sorted(per_type.items())},
        "emitted_while_down": emitted_while_down, "outbox_pending_peak": pending_peak,
        "reconnect_s_max": round(max(recoveries), 2),
        "reconnect_s_mean": round(sum(recoveries) / len(recoveries), 2),
        "lid_toggles": stimulus.toggles,
    }
    logger.info("broker fault figures: %s", figures)
    print(f"\nFAULT-FIGURES broker {figures}")
