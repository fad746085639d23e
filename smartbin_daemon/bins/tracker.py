"""The fill tracker: turns raw ultrasonic distances into a fill %, a level, item counts, emptyings and a
time-to-full forecast per compartment, and keeps all of it in SQLite so a restart or power loss loses nothing.

Why one worker for every compartment: the readings of all compartments arrive in one TEL frame, the lid
gates them all at once, and the persistence is one transaction per change.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..clock import CLOCK_SANE_AFTER, iso_utc
from ..config import TOPIC_NAME_RE, BinsConfig, CompartmentConfig
from ..history import RangeArgs, TimeRange, bucket_s, bucketed, resolve_range, rounded
from ..logs import audit, ev
from ..messages import (
    ITEM_HANDOFF_DDL,
    DistanceReading,
    DoorChanged,
    FillLevel,
    ItemSorted,
    MaintenanceChanged,
    TemperatureReading,
)
from ..runtime.bus import Alert, Bus, Discovery, Entity, Request
from ..runtime.commands import RequestError, RequestSpec, command
from ..runtime.worker import STATE_EXPIRE_AFTER_S as EXPIRE_AFTER_S
from ..runtime.worker import Worker
from ..states.backup import CalibrationSource, CompartmentBackup, FillBackup
from ..states.fill import BinLevel, Calibration, CompartmentFill, FillState, SensorRef
from ..states.workflow import WorkflowState
from ..store import Store
from .fill import (
    LEVELS,
    DistanceFilter,
    EmptyingDetector,
    EmptyingParams,
    FilterParams,
    Forecast,
    LevelThresholds,
    compensate,
    downsample,
    fill_percent,
    forecast,
    next_level,
)

logger = logging.getLogger(__name__)

EVALUATE_EVERY_S = 0.5
TEMPERATURE_MAX_AGE_S = 120.0
PRUNE_EVERY_S = 3600.0
FORECAST_MAX_POINTS = 500

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fill_state (
        compartment TEXT PRIMARY KEY,
        fill_pct REAL, level TEXT, peak_pct REAL NOT NULL DEFAULT 0,
        items INTEGER NOT NULL DEFAULT 0, items_total INTEGER NOT NULL DEFAULT 0,
        emptied_at REAL, empty_mm REAL, full_mm REAL, calibrated_at REAL, updated_at REAL)""",
    "CREATE TABLE IF NOT EXISTS fill_history (compartment TEXT NOT NULL, ts REAL NOT NULL, fill_pct REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fill_history_idx ON fill_history (compartment, ts)",
    ITEM_HANDOFF_DDL,
)

CompartmentId = Field(pattern=TOPIC_NAME_RE.pattern, min_length=1, max_length=64, description="compartment id")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrateArgs(_Args):
    """`bin/calibrate`: take the current (or a given) distance as the empty or the full point."""

    compartment: str = CompartmentId
    point: Literal["empty", "full"]
    distance_mm: float | None = Field(default=None, gt=0, le=5000, description="default: the current filtered distance")


class EmptiedArgs(_Args):
    """`bin/emptied`: the operator emptied a compartment (or all of them)."""

    compartment: str | None = Field(default=None, pattern=TOPIC_NAME_RE.pattern, max_length=64,
                                    description="default: every compartment")


class ResetCountersArgs(_Args):
    """`bin/reset_counters`: zero the item counters."""

    compartment: str | None = Field(default=None, pattern=TOPIC_NAME_RE.pattern, max_length=64,
                                    description="default: every compartment")
    totals: bool = Field(default=False, description="also zero the lifetime totals")


class FillHistoryArgs(RangeArgs):
    """`history/fill`: a compartment's fill history over a time range."""

    compartment: str = CompartmentId


def fill_history(store: Store, compartment: str, span: TimeRange, limit: int, resolution_s: float) -> dict[str, Any]:
    """A compartment's recorded fill % in `span`, at most `limit` buckets: mean, min and max fill and the samples."""
    width = bucket_s(span, limit, resolution_s)
    columns = {"fill_pct": "AVG(fill_pct)", "min_pct": "MIN(fill_pct)", "max_pct": "MAX(fill_pct)", "samples": "COUNT(*)"}
    rows = bucketed(store, "fill_history", columns, span, width, limit, "compartment = ?", (compartment,))
    return {"compartment": compartment, **span.as_json(), "bucket_s": width, "points": [rounded(r, 1) for r in rows]}


