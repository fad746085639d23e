"""The health worker: samples the system every `interval_s`, scores it, publishes `health` state,
raises/clears alerts on transitions and declares its Home Assistant entities.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import HealthConfig
from ..history import resolve_range
from ..logs import ev
from ..runtime.bus import Alert, Bus, Discovery, Entity, Request
from ..runtime.commands import RequestSpec, command
from ..runtime.worker import Worker
from ..states.health import HealthState, HealthStatus
from ..store import Store
from . import scoring
from .clock import ClockWatch
from .history import HealthHistory, HealthHistoryArgs
from .identity import SystemIdentity, kernel_ntp_synchronized, ntp_synchronized
from .processes import ProcessesArgs, ProcessSampler
from .sources import (
    NvmlReader,
    SystemSampler,
    ThermalZone,
    cpu_temperature,
    disk_usage,
    gpu_temperature,
    read_jetson_gpu_load,
    read_pi_throttling,
    read_power_rails,
    read_thermal_zones,
)
from .storage import StorageSampler

logger = logging.getLogger(__name__)

COMPONENT = "health"
MAX_SLEEP_CHUNK_S = 1.0
"""Longest single wait inside step(): keeps the heartbeat fresh and stop prompt whatever interval_s is."""

_ALERT_SEVERITY: dict[str, str] = {"ok": "info", "warn": "warning", "critical": "critical"}


def expire_after_s(interval_s: float) -> int:
    """HA `expire_after`: three missed publications make the entities unavailable."""
    return math.ceil(3 * interval_s)


def health_entities(interval_s: float, *, pi_present: bool, gpu_present: bool,
                    wifi_present: bool = True) -> tuple[Entity, ...]:
    """The HA entities of the health component; Pi flags, GPU and Wi-Fi only where the hardware exists."""
    expire = expire_after_s(interval_s)
    diag = {"entity_category": "diagnostic", "expire_after": expire}
    pct = {"unit_of_measurement": "%", "state_class": "measurement"}

    def sensor(object_id: str, name: str, template: str, extra: dict[str, Any]) -> Entity:
        return Entity("sensor", object_id, name, COMPONENT, template, extra)

    def problem(object_id: str, name: str, condition: str, icon: str) -> Entity:
        return Entity("binary_sensor", object_id, name, COMPONENT,
                      f"{{{{ 'ON' if '{condition}' in value_json.conditions else 'OFF' }}}}",
                      {"device_class": "problem", **diag, "icon": icon})

    entities = [
        sensor("health_status", "Health status", "{{ value_json.status }}",
               {"device_class": "enum", "options": ["ok", "warn", "critical"], "icon": "mdi:heart-pulse",
                "expire_after": expire}),
        sensor("health_score", "Health score", "{{ value_json.score }}", {**pct, "icon": "mdi:gauge", "expire_after": expire}),
        sensor("health_cpu", "CPU usage", "{{ value_json.cpu.percent }}", {**pct, **diag, "icon": "mdi:cpu-64-bit"}),
        sensor("health_ram", "Memory usage", "{{ value_json.memory.percent }}", {**pct, **diag, "icon": "mdi:memory"}),
        sensor("health_disk", "Storage disk usage", "{{ value_json.disk.storage.percent }}",
               {**pct, **diag, "icon": "mdi:harddisk"}),
        sensor("health_cpu_temperature", "CPU temperature", "{{ value_json.temperatures.cpu_c }}",
               {"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement", **diag}),
    ]
    if pi_present:
        entities += [problem("health_throttled", "Throttled", "throttled", "mdi:speedometer-slow"),
                     problem("health_under_voltage", "Under-voltage", "under_voltage", "mdi:flash-alert")]
    if gpu_present:
        entities += [
            sensor("health_gpu_load", "GPU load", "{{ value_json.gpu.load_pct }}", {**pct, **diag, "icon": "mdi:expansion-card"}),
            sensor("health_gpu_temperature", "GPU temperature", "{{ value_json.gpu.temp_c }}",
                   {"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement", **diag}),
            sensor("health_gpu_memory", "GPU memory usage", "{{ value_json.gpu.memory_pct }}",
                   {**pct, **diag, "icon": "mdi:memory"}),
        ]
    entities += system_entities(diag)
    if wifi_present:
        entities += [
            sensor("health_wifi_signal", "Wi-Fi signal",
                   "{{ value_json.system.wifi[0].signal_dbm if value_json.system and value_json.system.wifi else none }}",
                   {"device_class": "signal_strength", "unit_of_measurement": "dBm", "state_class": "measurement",
                    **diag}),
            sensor("health_wifi_ssid", "Wi-Fi network", "{{ value_json.system.wifi[0].ssid if value_json.system and value_json.system.wifi else none }}",
                   {**diag, "icon": "mdi:wifi"}),
        ]
    entities.append(sensor("health_process_rss", "Daemon memory (RSS)", "{{ value_json.process.rss_mb }}",
                           {"device_class": "data_size", "unit_of_measurement": "MB", "state_class": "measurement",
                            **diag, "icon": "mdi:memory"}))
    return tuple(entities)


def system_entities(diag: dict[str, Any]) -> list[Entity]:
    """Network rates, system identity, the clock and the storage totals (diagnostic)."""
    rate = {"device_class": "data_rate", "unit_of_measurement": "B/s", "state_class": "measurement", **diag}

    def sensor(object_id: str, name: str, template: str, extra: dict[str, Any]) -> Entity:
        return Entity("sensor", object_id, name, COMPONENT, template, extra)

    return [
        sensor("health_network_rx", "Network received", "{{ value_json.network.recv_bytes_per_s }}",
               {**rate, "icon": "mdi:download-network"}),
        sensor("health_network_tx", "Network sent", "{{ value_json.network.sent_bytes_per_s }}",
               {**rate, "icon": "mdi:upload-network"}),
        sensor("health_os", "Operating system", "{{ value_json.system.os if value_json.system else none }}", {**diag, "icon": "mdi:linux"}),
        sensor("health_kernel", "Kernel", "{{ value_json.system.kernel if value_json.system else none }}", {**diag, "icon": "mdi:linux"}),
        sensor("health_cpu_model", "CPU model", "{{ value_json.system.cpu_model if value_json.system else none }}", {**diag, "icon": "mdi:cpu-64-bit"}),
        sensor("health_cpu_clock", "CPU clock", "{{ value_json.system.cpu_clock_mhz.current if value_json.system and value_json.system.cpu_clock_mhz "
               "else none }}",
               {"device_class": "frequency", "unit_of_measurement": "MHz", "state_class": "measurement", **diag}),
        sensor("health_ip_address", "IP address", "{{ value_json.system.ip if value_json.system else none }}", {**diag, "icon": "mdi:ip-network"}),
        sensor("health_boot_time", "Last boot", "{{ value_json.system.boot_time if value_json.system else none }}",
               {"device_class": "timestamp", **diag}),
        sensor("health_storage_used", "Storage used by the bin", "{{ value_json.storage.total_bytes if value_json.storage else none }}",
               {"device_class": "data_size", "unit_of_measurement": "B", "suggested_unit_of_measurement": "MB",
                "state_class": "measurement", **diag, "icon": "mdi:folder-outline"}),
        sensor("health_storage_evidence", "Evidence storage",
               "{{ value_json.storage.evidence.bytes if value_json.storage else none }}",
               {"device_class": "data_size", "unit_of_measurement": "B", "suggested_unit_of_measurement": "MB",
                "state_class": "measurement", **diag, "icon": "mdi:image-multiple-outline"}),
        Entity("binary_sensor", "health_clock", "Clock problem", COMPONENT,
               "{{ none if not value_json.clock else 'ON' if not value_json.clock.valid "
               "or value_json.clock.ntp_synchronized == false else 'OFF' }}",
               {"device_class": "problem", **diag, "icon": "mdi:clock-alert-outline"}),
    ]


def _utc_now_iso() -> str:
    """Wall-clock time as ISO-8601 UTC with a Z suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class HealthMonitor(Worker):
    """System and GPU health: `health` state every interval, alerts on transitions, HA entities.

    Why step() sleeps in chunks: one step waits at most MAX_SLEEP_CHUNK_S, so the supervisor sees a
    fresh heartbeat and a stop request ends the loop within a second, whatever `interval_s` is.
    """

    critical = True

    def __init__(self, bus: Bus, cfg: HealthConfig, storage_path: Path, *, store: Store | None = None,
                 name: str = COMPONENT, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 kernel_ntp: Callable[[], bool | None] = kernel_ntp_synchronized) -> None:
        super().__init__(name, bus, tick_s=MAX_SLEEP_CHUNK_S, inbox=(Request,), clock=clock)
        self.cfg = cfg
        self.storage_path = Path(storage_path)
        self.history = None if store is None else HealthHistory(
            store, days=cfg.history_days, full_days=cfg.history_full_days, interval_s=cfg.interval_s)
        self.wall_clock = wall_clock
        self.kernel_ntp = kernel_ntp
        self._identity = SystemIdentity(cfg.sources, cfg.identity_interval_s, clock=clock)
        self._clock_watch = ClockWatch(cfg.clock.min_year, cfg.clock.ntp_alert_after_s)
        self._clock_wanted: set[str] = set()
        self._processes = ProcessSampler(cfg.sources.mountinfo)
        self._storage = StorageSampler(self.storage_path, cfg.storage_interval_s, max_entries=cfg.storage_walk_max_entries,
                                       budget_s=cfg.storage_walk_budget_s, clock=clock)
        self._sampler: SystemSampler | None = None
        self._nvml: NvmlReader | None = None
        self._assessment: scoring.Assessment = scoring.OK
        self._entities: tuple[Entity, ...] | None = None
        self._next_due = 0.0

    # -- worker hooks --------------------------------------------------------

    def setup(self) -> None:
        """Prime the CPU counters in this thread, probe the GPU/Pi and declare the HA entities."""
        self._sampler = SystemSampler()
        self._sampler.prime()
        self._nvml = NvmlReader() if self.cfg.sources.nvml else None
        if self.history is not None:
            self.history.setup()
        src = self.cfg.sources
        zones = read_thermal_zones(src.thermal_glob)
        gpu = self._read_gpu(zones)
        pi = read_pi_throttling(src.vcgencmd, src.pi_throttled_sysfs, src.pi_command_timeout_s)
        wifi = self._identity.read()["wifi"]
        self._declare(pi_present=pi is not None, gpu_present=bool(gpu["present"]), wifi_present=bool(wifi))
        logger.info(
            "health monitor started: every %gs, Pi throttling %s, GPU %s",
            self.cfg.interval_s,
            "readable" if pi is not None else "absent",
            gpu.get("source", "absent"),
        )
        # First sample after a short window so the CPU percentages cover a real interval.
        self._next_due = time.monotonic() + min(MAX_SLEEP_CHUNK_S, self.cfg.interval_s)

    def step(self) -> None:
        """Sample when due, then wait at most one chunk."""
        if time.monotonic() >= self._next_due:
            self._next_due = time.monotonic() + self.cfg.interval_s
            self.poll()
        remaining = self._next_due - time.monotonic()
        if remaining > 0:
            msg = self.next_message(min(MAX_SLEEP_CHUNK_S, remaining))
            if isinstance(msg, Request):
                self.answer(msg)

    def teardown(self) -> None:
        """Release NVML."""
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None

    def entities(self, *, pi_present: bool = True, gpu_present: bool = True,
                 wifi_present: bool = True) -> tuple[Entity, ...]:
        """HA entities it declares; by default every one it may (Pi flags, GPU and Wi-Fi appear with the hardware)."""
        return health_entities(self.cfg.interval_s, pi_present=pi_present, gpu_present=gpu_present,
                               wifi_present=wifi_present)

    def offer(self, spec: RequestSpec) -> RequestSpec | None:
        """`history/health` only with a store to keep the history in."""
        return spec if spec.command != "history/health" or self.history is not None else None

    @command("history/health", HealthHistoryArgs, example={"hours": 168, "limit": 200},
             summary="The health history (default: the last 24 h), downsampled to at most limit points: worst status, "
                     "mean figures and lowest score per time bucket.")
    def _history(self, req: Request, args: HealthHistoryArgs) -> dict[str, Any]:
        assert self.history is not None
        now = self.wall_clock()
        return self.history.query(resolve_range(args, now), args.limit, now)

    def state_extra(self) -> dict[str, Any]:
        """Status and score for the daemon's worker table."""
        current = self._assessment
        return {"status": current.status, "score": current.score}

    @command("health/processes", ProcessesArgs, example={"limit": 10},
             summary="Top processes by CPU and by memory that the daemon may see (visibility says which).")
    def _top_processes(self, req: Request, args: ProcessesArgs) -> dict[str, Any]:
        return self._processes.top(args.limit, self.sleep)

    # -- one cycle -------------------------------------------------------------

    def poll(self) -> dict[str, Any]:
        """Collect, score, publish the state, emit alerts for transitions; returns the published state."""
        state = self.collect()
        previous = self._assessment
        current = scoring.evaluate(scoring.metrics_from_state(state), self.cfg.thresholds, previous.codes)
        state = HealthState(
            status=HealthStatus(current.status),
            score=current.score,
            conditions=[c.code for c in current.conditions],
            **state,
        ).to_json()
        self.bus.set_state(COMPONENT, state)
        self._record(state)
        self._declare(pi_present=state["pi"] is not None, gpu_present=bool(state["gpu"]["present"]),
                      wifi_present=bool(state["system"]["wifi"]))
        try:
            self._announce(previous, current, state)
            self._announce_clock(state["clock"])
        except Exception:
            # The event sink could not persist (e.g. the disk is full - a health problem itself).
            # Keep the previous assessment so the same transitions are retried next time.
            logger.exception("health: could not emit alerts", extra=ev("health_alert_failed"))
            return state
        self._assessment = current
        return state

    def collect(self) -> dict[str, Any]:
        """One snapshot of every metric (without status/score), JSON-serialisable."""
        if self._sampler is None:
            self._sampler = SystemSampler()
            self._sampler.prime()
        sampler = self._sampler
        src = self.cfg.sources
        zones = read_thermal_zones(src.thermal_glob)
        pi = read_pi_throttling(src.vcgencmd, src.pi_throttled_sysfs, src.pi_command_timeout_s)
        gpu = self._read_gpu(zones)
        rails = read_power_rails(src.jetson_power_glob)
        gpu_c = gpu_temperature(zones)
        if gpu_c is None and isinstance(gpu.get("temp_c"), (int, float)):
            gpu_c = float(gpu["temp_c"])
        return {
            "cpu": sampler.cpu(),
            "memory": sampler.memory(),
            "swap": sampler.swap(),
            "disk": {"storage": disk_usage(self.storage_path), "root": disk_usage(Path("/"))},
            "temperatures": {
                "cpu_c": cpu_temperature(zones),
                "gpu_c": gpu_c,
                "zones": [z.as_dict() for z in zones],
            },
            "uptime_s": sampler.uptime_s(),
            "network": sampler.network(),
            "process": sampler.own_process(),
            "pi": pi.as_dict() if pi is not None else None,
            "gpu": gpu,
            "power": {"rails": [r.as_dict() for r in rails]} if rails else None,
            "system": self._identity.read(),
            "clock": self._read_clock(),
            "storage": self._storage.read(),
            "ts": _utc_now_iso(),
        }

    # -- helpers ---------------------------------------------------------------

    def _record(self, state: dict[str, Any]) -> None:
        """Keep the sample in the health history; a failed write (a full disk) is logged, not fatal."""
        if self.history is None:
            return
        try:
            self.history.record(state, self.wall_clock())
        except Exception:
            logger.exception("health: could not record the history sample", extra=ev("health_history_failed"))

    def _read_gpu(self, zones: list[ThermalZone]) -> dict[str, Any]:
        """Jetson devfreq load first, else NVML, else `{"present": false}`."""
        load = read_jetson_gpu_load(self.cfg.sources.jetson_gpu_load)
        if load is not None:
            # memory_pct: Jetson GPUs share the system RAM (see `memory`).
            return {"present": True, "source": "jetson", "load_pct": load, "temp_c": gpu_temperature(zones),
                    "memory_pct": None}
        gpus = self._nvml.read() if self._nvml is not None else None
        if gpus:
            first = gpus[0]
            return {
                "present": True,
                "source": "nvml",
                "name": first.name,
                "load_pct": first.load_pct,
                "temp_c": first.temp_c,
                "memory_pct": first.memory_pct,
                "devices": [g.as_dict() for g in gpus],
            }
        return {"present": False}

    def _read_clock(self) -> dict[str, Any]:
        """The `clock` section; remembers which clock alerts should be active."""
        src = self.cfg.sources
        synced, how = ntp_synchronized(src.adjtimex, src.timesync_flag, self.kernel_ntp)
        section, self._clock_wanted = self._clock_watch.assess(self.clock(), self.wall_clock(), synced, how)
        return section

    def _announce_clock(self, section: dict[str, Any]) -> None:
        """Raise/clear the clock alerts whose state changed."""
        for alert in self._clock_watch.alerts(self._clock_wanted, section):
            log = logger.warning if alert.active else logger.info
            log("health clock: %s", alert.message, extra=ev("health_clock_alert", code=alert.code, active=alert.active))
            self.bus.raise_alert(alert)
        self._clock_watch.commit(self._clock_wanted)

    def _declare(self, *, pi_present: bool, gpu_present: bool, wifi_present: bool) -> None:
        """Publish the HA entities when they differ from what was last declared (e.g. a GPU appeared)."""
        entities = self.entities(pi_present=pi_present, gpu_present=gpu_present, wifi_present=wifi_present)
        if entities == self._entities:
            return
        self.bus.publish(Discovery(COMPONENT, entities))
        if self._entities is not None:
            logger.info("health entities changed: Pi flags %s, GPU %s, Wi-Fi %s", pi_present, gpu_present, wifi_present)
        self._entities = entities

    def _announce(
        self, previous: scoring.Assessment, current: scoring.Assessment, state: dict[str, Any]
    ) -> None:
        """Alerts for raised and cleared conditions, then for a status change; logs the status change."""
        raised, cleared = scoring.transitions(previous, current)
        metrics = scoring.metrics_from_state(state)
        rule_of = {r.code: r for r in scoring.rules(self.cfg.thresholds)}
        for cond in cleared:
            rule = rule_of[cond.code]
            message = rule.clear_message(rule.value(metrics), metrics)
            logger.info(
                "health condition cleared: %s: %s",
                cond.code,
                message,
                extra=ev("health_condition_cleared", code=cond.code),
            )
            self.bus.raise_alert(Alert(COMPONENT, cond.code, "info", message, active=False))
        for cond in raised:
            logger.warning(
                "health condition raised: %s: %s",
                cond.code,
                cond.message,
                extra=ev("health_condition_raised", code=cond.code),
            )
            self.bus.raise_alert(Alert(COMPONENT, cond.code, cond.severity, cond.message, active=True))
        if current.status == previous.status:
            return
        codes = ", ".join(c.code for c in current.conditions) or "no conditions"
        worse = scoring.STATUS_RANK[current.status] > scoring.STATUS_RANK[previous.status]
        logger.log(
            logging.WARNING if worse else logging.INFO,
            "health status %s -> %s (score %d; %s)",
            previous.status,
            current.status,
            current.score,
            codes,
            extra=ev(
                "health_status_changed",
                status=current.status,
                previous_status=previous.status,
                score=current.score,
            ),
        )
        message = f"health {current.status} (score {current.score}; {codes})"
        self.bus.raise_alert(
            Alert(
                COMPONENT, "status", _ALERT_SEVERITY[current.status], message, active=current.status != "ok"
            )
        )
