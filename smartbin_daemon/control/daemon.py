"""The `daemon` component: answers the core requests (ping, status, config/get, help, the remote
operations config/set, config/rollback, restart, logs/bundle, storage/cleanup), publishes the worker
table, and keeps a local state file so `smartbinctl status` works without a broker.

Why some requests travel on to the App: a config reload, a worker restart and the process exit must
run on the main thread (the supervisor and the running config belong to it), so this worker checks
the arguments and hands an `AppAction` over the bus; the App does the work in its main loop and
answers the request itself. Slow file work (the support bundle, the storage cleanup) runs in a
background thread so this worker keeps answering pings.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..clock import iso_utc
from ..config import Config, redacted_dict
from ..logs import ev, under_systemd
from ..runtime import files
from ..runtime.bus import UNSIGNED, Bus, Discovery, Entity, Request, Response, StateUpdate
from ..runtime.commands import (
    ANSWERED_LATER,
    NoArgs,
    RequestError,
    RequestRegistry,
    RequestSpec,
    command,
    declared_specs,
)
from ..runtime.supervisor import WorkersChanged
from ..runtime.worker import Worker
from ..states.daemon import Audit, DaemonState
from ..states.mqtt import MqttState
from ..states.workflow import WorkflowState
from .backup import IN_FLIGHT, RESTORE_TIMEOUT_S, RestoreArgs, RestoreJob, build_backup, check_document
from .bundle import BUNDLE_DIR, BUNDLE_KEEP, JOURNAL_TIMEOUT_S, build_bundle
from .cleanup import CleanupTarget, _all_cleanup_targets, clean_storage

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


EX_TEMPFAIL = 75
"""sysexits.h EX_TEMPFAIL: the exit status of a requested daemon restart. Non-zero, so the unit's
Restart=on-failure starts the daemon again; not 78 (EX_CONFIG), which RestartPreventExitStatus= blocks."""

RESTART_GRACE_S = 1.0
"""After answering a daemon restart request, wait this long before stopping so the answer leaves."""


class ActionKind(str, Enum):
    """The work the App's main thread does for the `daemon` component."""

    CONFIG_SET = "config_set"
    CONFIG_ROLLBACK = "config_rollback"
    RESTART_WORKER = "restart_worker"
    REFRESH_WORKER = "refresh_worker"
    EXIT = "exit"


@dataclass(frozen=True)
class AppAction:
    """Work for the main thread (a kind given as a string is converted). The App answers `request_id` (if not None)."""

    kind: ActionKind
    command: str
    request_id: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ActionKind(self.kind))


class ConfigSetArgs(BaseModel):
    """Arguments of config/set."""

    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="partial config document, deep-merged into the config file "
                                               "(mappings merge, anything else replaces; null sets null)")


class RestartArgs(BaseModel):
    """Arguments of restart."""

    model_config = ConfigDict(extra="forbid")
    component: str | None = Field(default=None, description="worker name (see the daemon state's workers); "
                                                            "null or 'daemon': restart the whole daemon")


class CleanupArgs(BaseModel):
    """Arguments of storage/cleanup."""

    model_config = ConfigDict(extra="forbid")
    what: list[CleanupTarget] = Field(
        default_factory=_all_cleanup_targets, min_length=1,
        description="evidence: the annotated snapshots; dataset: the active-learning images and labels")