@dataclass
class _Compartment:
    cfg: CompartmentConfig
    filter: DistanceFilter
    emptying: EmptyingDetector
    empty_mm: float
    full_mm: float
    calibrated_at: float | None = None
    fill_pct: float | None = None
    level: str | None = None
    distance_mm: float | None = None
    items: int = 0
    items_total: int = 0
    emptied_at: float | None = None
    history: list[tuple[float, float]] = field(default_factory=list)
    forecast: Forecast | None = None

    @property
    def id(self) -> str:
        return self.cfg.id


class FillTracker(Worker):
    """Owner of fill %, levels, counters, calibration and forecasts; answers `bin/calibrate`, `bin/emptied`,
    `bin/reset_counters`."""

    critical = False

    def __init__(self, bus: Bus, cfg: BinsConfig, store: Store, *, name: str = "fill",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, bus, tick_s=EVALUATE_EVERY_S, clock=clock,
                         inbox=(DistanceReading, TemperatureReading, DoorChanged, ItemSorted, MaintenanceChanged, Request))
        self.cfg = cfg
        self.store = store
        self.compartments: dict[str, _Compartment] = {}
        self._by_sensor: dict[tuple[str, int], str] = {}
        self.maintenance = False
        self._counted_at_start: set[str] = set()  # items counted from their hand-off row in setup()
        self._temperature: tuple[float, float] | None = None  # (celsius, mono)
        self._lid_open = False
        self._next_eval = 0.0
        self._next_history = 0.0
        self._next_prune = 0.0
        self.thresholds = LevelThresholds(cfg.fill.almost_full_pct, cfg.fill.full_pct, cfg.fill.hysteresis_pct)

    # -- catalogue -------------------------------------------------------------------------

    def offer(self, spec: RequestSpec) -> RequestSpec:
        """Every command is offered; its example names the first configured compartment (not `recycling`)."""
        first = self.cfg.compartments[0].id if self.cfg.compartments else "recycling"
        if "compartments" in spec.example:
            return dataclasses.replace(spec, example={"compartments": {first: next(iter(spec.example["compartments"].values()))}})
        return dataclasses.replace(spec, example={**spec.example, "compartment": first})

    def entities(self) -> tuple[Entity, ...]:
        """Per compartment: fill %, level, items, predicted full, free litres, fill rate, full, an `emptied` button."""
        out: list[Entity] = []
        expire = {"expire_after": EXPIRE_AFTER_S}
        for c in self.cfg.compartments:
            base = f"value_json.compartments['{c.id}']"
            out += [
                Entity("sensor", f"bin_{c.id}_fill", f"{c.name} fill", self.name, f"{{{{ {base}.fill_pct }}}}",
                       {"unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:delete-variant",
                        "suggested_display_precision": 0, **expire}),
                Entity("sensor", f"bin_{c.id}_level", f"{c.name} level", self.name, f"{{{{ {base}.level }}}}",
                       {"device_class": "enum", "options": list(LEVELS), "icon": "mdi:gauge", **expire}),
                Entity("sensor", f"bin_{c.id}_items", f"{c.name} items", self.name, f"{{{{ {base}.items }}}}",
                       {"state_class": "total_increasing", "icon": "mdi:counter", "unit_of_measurement": "items", **expire}),
                Entity("sensor", f"bin_{c.id}_predicted_full", f"{c.name} predicted full", self.name,
                       f"{{{{ {base}.predicted_full_at or none }}}}", {"device_class": "timestamp", "icon": "mdi:calendar-clock", **expire}),
                Entity("sensor", f"bin_{c.id}_free", f"{c.name} free volume", self.name, f"{{{{ {base}.free_l }}}}",
                       {"device_class": "volume_storage", "unit_of_measurement": "L", "state_class": "measurement",
                        "icon": "mdi:delete-empty-outline", "suggested_display_precision": 1, **expire}),
                Entity("sensor", f"bin_{c.id}_fill_rate", f"{c.name} fill rate", self.name,
                       f"{{{{ {base}.rate_pct_per_h }}}}",
                       {"unit_of_measurement": "%/h", "state_class": "measurement", "icon": "mdi:trending-up",
                        "suggested_display_precision": 1, **expire}),
                Entity("binary_sensor", f"bin_{c.id}_full", f"{c.name} full", self.name,
                       f"{{{{ 'ON' if {base}.level == 'full' else 'OFF' }}}}", {"device_class": "problem", **expire}),
                Entity("button", f"bin_{c.id}_emptied", f"{c.name} emptied", self.name, None,
                       {"command_topic": "bin/emptied", "payload_press": f'{{"args": {{"compartment": "{c.id}"}}}}',
                        "icon": "mdi:delete-empty"}),
            ]
        out.append(Entity("binary_sensor", "bin_lid", "Lid", self.name, "{{ 'ON' if value_json.lid_open else 'OFF' }}",
                          {"device_class": "opening", "icon": "mdi:delete-circle-outline", **expire}))
        return tuple(out)

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        with self.store.transaction() as db:
            for sql in SCHEMA:
                db.execute(sql)
        self._load()
        self._count_handed_off()
        workflow = self.bus.states().get("workflow")
        if workflow is not None:
            self.maintenance = bool(WorkflowState.from_json(workflow).maintenance)
        self.bus.publish(Discovery(self.name, self.entities()))
        now = self.clock()
        self._next_history = now + self.cfg.fill.history_interval_s
        self._next_prune = now
        for c in self.compartments.values():
            self._update_forecast(c)
            self.bus.publish(FillLevel(c.id, c.fill_pct, c.level, now))
        self.publish_state(self.own_state, force=True)

    def _load(self) -> None:
        f = self.cfg.fill
        params = FilterParams(f.filter.min_mm, f.filter.max_mm, f.filter.window, f.filter.min_samples,
                              f.filter.max_age_s, f.filter.jump_pct, f.filter.confirm_s, f.filter.settle_s)
        rows = {str(r[0]): r for r in self.store.query(
            "SELECT compartment, fill_pct, level, peak_pct, items, items_total, emptied_at, empty_mm, full_mm, calibrated_at "
            "FROM fill_state")}
        self.compartments.clear()
        self._by_sensor.clear()
        for cc in self.cfg.compartments:
            empty_mm, full_mm = cc.calibration.empty_mm, cc.calibration.full_mm
            row = rows.get(cc.id)
            calibrated_at = None
            if row is not None and row[7] is not None and row[8] is not None:
                empty_mm, full_mm, calibrated_at = float(row[7]), float(row[8]), _float(row[9])  # type: ignore[arg-type]
            peak = float(row[3]) if row is not None and row[3] is not None else 0.0  # type: ignore[arg-type]
            c = _Compartment(cc, DistanceFilter(params, empty_mm - full_mm),
                             EmptyingDetector(EmptyingParams(f.emptying.near_empty_pct, f.emptying.min_drop_pct,
                                                             f.emptying.confirm_s), peak),
                             empty_mm, full_mm, calibrated_at)
            if row is not None:
                c.fill_pct = _float(row[1])
                c.level = str(row[2]) if row[2] in LEVELS else None
                c.items, c.items_total = int(row[4] or 0), int(row[5] or 0)  # type: ignore[call-overload]
                c.emptied_at = _float(row[6])
            since = c.emptied_at or 0.0
            c.history = [(float(ts), float(pct)) for ts, pct in self.store.query(  # type: ignore[arg-type]
                "SELECT ts, fill_pct FROM fill_history WHERE compartment = ? AND ts >= ? ORDER BY ts", (cc.id, since))]
            self.compartments[cc.id] = c
            if cc.sensor is not None:
                self._by_sensor[(cc.sensor.source, cc.sensor.channel)] = cc.id
        restored = [f"{c.id} {c.fill_pct}% {c.items} item(s)" for c in self.compartments.values() if c.fill_pct is not None]
        if restored:
            logger.info("fill: restored %s", ", ".join(restored), extra=ev("fill_restored"))

    # -- loop ------------------------------------------------------------------------------

    def step(self) -> None:
        now = self.clock()
        msg = self.next_message(max(0.0, min(self.tick_s, self._next_eval - now)))
        if msg is not None:
            self.handle(msg)
        now = self.clock()
        if now >= self._next_eval:
            self._next_eval = now + EVALUATE_EVERY_S
            self._evaluate(now)
        if now >= self._next_history:
            self._next_history = now + self.cfg.fill.history_interval_s
            self._record_history()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            self._prune()
        self.publish_state(self.own_state)

    def handle(self, msg: Any) -> None:
        if isinstance(msg, DistanceReading):
            cid = self._by_sensor.get((msg.source, msg.compartment))
            if cid is None:
                return
            mm = msg.mm
            if mm is not None and self.cfg.fill.temperature_compensation and self._temperature is not None:
                celsius, at = self._temperature
                if msg.mono - at <= TEMPERATURE_MAX_AGE_S:
                    mm = compensate(mm, celsius)
            self.compartments[cid].filter.add(mm, msg.mono)
        elif isinstance(msg, TemperatureReading):
            self._temperature = (msg.celsius, msg.mono)
        elif isinstance(msg, DoorChanged):
            is_open = msg.state == "open"
            if is_open != self._lid_open:
                self._lid_open = is_open
                for c in self.compartments.values():
                    c.filter.lid(is_open, msg.mono)
        elif isinstance(msg, ItemSorted):
            self._count_item(msg)
        elif isinstance(msg, MaintenanceChanged):
            self.maintenance = msg.on
            self.publish_state(self.own_state, force=True)
        elif isinstance(msg, Request):
            self._audit(msg)
            self.answer(msg)
            self.publish_state(self.own_state, force=True)

    # -- fill ------------------------------------------------------------------------------

    def _evaluate(self, now: float) -> None:
        for c in self.compartments.values():
            distance = c.filter.value(now)
            if distance is None:
                continue
            c.distance_mm = round(distance, 1)
            pct = fill_percent(distance, c.empty_mm, c.full_mm)
            previous_pct, previous_level = c.fill_pct, c.level
            level = next_level(c.level, pct, self.thresholds)
            c.fill_pct = pct
            if level != previous_level:
                c.level = level
                self._on_level(c, previous_level, now)
            peak = c.emptying.peak_pct
            if c.emptying.update(pct, now):
                self._emptied(c, "sensor", peak)
            if pct != previous_pct or level != previous_level:
                self.bus.publish(FillLevel(c.id, pct, level, now))
                if level != previous_level:
                    self._save(c)

    def _on_level(self, c: _Compartment, previous: str | None, now: float) -> None:
        data = {"compartment": c.id, "name": c.cfg.name, "level": c.level, "previous": previous,
                "fill_pct": c.fill_pct, "maintenance": self.maintenance}
        if previous is None and c.level == "ok":
            logger.info("fill: %s starts at %s%% (%s)", c.id, c.fill_pct, c.level, extra=ev("bin_level"))
            return  # a fresh start on an ok compartment is not news; almost_full / full are
        logger.info("fill: %s %s -> %s at %s%%", c.id, previous, c.level, c.fill_pct, extra=ev("bin_level"))
        self.bus.emit_event("bin_level", data, self.name)
        if c.level == "full":
            self.bus.raise_alert(Alert(self.name, f"compartment_full_{c.id}", "warning",
                                       f"compartment {c.cfg.name} is full ({c.fill_pct}%); empty it"))
        elif previous == "full":
            self.bus.raise_alert(Alert(self.name, f"compartment_full_{c.id}", "warning",
                                       f"compartment {c.cfg.name} is no longer full ({c.fill_pct}%)", active=False))
        self._update_forecast(c)

    def _emptied(self, c: _Compartment, source: str, peak: float | None = None) -> None:
        now_ts = time.time()
        peak = c.emptying.peak_pct if peak is None else peak
        data = {"compartment": c.id, "name": c.cfg.name, "items": c.items, "peak_fill_pct": round(peak, 1),
                "fill_pct": c.fill_pct, "emptied_at": iso_utc(now_ts), "source": source, "maintenance": self.maintenance}
        logger.info("fill: %s emptied (%s; %d item(s) since the last emptying)", c.id, source, c.items,
                    extra=ev("bin_emptied"))
        c.items = 0
        c.emptied_at = now_ts
        c.history = []
        c.forecast = None
        c.emptying.reset(c.fill_pct or 0.0)
        self._save(c)
        self.bus.emit_event("bin_emptied", data, self.name)

    def _count_item(self, msg: ItemSorted) -> None:
        """Count a sorted item once: its hand-off row is deleted in the same transaction as the new counts."""
        c = self.compartments.get(msg.compartment)
        with self.store.transaction() as db:
            handed_off = db.execute("DELETE FROM item_handoff WHERE item_id = ?", (msg.item_id,)).rowcount
            if not handed_off and msg.item_id in self._counted_at_start:
                return  # its row was counted at start-up, before this message arrived
            if c is None:
                logger.warning("fill: item %s sorted into unknown compartment %s", msg.item_id, msg.compartment)
                return
            c.items += 1
            c.items_total += 1
            self._save(c)
        self.publish_state(self.own_state, force=True)

    def _count_handed_off(self) -> None:
        """Count items sorted just before a crash whose count had not been committed yet."""
        now = self.clock()
        for item_id, compartment in self.store.query("SELECT item_id, compartment FROM item_handoff"):
            logger.info("fill: counting item %s in %s, sorted before the restart", item_id, compartment)
            self._count_item(ItemSorted(str(compartment), str(item_id), now))
            self._counted_at_start.add(str(item_id))

    # -- history and forecast ----------------------------------------------------------------

    def _record_history(self) -> None:
        now_ts = time.time()
        if now_ts < CLOCK_SANE_AFTER:
            logger.debug("fill: wall clock not set yet; no history point")
            return
        rows = []
        for c in self.compartments.values():
            if c.fill_pct is None:
                continue
            # A backwards clock step leaves points "in the future": drop them, they would bend the regression.
            c.history = [(ts, pct) for ts, pct in c.history if ts <= now_ts + 60.0]
            c.history.append((now_ts, c.fill_pct))
            if len(c.history) > 4 * FORECAST_MAX_POINTS:
                c.history = downsample(c.history, max(self.cfg.fill.history_interval_s,
                                                      (c.history[-1][0] - c.history[0][0]) / FORECAST_MAX_POINTS))
            rows.append((c.id, now_ts, c.fill_pct))
            self._update_forecast(c)
        if rows:
            with self.store.transaction() as db:
                db.executemany("INSERT INTO fill_history (compartment, ts, fill_pct) VALUES (?, ?, ?)", rows)
            for c in self.compartments.values():
                self._save(c)

    def _update_forecast(self, c: _Compartment) -> None:
        if c.fill_pct is None:
            c.forecast = None
            return
        points = c.history
        if len(points) > FORECAST_MAX_POINTS:
            points = downsample(points, max(1.0, (points[-1][0] - points[0][0]) / FORECAST_MAX_POINTS))
        new = forecast(points, c.fill_pct, time.time(), self.cfg.fill.full_pct,
                       min_samples=self.cfg.fill.forecast_min_points, min_span_s=self.cfg.fill.forecast_min_span_s)
        old = c.forecast
        if new.seconds_to_full == 0 and old is not None and old.seconds_to_full == 0 and old.full_at is not None:
            new = replace(new, full_at=old.full_at)  # full since then: the moment it became full, not "now" every tick
        c.forecast = new

    def _prune(self) -> None:
        cutoff = time.time() - self.cfg.fill.history_retention_days * 86400.0
        if cutoff > CLOCK_SANE_AFTER:
            self.store.execute("DELETE FROM fill_history WHERE ts < ?", (cutoff,))

    # -- persistence -------------------------------------------------------------------------

    def _save(self, c: _Compartment) -> None:
        self.store.execute(
            "INSERT INTO fill_state (compartment, fill_pct, level, peak_pct, items, items_total, emptied_at, empty_mm, "
            "full_mm, calibrated_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (compartment) DO UPDATE SET fill_pct = excluded.fill_pct, level = excluded.level, "
            "peak_pct = excluded.peak_pct, items = excluded.items, items_total = excluded.items_total, "
            "emptied_at = excluded.emptied_at, empty_mm = excluded.empty_mm, full_mm = excluded.full_mm, "
            "calibrated_at = excluded.calibrated_at, updated_at = excluded.updated_at",
            (c.id, c.fill_pct, c.level, c.emptying.peak_pct, c.items, c.items_total, c.emptied_at,
             c.empty_mm if c.calibrated_at is not None else None, c.full_mm if c.calibrated_at is not None else None,
             c.calibrated_at, time.time()))

    # -- requests ----------------------------------------------------------------------------

    def _audit(self, req: Request) -> None:
        """Every fill request rewrites persisted state: one audit line each (as sent, before validation)."""
        if req.command in ("bin/calibrate", "bin/emptied", "bin/reset_counters", "bin/restore"):
            audit(logger, req.command, " ".join(f"{k}={v}" for k, v in req.args.items()), authority=req.authority,
                  key=req.key_id, transaction=req.transaction)

    def _targets(self, cid: str | None) -> list[_Compartment]:
        if cid is None:
            return list(self.compartments.values())
        c = self.compartments.get(cid)
        if c is None:
            raise RequestError(f"args.compartment: unknown compartment {cid!r}; known: {', '.join(self.compartments)}")
        return [c]

    @command("bin/calibrate", CalibrateArgs, privileged=True, example={"compartment": "recycling", "point": "empty"},
             summary="Take the current distance (or distance_mm) as the empty or the full point of a compartment; "
                     "persisted, overrides the config.")
    def _calibrate(self, req: Request, args: CalibrateArgs) -> dict[str, Any]:
        c = self._targets(args.compartment)[0]
        distance = args.distance_mm
        if distance is None:
            distance = c.filter.candidate(self.clock())
            if distance is None:
                raise RequestError(f"no valid distance reading for {c.id} yet (lid open, sensor silent or only "
                                   f"rejected echoes); retry, or give args.distance_mm")
        empty_mm, full_mm = c.empty_mm, c.full_mm
        if args.point == "empty":
            empty_mm = float(distance)
        else:
            full_mm = float(distance)
        if empty_mm - full_mm < 20:
            raise RequestError(f"args.point: the empty distance ({empty_mm:.0f} mm) must exceed the full one "
                               f"({full_mm:.0f} mm) by at least 20 mm")
        c.empty_mm, c.full_mm, c.calibrated_at = empty_mm, full_mm, time.time()
        c.filter.set_span(empty_mm - full_mm)
        self._save(c)
        logger.info("fill: %s calibrated: empty %.0f mm, full %.0f mm", c.id, empty_mm, full_mm,
                    extra=ev("bin_calibrated"))
        return {"compartment": c.id, "empty_mm": round(empty_mm, 1), "full_mm": round(full_mm, 1)}

    @command("bin/emptied", EmptiedArgs, privileged=True, example={"compartment": "recycling"},
             summary="Record that a compartment (default: all) was emptied: counters reset, emptied_at set, "
                     "forecast restarted.")
    def _emptied_request(self, req: Request, args: EmptiedArgs) -> dict[str, Any]:
        targets = self._targets(args.compartment)
        for c in targets:
            self._emptied(c, "request")
        return {"emptied": [c.id for c in targets]}

    @command("bin/reset_counters", ResetCountersArgs, privileged=True, example={"compartment": "recycling", "totals": False},
             summary="Zero the item counters of a compartment (default: all); totals too with totals=true.")
    def _reset_counters(self, req: Request, args: ResetCountersArgs) -> dict[str, Any]:
        targets = self._targets(args.compartment)
        for c in targets:
            c.items = 0
            if args.totals:
                c.items_total = 0
            self._save(c)
        logger.info("fill: counters reset for %s%s", ", ".join(c.id for c in targets),
                    " (totals too)" if args.totals else "", extra=ev("bin_counters_reset"))
        return {"reset": [c.id for c in targets], "totals": args.totals}

    @command("bin/restore", FillBackup, privileged=True,
             example={"compartments": {"recycling": {"empty_mm": 600, "full_mm": 100, "calibration_source": "request",
                                                     "items": 3, "items_total": 40}}},
             summary="Restore calibration and counters of the given compartments (the `fill` part of a backup), all "
                     "in one transaction; `restore` sends it.")
    def _restore(self, req: Request, args: FillBackup) -> dict[str, Any]:
        unknown = sorted(set(args.compartments) - set(self.compartments))
        if unknown:
            raise RequestError(f"args.compartments.{unknown[0]}: unknown compartment; known: {', '.join(self.compartments)}")
        with self.store.transaction():
            for cid, part in args.compartments.items():
                self._apply_backup(self.compartments[cid], part)
        for cid in args.compartments:
            self._update_forecast(self.compartments[cid])  # fill % and level follow at the next evaluation
        logger.info("fill: restored calibration and counters of %s", ", ".join(args.compartments),
                    extra=ev("fill_restored"))
        return {"restored": sorted(args.compartments),
                "unchanged": sorted(set(self.compartments) - set(args.compartments))}

    def _apply_backup(self, c: _Compartment, part: CompartmentBackup) -> None:
        """One compartment's calibration and counters from a backup (inside the caller's transaction)."""
        if part.calibration_source == CalibrationSource.REQUEST:
            c.empty_mm, c.full_mm = part.empty_mm, part.full_mm
            c.calibrated_at = part.calibrated_at.timestamp() if part.calibrated_at else time.time()
        else:
            c.empty_mm, c.full_mm = c.cfg.calibration.empty_mm, c.cfg.calibration.full_mm
            c.calibrated_at = None
        c.filter.set_span(c.empty_mm - c.full_mm)
        c.items, c.items_total = part.items, part.items_total
        c.emptied_at = part.emptied_at.timestamp() if part.emptied_at else None
        since = c.emptied_at or 0.0
        c.history = [(ts, pct) for ts, pct in c.history if ts >= since]
        self._save(c)

    @command("history/fill", FillHistoryArgs, example={"compartment": "recycling", "hours": 168, "limit": 200},
             summary="A compartment's fill history (default: the last 24 h), downsampled to at most limit points: "
                     "mean, min and max fill % per time bucket.")
    def _history(self, req: Request, args: FillHistoryArgs) -> dict[str, Any]:
        c = self._targets(args.compartment)[0]
        return fill_history(self.store, c.id, resolve_range(args, time.time()), args.limit,
                            self.cfg.fill.history_interval_s)

    # -- state -------------------------------------------------------------------------------

    def own_state(self) -> FillState:
        """The `fill` state: every compartment, keyed by id."""
        comps: dict[str, CompartmentFill] = {}
        for c in self.compartments.values():
            fc = c.forecast
            free_l = None
            if c.cfg.capacity_l is not None and c.fill_pct is not None:
                free_l = round(c.cfg.capacity_l * (100.0 - c.fill_pct) / 100.0, 1)
            comps[c.id] = CompartmentFill(
                name=c.cfg.name,
                categories=list(c.cfg.categories),
                fill_pct=c.fill_pct,
                level=None if c.level is None else BinLevel(c.level),
                full=c.level == BinLevel.FULL,
                distance_mm=c.distance_mm,
                items=c.items,
                items_total=c.items_total,
                emptied_at=iso_utc(c.emptied_at) if c.emptied_at else None,
                rate_pct_per_h=fc.rate_pct_per_h if fc else None,
                predicted_full_at=iso_utc(fc.full_at) if fc and fc.full_at else None,
                seconds_to_full=round(fc.seconds_to_full) if fc and fc.seconds_to_full is not None else None,
                capacity_l=c.cfg.capacity_l,
                free_l=free_l,
                calibration=Calibration(empty_mm=c.empty_mm, full_mm=c.full_mm,
                                        source="request" if c.calibrated_at else "config",
                                        calibrated_at=iso_utc(c.calibrated_at) if c.calibrated_at else None),
                sensor=None if c.cfg.sensor is None else SensorRef(source=c.cfg.sensor.source, channel=c.cfg.sensor.channel),
                rejected_readings=dict(c.filter.rejected),
            )
        return FillState(compartments=comps, maintenance=self.maintenance, lid_open=self._lid_open)


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
