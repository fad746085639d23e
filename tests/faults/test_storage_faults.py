"""Storage faults at daemon level: a corrupt, truncated or locked SQLite file at start is moved aside, the daemon
starts on a fresh one, raises `db_recovered` on MQTT and keeps working; a full evidence folder costs evidence,
never detections."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.bus import Event
from smartbin_daemon.store import BUSY_TIMEOUT_S, DB_NAME, Store
from smartbin_daemon.vision.evidence import DATASET_DIR, SNAPSHOT_DIR

from ..conftest import REPO, Broker, DaemonProcess, Probe, wait_until, write_config
from ..test_bin_e2e import SIM_ROOT, fast_simulation_config
from .knobs import scaled

ROOT = "smartbin/stor"
OLD_EVENTS = 200
START_MARGIN_S = 6.0
"""Python start-up and the daemon's own start steps on a busy 2-core box, on top of the busy timeout."""
ITEMS_AFTER_FULL = int(scaled(2, 10))
"""Detections that must still happen after the evidence folder filled up."""


def populated_db(storage: Path) -> Path:
    """A database like a running bin leaves behind: several pages, events still waiting in the outbox."""
    storage.mkdir(parents=True, exist_ok=True)
    store = Store(storage / DB_NAME)
    outbox = Outbox(store)
    for i in range(OLD_EVENTS):
        outbox.append(Event("test", {"i": i, "pad": "x" * 200}, "old"))
    store.close()
    return storage / DB_NAME


def corrupt_header(db: Path) -> None:
    """Random bytes over the 100-byte header (seeded)."""
    with db.open("r+b") as fh:
        fh.write(random.Random(7).randbytes(100))


def truncate(db: Path) -> None:
    """Cut the file in the middle of its pages (a write torn by a power cut on a card without barriers)."""
    os.truncate(db, db.stat().st_size // 2 + 1000)


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive_mode":
    db.execute("PRAGMA locking_mode=EXCLUSIVE")  # holds the whole file, readers included
db.execute("BEGIN EXCLUSIVE")  # in WAL mode: the write lock; reads still work
db.execute("INSERT INTO meta (key, value) VALUES ('locker', 'holding')")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def locker() -> Iterator[Callable[[Path, str], subprocess.Popen[str]]]:
    """Another process that takes a lock on the database and keeps it until the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def lock(db: Path, kind: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), kind], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield lock
    for proc in procs:
        proc.kill()
        proc.wait(5)


def started_at(daemon: DaemonProcess, since: float) -> float:
    """Seconds from `since` (monotonic) until the daemon logged that it started."""
    wait_until(lambda: "started as" in daemon.log(), timeout=BUSY_TIMEOUT_S + 20, what="daemon start")
    return time.monotonic() - since


@pytest.mark.parametrize("fault", ["header", "truncated", "write_lock", "exclusive_mode"])
def test_an_unusable_database_at_start_is_moved_aside_reported_and_the_daemon_keeps_working(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess], locker: Callable[[Path, str], subprocess.Popen[str]],
        fault: str) -> None:
    storage = tmp_path / "state"
    db = populated_db(storage)
    held: subprocess.Popen[str] | None = None
    if fault == "header":
        corrupt_header(db)
    elif fault == "truncated":
        truncate(db)
    else:
        held = locker(db, fault)
    damaged = hashlib.sha256(db.read_bytes()).hexdigest()
    reason = "locked" if held is not None else "corrupt"
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    config = write_config(tmp_path / "c.yaml", broker.port, storage, device_id="stor")
    spawned = time.monotonic()
    daemon = daemon_factory(config)
    start_s = started_at(daemon, spawned)
    print(f"\n{fault}: started {start_s:.2f}s after spawn (busy timeout {BUSY_TIMEOUT_S:.0f}s)")
    assert start_s < BUSY_TIMEOUT_S + START_MARGIN_S

    envelope = probe.wait_for(f"{ROOT}/event/alert", lambda m: m.json()["data"]["code"] == "db_recovered",
                              timeout=15).json()
    alert = envelope["data"]
    assert envelope["seq"] == 1, "the first event of the fresh outbox"
    assert alert["severity"] == "critical" and alert["active"] is True and alert["source"] == "storage"
    (aside,) = storage.glob(f"{DB_NAME}.{reason}-*[0-9]")
    assert str(aside) in alert["message"]
    assert f"is unusable ({reason}" in daemon.log()
    if held is None:
        assert hashlib.sha256(aside.read_bytes()).hexdigest() == damaged, "moved aside untouched, for analysis"

    # It keeps working on the fresh database: requests, new durable events, no failed worker.
    assert probe.request(ROOT, "ping")["status"] == "ok"
    doc = yaml.safe_load(config.read_text())
    doc["health"]["interval_s"] = 2
    config.write_text(yaml.safe_dump(doc))
    daemon.signal(signal.SIGHUP)
    changed = probe.wait_for(f"{ROOT}/event/config_changed", timeout=15).json()
    assert changed["data"]["applied"] == ["health.interval_s"] and changed["seq"] > 1
    wait_until(lambda: sqlite3.connect(db).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0,
               what="the fresh outbox drained")
    state = probe.wait_for(f"{ROOT}/daemon", lambda m: m.json()["workers"]).json()
    assert state["failed_workers"] == [] and all(w["restarts"] == 0 for w in state["workers"].values()), state
    assert daemon.proc.poll() is None

    if held is not None:
        assert held.poll() is None, "the other process still holds its (moved) file"
        held.kill()
        held.wait(5)
        rows = sqlite3.connect(aside).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        assert rows == OLD_EVENTS, "the locked file keeps its undelivered events for analysis"


@pytest.mark.parametrize("kind", ["write_lock", "exclusive_mode"])
def test_a_locked_database_is_given_up_after_the_busy_timeout(
        tmp_path: Path, locker: Callable[[Path, str], subprocess.Popen[str]], kind: str) -> None:
    db = populated_db(tmp_path)
    locker(db, kind)
    t0 = time.monotonic()
    store = Store(db, busy_timeout_s=0.5)
    waited = time.monotonic() - t0
    assert store.recovered_reason == "locked" and store.recovered_from is not None
    assert 0.45 <= waited < 3.0, waited
    outbox = Outbox(store)
    outbox.append(Event("test", {}, "t"))
    assert len(outbox) == 1


def test_an_unlocked_healthy_database_is_kept(tmp_path: Path) -> None:
    db = populated_db(tmp_path)
    store = Store(db)
    assert store.recovered_from is None and len(Outbox(store)) == OLD_EVENTS


# -- the evidence folder on a full disk, at daemon level --------------------------------------------------------

EMULATED_FULL = """
import sys
from smartbin_daemon.vision import evidence

free = int(sys.argv[1])
original = evidence.EvidenceStore.__init__

def init(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.emulated_free_bytes = free  # the card has this much left for evidence, then ENOSPC

evidence.EvidenceStore.__init__ = init
from smartbin_daemon.__main__ import main
sys.exit(main(sys.argv[2:]))
"""
TINY_FS_BYTES = 64 * 1024
"""Room for one or two snapshots (16-60 KB each) and the dataset's description files."""


class WrappedDaemon(DaemonProcess):
    """The daemon started by another command line (a mount namespace, a patched entry point)."""

    def __init__(self, argv: list[str], config: Path) -> None:
        self.config = config
        self.log_path = log = config.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))


