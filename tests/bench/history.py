"""History query bench: 90 days of fill, health and item history in a fresh store, each history query timed through
the function its request handler calls, then once more as a request round trip through a real daemon and mosquitto.

Run from the repo root: `python -m tests.bench.history [--quick] [--days 90] [--repeat 30] [--json FILE]` (or
`python -m tests.bench --only history`).

The data is what the daemon itself keeps after `days` of running with the default config:
- fill: one point per compartment (the three of config/simulation.yaml) every `bins.fill.history_interval_s`
  (300 s), a saw-tooth that fills over two days and is emptied;
- health: one sample every `health.interval_s` (10 s), written for the whole period, then one `record()` as the
  health monitor makes it: the 10-minute rollup is built and the samples older than `health.history_full_days`
  (7) are pruned, as they would have been day by day;
- items: 200 outcomes a day over the categories and compartments of the simulation config.
Each query (90 days, 7 days and 24 h of fill and health at the 500-point limit, counts per day over 90 days and
per hour over 7, the last 500 items) runs `repeat` times; the target is p95 <= 200 ms for every one. The round
trip is the same query as an MQTT request to a daemon (the shipped simulation, on that store) and its answer,
beside a `ping` sent the same way (the cost of the round trip itself, not of the query).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from smartbin_daemon.bins import history as item_history
from smartbin_daemon.bins.history import ItemsArgs
from smartbin_daemon.bins.tracker import SCHEMA as FILL_SCHEMA
from smartbin_daemon.bins.tracker import fill_history
from smartbin_daemon.config import FillConfig, HealthConfig
from smartbin_daemon.health.history import FIGURES, HealthHistory
from smartbin_daemon.history import MAX_POINTS, TimeRange
from smartbin_daemon.store import DB_NAME, Store
from tests.conftest import REPO, Broker, DaemonProcess, Probe, simulation_doc, wait_until

logger = logging.getLogger(__name__)

TARGET_MS = 200.0
DAY = 86400.0
ITEMS_PER_DAY = 200
SIM_ROOT = "smartbin/sim-bin"


def _compartments() -> list[dict[str, Any]]:
    return list(yaml.safe_load((REPO / "config" / "simulation.yaml").read_text())["bins"]["compartments"])


def fill_store(path: Path, days: float, now: float) -> dict[str, int]:
    """A fresh store holding `days` of fill, health and item history ending at `now`; the row counts kept."""
    store = Store(path)
    compartments = _compartments()
    rng = random.Random(7)
    fill_every = FillConfig().history_interval_s
    with store.transaction() as db:
        for sql in (*FILL_SCHEMA, *item_history.SCHEMA):
            db.execute(sql)
        for c in compartments:
            n = int(days * DAY / fill_every)
            db.executemany("INSERT INTO fill_history (compartment, ts, fill_pct) VALUES (?, ?, ?)",
                           ((c["id"], now - days * DAY + i * fill_every, (i % 576) / 576 * 95) for i in range(n)))
        n_items = int(days * ITEMS_PER_DAY)
        rows = []
        for i in range(n_items):
            c = rng.choice(compartments)
            data = {"item_id": f"bench{i:07d}", "category": rng.choice(c["categories"]), "compartment": c["id"],
                    "confidence": round(rng.uniform(0.3, 1.0), 3), "uncertain": False, "class_name": "thing",
                    "snapshot": f"/var/lib/smartbin/evidence/bench{i:07d}.jpg", "confirmation": "drop"}
            rows.append(item_history.record_params("item_sorted", data, now - days * DAY + i * DAY / ITEMS_PER_DAY))
        db.executemany(item_history.RECORD, rows)
    health = HealthConfig()
    hist = _health_history(store)
    hist.setup()
    n = int(days * DAY / health.interval_s)
    names = list(FIGURES)
    with store.transaction() as db:
        db.executemany(
            f"INSERT INTO health_history (ts, status, {', '.join(names)}) VALUES (?, ?, {', '.join('?' for _ in names)})",
            ((now - days * DAY + i * health.interval_s, 0, *(_figure(name, i) for name in names)) for i in range(n)))
    hist.record({"status": "ok", "score": 100, "cpu": {"percent": 5.0}}, now)  # rolls up and prunes, as the monitor
    counts = {table: int(store.query(f"SELECT COUNT(*) FROM {table}")[0][0])  # type: ignore[call-overload]
              for table in ("fill_history", "health_history", "health_rollup", "item_history")}
    store.execute("VACUUM")  # the daemon prunes a little at a time and reuses the pages: its file stays this size
    store.close()
    return {**counts, "health_samples_written": n}


def _figure(name: str, i: int) -> float | None:
    if name.startswith("gpu") or name.startswith("net_sent"):
        return None
    return 40.0 + 30.0 * math.sin(i / 500.0)


def _health_history(store: Store) -> HealthHistory:
    cfg = HealthConfig()
    return HealthHistory(store, days=cfg.history_days, full_days=cfg.history_full_days, interval_s=cfg.interval_s)


def queries(store: Store, now: float, days: float) -> dict[str, Callable[[], Any]]:
    """Each query as its request handler runs it (the same functions, the same arguments)."""
    health = _health_history(store)
    health.setup()
    first = _compartments()[0]["id"]
    fill_every = FillConfig().history_interval_s

    def span(d: float) -> TimeRange:
        return TimeRange(now - d * DAY, now)

    return {
        f"fill_{days:g}d": lambda: fill_history(store, first, span(days), MAX_POINTS, fill_every),
        "fill_7d": lambda: fill_history(store, first, span(7), MAX_POINTS, fill_every),
        "fill_24h": lambda: fill_history(store, first, span(1), MAX_POINTS, fill_every),
        f"health_{days:g}d": lambda: health.query(span(days), MAX_POINTS, now),
        "health_7d": lambda: health.query(span(7), MAX_POINTS, now),
        "health_24h": lambda: health.query(span(1), MAX_POINTS, now),
        f"counts_{days:g}d_per_day_by_category": lambda: item_history.counts(store, span(days), "day", "category"),
        "counts_7d_per_hour_by_compartment": lambda: item_history.counts(store, span(7), "hour", "compartment"),
        "items_last_500": lambda: item_history.items(store, None, ItemsArgs(limit=MAX_POINTS)),
    }


def _stats(samples_ms: list[float], target: bool = True) -> dict[str, Any]:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    out = {"runs": len(ordered), "median_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2),
           "max_ms": round(ordered[-1], 2)}
    return {**out, "target": f"p95 <= {TARGET_MS:g} ms", "target_met": p95 <= TARGET_MS} if target else out


def time_queries(db_path: Path, now: float, days: float, repeat: int) -> dict[str, Any]:
    """Median and p95 of each query over `repeat` runs (after one warm-up run), with the size of its answer."""
    store = Store(db_path)
    out: dict[str, Any] = {}
    try:
        for name, run in queries(store, now, days).items():
            answer = run()
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                run()
                samples.append((time.perf_counter() - t0) * 1000.0)
            rows = answer.get("points", answer.get("rows", answer.get("items", [])))
            out[name] = {**_stats(samples), "rows": len(rows)}
    finally:
        store.close()
    return out


def _timed_request(probe: Probe, command: str, args: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
    """Publish one request (the response topic is already subscribed) and poll for its answer every millisecond."""
    transaction = uuid.uuid4().hex
    topic = f"{SIM_ROOT}/response/{command}"
    seen = len(probe.on(topic))  # earlier answers are not parsed again
    probe.client.publish(f"{SIM_ROOT}/request/{command}", json.dumps({"transaction": transaction, "args": args}), qos=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in probe.on(topic)[seen:]:
            answer = m.json()
            if answer.get("transaction") == transaction:
                return answer  # type: ignore[no-any-return]
        time.sleep(0.001)
    raise TimeoutError(f"no answer to {command} in {timeout:g} s")


def round_trips(work: Path, days: float, repeat: int) -> dict[str, Any]:
    """The same queries as MQTT requests to the simulated daemon running on the filled store."""
    broker = Broker(work, extra_conf="set_tcp_nodelay true\n")  # as the README's broker configs: no Nagle delay
    broker.start()
    doc = simulation_doc(work, broker.port)
    doc["logging"] = {"level": "WARNING", "journal": "off"}
    doc["simulation"].update({"item_interval_s": 3600})
    doc["health"].update({"enabled": True, "interval_s": HealthConfig().interval_s})
    doc["bins"]["fill"]["history_interval_s"] = FillConfig().history_interval_s
    config = work / "history-bench.yaml"
    config.write_text(yaml.safe_dump(doc))
    probe = Probe(broker.port)
    daemon = DaemonProcess(config)
    first = _compartments()[0]["id"]
    asks = {
        "ping (anchor: the round trip itself)": ("ping", {}),
        f"fill_{days:g}d": ("history/fill", {"compartment": first, "hours": days * 24}),
        f"health_{days:g}d": ("history/health", {"hours": days * 24}),
        f"counts_{days:g}d_per_day_by_category": ("history/counts", {"hours": days * 24, "period": "day"}),
        "items_last_500": ("history/items", {"limit": MAX_POINTS}),
    }
    out: dict[str, Any] = {}
    try:
        probe.subscribe(f"{SIM_ROOT}/availability")
        probe.wait_for(f"{SIM_ROOT}/availability", lambda m: m.payload == b"online", timeout=90)
        wait_until(lambda: "history/health" in probe.request(SIM_ROOT, "help", timeout=20)["data"], 30,
                   interval=1.0, what="the health worker's history/health in help")
        probe.subscribe(f"{SIM_ROOT}/response/#")
        sock = probe.client.socket()
        if sock is not None:  # like the system bench's measuring client: no Nagle delay on our side either
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for name, (command, args) in asks.items():
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                resp = _timed_request(probe, command, args)
                samples.append((time.perf_counter() - t0) * 1000.0)
                if resp["status"] != "ok":
                    raise RuntimeError(f"{command}: {resp.get('error')}")
            out[name] = _stats(samples, target=False)
    finally:
        probe.close()
        daemon.stop()
        broker.stop()
    return out


def bench(quick: bool = False, days: float | None = None, repeat: int | None = None,
          round_trip: bool = True) -> dict[str, Any]:
    """Fill a fresh store with `days` (90; quick: 3) of history, time every query `repeat` times (30; quick: 5),
    and (unless round_trip is false) the main ones through a real daemon (10 times each; quick: 2)."""
    days = days if days is not None else (3.0 if quick else 90.0)
    repeat = repeat if repeat is not None else (5 if quick else 30)
    work = Path(tempfile.mkdtemp(prefix="smartbin-bench-history-"))
    try:
        now = time.time()
        db_path = work / "state" / DB_NAME
        t0 = time.monotonic()
        sizes = fill_store(db_path, days, now)
        fill_s = time.monotonic() - t0
        result: dict[str, Any] = {"days": days, "rows": sizes, "db_mib": round(db_path.stat().st_size / 2**20, 1),
                                  "fill_s": round(fill_s, 1), "queries": time_queries(db_path, now, days, repeat)}
        if round_trip:
            result["round_trip"] = round_trips(work, days, 2 if quick else 10)
        met = [q["target_met"] for q in result["queries"].values()]
        result.update(target=f"every history query p95 <= {TARGET_MS:g} ms over {days:g} days", target_met=all(met))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Command line: run the bench and print (or write) its figures."""
    ap = argparse.ArgumentParser(prog="python -m tests.bench.history", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--days", type=float)
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--no-round-trip", action="store_true", help="skip the daemon round trip")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = bench(args.quick, args.days, args.repeat, not args.no_round_trip)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
