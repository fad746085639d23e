"""The storage high-water mark: the evidence store prunes snapshots and the dataset, oldest first, down to the
low mark, alerts and counts. The disk is this test's real files plus an injected usage reading around them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smartbin_daemon.runtime.bus import Alert
from smartbin_daemon.vision.evidence import EvidenceStore, WaterMarks
from smartbin_daemon.vision.evidence_writer import EvidenceWriter
from tests.conftest import wait_until
from tests.vision.test_evidence import CATS, box, cfg, decision, files, noise


class FakeDisk:
    """A filesystem of `total` bytes holding `other` bytes of someone else's plus the real files below `root`."""

    def __init__(self, root: Path, total: int, other: int) -> None:
        self.root, self.total, self.other = root, total, other

    def used(self) -> int:
        return self.other + sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def __call__(self, path: Path) -> tuple[int, int]:
        used = self.used()
        return used, self.total - used

    def pct(self) -> float:
        return 100.0 * self.used() / self.total


def _fill(store: EvidenceStore) -> list[Path]:
    """Snapshots and dataset images, alternating, in the order they were written (oldest first)."""
    written: list[Path] = []
    for i in range(12):
        if i % 3 == 2:
            path = store.save_for_training(noise(i), (box("glass", 0.5, (5, 5, 40, 40)),), "uncertain", item_id=f"d{i}")
        else:
            path = store.save_snapshot(noise(i), decision(f"s{i}"))
        assert path is not None
        written.append(path)
        time.sleep(0.002)
    return written


def _store(tmp_path: Path, alerts: list[Alert]) -> tuple[EvidenceStore, FakeDisk, list[Path]]:
    root = tmp_path / "storage"
    disk = FakeDisk(root, total=1, other=0)
    store = EvidenceStore(root, cfg(), CATS, water_marks=WaterMarks(90.0, 80.0), alert=alerts.append,
                          disk_usage=disk)
    written = _fill(store)
    evidence = disk.used()
    disk.total = int(evidence / 0.25)  # the evidence is a quarter of the disk ...
    disk.other = int(disk.total * 0.70)  # ... and something else uses 70 %: 95 % in all
    return store, disk, written


def test_above_high_water_the_oldest_files_go_first_down_to_the_low_mark(tmp_path: Path) -> None:
    alerts: list[Alert] = []
    store, disk, written = _store(tmp_path, alerts)
    before = {p: p.stat().st_size for p in written}
    assert disk.pct() > 94

    store.housekeeping()

    gone = [p for p in written if not p.exists()]
    assert gone and gone == written[:len(gone)], "oldest first, snapshots and dataset images alike"
    assert any("dataset" in str(p) for p in gone) and any("snapshots" in str(p) for p in gone)
    assert disk.pct() <= 80.0
    kept_oldest = written[len(gone)]
    assert disk.pct() + 100.0 * before[kept_oldest] / disk.total > 80.0, "not more than needed"
    assert not [label for label in files(store.labels_dir, "*.txt") if not (store.images_dir / f"{label.stem}.jpg").exists()]
    hw = store.stats()["high_water"]
    labels = sum(1 for p in gone if "dataset" in str(p))
    assert hw["files"] == len(gone) + labels and hw["prunes"] == 1 and hw["active"] is True
    assert hw["bytes"] >= sum(before[p] for p in gone)
    assert store.stats()["snapshots"]["count"] + store.stats()["dataset"]["images"] == len(written) - len(gone)
    assert [(a.code, a.severity, a.active) for a in alerts] == [("storage_high_water", "warning", True)]
    assert "pruned" in alerts[0].message and ">= 90%" in alerts[0].message

    store.housekeeping()

    assert [(a.code, a.active) for a in alerts] == [("storage_high_water", True), ("storage_high_water", False)]
    assert store.stats()["high_water"]["active"] is False and store.stats()["high_water"]["prunes"] == 1


def test_below_high_water_nothing_is_deleted(tmp_path: Path) -> None:
    alerts: list[Alert] = []
    store, disk, written = _store(tmp_path, alerts)
    disk.other = int(disk.total * 0.60)  # 85 %: between the marks

    store.housekeeping()

    assert all(p.exists() for p in written) and alerts == []
    assert store.stats()["high_water"] == {"active": False, "prunes": 0, "files": 0, "bytes": 0, "last_pct": None}


def test_when_evidence_is_not_what_fills_the_disk_the_alert_says_so(tmp_path: Path) -> None:
    alerts: list[Alert] = []
    store, disk, written = _store(tmp_path, alerts)
    disk.other = int(disk.total * 0.92)

    store.housekeeping()
    store.housekeeping()

    assert not any(p.exists() for p in written), "everything prunable went"
    assert len(alerts) == 1, "said once while it stays high with nothing to prune"
    assert alerts[-1].active and "nothing left to prune" in alerts[-1].message
    assert store.stats()["high_water"]["prunes"] == 1


def test_the_writer_thread_prunes_on_its_housekeeping(tmp_path: Path) -> None:
    alerts: list[Alert] = []
    store, disk, written = _store(tmp_path, alerts)
    writer = EvidenceWriter(store, housekeeping_interval_s=0.05)
    writer.start()
    try:
        wait_until(lambda: alerts, timeout=10, what="the high-water alert")
        stats: dict[str, Any] = wait_until(lambda: writer.evidence_stats()["high_water"]["prunes"] and writer.evidence_stats(),
                                           timeout=5, what="the cached stats")
    finally:
        writer.stop(timeout=5)

    assert not written[0].exists() and disk.pct() <= 80.0
    assert stats["high_water"]["files"] > 0
