"""Top processes by CPU and by memory, as far as the daemon may see them (`health/processes`).

Why a running cache: a process's CPU % is measured between two samples. The first request after a while primes
the counters and waits a short window (≤ 0.5 s, interruptible); each answer is the next request's first sample,
so requests that follow each other answer at once, measured since the previous one.
Why `visibility`: under systemd's `ProtectProc=invisible` /proc hides other users' processes; the answer then says
so (with the reason) instead of passing a short list off as the whole system.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

MAX_TOP = 50
WINDOW_S = 0.5
"""Measuring window of a first (or stale) request."""
MAX_WINDOW_AGE_S = 300.0
"""A previous sample older than this is re-primed: CPU % averaged over many minutes says little."""
_HIDING = {"invisible", "2", "noaccess", "1", "ptraceable", "4"}
_FIELDS = ["pid", "name", "username", "cpu_percent", "memory_info", "memory_percent", "status"]


class ProcessesArgs(BaseModel):
    """Arguments of `health/processes`."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=10, ge=1, le=MAX_TOP, description="processes in each list")


def proc_hidepid(mountinfo: Path) -> str | None:
    """The `hidepid=` option /proc is mounted with (None: not set, or mountinfo unreadable)."""
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        logger.debug("cannot read %s: %s", mountinfo, exc)
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or fields[4] != "/proc":
            continue
        options = ",".join(fields[5:]).replace(" ", ",").split(",")
        # The last /proc mount is the one in effect (systemd mounts its own over the host's).
        found = next((o.split("=", 1)[1] for o in options if o.startswith("hidepid=")), None)
    return found


def visibility(mountinfo: Path, euid: int | None = None) -> tuple[str, str | None]:
    """("all", None) or ("own", why): what this process may see of others' processes."""
    uid = os.geteuid() if euid is None else euid
    hidepid = proc_hidepid(mountinfo)
    if uid == 0 or hidepid is None or hidepid not in _HIDING:
        return "all", None
    return "own", (f"/proc is mounted with hidepid={hidepid} (systemd ProtectProc=invisible): only the daemon "
                   "user's processes are visible; install.sh --process-visibility=all shows every process")


class ProcessSampler:
    """CPU/memory of every visible process, with CPU % measured since the previous sample."""

    def __init__(self, mountinfo: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.mountinfo = mountinfo
        self.clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._sampled_at: float | None = None

    def _sample(self) -> list[dict[str, Any]]:
        """One pass over the visible processes (CPU % since this object's previous pass)."""
        seen: dict[int, psutil.Process] = {}
        rows: list[dict[str, Any]] = []
        for proc in psutil.process_iter():
            cached = self._procs.get(proc.pid)
            proc = cached if cached is not None and cached == proc else proc  # == also compares start times
            try:
                with proc.oneshot():
                    info = proc.as_dict(_FIELDS)
            except psutil.Error:
                continue
            seen[proc.pid] = proc
            if info.get("memory_info") is None:
                continue  # details denied (hidepid=noaccess): counted, not listed
            rows.append({
                "pid": info["pid"], "name": info["name"], "user": info["username"], "status": info["status"],
                "cpu_percent": round(float(info["cpu_percent"] or 0.0), 1),
                "rss_bytes": int(info["memory_info"].rss),
                "memory_percent": round(float(info["memory_percent"] or 0.0), 2),
            })
        self._procs = seen
        self._sampled_at = self.clock()
        return rows

    def top(self, limit: int, wait: Callable[[float], bool]) -> dict[str, Any]:
        """The answer of `health/processes`: `limit` processes by CPU and by memory, visibility and window."""
        now = self.clock()
        if self._sampled_at is None or now - self._sampled_at > MAX_WINDOW_AGE_S:
            self._sample()
            wait(WINDOW_S)
        window = self.clock() - (self._sampled_at or now)
        rows = self._sample()
        scope, reason = visibility(self.mountinfo)
        by_cpu = sorted(rows, key=lambda r: (-r["cpu_percent"], -r["rss_bytes"]))[:limit]
        by_memory = sorted(rows, key=lambda r: -r["rss_bytes"])[:limit]
        return {
            "visibility": scope,
            "reason": reason,
            "processes_seen": len(self._procs),
            "window_s": round(window, 2),
            "cpu_count": psutil.cpu_count(),
            "by_cpu": by_cpu,
            "by_memory": by_memory,
        }