def tmpfs_available() -> bool:
    """Whether this process may mount a tmpfs in a private mount namespace (root or CAP_SYS_ADMIN)."""
    try:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def full_disk_daemon(config: Path, storage: Path) -> tuple[WrappedDaemon, str]:
    """The simulation daemon whose evidence and dataset folders sit on a tiny full-able filesystem."""
    run = [sys.executable, "-m", "smartbin_daemon", "run", "--config", str(config)]
    if tmpfs_available():
        folders = [storage / SNAPSHOT_DIR.parts[0], storage / DATASET_DIR]
        mounts = " && ".join(f'mkdir -p "{f}" && mount -t tmpfs -o size={TINY_FS_BYTES} tmpfs "{f}"' for f in folders)
        return WrappedDaemon(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                              f'{mounts} && exec "$@"', "sh", *run], config), "tmpfs"
    return WrappedDaemon([sys.executable, "-c", EMULATED_FULL, str(TINY_FS_BYTES), "run", "--config", str(config)],
                         config), "emulated"


def test_a_full_evidence_folder_skips_and_counts_evidence_while_detections_and_sorting_continue(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe]) -> None:
    config = fast_simulation_config(tmp_path, broker.port, simulation={"item_interval_s": 2.5, "item_dwell_s": 1.5})
    storage = tmp_path / "state"
    probe = probe_factory(broker.port)
    probe.subscribe(f"{SIM_ROOT}/#")
    daemon, how = full_disk_daemon(config, storage)
    try:
        def evidence() -> dict[str, Any]:
            states = probe.on(f"{SIM_ROOT}/detector")
            return (states[-1].json().get("evidence") or {}) if states else {}

        def detections() -> int:
            return len(probe.on(f"{SIM_ROOT}/event/detection"))

        wait_until(lambda: sum(evidence().get("skipped", {}).values()) >= 1, timeout=60,
                   what=f"the first evidence skipped for lack of space ({how})")
        at_full = detections()
        sorted_at_full = len(probe.on(f"{SIM_ROOT}/event/item_sorted"))
        wait_until(lambda: detections() >= at_full + ITEMS_AFTER_FULL, timeout=15 + 4 * ITEMS_AFTER_FULL,
                   what=f"{ITEMS_AFTER_FULL} detections after the disk filled up")
        wait_until(lambda: len(probe.on(f"{SIM_ROOT}/event/item_sorted")) >= sorted_at_full + ITEMS_AFTER_FULL - 1,
                   timeout=15, what="items still sorted")
        ev = evidence()
        assert ev["skipped"]["snapshot_errors"] >= 1, ev
        assert "No space left on device" in (ev["last_error"] or ""), ev
        snapshots_kept = ev["snapshots"]["count"]
        assert snapshots_kept * 16_000 <= TINY_FS_BYTES, "only what fitted was kept"
        workers = probe.wait_for(f"{SIM_ROOT}/daemon", lambda m: m.json()["workers"]).json()
        assert workers["workers"]["detector"]["restarts"] == 0 and workers["failed_workers"] == [], workers
        assert daemon.proc.poll() is None, daemon.log()[-3000:]
        print(f"\nfull evidence folder ({how}, {TINY_FS_BYTES // 1024} KiB): {detections()} detections, "
              f"{snapshots_kept} snapshot(s) kept, skipped {ev['skipped']}")
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log()[-3000:]
