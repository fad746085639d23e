"""Evidence on disk: annotated snapshots per decision and the active-learning dataset, both capped.

Layout below `storage.path`:

- `evidence/snapshots/<UTC date>/<HHMMSS-mmm>_<item id>_<category>.jpg`: one annotated JPEG per decision
  (and per `snapshot` request), capped by a byte quota and an age limit, oldest deleted first.
- `dataset/`: a YOLO detection dataset (`images/`, `labels/`, `data.yaml`, `README.txt`) of uncertain or
  requested frames with the detector's predicted boxes as draft labels, capped by image count and bytes.

Why the bookkeeping is in memory: the store runs on one thread (the evidence writer) on an SD card; walking
the tree on every save would cost more than the save. The index is rebuilt from disk on start and hourly.

Why label before image: every file is written as `<name>.tmp` and renamed, so no reader sees half a
JPEG; the label is renamed into place before its image (and deleted after it), so an image is never
visible without its label. A YOLO trainer reads a label-less image as "no objects", which would teach
the model to miss the item; a label without an image is ignored, and the start-up scan removes it.

Disk errors (full disk, read-only card) never raise: the evidence is skipped, counted and logged.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import yaml

from ..config import EvidenceConfig
from ..logs import ev
from ..messages import Decision, DetectedBox
from ..runtime import files
from ..runtime.bus import Alert
from .annotate import annotate, as_bgr, decision_title, encode_jpeg, yolo_label_lines

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = Path("evidence") / "snapshots"
DATASET_DIR = Path("dataset")
ARCHIVE_PREFIX = "dataset-previous-"
TMP_SUFFIX = ".tmp"
TRAINING_JPEG_QUALITY = 95
RESCAN_INTERVAL_S = 3600.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
OWN_STEM_RE = re.compile(r"^\d{8}-\d{6}-\d{6}_")
"""Stems of dataset files this store wrote (`<YYYYmmdd-HHMMSS-ffffff>_<id>_<reason>`)."""

_SAFE_RE = re.compile(r"[^A-Za-z0-9_-]+")


def _safe(text: str, limit: int = 40) -> str:
    """A file-name-safe slug (letters, digits, '-', '_')."""
    slug = _SAFE_RE.sub("-", text).strip("-")[:limit]
    return slug or "x"


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class WaterMarks:
    """Storage disk usage (%) at which evidence and the dataset are pruned, oldest first, and down to which."""

    high_pct: float
    low_pct: float


def disk_used_free(path: Path) -> tuple[int, int]:
    """Used and free bytes of the filesystem holding `path` (free as an unprivileged user sees it, like `df`)."""
    usage = shutil.disk_usage(path)
    return usage.total - usage.free, usage.free


@dataclass
class _Snap:
    """One snapshot file in the index."""

    path: Path
    size: int
    mtime: float


@dataclass
class _Pair:
    """One dataset image and its label file in the index."""

    image: Path
    label: Path | None
    size: int
    mtime: float
    labelled: bool


class EvidenceStore:
    """Annotated snapshots and the active-learning dataset under `storage.path`; never raises on disk errors.

    Written from the evidence writer's thread; `reserve_snapshot_path()`, `stats()` and `cleanup()` may come from
    others (a lock guards).
    `emulated_free_bytes` is a test hook: when set, writes beyond it fail with ENOSPC and deletions give it back.
    """

    def __init__(self, root: Path, cfg: EvidenceConfig, class_names: Sequence[str], *,
                 water_marks: WaterMarks | None = None, alert: Callable[[Alert], Any] | None = None,
                 disk_usage: Callable[[Path], tuple[int, int]] = disk_used_free) -> None:
        self.root = Path(root)
        self.water_marks = water_marks
        self.alert = alert
        self.disk_usage = disk_usage
        self.high_water: dict[str, Any] = {"active": False, "prunes": 0, "files": 0, "bytes": 0, "last_pct": None}
        self.cfg = cfg
        self.class_names = [str(n) for n in class_names]
        self.snapshot_dir = self.root / SNAPSHOT_DIR
        self.dataset_dir = self.root / DATASET_DIR
        self.images_dir = self.dataset_dir / "images"
        self.labels_dir = self.dataset_dir / "labels"
        self.latest_snapshot_jpeg: bytes | None = None
        self.latest_snapshot_path: Path | None = None
        self.latest_snapshot_wall: float | None = None
        self.emulated_free_bytes: int | None = None
        self.skipped: dict[str, int] = {"snapshot_errors": 0, "dataset_errors": 0}
        self.deleted: dict[str, int] = {"snapshots": 0, "dataset_images": 0}
        self.last_error: str | None = None
        self._lock = threading.RLock()
        self._snaps: deque[_Snap] = deque()
        self._issued: deque[Path] = deque(maxlen=64)
        self._issue_lock = threading.Lock()  # not the RLock: the detector must not wait for a write to reserve
        self._snap_bytes = 0
        self._pairs: deque[_Pair] = deque()
        self._pair_bytes = 0
        self._labelled = 0
        self._dataset_ready = False
        self._next_rescan = 0.0
        with self._lock:
            self._prepare_dataset()
            self.rescan()

    # ------------------------------------------------------------------ public API

    @property
    def snapshot_quota_bytes(self) -> int:
        """The snapshot byte quota."""
        return int(self.cfg.snapshot_quota_mb * 1024 * 1024)

    @property
    def dataset_quota_bytes(self) -> int:
        """The dataset byte quota."""
        return int(self.cfg.dataset_quota_mb * 1024 * 1024)

    def reserve_snapshot_path(self, *parts: str) -> Path:
        """A new, unique snapshot path `<UTC day>/<HHMMSS-mmm>_<parts>.jpg`; no disk access, no wait on a write."""
        now = datetime.now(timezone.utc)
        folder = self.snapshot_dir / now.strftime("%Y-%m-%d")
        name = f"{now.strftime('%H%M%S')}-{now.microsecond // 1000:03d}_{'_'.join(_safe(p) for p in parts)}"
        with self._issue_lock:
            path, n = folder / f"{name}.jpg", 1
            while path in self._issued:
                path, n = folder / f"{name}-{n}.jpg", n + 1
            self._issued.append(path)
            return path

    def save_snapshot(self, image: np.ndarray, decision: Decision, path: Path | None = None) -> Path | None:
        """Save the decision's annotated JPEG (at a reserved `path`); keep it as the latest for MQTT; None if not saved.

        The latest bytes are updated even when the file cannot be written, so HA still sees the item.
        """
        if not (self.cfg.snapshots or self.cfg.publish_snapshot):
            return None
        with self._lock:
            try:
                data = encode_jpeg(annotate(image, decision.boxes, decision_title(decision)), self.cfg.jpeg_quality)
            except (ValueError, cv2.error) as exc:
                self._skip("snapshot", exc)
                return None
            self.latest_snapshot_jpeg = data
            if not self.cfg.snapshots:
                return None
            return self._store_snapshot(data, path or self.reserve_snapshot_path(decision.item_id, decision.category))

    def save_frame_snapshot(self, image: np.ndarray) -> Path | None:
        """Save the current frame (time-stamped, no boxes) for the `snapshot` request; also the latest bytes.

        An explicit request is saved even when per-decision snapshots are off; it counts against the same quota.
        """
        with self._lock:
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            try:
                data = encode_jpeg(annotate(image, (), stamp), self.cfg.jpeg_quality)
            except (ValueError, cv2.error) as exc:
                self._skip("snapshot", exc)
                return None
            self.latest_snapshot_jpeg = data
            return self._store_snapshot(data, self.reserve_snapshot_path("request_frame"))

    def save_for_training(self, image: np.ndarray, boxes: Sequence[DetectedBox], reason: str,
                          item_id: str | None = None, force: bool = False) -> Path | None:
        """Save the raw frame and its predicted boxes as a YOLO image/label pair; returns the image path.

        Skipped (None) while `active_learning` is off unless `force` (an explicit user request).
        """
        if not (self.cfg.active_learning or force):
            return None
        with self._lock:
            try:
                bgr = as_bgr(image)
                h, w = bgr.shape[:2]
                jpeg = encode_jpeg(bgr, TRAINING_JPEG_QUALITY)
                lines = yolo_label_lines(boxes, self.class_names, w, h)
            except (ValueError, cv2.error) as exc:
                self._skip("dataset", exc)
                return None
            label_text = "".join(f"{ln}\n" for ln in lines).encode("ascii")
            now = datetime.now(timezone.utc)
            reason_slug = _safe(reason.split()[0] if reason.split() else "frame", 16)
            stem = f"{now.strftime('%Y%m%d-%H%M%S-%f')}_{_safe(item_id or uuid.uuid4().hex[:6])}_{reason_slug}"
            image_path = self.images_dir / f"{stem}.jpg"
            label_path = self.labels_dir / f"{stem}.txt"
            label_done = False
            try:
                if not self._dataset_ready:
                    self._prepare_dataset(raise_errors=True)
                self._write_atomic(label_path, label_text)
                label_done = True
                self._write_atomic(image_path, jpeg)
            except OSError as exc:
                if label_done:
                    self._unlink(label_path)
                self._skip("dataset", exc)
                return None
            self._pairs.append(_Pair(image_path, label_path, len(jpeg) + len(label_text), time.time(), bool(lines)))
            self._pair_bytes += len(jpeg) + len(label_text)
            self._labelled += bool(lines)
            logger.debug("saved %s for training (%s, %d box(es))", image_path.name, reason, len(lines))
            self._enforce_dataset()
            kept = bool(self._pairs) and self._pairs[-1].image == image_path
            self._maybe_rescan()
            if not kept:
                logger.warning("evidence: a training frame is larger than the whole dataset quota (%d bytes); not kept",
                               self.dataset_quota_bytes, extra=ev("evidence_skipped", kind="dataset"))
                return None
            return image_path

    def housekeeping(self) -> None:
        """Apply the age limit, the disk's high-water mark and, when due (hourly), rebuild the index from disk."""
        with self._lock:
            self._maybe_rescan()
            self._enforce_snapshots()
            self._enforce_high_water()

    def rescan(self) -> None:
        """Rebuild both indexes from disk, drop leftovers of interrupted writes, then apply the limits."""
        with self._lock:
            self._scan_snapshots()
            self._scan_dataset()
            self._next_rescan = time.monotonic() + RESCAN_INTERVAL_S
            self._enforce_snapshots()
            self._enforce_dataset()

    def cleanup(self) -> dict[str, int]:
        """Delete every snapshot and dataset image/label (data.yaml and README stay); returns counts and bytes."""
        with self._lock:
            freed = 0
            snaps = 0
            images = 0
            labels = 0
            if self.snapshot_dir.is_dir():
                for path in sorted(self.snapshot_dir.rglob("*"), reverse=True):
                    if path.is_dir():
                        self._rmdir(path)
                    else:
                        size = self._unlink(path)
                        freed += size
                        snaps += path.suffix.lower() == ".jpg"
            for folder in (self.images_dir, self.labels_dir):
                for path in self._files(folder):
                    freed += self._unlink(path)
                    if folder is self.images_dir:
                        images += path.suffix.lower() in IMAGE_SUFFIXES
                    else:
                        labels += path.suffix.lower() == ".txt"
            archives = 0
            if self.root.is_dir():
                for old in self.root.glob(f"{ARCHIVE_PREFIX}*"):
                    if old.is_dir():
                        try:
                            freed += sum(p.stat().st_size for p in old.rglob("*") if p.is_file())
                        except OSError:
                            pass
                        shutil.rmtree(old, ignore_errors=True)
                        archives += 1
            self._snaps.clear()
            self._snap_bytes = 0
            self._pairs.clear()
            self._pair_bytes = 0
            self._labelled = 0
            self.latest_snapshot_jpeg = None
            self.latest_snapshot_path = None
            self.latest_snapshot_wall = None
            logger.info("evidence cleared: %d snapshot(s), %d dataset image(s), %d bytes", snaps, images, freed,
                        extra=ev("evidence_cleanup"))
            return {"snapshots": snaps, "dataset_images": images, "dataset_labels": labels,
                    "archived_datasets": archives, "bytes_freed": freed}

    def stats(self) -> dict[str, Any]:
        """Counts, sizes, the latest snapshot and the skip counters, for the detector's state."""
        with self._lock:
            latest_at = None
            if self.latest_snapshot_wall is not None:
                latest_at = datetime.fromtimestamp(self.latest_snapshot_wall, timezone.utc).isoformat(timespec="seconds")
            return {
                "snapshots": {
                    "count": len(self._snaps),
                    "bytes": self._snap_bytes,
                    "quota_bytes": self.snapshot_quota_bytes,
                    "latest": str(self.latest_snapshot_path) if self.latest_snapshot_path else None,
                    "latest_at": latest_at,
                    "deleted": self.deleted["snapshots"],
                },
                "dataset": {
                    "path": str(self.dataset_dir),
                    "images": len(self._pairs),
                    "bytes": self._pair_bytes,
                    "labelled": self._labelled,
                    "max_images": self.cfg.dataset_max_images,
                    "quota_bytes": self.dataset_quota_bytes,
                    "deleted": self.deleted["dataset_images"],
                },
                "skipped": dict(self.skipped),
                "last_error": self.last_error,
                "high_water": dict(self.high_water),
            }

    # ------------------------------------------------------------------ snapshots

    def _store_snapshot(self, data: bytes, path: Path) -> Path | None:
        """Write snapshot bytes at a reserved path, index them and apply the limits."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            replaced = path.exists()  # only when the clock went back onto an old name: the new file wins
            self._write_atomic(path, data)
        except OSError as exc:
            self._skip("snapshot", exc)
            return None
        for old in [s for s in self._snaps if s.path == path] if replaced else ():
            self._snaps.remove(old)
            self._snap_bytes -= old.size
        self._snaps.append(_Snap(path, len(data), time.time()))
        self._snap_bytes += len(data)
        self.latest_snapshot_path = path
        self.latest_snapshot_wall = time.time()
        self._enforce_snapshots()
        kept = bool(self._snaps) and self._snaps[-1].path == path
        self._maybe_rescan()
        if kept:
            return path
        logger.warning("evidence: a snapshot is larger than the whole snapshot quota (%d bytes); not kept",
                       self.snapshot_quota_bytes, extra=ev("evidence_skipped", kind="snapshot"))
        return None

    def _enforce_snapshots(self) -> None:
        """Delete the oldest snapshots beyond the quota or older than the age limit."""
        cutoff = time.time() - self.cfg.snapshot_max_age_days * 86400.0
        quota = self.snapshot_quota_bytes
        while self._snaps and (self._snap_bytes > quota or self._snaps[0].mtime < cutoff):
            self._drop_oldest_snapshot()

    def _drop_oldest_snapshot(self) -> tuple[int, int]:
        """Delete the oldest snapshot; (files, bytes) deleted."""
        snap = self._snaps.popleft()
        self._snap_bytes -= snap.size
        freed = self._unlink(snap.path)
        self.deleted["snapshots"] += 1
        if self.latest_snapshot_path == snap.path:
            self.latest_snapshot_path = None
        self._rmdir(snap.path.parent)
        return 1, freed

    def _enforce_high_water(self) -> None:
        """Above the high-water mark, delete snapshots and dataset pairs, oldest first, down to the low mark."""
        marks = self.water_marks
        if marks is None:
            return
        try:
            used, free = self.disk_usage(self.root)
        except OSError as exc:
            logger.debug("evidence: disk usage of %s unavailable: %s", self.root, exc)
            return
        total = used + free
        pct = 100.0 * used / total if total > 0 else 0.0
        if pct < marks.high_pct:
            if self.high_water["active"]:
                self.high_water.update(active=False, last_pct=round(pct, 1))
                self._alert(False, f"storage disk back below {marks.high_pct:g}% ({pct:.1f}%)")
            return
        files, freed = self._prune_oldest(used - marks.low_pct / 100.0 * total)
        after = 100.0 * (used - freed) / total
        hw = self.high_water
        was_active = hw["active"]
        hw.update(active=True, prunes=hw["prunes"] + bool(files), files=hw["files"] + files,
                  bytes=hw["bytes"] + freed, last_pct=round(after, 1))
        if was_active and not files:
            return  # still high, nothing left to prune: said once already
        left = "" if after <= marks.low_pct else "; nothing left to prune, free space by other means"
        message = (f"storage disk at {pct:.1f}% >= {marks.high_pct:g}%: pruned {files} evidence/dataset file(s) "
                   f"({freed / 1_048_576:.1f} MB), oldest first, now {after:.1f}%{left}")
        logger.warning("evidence: %s", message, extra=ev("evidence_high_water", files=files, bytes=freed))
        self._alert(True, message)

    def _prune_oldest(self, goal: float) -> tuple[int, int]:
        """Delete the oldest snapshot or dataset pair until `goal` bytes are freed or none is left."""
        files = freed = 0
        while freed < goal and (self._snaps or self._pairs):
            if self._snaps and (not self._pairs or self._snaps[0].mtime <= self._pairs[0].mtime):
                n, size = self._drop_oldest_snapshot()
            else:
                n, size = self._drop_oldest_pair()
            files += n
            freed += size
        return files, freed

    def _alert(self, active: bool, message: str) -> None:
        """Raise or clear the `storage_high_water` alert (from the writer's thread, over the bus)."""
        if self.alert is not None:
            self.alert(Alert("detector", "storage_high_water", "warning" if active else "info", message, active=active))

    def _scan_snapshots(self) -> None:
        """Rebuild the snapshot index from disk; remove interrupted writes and empty day folders."""
        found: list[_Snap] = []
        try:
            days = [d for d in self.snapshot_dir.iterdir() if d.is_dir()] if self.snapshot_dir.is_dir() else []
            for day in days:
                for entry in os.scandir(day):
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.name.endswith(TMP_SUFFIX):
                        self._unlink(Path(entry.path))
                    elif entry.name.lower().endswith(".jpg"):
                        st = entry.stat(follow_symlinks=False)
                        found.append(_Snap(Path(entry.path), st.st_size, st.st_mtime))
                self._rmdir(day)
        except OSError as exc:
            logger.warning("evidence: cannot scan %s: %s", self.snapshot_dir, _describe(exc),
                           extra=ev("evidence_scan_failed"))
        found.sort(key=lambda s: (s.mtime, s.path.name))
        self._snaps = deque(found)
        self._snap_bytes = sum(s.size for s in found)
        if found and self.latest_snapshot_path is None:
            self.latest_snapshot_path = found[-1].path
            self.latest_snapshot_wall = found[-1].mtime

    # ------------------------------------------------------------------ dataset

    def _prepare_dataset(self, raise_errors: bool = False) -> None:
        """Create the dataset folders, data.yaml and README; archive a dataset made for other classes."""
        try:
            existing = self._existing_names()
            if existing is not None and existing != self.class_names and self._files(self.images_dir):
                stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
                target = self.root / f"{ARCHIVE_PREFIX}{stamp}"
                os.replace(self.dataset_dir, target)
                logger.warning("evidence: the dataset's classes %s differ from the detector's %s; moved it to %s",
                               existing, self.class_names, target, extra=ev("evidence_dataset_archived"))
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self.labels_dir.mkdir(parents=True, exist_ok=True)
            self._write_if_changed(self.dataset_dir / "data.yaml", self._data_yaml())
            self._write_if_changed(self.dataset_dir / "README.txt", self._readme())
            self._dataset_ready = True
        except OSError as exc:
            if raise_errors:
                raise
            self._skip("dataset", exc)

    def _existing_names(self) -> list[str] | None:
        """Class names of an existing data.yaml (None when absent or unreadable)."""
        path = self.dataset_dir / "data.yaml"
        if not path.is_file():
            return None
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return None
        names = raw.get("names") if isinstance(raw, dict) else None
        if isinstance(names, dict):
            try:
                names = [names[k] for k in sorted(names, key=lambda k: int(k))]
            except (TypeError, ValueError):
                return None
        return [str(n) for n in names] if isinstance(names, list) else None

    def _data_yaml(self) -> bytes:
        """data.yaml text; no `path:` key, so ultralytics and smartbin-train both resolve the folder from the file."""
        header = (
            "# Active-learning dataset written by smartbin-daemon (YOLO detection format).\n"
            "# Labels are the detector's predictions: review them before training (see README.txt).\n"
            "# No 'path:' on purpose: the folder of this file is the dataset root, wherever it is copied.\n"
        )
        body = {"train": "images", "val": "images", "nc": len(self.class_names), "names": list(self.class_names)}
        return (header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)).encode("utf-8")

    def _readme(self) -> bytes:
        """README.txt: what the folder is, how to review the labels and how to train on it."""
        names = "\n".join(f"  {i}  {n}" for i, n in enumerate(self.class_names))
        identity = "\n".join(f"      {n}: {n}" for n in self.class_names)
        text = f"""SmartBin active-learning dataset
================================

The daemon saves frames here that the detector was unsure about (and frames asked for with a
request), in YOLO detection format:

  images/<time>_<item>_<reason>.jpg   the camera frame, unannotated
  labels/<same name>.txt              one line per object: class x_center y_center width height
                                      (all 0..1, relative to the image); an EMPTY file = no object
  data.yaml                           class list; train and val both point at images/

The labels are the detector's own predictions for frames it was unsure about, so expect them to be
wrong: they are a draft to correct, not ground truth. Classes (index  name):
{names}

The folder is capped (evidence.dataset_max_images / dataset_quota_mb): the oldest pairs are deleted
when new ones arrive, and the storage/cleanup request empties it. Copy it off the bin before you
review it, e.g.  rsync -a bin:{self.dataset_dir}/ ./smartbin-field/

Review the labels with any tool that reads and writes YOLO detection labels, for example Label Studio
(YOLO import/export), CVAT (format "YOLO 1.1"), X-AnyLabeling or labelImg (YOLO mode), or Roboflow.
Fix or draw the boxes, give frames that show no waste an empty label file, and delete frames you do
not want. Keep the class list and its order as in data.yaml. Every image needs its label file; a
label tool's extra files (such as labels/classes.txt) are harmless.

Train with the project's pipeline (smartbin-train). The class map must name this dataset and map
each of its classes to a product category; for the shipped detector, whose classes are the
categories, that is the identity. Add to config/training/waste_classmap.yaml under datasets:

  smartbin-field:
    title: "SmartBin field images (active learning)"
    author: "the bin's owner"
    url: "local"
    license: "own photos, not redistributed"
    classes:
{identity}

then either place the reviewed copy (or a symlink to it) as <datasets dir>/smartbin-field, which
'smartbin-train prepare' finds like the other datasets, or name every dataset on the command line:

  smartbin-train all --dataset waste-detect=PATH --dataset trashnet-plus=PATH \\
                     --dataset smartbin-field=./smartbin-field

Note that train and val both point at images/: the same field frames also end up in the validation
split, so their share of the validation metrics is optimistic.
"""
        return text.encode("utf-8")

    def _enforce_dataset(self) -> None:
        """Delete the oldest image/label pairs beyond the image cap or the byte quota."""
        quota = self.dataset_quota_bytes
        while self._pairs and (len(self._pairs) > self.cfg.dataset_max_images or self._pair_bytes > quota):
            self._drop_oldest_pair()

    def _drop_oldest_pair(self) -> tuple[int, int]:
        """Delete the oldest dataset image and its label; (files, bytes) deleted."""
        pair = self._pairs.popleft()
        self._pair_bytes -= pair.size
        self._labelled -= pair.labelled
        freed = self._unlink(pair.image)  # image first: it is never visible without its label
        files = 1
        if pair.label is not None:
            freed += self._unlink(pair.label)
            files += 1
        self.deleted["dataset_images"] += 1
        return files, freed

    def _scan_dataset(self) -> None:
        """Rebuild the dataset index; remove interrupted writes and labels of this store without an image."""
        pairs: list[_Pair] = []
        try:
            labels: dict[str, Path] = {}
            for path in self._files(self.labels_dir):
                if path.name.endswith(TMP_SUFFIX):
                    self._unlink(path)
                elif path.suffix == ".txt":
                    labels[path.stem] = path
            for path in self._files(self.images_dir):
                if path.name.endswith(TMP_SUFFIX):
                    self._unlink(path)
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                st = path.stat()
                label = labels.pop(path.stem, None)
                label_size = label.stat().st_size if label is not None else 0
                labelled = label is not None and _has_boxes(label)
                pairs.append(_Pair(path, label, st.st_size + label_size, st.st_mtime, labelled))
            for stem, label in labels.items():
                if OWN_STEM_RE.match(stem):  # an interrupted save or eviction; a tool's classes.txt stays
                    logger.info("evidence: removing %s, a label without its image", label.name)
                    self._unlink(label)
        except OSError as exc:
            logger.warning("evidence: cannot scan %s: %s", self.dataset_dir, _describe(exc),
                           extra=ev("evidence_scan_failed"))
        pairs.sort(key=lambda p: (p.mtime, p.image.name))
        self._pairs = deque(pairs)
        self._pair_bytes = sum(p.size for p in pairs)
        self._labelled = sum(p.labelled for p in pairs)

    # ------------------------------------------------------------------ file helpers

    def _maybe_rescan(self) -> None:
        """Rebuild the indexes when the hourly rescan is due."""
        if time.monotonic() >= self._next_rescan:
            self.rescan()

    def _write_atomic(self, path: Path, data: bytes) -> None:
        """Write `<path>.tmp`, fsync it and rename it over `path`; the tmp file is removed on failure."""

        def write(fh: BinaryIO) -> None:
            if self.emulated_free_bytes is not None and len(data) > self.emulated_free_bytes:
                fh.write(data[: self.emulated_free_bytes])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            fh.write(data)

        files.write_atomic(path, write, tmp=path.with_name(path.name + TMP_SUFFIX))
        if self.emulated_free_bytes is not None:
            self.emulated_free_bytes -= len(data)

    def _write_if_changed(self, path: Path, data: bytes) -> None:
        """Write a small file atomically unless it already holds exactly these bytes."""
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        self._write_atomic(path, data)

    def _unlink(self, path: Path) -> int:
        """Delete a file, returning its size (0 when it was already gone or cannot be deleted)."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            logger.warning("evidence: cannot delete %s: %s", path.name, _describe(exc), extra=ev("evidence_delete_failed"))
            return 0
        if self.emulated_free_bytes is not None:
            self.emulated_free_bytes += size
        return size

    @staticmethod
    def _rmdir(path: Path) -> None:
        """Remove a folder if it is empty."""
        try:
            path.rmdir()
        except OSError:
            pass

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        """Plain files directly in a folder (empty when it does not exist)."""
        try:
            return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def _skip(self, kind: str, exc: BaseException) -> None:
        """Count and log evidence that could not be saved (warnings repeat-folded by the log filter)."""
        self.skipped[f"{kind}_errors"] += 1
        self.last_error = f"{kind}: {exc}"
        logger.warning("evidence: %s not saved: %s", kind, _describe(exc), extra=ev("evidence_skipped", kind=kind))


def _describe(exc: BaseException) -> str:
    """An error without its file name, so that repeats of one problem fold into one log line."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
    return str(exc)


def _has_boxes(label: Path) -> bool:
    """True when a label file holds at least one non-blank line."""
    try:
        with open(label, "rb") as fh:
            return any(line.strip() for line in fh)
    except OSError:
        return False
