"""The storage breakdown: a real tree below a temporary storage path, walked within its bounds."""

from __future__ import annotations

import os
from pathlib import Path

from smartbin_daemon.health import HealthMonitor
from smartbin_daemon.health.storage import StorageSampler, storage_breakdown
from smartbin_daemon.runtime.bus import Bus
from tests.conftest import SteppedClock
from tests.health.test_health_monitor import config, sources


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def _storage(root: Path, outside: Path) -> Path:
    _file(root / "smartbin.db", 4096)
    _file(root / "smartbin.db-wal", 1000)
    _file(root / "evidence" / "snapshots" / "2024-05-01" / "a.jpg", 300)
    _file(root / "evidence" / "snapshots" / "2024-05-02" / "b.jpg", 200)
    _file(root / "dataset" / "images" / "x.jpg", 50)
    _file(root / "dataset" / "labels" / "x.txt", 5)
    _file(root / "dataset-previous-20240501-000000" / "images" / "y.jpg", 70)
    _file(root / "bundles" / "smartbin-bundle-1.tar.gz", 900)
    _file(root / "logs" / "old.log", 10)
    _file(root / "ultralytics" / "settings.json", 20)
    _file(outside / "big.bin", 100_000)
    os.symlink(outside, root / "evidence" / "elsewhere")
    return root


def test_each_category_gets_its_bytes_and_files_and_links_are_not_followed(tmp_path):
    root = _storage(tmp_path / "storage", tmp_path / "outside")

    got = storage_breakdown(root, max_entries=1000, budget_s=10)

    assert got["database"] == {"bytes": 5096, "files": 2}
    assert got["evidence"] == {"bytes": 500, "files": 2}
    assert got["dataset"] == {"bytes": 125, "files": 3}
    assert got["bundles"] == {"bytes": 900, "files": 1}
    assert got["logs"] == {"bytes": 10, "files": 1}
    assert got["other"] == {"bytes": 20, "files": 1}
    assert got["total_bytes"] == 5096 + 500 + 125 + 900 + 10 + 20
    assert got["complete"] is True


def test_a_walk_beyond_its_entry_or_time_budget_stops_and_says_so(tmp_path):
    root = _storage(tmp_path / "storage", tmp_path / "outside")
    ticks = iter(range(0, 1000, 1))

    by_entries = storage_breakdown(root, max_entries=3, budget_s=10)
    by_time = storage_breakdown(root, max_entries=1000, budget_s=4.5, clock=lambda: float(next(ticks)))

    assert by_entries["complete"] is False and by_entries["total_bytes"] < 6651
    assert by_time["complete"] is False and by_time["total_bytes"] < 6651


def test_a_missing_storage_path_is_empty_not_an_error(tmp_path):
    got = storage_breakdown(tmp_path / "absent", max_entries=10, budget_s=1)

    assert got["total_bytes"] == 0 and got["complete"] is True


def test_the_sampler_walks_again_only_on_its_interval(tmp_path):
    root = tmp_path / "storage"
    _file(root / "bundles" / "one.tar.gz", 10)
    clock = SteppedClock()
    sampler = StorageSampler(root, 600, max_entries=1000, budget_s=5, clock=clock)

    first = sampler.read()
    _file(root / "bundles" / "two.tar.gz", 10)
    clock.advance(599)
    cached = sampler.read()
    clock.advance(2)
    fresh = sampler.read()

    assert first["bundles"]["files"] == 1
    assert cached["bundles"]["files"] == 1 and cached["age_s"] >= 599
    assert fresh["bundles"]["files"] == 2 and fresh["age_s"] < 1


def test_the_health_state_carries_the_breakdown(data_dir, tmp_path):
    root = _storage(tmp_path / "storage", tmp_path / "outside")
    monitor = HealthMonitor(Bus(), config(sources(data_dir, "x86_laptop")), root)

    storage = monitor.poll()["storage"]

    assert storage["path"] == str(root) and storage["complete"] is True
    assert storage["evidence"] == {"bytes": 500, "files": 2} and storage["database"]["files"] == 2
