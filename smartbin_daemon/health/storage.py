"""What uses the storage path: database, evidence, dataset, bundles, logs and the rest, in bytes and files.

Why bounded: the evidence tree of a busy bin holds tens of thousands of files on an SD card. One breakdown
walks at most `max_entries` entries within `budget_s` seconds (on the health worker's thread, which keeps its
heartbeat well inside the watchdog); a walk cut short says so (`complete: false`) and its figures are lower
bounds. It runs on its own, slow interval.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CATEGORIES = ("database", "evidence", "dataset", "bundles", "logs", "other")
_TOP_LEVEL = {"evidence": "evidence", "dataset": "dataset", "bundles": "bundles",
              "logs": "logs"}
"""Top-level names below storage.path (the database also has its -wal/-shm/-journal/.corrupt-* siblings)."""


def category_of(name: str) -> str:
    """The category of a top-level entry of storage.path."""
    if name.startswith("smartbin.db"):
        return "database"
    if name.startswith("dataset-previous-"):
        return "dataset"  # datasets archived when the model's classes changed
    return _TOP_LEVEL.get(name, "other")


def storage_breakdown(root: Path, *, max_entries: int, budget_s: float,
                      clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Bytes and files per category below `root`; symlinks are counted as entries, never followed."""
    totals = {c: {"bytes": 0, "files": 0} for c in CATEGORIES}
    started = clock()
    entries = 0
    complete = True
    try:
        top = list(os.scandir(root))
    except OSError as exc:
        logger.debug("storage breakdown: cannot list %s: %s", root, exc)
        top = []
    stack: list[tuple[str, os.DirEntry[str]]] = [(category_of(e.name), e) for e in top]
    while stack:
        entries += 1
        if entries > max_entries or clock() - started > budget_s:
            complete = False
            break
        category, entry = stack.pop()
        try:
            if entry.is_dir(follow_symlinks=False):
                stack.extend((category, child) for child in os.scandir(entry.path))
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished or unreadable while walking
        if stat.S_ISREG(st.st_mode):
            totals[category]["bytes"] += st.st_size
            totals[category]["files"] += 1
    return {
        "path": str(root),
        **totals,
        "total_bytes": sum(t["bytes"] for t in totals.values()),
        "complete": complete,
        "walk_ms": round((clock() - started) * 1000.0, 1),
    }


class StorageSampler:
    """The `storage` section of the health state, recomputed every `interval_s` (the last one in between)."""

    def __init__(self, root: Path, interval_s: float, *, max_entries: int, budget_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.interval_s = interval_s
        self.max_entries = max_entries
        self.budget_s = budget_s
        self.clock = clock
        self._last: dict[str, Any] | None = None
        self._due = 0.0
        self._at = 0.0

    def read(self) -> dict[str, Any] | None:
        """The latest breakdown; a new walk when due."""
        now = self.clock()
        if self._last is None or now >= self._due:
            self._last = storage_breakdown(self.root, max_entries=self.max_entries, budget_s=self.budget_s)
            self._due = now + self.interval_s
            self._at = now
        return {**self._last, "age_s": round(now - self._at, 1)}
