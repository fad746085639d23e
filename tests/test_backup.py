"""Backup and restore: `smartbinctl backup` / `restore` against a real daemon (simulated Arduino, fill tracker,
workflow, SQLite, mosquitto), bad documents refused by key path, unsigned restores refused, and a restore while an
item is in flight refused before any owner is asked."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon import __version__
from smartbin_daemon.bins.tracker import SCHEMA as FILL_SCHEMA
from smartbin_daemon.config import parse_config
from smartbin_daemon.control.backup import build_backup, check_document
from smartbin_daemon.control.daemon import DaemonControl
from smartbin_daemon.runtime.auth import sign
from smartbin_daemon.runtime.bus import SIGNED, Bus, Request, Response
from smartbin_daemon.runtime.commands import RequestError, RequestRegistry
from smartbin_daemon.states.workflow import SortingState

from .conftest import Broker, DaemonProcess, Probe, live_query, wait_until, write_config
from .test_ctl import run_ctl

DEVICE = "backupbin"
ROOT = f"smartbin/{DEVICE}"
SECRET = "backup-test-secret-" + "3c" * 16
COMPARTMENTS = [
    {"id": "recycling", "name": "Recycling", "categories": ["plastic", "metal", "glass"],
     "sensor": {"source": "arduino", "channel": 1}, "calibration": {"empty_mm": 600, "full_mm": 100}},
    {"id": "residual", "name": "Residual", "categories": ["residual", "organic", "paper_cardboard"],
     "sensor": {"source": "arduino", "channel": 2}, "calibration": {"empty_mm": 600, "full_mm": 100}},
]


def _config(tmp_path: Path, port: int) -> Path:
    return write_config(tmp_path / "bin.yaml", port, tmp_path / "s", device_id=DEVICE,
                        security={"hmac_secret": SECRET},
                        arduino={"enabled": True, "backend": "simulator", "simulator": {"compartments": 2}},
                        bins={"enabled": True, "compartments": COMPARTMENTS,
                              "workflow": {"fallback_compartment": "residual"}})


def _seed_counters(storage: Path) -> None:
    """Counters as a bin that sorted items before would have them (the tracker loads them at start)."""
    storage.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(storage / "smartbin.db")
    for sql in FILL_SCHEMA:
        db.execute(sql)
    db.execute("INSERT INTO fill_state (compartment, items, items_total, emptied_at) VALUES ('recycling', 5, 12, ?)",
               (time.time() - 86400,))
    db.commit()
    db.close()


def _compartment(probe: Probe, cid: str) -> dict[str, Any]:
    return probe.on(f"{ROOT}/fill")[-1].json()["compartments"][cid]  # type: ignore[no-any-return]


def _signed(probe: Probe, command: str, args: dict[str, Any]) -> dict[str, Any]:
    return probe.request(ROOT, command, {"args": args, "auth": sign(SECRET, DEVICE, command, args)})


def test_backup_and_restore_round_trip_through_the_daemon(tmp_path: Path, broker: Broker,
                                                          probe_factory: Callable[..., Probe],
                                                          daemon_factory: Callable[..., DaemonProcess]) -> None:
    storage = tmp_path / "s"
    _seed_counters(storage)
    config = _config(tmp_path, broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    daemon_factory(config)
    probe.wait_for(f"{ROOT}/fill", lambda m: m.json()["compartments"]["recycling"]["items_total"] == 12, timeout=30)
    assert _signed(probe, "bin/calibrate", {"compartment": "recycling", "point": "empty", "distance_mm": 700})["status"] == "ok"
    assert probe.request(ROOT, "maintenance", {"args": {"on": True}})["status"] == "ok"
    wait_until(lambda: probe.on(f"{ROOT}/workflow")[-1].json()["maintenance"], what="maintenance on")
    wait_until(lambda: _compartment(probe, "recycling")["calibration"]["empty_mm"] == 700, what="calibration published")

    emptied_at = _compartment(probe, "recycling")["emptied_at"]
    assert emptied_at
    backup = run_ctl("backup", config=config)
    assert backup.returncode == 0, backup.stderr
    doc = json.loads(backup.stdout)
    assert doc["format"] == "smartbin-backup" and doc["format_version"] == 1 and doc["device"] == DEVICE
    assert doc["daemon_version"] == __version__ and doc["created_at"]
    assert doc["fill"]["compartments"]["recycling"] == {
        "empty_mm": 700.0, "full_mm": 100.0, "calibration_source": "request",
        "calibrated_at": doc["fill"]["compartments"]["recycling"]["calibrated_at"], "items": 5, "items_total": 12,
        "emptied_at": doc["fill"]["compartments"]["recycling"]["emptied_at"]}
    assert doc["fill"]["compartments"]["residual"]["calibration_source"] == "config"
    assert doc["workflow"] == {"maintenance": True}
    assert SECRET not in backup.stdout
    file = tmp_path / "bin.json"
    file.write_text(backup.stdout)

    # change everything the backup holds
    assert _signed(probe, "bin/calibrate", {"compartment": "recycling", "point": "empty", "distance_mm": 650})["status"] == "ok"
    assert _signed(probe, "bin/calibrate", {"compartment": "residual", "point": "full", "distance_mm": 150})["status"] == "ok"
    assert _signed(probe, "bin/reset_counters", {"totals": True})["status"] == "ok"
    assert _signed(probe, "bin/emptied", {"compartment": "recycling"})["status"] == "ok"
    assert probe.request(ROOT, "maintenance", {"args": {"on": False}})["status"] == "ok"
    wait_until(lambda: _compartment(probe, "recycling")["items_total"] == 0, what="counters reset")

    restored = run_ctl("restore", str(file), config=config)
    assert restored.returncode == 0, restored.stderr
    assert "restored the backup of backupbin" in restored.stdout and "fill, workflow" in restored.stdout
    wait_until(lambda: _compartment(probe, "recycling")["items_total"] == 12, what="counters restored")
    recycling, residual = _compartment(probe, "recycling"), _compartment(probe, "residual")
    assert (recycling["items"], recycling["calibration"]["empty_mm"], recycling["calibration"]["source"]) == (5, 700, "request")
    assert recycling["emptied_at"] == emptied_at
    assert residual["calibration"] == {**residual["calibration"], "full_mm": 100, "source": "config"}
    wait_until(lambda: probe.on(f"{ROOT}/workflow")[-1].json()["maintenance"], what="maintenance restored")
    assert live_query(storage, "SELECT items, items_total, empty_mm FROM fill_state WHERE compartment = 'recycling'") \
        == [(5, 12, 700.0)]
    assert live_query(storage, "SELECT empty_mm, calibrated_at FROM fill_state WHERE compartment = 'residual'") \
        == [(None, None)]

    # refused: unsigned, another device, a bad value (by key path); nothing changes
    unsigned = probe.request(ROOT, "restore", {"args": {"document": doc}})
    assert unsigned["status"] == "error" and "signed" in unsigned["error"]
    other = {**doc, "device": "kitchen-bin"}
    refused = _signed(probe, "restore", {"document": other})
    assert refused["status"] == "error" and "args.document.device" in refused["error"] and "force" in refused["error"]
    bad = json.loads(json.dumps(doc))
    bad["fill"]["compartments"]["recycling"]["items"] = -1
    bad["fill"]["compartments"]["residual"]["full_mm"] = 590
    answer = _signed(probe, "restore", {"document": bad})
    assert answer["status"] == "error"
    assert "args.document.fill.compartments.recycling.items" in answer["error"]
    assert "args.document.fill.compartments.residual" in answer["error"]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    ctl_refused = run_ctl("restore", str(bad_file), config=config)
    assert ctl_refused.returncode == 1 and "args.document.fill.compartments.recycling.items" in ctl_refused.stderr
    assert live_query(storage, "SELECT items, items_total FROM fill_state WHERE compartment = 'recycling'") == [(5, 12)]

    # another device's backup, forced
    other["fill"] = {"compartments": {"recycling": {**doc["fill"]["compartments"]["recycling"], "items": 1}}}
    forced = _signed(probe, "restore", {"document": other, "force": True})
    assert forced["status"] == "ok" and forced["data"]["forced"] is True
    assert forced["data"]["restored"]["fill"] == {"restored": ["recycling"], "unchanged": ["residual"]}
    wait_until(lambda: _compartment(probe, "recycling")["items"] == 1, what="forced restore applied")


# --------------------------------------------------------------------------- the document and the daemon's checks


def _document(**changes: Any) -> dict[str, Any]:
    states = {"fill": {"compartments": {"recycling": {
        "calibration": {"empty_mm": 600.0, "full_mm": 100.0, "source": "request", "calibrated_at": "2026-01-02T03:04:05Z"},
        "items": 2, "items_total": 9, "emptied_at": None}}},
        "workflow": {"state": "idle", "maintenance": False}}
    return {**build_backup(DEVICE, __version__, states), **changes}


@pytest.mark.parametrize(("change", "path"), [
    ({"format": "something-else"}, "args.document.format"),
    ({"format_version": 2}, "args.document.format_version"),
    ({"device": "other"}, "args.document.device"),
    ({"created_at": "yesterday"}, "args.document.created_at"),
    ({"surprise": 1}, "args.document.surprise"),
    ({"workflow": {"maintenance": "perhaps"}}, "args.document.workflow.maintenance"),
    ({"fill": {"compartments": {"recycling": {"empty_mm": 600}}}}, "args.document.fill.compartments.recycling.full_mm"),
    ({"fill": {"compartments": {}}}, "args.document.fill.compartments"),
    ({"fill": {"compartments": {"kitchen": _document()["fill"]["compartments"]["recycling"]}}},
     "args.document.fill.compartments.kitchen"),
])
def test_a_bad_document_is_refused_with_its_key_path(change: dict[str, Any], path: str) -> None:
    with pytest.raises(RequestError) as refused:
        check_document(_document(**change), device=DEVICE, compartments=["recycling"], force=False)
    assert path in str(refused.value)


def test_force_accepts_another_device_and_version_but_not_another_format() -> None:
    doc = check_document(_document(device="other", format_version=1), device=DEVICE, compartments=["recycling"], force=True)
    assert doc.device == "other"
    with pytest.raises(RequestError, match="args.document.format:"):
        check_document(_document(format="x"), device=DEVICE, compartments=["recycling"], force=True)


def test_a_restore_while_an_item_is_in_flight_is_refused_before_any_owner_is_asked(tmp_path: Path) -> None:
    bus = Bus()
    cfg = parse_config({"device": {"id": DEVICE}, "storage": {"path": str(tmp_path)}, "arduino": {"enabled": True, "backend": "simulator"},
                        "bins": {"enabled": True, "compartments": COMPARTMENTS,
                                 "workflow": {"fallback_compartment": "residual"}}})
    daemon = DaemonControl(bus, cfg, RequestRegistry())
    seen = bus.subscribe("fill", (Request, Response))
    bus.set_state("fill", {"compartments": {}})
    for state in (SortingState.CLASSIFYING, SortingState.ROUTING):
        bus.set_state("workflow", {"state": state.value, "maintenance": False})
        daemon.answer(Request("daemon", "restore", {"document": _document()}, uuid.uuid4().hex, authority=SIGNED))
        answer = seen.get(1)
        assert isinstance(answer, Response) and not answer.ok
        assert f"an item is being sorted (workflow {state.value})" in (answer.error or "")
        assert "nothing was restored" in (answer.error or "")
        assert len(seen) == 0, "no owner was asked"
    bus.set_state("workflow", {"state": "idle", "maintenance": False})
    daemon.answer(Request("daemon", "restore", {"document": _document()}, "r1", authority=SIGNED))
    part = seen.get(1)
    assert isinstance(part, Request) and part.command == "bin/restore" and part.authority == SIGNED
    assert part.args["compartments"]["recycling"]["items_total"] == 9