class DaemonControl(Worker):
    """Owner of the core requests and the `daemon` state."""

    critical = True

    def __init__(self, bus: Bus, cfg: Config, registry: RequestRegistry, *, name: str = "daemon") -> None:
        super().__init__(name, bus, tick_s=1.0, inbox=(Request, WorkersChanged, ConfigApplied, StateUpdate, Response))
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
        self._jobs: dict[str, threading.Thread] = {}
        self._restores: dict[str, RestoreJob] = {}
        """Restores waiting for their owners' answers, by the restore request's id."""

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
        for key, job in list(self._restores.items()):
            if job.overdue(now):
                self._finish_restore(key)

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Request):
            self.answer(msg)
        elif isinstance(msg, WorkersChanged):
            self.workers = msg.table
            self._publish()
        elif isinstance(msg, ConfigApplied):
            self.cfg = msg.config
            self.restart_required = msg.restart_required
            self._publish()
        elif isinstance(msg, StateUpdate):
            self._state_dirty = True
        elif isinstance(msg, Response) and msg.request_id.startswith("restore-"):
            self._restore_answered(msg)

    def teardown(self) -> None:
        self._write_state_file()
        for job in list(self._jobs.values()):
            job.join(JOURNAL_TIMEOUT_S + 2.0)

    # -- requests --------------------------------------------------------------------------

    @command("ping", summary="Liveness check; answers with version and uptime.")
    def _ping(self, req: Request, args: NoArgs) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "device": self.cfg.device.id,
                "uptime_s": round(time.monotonic() - self.started_mono, 1)}

    @command("status", summary="Every component's current state in one answer.")
    def _status(self, req: Request, args: NoArgs) -> dict[str, Any]:
        return {"device": self.cfg.device.id, "components": self.bus.states()}

    @command("config/get", summary="The effective configuration, secrets redacted.")
    def _config_get(self, req: Request, args: NoArgs) -> dict[str, Any]:
        return redacted_dict(self.cfg)

    @command("help", summary="This catalogue: every command with its argument schema and an example.")
    def _help(self, req: Request, args: NoArgs) -> dict[str, Any]:
        return self.registry.catalogue()

    @command("config/set", ConfigSetArgs, privileged=True, example={"config": {"logging": {"level": "DEBUG"}}},
             summary="Deep-merge a partial document into the config file, validate it, write it atomically (the old "
                     "file kept as <file>.prev) and apply it like SIGHUP.")
    def _config_set(self, req: Request, args: ConfigSetArgs) -> object:
        self.bus.publish(AppAction(ActionKind.CONFIG_SET, req.command, req.request_id, args.model_dump(mode="json")))
        return ANSWERED_LATER

    @command("config/rollback", privileged=True,
             summary="Swap the config file with <file>.prev and apply it like SIGHUP.")
    def _config_rollback(self, req: Request, args: NoArgs) -> object:
        self.bus.publish(AppAction(ActionKind.CONFIG_ROLLBACK, req.command, req.request_id))
        return ANSWERED_LATER

    @command("restart", RestartArgs, privileged=True, example={"component": "camera"},
             summary="Restart one worker, or (null/'daemon') the whole daemon: it answers, stops cleanly and exits "
                     f"{EX_TEMPFAIL} so systemd starts it again.")
    def _restart(self, req: Request, args: RestartArgs) -> object:
        if args.component in (None, self.name):
            systemd = under_systemd()
            logger.warning("daemon restart requested: answering, stopping cleanly, then exiting %d%s", EX_TEMPFAIL,
                           " (systemd starts it again)" if systemd else " (not under systemd: nothing will start it again)",
                           extra=ev("daemon_restart_requested"))
            self.reply(req, {"component": self.name, "exiting": True, "exit_code": EX_TEMPFAIL,
                             "under_systemd": systemd, "stop_in_s": RESTART_GRACE_S})
            self.bus.publish(AppAction(ActionKind.EXIT, req.command))
            return ANSWERED_LATER
        self.bus.publish(AppAction(ActionKind.RESTART_WORKER, req.command, req.request_id,
                                   {"component": args.component}))
        return ANSWERED_LATER

    @command("logs/bundle", summary="Write a support bundle (24 h of journal, redacted config, states, versions, "
                                    f"workers) to <storage.path>/{BUNDLE_DIR}/; the newest {BUNDLE_KEEP} are kept.")
    def _logs_bundle(self, req: Request, args: NoArgs) -> object:
        return self._in_background(req, self._bundle)

    @command("storage/cleanup", CleanupArgs, privileged=True, example={"what": ["evidence"]},
             summary="Delete the evidence snapshots and/or the active-learning dataset images and labels.")
    def _storage_cleanup(self, req: Request, args: CleanupArgs) -> object:
        what = list(args.what)
        return self._in_background(req, lambda: self._cleanup(what))

    @command("backup", summary="Calibration, counters and the workflow's maintenance mode as one JSON document (format "
                               "version, device, created_at, daemon_version), for `restore`; it holds no secrets.")
    def _backup(self, req: Request, args: NoArgs) -> dict[str, Any]:
        return build_backup(self.cfg.device.id, __version__, self.bus.states())

    @command("restore", RestoreArgs, privileged=True, example={"document": {"format": "smartbin-backup"}},
             summary="Restore a `backup` document: checked whole first (format, version, device unless force, every "
                     "field), then each owner applies its part in one transaction; refused while an item is sorted.")
    def _restore(self, req: Request, args: RestoreArgs) -> object:
        if self._restores:
            raise RequestError("a restore is already running; wait for its answer")
        compartments = [c.id for c in self.cfg.bins.compartments] if self.cfg.bins.enabled else []
        doc = check_document(args.document, device=self.cfg.device.id, compartments=compartments, force=args.force)
        states = self.bus.states()
        if "workflow" in states:
            sorting = WorkflowState.from_json(states["workflow"]).state
            if sorting in IN_FLIGHT:
                raise RequestError(f"an item is being sorted (workflow {sorting}); nothing was restored: retry when "
                                   "the workflow is idle, or switch maintenance on first")
        parts: dict[str, Request] = {}
        if doc.fill is not None:
            parts["fill"] = Request("fill", "bin/restore", doc.fill.model_dump(mode="json"), f"restore-{uuid.uuid4().hex}",
                                    authority=req.authority, key_id=req.key_id, transaction=req.transaction)
        if doc.workflow is not None:  # never unlocks: sent as an unsigned maintenance switch
            parts["workflow"] = Request("workflow", "maintenance", {"on": doc.workflow.maintenance},
                                        f"restore-{uuid.uuid4().hex}", authority=UNSIGNED, transaction=req.transaction)
        missing = [part for part in parts if part not in states]
        if missing or not parts:
            raise RequestError(f"args.document.{missing[0]}: that component does not run on this bin; nothing was "
                               "restored" if missing else "args.document: no fill or workflow part; nothing to restore")
        self._restores[req.request_id] = RestoreJob(
            req, {r.request_id: part for part, r in parts.items()}, time.monotonic() + RESTORE_TIMEOUT_S,
            {"device": doc.device, "created_at": doc.created_at.isoformat(), "forced": args.force})
        logger.info("restoring the backup of %s made %s: %s", doc.device, doc.created_at.isoformat(), ", ".join(parts),
                    extra=ev("backup_restore"))
        for part_request in parts.values():
            self.bus.publish(part_request)
        return ANSWERED_LATER

    def _restore_answered(self, resp: Response) -> None:
        for key, job in self._restores.items():
            if resp.request_id in job.waiting:
                if job.answered(resp.request_id, resp.ok, resp.data, resp.error):
                    self._finish_restore(key)
                return

    def _finish_restore(self, key: str) -> None:
        job = self._restores.pop(key)
        data, error = job.outcome()
        if error is None:
            self.reply(job.request, data)
        else:
            logger.warning("%s", error, extra=ev("backup_restore"))
            self.refuse(job.request, error, data)

    def _in_background(self, req: Request, work: Callable[[], Any]) -> object:
        """Run slow file work in a thread (one per command at a time) that answers when done."""
        running = self._jobs.get(req.command)
        if running is not None and running.is_alive():
            raise RequestError(f"{req.command} is already running; wait for its answer")
        thread = threading.Thread(target=self.serve, args=(req, work), daemon=True,
                                  name=f"smartbin-{req.command.replace('/', '-')}")
        self._jobs[req.command] = thread
        thread.start()
        return ANSWERED_LATER

    def _bundle(self) -> dict[str, Any]:
        cfg = self.cfg
        try:
            result = build_bundle(Path(cfg.storage.path), cfg, self.bus.states(), dict(self.workers))
        except OSError as exc:
            logger.error("support bundle failed: %s", exc, extra=ev("bundle_failed"))
            raise RequestError(f"cannot write the bundle below {Path(cfg.storage.path) / BUNDLE_DIR}: {exc}") from None
        logger.info("support bundle written: %s (%d bytes)", result["path"], result["bytes"], extra=ev("bundle_written"))
        return result

    def _cleanup(self, what: list[str]) -> dict[str, Any]:
        result = clean_storage(Path(self.cfg.storage.path), what)
        result["what"] = list(what)
        logger.info("storage cleaned (%s): %d file(s), %d bytes freed", ", ".join(what), result["files"],
                    result["bytes_freed"], extra=ev("storage_cleaned"))
        self.bus.emit_event("storage_cleaned", dict(result), self.name)
        if "detector" in self.workers and self.workers["detector"].get("status") == "running":
            # The detector keeps an index of its evidence files; a restart (the model stays loaded) rebuilds it.
            self.bus.publish(AppAction(ActionKind.REFRESH_WORKER, "storage/cleanup", None, {"component": "detector"}))
            result["detector_refreshed"] = True
        return result

    def own_state(self) -> DaemonState:
        """The `daemon` state: version, uptime, workers, pending restart."""
        failed = sorted(n for n, w in self.workers.items() if w.get("status") == "failed")
        return DaemonState(
            version=__version__,
            pid=os.getpid(),
            started_at=iso_utc(self.started_wall),
            uptime_s=round(time.monotonic() - self.started_mono),
            workers=self.workers,
            failed_workers=failed,
            restart_required=list(self.restart_required),
            bus_dropped=self.bus.dropped(),
            audit=self._audit(),
        )

    def _audit(self) -> Audit:
        """Privileged requests accepted (by signing key) and refused, as the MQTT worker last counted them."""
        mqtt = MqttState.from_json(self.bus.states().get("mqtt"))
        return Audit(privileged_accepted=dict(mqtt.requests_privileged or {}),
                     refused=int(mqtt.requests_unauthorized or 0),
                     signing_keys=sorted(self.cfg.security.signing_keys()),
                     revoked_keys=sorted(self.cfg.security.revoked_keys()))

    def _publish(self) -> None:
        self._last_publish = time.monotonic()
        self.bus.set_state(self.name, self.own_state())

    def _write_state_file(self) -> None:
        """Atomically write every component's state (for `smartbinctl status` when the broker is down)."""
        self._last_state_file = time.monotonic()
        self._state_dirty = False
        doc = {"written_at": iso_utc(time.time()), "device": self.cfg.device.id, "components": self.bus.states()}
        try:
            files.write_atomic(self.state_file, json.dumps(doc, default=str, indent=1).encode("utf-8"))
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.state_file, exc, extra=ev("state_file_failed"))

    def entities(self) -> tuple[Entity, ...]:
        """HA entities of the daemon itself."""
        diag = {"entity_category": "diagnostic"}
        return (
            Entity("sensor", "daemon_version", "Daemon version", self.name, "{{ value_json.version }}",
                   {**diag, "icon": "mdi:information-outline"}),
            Entity("sensor", "daemon_started_at", "Daemon started", self.name, "{{ value_json.started_at }}",
                   {**diag, "device_class": "timestamp", "icon": "mdi:clock-start"}),
            Entity("sensor", "daemon_failed_workers", "Failed workers", self.name,
                   "{{ value_json.failed_workers | length }}", {**diag, "icon": "mdi:alert-circle-outline"}),
        )


def core_requests() -> list[RequestSpec]:
    """Commands owned by the daemon component (as `DaemonControl` declares them)."""
    return declared_specs(DaemonControl, "daemon")
