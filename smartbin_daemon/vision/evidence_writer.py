"""The evidence writer: snapshots and training frames are encoded and written on a thread of their own.

Why a thread: JPEG encoding plus fsync on an SD card costs ~15-20 ms per decision (and a stalled card much
more); on the detector's thread that delays the next item. The detector reserves the snapshot's file name in
memory (so its detection event can name the file) and queues the work here.

Why a bounded queue that drops: evidence is best effort. When the card stalls the queue fills, and new jobs
are dropped and counted instead of making the detector wait for the disk.

Why cached store stats: the store holds its lock while it writes, so the detector reads the store's
counters as of the writer's last job instead of waiting on that lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..logs import ev
from ..messages import Decision, DetectedBox
from .evidence import EvidenceStore

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 8
HOUSEKEEPING_INTERVAL_S = 5.0
KINDS = ("decision", "frame", "training")

FrameDone = Callable[[Path | None, bytes | None], None]
TrainingDone = Callable[[Path | None], None]


@dataclass
class _Job:
    """One queued piece of work, and what to tell its caller when it is dropped unrun at shutdown."""

    kind: str
    run: Callable[[], None]
    on_drop: Callable[[], None] | None = None


class EvidenceWriter:
    """Runs an EvidenceStore's encoding, disk writes and housekeeping on one background thread.

    The `submit_*` methods never block: a full queue drops the job and counts it. Callbacks run on the
    writer thread. Writer exceptions are logged and counted; they never end the thread.
    """

    def __init__(self, store: EvidenceStore, publish_snapshot: Callable[[bytes], None] | None = None,
                 maxsize: int = DEFAULT_QUEUE_SIZE, housekeeping_interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
        self.store = store
        self.publish_snapshot = publish_snapshot
        self.housekeeping_interval_s = housekeeping_interval_s
        self.submitted = 0
        self.written = 0
        self.errors = 0
        self.dropped = dict.fromkeys(KINDS, 0)
        self.max_queued = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, int(maxsize)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._store_stats: dict[str, Any] = store.stats()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer thread (no-op while it runs); jobs submitted before start wait for it."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="smartbin-evidence", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued within `timeout` (the rest is dropped and counted), then join the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._deadline = time.monotonic() + timeout
            self._stop.set()
        try:
            self._queue.put_nowait(None)  # wakes an idle thread; a full queue means it is not waiting
        except queue.Full:
            pass
        thread.join(timeout=timeout)
        if thread.is_alive():
            logger.warning("evidence writer did not stop within %.1f s (disk stalled?)", timeout,
                           extra=ev("worker_stop_timeout", worker="evidence"))

    @property
    def thread_id(self) -> int | None:
        """The writer thread's ident while it runs (for per-thread CPU clocks in benchmarks)."""
        thread = self._thread
        return thread.ident if thread is not None and thread.is_alive() else None

    @property
    def running(self) -> bool:
        """True while the writer thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # ------------------------------------------------------------------ submitting

    def submit_decision(self, image: np.ndarray, decision: Decision, *, training: bool) -> Path | None:
        """Queue the decision's snapshot (and training pair if `training`); returns the reserved snapshot path.

        None when snapshots are off or the queue is full (then the job is dropped and counted).
        """
        store, cfg = self.store, self.store.cfg
        snapshot = cfg.snapshots or cfg.publish_snapshot
        publish = self.publish_snapshot if cfg.publish_snapshot else None
        if not (snapshot or training):
            return None
        path = store.reserve_snapshot_path(decision.item_id, decision.category) if cfg.snapshots else None

        def run() -> None:
            if snapshot:
                before = store.latest_snapshot_jpeg
                store.save_snapshot(image, decision, path)
                data = store.latest_snapshot_jpeg
                if publish is not None and data is not None and data is not before:  # not an older picture
                    publish(data)
            if training:
                store.save_for_training(image, decision.boxes, decision.reason or "uncertain", item_id=decision.item_id)

        return path if self._submit(_Job("decision", run)) else None

    def submit_frame_snapshot(self, image: np.ndarray, on_done: FrameDone) -> bool:
        """Queue the `snapshot` request's frame; `on_done(path, jpeg)` follows on the writer thread. False when full.

        `path` is None when the file was not saved, `jpeg` None when the frame could not be encoded.
        """
        store = self.store

        def run() -> None:
            path: Path | None = None
            data: bytes | None = None
            try:
                before = store.latest_snapshot_jpeg
                path = store.save_frame_snapshot(image)
                data = store.latest_snapshot_jpeg
                data = data if data is not before else None
            finally:
                on_done(path, data)

        return self._submit(_Job("frame", run, lambda: on_done(None, None)))

    def submit_training(self, image: np.ndarray, boxes: Sequence[DetectedBox], reason: str, *,
                        item_id: str | None = None, force: bool = False, on_done: TrainingDone | None = None) -> bool:
        """Queue a training image/label pair; `on_done(image path or None)` follows on the writer thread."""
        store = self.store

        def run() -> None:
            saved: Path | None = None
            try:
                saved = store.save_for_training(image, boxes, reason, item_id=item_id, force=force)
            finally:
                if on_done is not None:
                    on_done(saved)

        return self._submit(_Job("training", run, None if on_done is None else lambda: on_done(None)))

    # ------------------------------------------------------------------ state

    def stats(self) -> dict[str, Any]:
        """Queue length and counters, for the detector's state under `evidence.writer`."""
        with self._lock:
            return {
                "running": self.running,
                "queued": self._queue.qsize(),
                "queue_size": self._queue.maxsize,
                "max_queued": self.max_queued,
                "submitted": self.submitted,
                "written": self.written,
                "dropped": dict(self.dropped),
                "errors": self.errors,
                "last_error": self.last_error,
            }

    def evidence_stats(self) -> dict[str, Any]:
        """The store's stats as of the writer's last job, plus `writer`: the detector's `evidence` state."""
        with self._lock:
            store_stats = dict(self._store_stats)
        return {**store_stats, "writer": self.stats()}

    # ------------------------------------------------------------------ the thread

    def _submit(self, job: _Job) -> bool:
        """Queue a job without waiting; a full queue or a stopped writer drops and counts it."""
        try:
            if self._stop.is_set():
                raise queue.Full
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.dropped[job.kind] += 1
            logger.warning("evidence: %s dropped, the writer's queue is full (%d) or stopped", job.kind,
                           self._queue.maxsize, extra=ev("evidence_skipped", kind=job.kind))
            return False
        with self._lock:
            self.submitted += 1
            self.max_queued = max(self.max_queued, self._queue.qsize())
        return True

    def _run(self) -> None:
        """Run queued jobs in order and housekeeping when due; after stop, drain until the deadline."""
        next_housekeeping = time.monotonic() + self.housekeeping_interval_s
        while True:
            now = time.monotonic()
            if self._stop.is_set():
                if now >= self._deadline:
                    self._drop_queued()
                    break
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
            elif now >= next_housekeeping:
                self._call("housekeeping", self.store.housekeeping)
                next_housekeeping = time.monotonic() + self.housekeeping_interval_s
                continue
            else:
                try:
                    job = self._queue.get(timeout=next_housekeeping - now)
                except queue.Empty:
                    continue
            if job is not None:
                self._call(job.kind, job.run)
        logger.debug("evidence writer stopped")

    def _call(self, kind: str, fn: Callable[[], None]) -> None:
        """Run one job or housekeeping; an exception is logged and counted, never raised."""
        try:
            fn()
            error = None
        except Exception as exc:
            error = f"{kind}: {exc!r}"
            logger.warning("evidence: %s failed on the writer thread: %r", kind, exc, exc_info=True,
                           extra=ev("evidence_skipped", kind=kind))
        store_stats = self.store.stats()
        with self._lock:
            self._store_stats = store_stats
            if error is None and kind != "housekeeping":
                self.written += 1
            elif error is not None:
                self.errors += 1
                self.last_error = error

    def _drop_queued(self) -> None:
        """At the stop deadline: drop and count the jobs still queued, telling their callers."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            with self._lock:
                self.dropped[job.kind] += 1
            logger.warning("evidence: %s dropped, the writer is stopping", job.kind,
                           extra=ev("evidence_skipped", kind=job.kind))
            if job.on_drop is not None:
                try:
                    job.on_drop()
                except Exception:
                    logger.warning("evidence: a dropped %s job's callback failed", job.kind, exc_info=True)
