"""Runs workers in threads, restarts crashed ones with capped exponential backoff, marks chronic
crashers failed (with an alert) and tells the watchdog whether every critical worker is alive.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..logs import ev
from .bus import Alert, Bus
from .worker import FatalWorkerError, Worker

logger = logging.getLogger(__name__)

STARTING, RUNNING, RESTARTING, FAILED, STOPPED = "starting", "running", "restarting", "failed", "stopped"


@dataclass
class RestartPolicy:
    """Backoff and give-up rule for crashing workers."""

    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    max_restarts: int = 5
    window_s: float = 600.0
    heartbeat_timeout_s: float = 30.0
    stop_timeout_s: float = 8.0

    def backoff(self, crashes_in_window: int) -> float:
        """Delay before restart number `crashes_in_window` (1-based): min * 2^(n-1), capped."""
        return min(self.backoff_max_s, self.backoff_min_s * (2 ** max(0, crashes_in_window - 1)))


@dataclass
class _Slot:
    worker: Worker
    thread: threading.Thread | None = None
    status: str = STOPPED
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    restarts: int = 0
    restart_at: float | None = None
    last_error: str | None = None
    crash: BaseException | None = None
    crash_tb: str | None = None


class Supervisor:
    """Owns the worker threads; call `check()` periodically from the main thread."""

    def __init__(self, bus: Bus, policy: RestartPolicy | None = None) -> None:
        self.bus = bus
        self.policy = policy or RestartPolicy()
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._last_published: dict[str, Any] | None = None

    # -- registration / lifecycle -------------------------------------------

    def add(self, worker: Worker) -> None:
        """Register a worker (not started yet)."""
        if worker.name in self._slots:
            raise ValueError(f"duplicate worker name {worker.name!r}")
        self._slots[worker.name] = _Slot(worker)

    def replace(self, worker: Worker) -> None:
        """Swap in a new worker object under an existing name (stops the old one first)."""
        self.stop(worker.name)
        old = self._slots[worker.name].worker
        if old.inbox is not None and old is not worker:
            self.bus.unsubscribe(old.inbox)
        with self._lock:
            self._slots[worker.name] = _Slot(worker)
        self._start(self._slots[worker.name])

    def names(self) -> list[str]:
        """Registered worker names, in start order."""
        return list(self._slots)

    def worker(self, name: str) -> Worker:
        """The worker registered under `name`."""
        return self._slots[name].worker

    def start_all(self) -> None:
        """Start every registered worker."""
        for slot in self._slots.values():
            self._start(slot)

    def start(self, name: str) -> None:
        """Start one registered worker (e.g. one added after start_all)."""
        self._start(self._slots[name])

    def _start(self, slot: _Slot) -> None:
        slot.crash = None
        slot.crash_tb = None
        slot.restart_at = None
        slot.status = STARTING
        thread = threading.Thread(target=self._thread_main, args=(slot,), name=f"smartbin-{slot.worker.name}", daemon=True)
        slot.thread = thread
        thread.start()
        slot.status = RUNNING

    def _thread_main(self, slot: _Slot) -> None:
        """The worker's thread: runs it and hands a crash over under the lock; every status change is the
        supervising thread's."""
        worker = slot.worker
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - a worker must never take the daemon down
            tb = traceback.format_exc()
            logger.error("worker %s crashed: %s\n%s", worker.name, exc, tb,
                         extra=ev("worker_crashed", component=worker.name))
            with self._lock:
                slot.crash, slot.crash_tb = exc, tb

    def stop(self, name: str, timeout: float | None = None) -> bool:
        """Stop one worker and join it; True if its thread ended in time."""
        slot = self._slots[name]
        slot.worker.request_stop()
        slot.restart_at = None
        ok = True
        if slot.thread is not None:
            slot.thread.join(self.policy.stop_timeout_s if timeout is None else timeout)
            ok = not slot.thread.is_alive()
            if not ok:
                logger.warning("worker %s did not stop within %.1fs", name, timeout or self.policy.stop_timeout_s,
                               extra=ev("worker_stop_timeout", component=name))
        slot.status = STOPPED
        return ok

    def stop_all(self, deadline_s: float | None = None) -> bool:
        """Stop all workers in reverse start order within an overall deadline."""
        budget = self.policy.stop_timeout_s if deadline_s is None else deadline_s
        end = time.monotonic() + budget
        names = list(self._slots)[::-1]
        for name in names:
            self._slots[name].worker.request_stop()
        ok = True
        for name in names:
            ok &= self.stop(name, timeout=max(0.1, end - time.monotonic()))
        return ok

    def restart(self, name: str) -> None:
        """Operator restart: stop, clear the crash history, start again (also revives a failed worker)."""
        slot = self._slots[name]
        was_failed = slot.status == FAILED
        self.stop(name)
        slot.crashes.clear()
        slot.last_error = None
        logger.info("restarting worker %s on request", name, extra=ev("worker_restart_requested", component=name))
        self._start(slot)
        if was_failed:  # its worker_failed alert no longer holds
            self.bus.raise_alert(Alert(source=name, code="worker_failed", severity="info",
                                       message=f"worker {name} restarted on request", active=False))

    # -- periodic supervision ---------------------------------------------------

    def check(self) -> None:
        """Detect crashes, schedule and perform restarts, publish the worker table when it changes."""
        now = time.monotonic()
        for slot in self._slots.values():
            thread = slot.thread
            if slot.status in (RUNNING, STARTING) and thread is not None and not thread.is_alive():
                with self._lock:
                    crashed = slot.crash is not None
                if slot.worker.stop_event.is_set() and not crashed:
                    slot.status = STOPPED
                    continue
                self._on_crash(slot, now)
            elif slot.status == RESTARTING and slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                logger.info("restarting worker %s (restart #%d)", slot.worker.name, slot.restarts,
                            extra=ev("worker_restarted", component=slot.worker.name))
                self._start(slot)
        self.publish_state()

    def _on_crash(self, slot: _Slot, now: float) -> None:
        name = slot.worker.name
        err = slot.crash if slot.crash is not None else RuntimeError("thread ended without stop request")
        slot.last_error = f"{type(err).__name__}: {err}"
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > self.policy.window_s:
            slot.crashes.popleft()
        fatal = isinstance(slot.crash, FatalWorkerError)
        if fatal or len(slot.crashes) > self.policy.max_restarts:
            slot.status = FAILED
            slot.restart_at = None
            if fatal:
                logger.error("worker %s cannot run: %s (not retried; the rest of the daemon keeps running)",
                             name, err, extra=ev("worker_failed", component=name))
            else:
                logger.error("worker %s failed %d times within %.0fs; giving up (rest of the daemon keeps running)",
                             name, len(slot.crashes), self.policy.window_s, extra=ev("worker_failed", component=name))
            self.bus.raise_alert(Alert(source=name, code="worker_failed", severity="critical",
                                       message=f"worker {name} {'cannot run' if fatal else 'keeps crashing'}: {slot.last_error}"))
            return
        delay = self.policy.backoff(len(slot.crashes))
        slot.status = RESTARTING
        slot.restart_at = now + delay
        logger.warning("worker %s will restart in %.1fs (crash %d of %d allowed in %.0fs)", name, delay,
                       len(slot.crashes), self.policy.max_restarts, self.policy.window_s,
                       extra=ev("worker_restart_scheduled", component=name))

    # -- views ----------------------------------------------------------------

    def table(self) -> dict[str, dict[str, Any]]:
        """Per-worker status for the `daemon` state."""
        out: dict[str, dict[str, Any]] = {}
        for name, slot in self._slots.items():
            entry: dict[str, Any] = {
                "status": slot.status,
                "restarts": slot.restarts,
                "last_error": slot.last_error,
                "critical": slot.worker.critical,
            }
            if slot.status == RUNNING:
                entry["heartbeat_age_s"] = round(slot.worker.heartbeat_age(), 1)
            out[name] = entry
        return out

    def publish_state(self) -> None:
        """Publish the worker table on the bus when its shape changed (statuses, restarts, errors)."""
        table = self.table()
        shape = {n: {k: v for k, v in e.items() if k != "heartbeat_age_s"} for n, e in table.items()}
        if shape != self._last_published:
            self._last_published = shape
            self.bus.publish(WorkersChanged(table))

    def hung(self) -> list[str]:
        """Critical running workers whose heartbeat is older than the limit."""
        return [
            name for name, slot in self._slots.items()
            if slot.worker.critical and slot.status == RUNNING
            and slot.thread is not None and slot.thread.is_alive()
            and slot.worker.heartbeat_age() > self.policy.heartbeat_timeout_s
        ]

    def watchdog_ok(self) -> bool:
        """True while no critical worker is hung (failed ones are reported, not fatal)."""
        return not self.hung()

    def counts(self) -> dict[str, int]:
        """How many workers are in each status."""
        counts: dict[str, int] = collections.Counter(slot.status for slot in self._slots.values())
        return dict(counts)


@dataclass(frozen=True)
class WorkersChanged:
    """Bus notice: the worker table changed (consumed by the daemon status publisher)."""

    table: dict[str, dict[str, Any]]
