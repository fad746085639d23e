"""Soak test: the real daemon in full simulation against a real mosquitto for N minutes, sampled for leaks.

Run from the repo root: `python -m tests.bench.soak --minutes 30 [--item-interval 2] [--sample-interval 60]
[--warmup-minutes 5] [--out soak.json]`. The daemon runs as a subprocess on config/simulation.yaml (real ONNX
model, real workers, simulated Arduino on a pty, file camera, health monitor on) with one simulated item every
`--item-interval` seconds. Every `--sample-interval` seconds the daemon's RSS (VmRSS), thread count, open fds,
CPU % of one core, items so far and worker restarts are sampled from /proc and from its retained MQTT state.

Criteria, all over the samples taken after the warm-up (but the RSS cap):
- RSS: median of the first 3 samples vs median of the last 3 grows by less than 5 % (the max and a
  Theil–Sen trend in MB/h are reported, not judged);
- RSS cap (`rss_10min`), only for the shipped ONNX model and a run of at least 10 minutes: the sample at the
  10-minute mark (the first at t >= 600 s; with the default one-minute samples, after 10 minutes of items)
  holds RSS <= 200 MB (MB = MiB here, as in every RSS figure of this report; the largest RSS after the mark
  is reported, not judged). A shorter run, or another model or backend set with --set, reports the figure
  (`rss_at_10min_mb`, None when short) without the criterion;
- threads and fds: the median of the last 3 samples is not above the median of the first 3 (a one-sample
  excursion cannot move a median of 3; every excursion is listed in the report);
- no worker restart, no worker leaving `running`, no daemon exit or pid change;
- every item the workflow started (item id seen in the retained `workflow` state) got an outcome event
  (item_sorted / item_refused / item_failed / item_interrupted), waiting for the in-flight ones at the end.
Whether a `libtorch*` library is mapped in the daemon (/proc/<pid>/maps) is read at every sample and reported
(`libtorch_mapped`: it must be False with the shipped ONNX model; a torch-free daemon is what the RSS cap needs).
Exit status 0 when all hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Broker, DaemonProcess, simulation_doc

logger = logging.getLogger(__name__)

DEVICE_ID = "sim-bin"
OUTCOME_TYPES = ("item_sorted", "item_refused", "item_failed", "item_interrupted")
RSS_GROWTH_LIMIT_PCT = 5.0
RSS_CAP_MB = 200.0
"""RSS limit at the 10-minute mark, shipped ONNX model (MiB, like every RSS figure here)."""
RSS_CAP_AT_S = 600.0
SHIPPED_MODEL = "smartbin-waste-s.onnx"
WINDOW = 3
"""Samples per robust window (first / last after warm-up)."""
OUTCOME_GRACE_S = 40.0
"""Longest wait for the items in flight at the end: decision 10 s + two route timeouts 10 s + confirm 8 s, with room."""
EMPTY_AFTER_S = 2.0
"""The simulated operator changes a full compartment's bag after this long (shipped: 45 s)."""
ITEM_MM = 12.0
"""Fill height each simulated item adds (shipped 45 mm of 500 usable): a compartment cycles every ~40 items."""
PRESENCE_TOLERANCE_S = 0.5
"""How much earlier than its presence event an item's `started_at` may be (the GPIO worker announces the
presence on the bus before it stamps the event)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

QUICK = {"duration_s": 26.0, "warmup_s": 14.0, "sample_interval_s": 2.0, "item_interval_s": 2.0}
"""`bench(quick=True)`: ~30 s in all (daemon start-up included)."""


# --------------------------------------------------------------------------- /proc readings


@dataclass
class ProcReading:
    """One look at the daemon process in /proc."""

    rss_kb: int
    threads: int
    fds: int
    cpu_ticks: int
    fd_kinds: dict[str, int]
    thread_names: dict[str, int]


def mapped_libraries(pid: int) -> set[str]:
    """Base names of the shared objects mapped in `pid` (from /proc/<pid>/maps), e.g. {'libtorch_cpu.so', ...}."""
    names: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and ".so" in parts[5]:
            names.add(parts[5].rsplit("/", 1)[-1].split(" (deleted)")[0])
    return names


def libtorch_mapped(pid: int) -> bool:
    """Whether any libtorch* library (torch's C++ runtime) is mapped in `pid`."""
    return any(name.startswith("libtorch") for name in mapped_libraries(pid))


def fd_kind(target: str) -> str:
    """A readable class of an fd's link target: socket, pipe, anon_inode:<x>, pty, sqlite, or the file name."""
    if target.startswith(("socket:", "pipe:")):
        return target.split(":", 1)[0]
    if target.startswith("anon_inode:"):
        return target.strip("[]").replace("[", "")
    if target.startswith(("/dev/pts/", "/dev/ptmx")):
        return "pty"
    if target.endswith((".db", ".db-wal", ".db-shm", ".sqlite", ".sqlite-wal", ".sqlite-shm")):
        return "sqlite:" + Path(target).name
    return "file:" + Path(target).name


def read_proc(pid: int) -> ProcReading:
    """RSS, threads (with names), fds (by kind) and CPU ticks of `pid`; raises OSError if it is gone."""
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    rss_kb = int(status["VmRSS"].split()[0])
    threads = int(status["Threads"])
    stat = (proc / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu_ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    kinds: Counter[str] = Counter()
    for fd in (proc / "fd").iterdir():
        try:
            kinds[fd_kind(os.readlink(fd))] += 1
        except OSError:
            continue  # closed between listing and readlink
    names: Counter[str] = Counter()
    for task in (proc / "task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:
            continue
    return ProcReading(rss_kb, threads, sum(kinds.values()), cpu_ticks, dict(kinds), dict(names))


def dir_kb(path: Path) -> int:
    """Disk use of a folder tree in KiB (apparent sizes)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total // 1024


# --------------------------------------------------------------------------- MQTT observer


@dataclass
class Observed:
    """What the observer has counted so far (a consistent copy)."""

    presences: list[float]
    started: list[str]
    started_at: dict[str, float]
    blocked: list[tuple[float, float | None]]
    outcomes: dict[str, str]
    outcome_types: dict[str, int]
    detections: int
    worker_restarts: int
    workers_not_running: list[str]
    daemon_pids: list[int]
    workflow_states: dict[str, int]
    workers: dict[str, Any]
    alerts: list[dict[str, Any]]
    availability: list[str]
    simulated_items: int
    emptied: int
    states: dict[str, Any] = field(default_factory=dict)


class Observer:
    """A paho subscriber on the bin's root that keeps counters, not messages (a 30-minute run stays small)."""

    def __init__(self, port: int, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._event_ids: set[str] = set()
        self.presences: list[float] = []
        self.started: dict[str, float] = {}
        self.started_at: dict[str, float] = {}
        self.blocked: list[tuple[float, float | None]] = []
        self.outcomes: dict[str, str] = {}
        self.outcome_types: Counter[str] = Counter()
        self.detections = 0
        self.restarts: dict[str, int] = {}
        self.not_running: list[str] = []
        self.pids: list[int] = []
        self.workflow_states: Counter[str] = Counter()
        self._last_workflow_state: str | None = None
        self.alerts: list[dict[str, Any]] = []
        self.availability: list[str] = []
        self.states: dict[str, Any] = {}
        self.stopping = False
        """Set before the daemon is stopped on purpose: workers stopping then are not a fault."""
        self.workers: dict[str, Any] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("soak observer could not connect to the broker")

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe(f"{self.root}/#", qos=1)  # again after a reconnect
        self._connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        sub = msg.topic[len(self.root) + 1:]
        try:
            if sub == "availability":
                with self._lock:
                    self.availability.append(msg.payload.decode(errors="replace"))
                return
            if sub == "detector/snapshot" or not msg.payload:
                return
            doc = json.loads(msg.payload)
        except ValueError:
            logger.warning("soak: unparsable payload on %s", msg.topic)
            return
        with self._lock:
            if sub.startswith("event/"):
                self._on_event(sub[len("event/"):], doc)
            elif "/" not in sub and isinstance(doc, dict):
                self.states[sub] = doc
                if sub == "workflow":
                    self._on_workflow(doc)
                elif sub == "daemon":
                    self._on_daemon(doc)

    def _on_event(self, type_: str, env: dict[str, Any]) -> None:
        event_id = str(env.get("id"))
        if event_id in self._event_ids:
            return  # at-least-once delivery: deduplicate by id
        self._event_ids.add(event_id)
        data = env.get("data") or {}
        ts = parse_ts(env.get("ts"))
        if type_ == "item_present" and ts is not None:
            self.presences.append(ts)
        elif type_ in OUTCOME_TYPES:
            self.outcome_types[type_] += 1
            item_id = str(data.get("item_id"))
            self.outcomes[item_id] = type_
            started_at = parse_ts(data.get("started_at"))
            if started_at is not None:
                self.started_at[item_id] = started_at
            if type_ in ("item_refused", "item_failed") and ts is not None:
                self.blocked.append((ts, None))  # the lid is locked from here until the alert clears
        elif type_ == "detection":
            self.detections += 1
        elif type_ == "alert":
            code = str(data.get("code"))
            if data.get("active") is False and (code.startswith("refused_") or code == "route_failed") \
                    and self.blocked and self.blocked[-1][1] is None and ts is not None:
                self.blocked[-1] = (self.blocked[-1][0], ts)
            self.alerts.append({"ts": env.get("ts"), **{k: data.get(k) for k in ("source", "code", "severity",
                                                                                    "active", "message")}})

    def _on_workflow(self, doc: dict[str, Any]) -> None:
        item = doc.get("item")
        if isinstance(item, dict) and item.get("item_id") and item["item_id"] not in self.started:
            self.started[str(item["item_id"])] = time.monotonic()
        state = str(doc.get("state"))
        if state != self._last_workflow_state:
            self.workflow_states[state] += 1
            self._last_workflow_state = state

    def _on_daemon(self, doc: dict[str, Any]) -> None:
        if self.stopping:
            return
        self.workers = doc.get("workers") or {}
        pid = doc.get("pid")
        if isinstance(pid, int) and pid not in self.pids:
            self.pids.append(pid)
        for name, entry in (doc.get("workers") or {}).items():
            restarts = int(entry.get("restarts") or 0)
            self.restarts[name] = max(self.restarts.get(name, 0), restarts)
            status = entry.get("status")
            if status not in ("running", "starting"):
                note = f"{name}: {status} ({entry.get('last_error')})"
                if note not in self.not_running:
                    self.not_running.append(note)

    def snapshot(self) -> Observed:
        """A consistent copy of the counters."""
        with self._lock:
            sim = self.states.get("simulation") or {}
            return Observed(
                presences=sorted(self.presences), started=list(self.started), started_at=dict(self.started_at),
                blocked=list(self.blocked), outcomes=dict(self.outcomes),
                outcome_types=dict(self.outcome_types), detections=self.detections,
                worker_restarts=sum(self.restarts.values()), workers_not_running=list(self.not_running),
                daemon_pids=list(self.pids), workflow_states=dict(self.workflow_states),
                workers=json.loads(json.dumps(self.workers)), alerts=list(self.alerts),
                availability=list(self.availability), simulated_items=int(sim.get("items") or 0),
                emptied=int(sim.get("emptied") or 0), states=json.loads(json.dumps(self.states)),
            )


# --------------------------------------------------------------------------- criteria (pure)


def parse_ts(value: Any) -> float | None:
    """An ISO-8601 UTC stamp (`...Z`) as epoch seconds, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def classify_presences(presences: Sequence[float], started_at: Sequence[float],
                       blocked: Sequence[tuple[float, float | None]], warmup_end: float,
                       cutoff: float = float("inf")) -> dict[str, list[float]]:
    """Pair every presence event with the item it started (one each, in time order); sort the rest by why.

    An item started within PRESENCE_TOLERANCE_S before its presence event or any time before the next presence.
    Unpaired presences: `blocked` (the lid was locked after a refusal or a route failure: turned away on purpose),
    `warmup` (before the end of the warm-up, e.g. while the model was still loading), `after_cutoff` (after the
    last sample: the daemon may be stopped before that item finishes), else `busy` (the workflow was still
    handling the previous item and ignored it).
    """
    starts = sorted(started_at)
    pres = sorted(presences)
    out: dict[str, list[float]] = {"started": [], "blocked": [], "warmup": [], "after_cutoff": [], "busy": []}
    j = 0
    for i, ts in enumerate(pres):
        upper = pres[i + 1] - PRESENCE_TOLERANCE_S if i + 1 < len(pres) else float("inf")
        while j < len(starts) and starts[j] < ts - PRESENCE_TOLERANCE_S:
            j += 1  # an item without a presence event (e.g. started by a decision): not ours
        if j < len(starts) and starts[j] < upper:
            out["started"].append(ts)
            j += 1
        elif any(start <= ts and (end is None or ts <= end) for start, end in blocked):
            out["blocked"].append(ts)
        elif ts < warmup_end:
            out["warmup"].append(ts)
        elif ts > cutoff:
            out["after_cutoff"].append(ts)
        else:
            out["busy"].append(ts)
    return out



def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def theil_sen_per_h(points: Sequence[tuple[float, float]]) -> float:
    """Median of the pairwise slopes (robust to steps and spikes), per hour; points are (t_s, value)."""
    if len(points) > 400:
        points = [points[round(i * (len(points) - 1) / 399)] for i in range(400)]
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1:] if b[0] != a[0]]
    return 3600.0 * _median(slopes) if slopes else 0.0


def _windows(after: Sequence[dict[str, Any]], key: str, window: int) -> tuple[float, float, int]:
    """Median of the first and of the last `window` values (fewer when there are few samples), and the width used."""
    w = max(1, min(window, len(after) // 2))
    return _median([s[key] for s in after[:w]]), _median([s[key] for s in after[-w:]]), w


def _count_criterion(after: Sequence[dict[str, Any]], key: str, window: int) -> dict[str, Any]:
    """No growth of a count (threads, fds): last-window median not above first-window median; excursions listed."""
    first, last, w = _windows(after, key, window)
    excursions = [{"t_s": s["t_s"], key: s[key], "delta": s[key] - first} for s in after if s[key] != first]
    return {"first_median": first, "last_median": last, "growth": last - first, "window_samples": w,
            "min": min(s[key] for s in after), "max": max(s[key] for s in after),
            "excursions": excursions, "target": "growth <= 0", "target_met": last - first <= 0}


def rss_at(samples: Sequence[dict[str, Any]], at_s: float = RSS_CAP_AT_S) -> dict[str, Any] | None:
    """The first sample at or after `at_s` (1 s of slack for the sampling clock), or None when the run was shorter."""
    return next((s for s in samples if s["t_s"] >= at_s - 1.0), None)


def evaluate(samples: Sequence[dict[str, Any]], warmup_s: float, *, started: Sequence[str],
             outcomes: dict[str, str], worker_restarts: int, workers_not_running: Sequence[str],
             daemon_pids: Sequence[int], daemon_exit: str | None, window: int = WINDOW,
             rss_limit_pct: float = RSS_GROWTH_LIMIT_PCT, rss_cap_mb: float | None = None,
             rss_cap_at_s: float = RSS_CAP_AT_S) -> dict[str, Any]:
    """The verdict: every criterion with its figures and `target_met`, and `target_met` over all of them.

    `samples` need `t_s`, `rss_kb`, `threads`, `fds`; only those at or after `warmup_s` count. Fewer than two
    samples after the warm-up cannot show growth either way, so they fail the memory/thread/fd criteria.
    With `rss_cap_mb` (the shipped ONNX model), a run that reached `rss_cap_at_s` also gets `rss_10min`: the
    RSS of the first sample at or after that mark (warm-up or not) must be <= `rss_cap_mb`.
    """
    after = [s for s in samples if s["t_s"] >= warmup_s]
    criteria: dict[str, dict[str, Any]] = {}
    if len(after) < 2:
        why = f"only {len(after)} sample(s) after the warm-up; need at least 2"
        for name in ("rss", "threads", "fds"):
            criteria[name] = {"target_met": False, "error": why}
    else:
        first, last, w = _windows(after, "rss_kb", window)
        peak = max(s["rss_kb"] for s in after)
        growth = 100.0 * (last - first) / first
        criteria["rss"] = {
            "first_median_mb": round(first / 1024, 1), "last_median_mb": round(last / 1024, 1),
            "growth_pct": round(growth, 2), "max_mb": round(peak / 1024, 1),
            "max_growth_pct": round(100.0 * (peak - first) / first, 2), "window_samples": w,
            "slope_mb_per_h": round(theil_sen_per_h([(s["t_s"], s["rss_kb"] / 1024) for s in after]), 2),
            "target_pct": rss_limit_pct, "target_met": growth < rss_limit_pct,
        }
        criteria["threads"] = _count_criterion(after, "threads", window)
        criteria["fds"] = _count_criterion(after, "fds", window)
    at_mark = rss_at(samples, rss_cap_at_s)
    if rss_cap_mb is not None and at_mark is not None:
        criteria["rss_10min"] = {
            "at_s": at_mark["t_s"], "rss_mb": round(at_mark["rss_kb"] / 1024, 1),
            "max_after_mb": round(max(s["rss_kb"] for s in samples if s["t_s"] >= at_mark["t_s"]) / 1024, 1),
            "target_mb": rss_cap_mb,
            "target": f"RSS <= {rss_cap_mb:g} MB at the {rss_cap_at_s / 60:g}-minute mark (shipped ONNX model)",
            "target_met": at_mark["rss_kb"] / 1024 <= rss_cap_mb,
        }
    pid_changes = max(0, len(set(daemon_pids)) - 1)
    criteria["restarts"] = {
        "worker_restarts": worker_restarts, "workers_not_running": list(workers_not_running),
        "daemon_pids": list(daemon_pids), "daemon_pid_changes": pid_changes, "daemon_exit": daemon_exit,
        "target": "no worker restart, every worker running, the daemon never exited",
        "target_met": worker_restarts == 0 and not workers_not_running and pid_changes == 0 and daemon_exit is None,
    }
    missing = [item for item in started if item not in outcomes]
    criteria["outcomes"] = {
        "items_started": len(started), "items_with_outcome": len(started) - len(missing), "missing": missing,
        "target": "every started item has an outcome event (and at least one item ran)",
        "target_met": bool(started) and not missing,
    }
    return {"criteria": criteria, "target_met": all(c["target_met"] for c in criteria.values())}


def shipped_onnx(detector: dict[str, Any]) -> bool:
    """Whether a config's detector section runs the shipped ONNX model on onnxruntime (what the RSS cap is for)."""
    model = Path(str(detector.get("model", "")))
    return model.name == SHIPPED_MODEL and detector.get("backend", "auto") in ("auto", "onnxruntime")


# --------------------------------------------------------------------------- the run


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the sections on the way."""
    *sections, key = dotted.split(".")
    for name in sections:
        doc = doc.setdefault(name, {})
    doc[key] = value


def soak_config(workdir: Path, port: int, item_interval_s: float, overrides: dict[str, Any] | None = None) -> Path:
    """config/simulation.yaml as shipped (real model, real workers, health on) on the soak's broker and storage."""
    doc = simulation_doc(workdir, port)
    doc["simulation"].update({"item_interval_s": item_interval_s, "item_dwell_s": min(1.5, 0.6 * item_interval_s),
                              "seed": 7, "empty_after_s": EMPTY_AFTER_S})
    doc["arduino"]["simulator"]["item_mm"] = ITEM_MM
    doc["logging"] = {**doc.get("logging", {}), "journal": "off"}
    for dotted, value in (overrides or {}).items():
        set_path(doc, dotted, value)
    path = workdir / "soak.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def scan_log(text: str) -> dict[str, Any]:
    """Counts of WARNING/ERROR lines and tracebacks in the daemon's stderr log, with the first few errors."""
    lines = text.splitlines()
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    warnings: Counter[str] = Counter()
    for line in lines:
        if " WARNING " in line:
            message = line.split(" WARNING ", 1)[1].strip()
            warnings[message.split(":", 1)[0][:60]] += 1
    return {"lines": len(lines), "errors": len(errors), "tracebacks": text.count("Traceback (most recent call last)"),
            "warnings": sum(warnings.values()), "warnings_by_source": dict(warnings.most_common(10)),
            "first_errors": errors[:5]}


def run_soak(duration_s: float, *, item_interval_s: float = 2.0, sample_interval_s: float = 60.0,
             warmup_s: float = 300.0, workdir: Path | None = None, keep: bool = False,
             overrides: dict[str, Any] | None = None, on_sample: Callable[[dict[str, Any]], None] | None = None,
             rss_cap_at_s: float = RSS_CAP_AT_S) -> dict[str, Any]:
    """Run the soak and return the report (settings, samples, counts, criteria, verdict).

    `rss_cap_at_s` moves the RSS cap's mark (10 minutes; the smoke test sets it inside its 30 s run).
    """
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="smartbin-soak-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    broker = Broker(work)
    observer: Observer | None = None
    daemon: DaemonProcess | None = None
    samples: list[dict[str, Any]] = []
    fd_maps: dict[str, dict[str, int]] = {}
    thread_maps: dict[str, dict[str, int]] = {}
    daemon_exit: str | None = None
    shutdown: dict[str, Any] = {"exit_code": None, "seconds": None}
    try:
        broker.start()
        config = soak_config(work, broker.port, item_interval_s, overrides)
        detector_cfg = (yaml.safe_load(config.read_text()) or {}).get("detector") or {}
        observer = Observer(broker.port, f"smartbin/{DEVICE_ID}")
        daemon = DaemonProcess(config, log=work / "daemon.log")
        t0, t0_wall = time.monotonic(), time.time()
        prev_ticks, prev_t = read_proc(daemon.pid).cpu_ticks, t0
        k = 0
        while t0 + (k + 1) * sample_interval_s <= t0 + duration_s + 1e-6:
            k += 1
            time.sleep(max(0.0, t0 + k * sample_interval_s - time.monotonic()))
            if daemon.proc.poll() is not None:
                daemon_exit = f"daemon exited with status {daemon.proc.returncode} at t={time.monotonic() - t0:.0f}s"
                break
            now = time.monotonic()
            reading = read_proc(daemon.pid)
            seen = observer.snapshot()
            cpu = 100.0 * (reading.cpu_ticks - prev_ticks) / CLK_TCK / (now - prev_t)
            prev_ticks, prev_t = reading.cpu_ticks, now
            t_s = round(now - t0, 1)
            samples.append({
                "t_s": t_s, "phase": "warmup" if t_s < warmup_s else "measure",
                "rss_kb": reading.rss_kb, "threads": reading.threads, "fds": reading.fds, "cpu_pct": round(cpu, 1),
                "items_started": len(seen.started), "items_sorted": seen.outcome_types.get("item_sorted", 0),
                "outcomes": sum(seen.outcome_types.values()), "worker_restarts": seen.worker_restarts,
                "workflow_state": (seen.states.get("workflow") or {}).get("state"),
                "outbox_pending": ((seen.states.get("mqtt") or {}).get("outbox") or {}).get("pending"),
                "storage_kb": dir_kb(work / "state"),
                "libtorch_mapped": libtorch_mapped(daemon.pid),
                "fd_kinds": reading.fd_kinds,
            })
            if t_s >= warmup_s and "warmup_end" not in fd_maps:
                fd_maps["warmup_end"], thread_maps["warmup_end"] = reading.fd_kinds, reading.thread_names
            fd_maps["end"], thread_maps["end"] = reading.fd_kinds, reading.thread_names
            if on_sample is not None:
                on_sample(samples[-1])
        # The items in flight at the cutoff get their outcome; items that start later do not count.
        started, cutoff_wall = observer.snapshot().started, time.time()
        deadline = time.monotonic() + OUTCOME_GRACE_S
        while time.monotonic() < deadline and any(i not in observer.snapshot().outcomes for i in started):
            time.sleep(0.2)
        observer.stopping = True
        if daemon.proc.poll() is None:
            t_stop = time.monotonic()
            daemon.stop()
            shutdown = {"exit_code": daemon.proc.returncode, "seconds": round(time.monotonic() - t_stop, 1)}
        time.sleep(0.5)  # the last messages of the shutdown reach the observer
        final = observer.snapshot()
        log = scan_log(daemon.log_path.read_text(errors="replace"))
    finally:
        if daemon is not None:
            daemon.stop()
        if observer is not None:
            observer.close()
        broker.stop()
    verdict = evaluate(samples, warmup_s, started=started, outcomes=final.outcomes,
                       worker_restarts=final.worker_restarts, workers_not_running=final.workers_not_running,
                       daemon_pids=[*final.daemon_pids, daemon.pid], daemon_exit=daemon_exit,
                       rss_cap_mb=RSS_CAP_MB if shipped_onnx(detector_cfg) else None, rss_cap_at_s=rss_cap_at_s)
    at_mark = rss_at(samples, rss_cap_at_s)
    presences = classify_presences(final.presences, list(final.started_at.values()), final.blocked,
                                   t0_wall + warmup_s, cutoff_wall)
    cpu_after = [s["cpu_pct"] for s in samples if s["t_s"] >= warmup_s] or [0.0]
    report: dict[str, Any] = {
        "settings": {"duration_s": duration_s, "warmup_s": warmup_s, "sample_interval_s": sample_interval_s,
                     "item_interval_s": item_interval_s, "empty_after_s": EMPTY_AFTER_S, "item_mm": ITEM_MM,
                     "rss_cap_mb": RSS_CAP_MB, "rss_cap_at_s": rss_cap_at_s,
                     "health_monitor": True, "overrides": overrides or {}, "python": sys.version.split()[0], "cpus": os.cpu_count()},
        **verdict,
        "cpu_mean_pct": round(statistics.fmean(cpu_after), 1), "cpu_max_pct": max(cpu_after),
        "model": Path(str(detector_cfg.get("model", ""))).name, "backend": detector_cfg.get("backend", "auto"),
        "rss_at_10min_mb": round(at_mark["rss_kb"] / 1024, 1) if at_mark is not None else None,
        "rss_cap_judged": "rss_10min" in verdict["criteria"],
        "libtorch_mapped": any(s["libtorch_mapped"] for s in samples) if samples else None,
        "counts": {
            "simulated_items": final.simulated_items, "presence_events": len(final.presences),
            "presences": {k: len(v) for k, v in presences.items()},
            "presences_ignored_while_busy_at_s": [round(ts - t0_wall, 1) for ts in presences["busy"]][:20],
            "items_started_at_cutoff": len(started), "items_started_total": len(final.started),
            "outcomes_by_type": final.outcome_types, "detections": final.detections,
            "compartments_emptied": final.emptied, "blocked_periods": len(final.blocked),
            "blocked_s": round(sum((end or time.time()) - start for start, end in final.blocked), 1),
            "workflow_states_entered": final.workflow_states, "availability": final.availability,
        },
        "workers": final.workers,
        "alerts": final.alerts,
        "workflow_counts": (final.states.get("workflow") or {}).get("counts"),
        "bus_dropped": (final.states.get("daemon") or {}).get("bus_dropped"),
        "outbox": (final.states.get("mqtt") or {}).get("outbox"),
        "health_status": (final.states.get("health") or {}).get("status"),
        "fd_kinds": fd_maps, "thread_names": thread_maps,
        "shutdown": shutdown,
        "log": log,
        "samples": samples,
    }
    if keep:
        report["workdir"] = str(work)
    elif own_dir:
        shutil.rmtree(work, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- output


HEADER = (f"{'t_min':>6} {'phase':<7} {'rss_MB':>7} {'thr':>4} {'fds':>4} {'cpu_%':>6} {'started':>7} "
          f"{'sorted':>6} {'outc':>5} {'rst':>3} {'store_MB':>8} {'torch':>5} {'wf_state':<10}")


def format_sample(s: dict[str, Any]) -> str:
    """One table row."""
    return (f"{s['t_s'] / 60:6.2f} {s['phase']:<7} {s['rss_kb'] / 1024:7.1f} {s['threads']:4d} {s['fds']:4d} "
            f"{s['cpu_pct']:6.1f} {s['items_started']:7d} {s['items_sorted']:6d} {s['outcomes']:5d} "
            f"{s['worker_restarts']:3d} {s['storage_kb'] / 1024:8.1f} {'yes' if s.get('libtorch_mapped') else 'no':>5} "
            f"{str(s['workflow_state']):<10}")


def format_verdict(report: dict[str, Any]) -> str:
    """The criteria and the verdict as text."""
    c = report["criteria"]
    out = []
    rss = c["rss"]
    if "error" in rss:
        out.append(f"RSS      : FAIL ({rss['error']})")
    else:
        out.append(f"RSS      : {rss['first_median_mb']} MB -> {rss['last_median_mb']} MB "
                   f"({rss['growth_pct']:+.2f} %, limit < {rss['target_pct']} %), max {rss['max_mb']} MB "
                   f"({rss['max_growth_pct']:+.2f} %), trend {rss['slope_mb_per_h']:+.1f} MB/h  "
                   f"{'pass' if rss['target_met'] else 'FAIL'}")
    cap = c.get("rss_10min")
    if cap is not None:
        out.append(f"RSS cap  : {cap['rss_mb']} MB at t={cap['at_s'] / 60:.1f} min (limit <= {cap['target_mb']:g} MB), "
                   f"max after it {cap['max_after_mb']} MB  {'pass' if cap['target_met'] else 'FAIL'}")
    else:
        mark = report.get("settings", {}).get("rss_cap_at_s", RSS_CAP_AT_S)
        at_mark = report.get("rss_at_10min_mb")
        why = "not the shipped ONNX model" if at_mark is not None else f"run shorter than {mark / 60:g} minutes"
        out.append(f"RSS cap  : not judged ({why}); RSS at the {mark / 60:g}-minute mark: "
                   f"{'n/a' if at_mark is None else f'{at_mark} MB'}")
    out.append(f"libtorch : mapped in the daemon: {report.get('libtorch_mapped')} (model {report.get('model')}, "
               f"backend {report.get('backend')})")
    for name in ("threads", "fds"):
        x = c[name]
        if "error" in x:
            out.append(f"{name:<9}: FAIL ({x['error']})")
            continue
        out.append(f"{name:<9}: {x['first_median']:g} -> {x['last_median']:g} (growth {x['growth']:+g}; "
                   f"min {x['min']}, max {x['max']}, {len(x['excursions'])} sample(s) off the baseline)  "
                   f"{'pass' if x['target_met'] else 'FAIL'}")
    r = c["restarts"]
    out.append(f"restarts : worker restarts {r['worker_restarts']}, not running {r['workers_not_running'] or 'none'}, "
               f"daemon pids {r['daemon_pids']}, exit {r['daemon_exit'] or 'none'}  "
               f"{'pass' if r['target_met'] else 'FAIL'}")
    o = c["outcomes"]
    out.append(f"outcomes : {o['items_with_outcome']}/{o['items_started']} started items have an outcome"
               f"{' (missing: ' + ', '.join(o['missing'][:10]) + ')' if o['missing'] else ''}  "
               f"{'pass' if o['target_met'] else 'FAIL'}")
    counts = report["counts"]
    p = counts["presences"]
    out.append(f"items    : simulated {counts['simulated_items']}, presence events {counts['presence_events']} "
               f"(started an item {p['started']}, turned away while blocked {p['blocked']}, ignored during warm-up "
               f"{p['warmup']}, after the last sample {p['after_cutoff']}, ignored while busy after warm-up "
               f"{p['busy']}); outcomes {counts['outcomes_by_type']}; blocked {counts['blocked_periods']}x / "
               f"{counts['blocked_s']} s; emptied {counts['compartments_emptied']}")
    out.append(f"cpu      : mean {report['cpu_mean_pct']} % (max {report['cpu_max_pct']} %) of one core")
    out.append(f"log      : {report['log']['errors']} error line(s), {report['log']['tracebacks']} traceback(s), "
               f"{report['log']['warnings']} warning(s); shutdown exit {report['shutdown']['exit_code']} "
               f"in {report['shutdown']['seconds']} s")
    out.append(f"VERDICT  : {'PASS' if report['target_met'] else 'FAIL'}")
    return "\n".join(out)


def bench(quick: bool = False) -> dict[str, Any]:
    """The soak's figures; quick: a ~30 s run (14 s warm-up, a sample every 2 s), else the 30-minute soak."""
    if quick:
        report = run_soak(QUICK["duration_s"], item_interval_s=QUICK["item_interval_s"],
                          sample_interval_s=QUICK["sample_interval_s"], warmup_s=QUICK["warmup_s"])
    else:
        report = run_soak(1800.0, item_interval_s=2.0, sample_interval_s=60.0, warmup_s=300.0)
    c = report["criteria"]
    return {
        "duration_s": report["settings"]["duration_s"],
        "warmup_s": report["settings"]["warmup_s"],
        "rss_first_mb": c["rss"].get("first_median_mb"),
        "rss_last_mb": c["rss"].get("last_median_mb"),
        "rss_max_mb": c["rss"].get("max_mb"),
        "rss_growth_pct": c["rss"].get("growth_pct"),
        "rss_slope_mb_per_h": c["rss"].get("slope_mb_per_h"),
        "rss_growth_target_pct": RSS_GROWTH_LIMIT_PCT,
        "rss_target_met": c["rss"]["target_met"],
        "rss_at_10min_mb": report["rss_at_10min_mb"],
        "rss_cap_mb": RSS_CAP_MB,
        "rss_cap_target_met": c["rss_10min"]["target_met"] if "rss_10min" in c else None,
        "libtorch_mapped": report["libtorch_mapped"],
        "threads_growth": c["threads"].get("growth"),
        "threads_target_met": c["threads"]["target_met"],
        "fds_growth": c["fds"].get("growth"),
        "fds_target_met": c["fds"]["target_met"],
        "worker_restarts": c["restarts"]["worker_restarts"],
        "restarts_target_met": c["restarts"]["target_met"],
        "items_started": c["outcomes"]["items_started"],
        "items_with_outcome": c["outcomes"]["items_with_outcome"],
        "outcomes_target_met": c["outcomes"]["target_met"],
        "cpu_mean_pct": report["cpu_mean_pct"],
        "target_met": report["target_met"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run the soak, print the samples as they come and the verdict; write the JSON; exit 0 on pass, 1 on fail."""
    ap = argparse.ArgumentParser(prog="python -m tests.bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="total run time, warm-up included (default 30)")
    ap.add_argument("--item-interval", type=float, default=2.0, help="seconds between simulated items (default 2)")
    ap.add_argument("--sample-interval", type=float, default=60.0, help="seconds between samples (default 60)")
    ap.add_argument("--warmup-minutes", type=float, default=5.0, help="samples before this are not judged (default 5)")
    ap.add_argument("--out", type=Path, help="write the full report as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (daemon log, state) for inspection")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for an experiment, e.g. evidence.snapshots=false (YAML value)")
    ap.add_argument("--quick", action="store_true", help="a ~30 s smoke run (overrides the timing options)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        duration, item, sample, warmup = (QUICK["duration_s"], QUICK["item_interval_s"], QUICK["sample_interval_s"],
                                          QUICK["warmup_s"])
    else:
        duration, item, sample, warmup = (args.minutes * 60, args.item_interval, args.sample_interval,
                                          args.warmup_minutes * 60)
    print(f"soak: {duration / 60:g} min, warm-up {warmup / 60:g} min, a sample every {sample:g} s, "
          f"an item every {item:g} s", flush=True)
    print(HEADER, flush=True)
    overrides: dict[str, Any] = {}
    for item_set in args.set:
        key, sep, value = item_set.partition("=")
        if not sep:
            ap.error(f"--set needs KEY=VALUE, got {item_set!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    report = run_soak(duration, item_interval_s=item, sample_interval_s=sample, warmup_s=warmup, keep=args.keep,
                      overrides=overrides, on_sample=lambda s: print(format_sample(s), flush=True))
    report["command"] = "python -m tests.bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_verdict(report), flush=True)
    if args.keep:
        print(f"work folder kept: {report['workdir']}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1, default=str))
        print(f"report written to {args.out}", flush=True)
    sys.exit(0 if report["target_met"] else 1)


if __name__ == "__main__":
    main()
