"""The `daemon` component: answers the core requests (ping, status, config/get, help), publishes the
worker table, and keeps a local state file so `smartbinctl status` works without a broker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .clock import iso_utc
from .config import Config, redacted_dict
from .logs import ev
from .runtime.bus import Bus, Discovery, Entity, Request, Response, StateUpdate
from .runtime.commands import RequestRegistry, RequestSpec
from .runtime.supervisor import WorkersChanged
from .runtime.worker import Worker

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FILE_INTERVAL_S = 30.0
"""Rewrite the local state file at most this often: an SD card should not see a write per second."""


@dataclass(frozen=True)
class ConfigApplied:
    """The app reloaded the config: the new one, and what needs a daemon restart to take effect."""

    config: Config
    applied: tuple[str, ...]
    restart_required: tuple[str, ...]


def core_requests() -> list[RequestSpec]:
    """Commands owned by the daemon component."""
    return [
        RequestSpec("ping", "daemon", "Liveness check; answers with version and uptime."),
        RequestSpec("status", "daemon", "Every component's current state in one answer."),
        RequestSpec("config/get", "daemon", "The effective configuration, secrets redacted."),
        RequestSpec("help", "daemon", "This catalogue: every command with its argument schema and an example."),
    ]


class DaemonControl(Worker):
    """Owner of the core requests and the `daemon` state."""

    critical = True

    def __init__(self, bus: Bus, cfg: Config, registry: RequestRegistry, *, name: str = "daemon") -> None:
        super().__init__(name, bus, tick_s=1.0, inbox=(Request, WorkersChanged, ConfigApplied, StateUpdate))
        self.cfg = cfg
        self.registry = registry
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.workers: dict[str, dict[str, Any]] = {}
        self.restart_required: tuple[str, ...] = ()
        self.state_file = Path(cfg.storage.path) / STATE_FILE
        self._state_dirty = True
        self._last_state_file = 0.0
        self._last_publish = 0.0

    def setup(self) -> None:
        self.bus.publish(Discovery(self.name, self.entities()))
        self._publish()

    def step(self) -> None:
        msg = self.next_message(self.tick_s)
        if msg is not None:
            self.handle(msg)
        now = time.monotonic()
        if now - self._last_publish >= self.cfg.mqtt.state_interval_s:
            self._publish()
        if self._state_dirty and now - self._last_state_file >= STATE_FILE_INTERVAL_S:
            self._write_state_file()

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Request):
            self._answer(msg)
        elif isinstance(msg, WorkersChanged):
            self.workers = msg.table
            self._publish()
        elif isinstance(msg, ConfigApplied):
            self.cfg = msg.config
            self.restart_required = msg.restart_required
            self._publish()
        elif isinstance(msg, StateUpdate):
            self._state_dirty = True

    def teardown(self) -> None:
        self._write_state_file()

    def _answer(self, req: Request) -> None:
        try:
            data = self._dispatch(req)
        except Exception as exc:  # noqa: BLE001 - a bad request must get an answer, not a crash
            logger.exception("request %s failed", req.command)
            self.bus.publish(Response(req.request_id, req.command, False, error=f"{type(exc).__name__}: {exc}"))
            return
        self.bus.publish(Response(req.request_id, req.command, True, data=data))

    def _dispatch(self, req: Request) -> Any:
        if req.command == "ping":
            return {"pong": True, "version": __version__, "device": self.cfg.device.id,
                    "uptime_s": round(time.monotonic() - self.started_mono, 1)}
        if req.command == "status":
            return {"device": self.cfg.device.id, "components": self.bus.states()}
        if req.command == "config/get":
            return redacted_dict(self.cfg)
        if req.command == "help":
            return self.registry.catalogue()
        raise ValueError(f"daemon does not handle {req.command!r}")

    def own_state(self) -> dict[str, Any]:
        """The `daemon` state: version, uptime, workers, pending restart."""
        failed = sorted(n for n, w in self.workers.items() if w.get("status") == "failed")
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": iso_utc(self.started_wall),
            "uptime_s": round(time.monotonic() - self.started_mono),
            "workers": self.workers,
            "failed_workers": failed,
            "restart_required": list(self.restart_required),
            "bus_dropped": self.bus.dropped(),
        }

    def _publish(self) -> None:
        self._last_publish = time.monotonic()
        self.bus.set_state(self.name, self.own_state())

    def _write_state_file(self) -> None:
        """Atomically write every component's state (for `smartbinctl status` when the broker is down)."""
        self._last_state_file = time.monotonic()
        self._state_dirty = False
        doc = {"written_at": iso_utc(time.time()), "device": self.cfg.device.id, "components": self.bus.states()}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, default=str, indent=1), encoding="utf-8")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.state_file, exc, extra=ev("state_file_failed"))

    def entities(self) -> tuple[Entity, ...]:
        """HA entities of the daemon itself."""
        diag = {"entity_category": "diagnostic"}
        return (
            Entity("sensor", "daemon_version", "Daemon version", self.name, "{{ value_json.version }}",
                   {**diag, "icon": "mdi:information-outline"}),
            Entity("sensor", "daemon_uptime", "Daemon uptime", self.name, "{{ value_json.uptime_s }}",
                   {**diag, "device_class": "duration", "unit_of_measurement": "s", "state_class": "measurement"}),
            Entity("sensor", "daemon_failed_workers", "Failed workers", self.name,
                   "{{ value_json.failed_workers | length }}", {**diag, "icon": "mdi:alert-circle-outline"}),
        )
