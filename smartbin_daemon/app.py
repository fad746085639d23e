"""The daemon application: start() runs named steps, stop() undoes them in reverse; the main thread
supervises workers, feeds the systemd watchdog and handles signals.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from . import __version__
from .alerts.worker import AlertsWorker
from .config import Config, ConfigError, config_diff, load_config
from .control import (
    EX_TEMPFAIL,
    RESTART_GRACE_S,
    ActionKind,
    AppAction,
    ConfigApplied,
    DaemonControl,
    rollback_config_file,
    set_config_file,
)
from .logs import LoggingSetup, ev
from .mqtt.client import MqttWorker
from .mqtt.outbox import Outbox
from .runtime.bus import Alert, Bus, Response
from .runtime.commands import ANSWERED_LATER, RequestError, RequestRegistry
from .runtime.notify import Notifier
from .runtime.state import State
from .runtime.supervisor import RestartPolicy, Supervisor
from .runtime.worker import Worker
from .states import ArduinoState, CameraState, DetectorState, HealthState, MqttState, WorkflowState
from .store import DB_NAME, Store

logger = logging.getLogger(__name__)

SUPERVISE_INTERVAL_S = 0.5

WorkerFactory = Callable[[Config], Worker]

# Config paths that a worker restart applies; logging.* and runtime.* apply in place;
# device.id and storage.* need a process restart.
_WORKER_SECTIONS = {"mqtt": ("mqtt.", "security.", "device.name", "device.model", "device.manufacturer"), "health": ("health.",),
                    "arduino": ("arduino.",), "gpio": ("gpio.",), "camera": ("camera.",),
                    "detector": ("detector.", "evidence.", "camera.max_frame_age_s"), "simulation": ("simulation.", "bins."),
                     "fill": ("bins.",), "workflow": ("bins.",), "alerts": ("alerts.", "device.name")}
_PROCESS_SECTIONS = ("device.id", "storage.", "arduino.enabled", "arduino.backend", "arduino.simulator.",
                     "gpio.enabled", "gpio.lid.", "gpio.leds.", "gpio.buzzer.",  # request ownership is fixed at start
                     "camera.enabled", "detector.enabled", "simulation.enabled", "bins.enabled")


def restart_policy(cfg: Config) -> RestartPolicy:
    """Supervisor policy from the runtime section."""
    r = cfg.runtime
    return RestartPolicy(
        backoff_min_s=r.restart_backoff_min_s, backoff_max_s=r.restart_backoff_max_s, max_restarts=r.max_restarts,
        window_s=r.restart_window_s, heartbeat_timeout_s=r.heartbeat_timeout_s, stop_timeout_s=r.stop_timeout_s,
    )


def actuator_owners(cfg: Config) -> dict[str, str | None]:
    """Which component executes route / lid / led / buzzer for the workflow (None: no such actuator)."""
    from .hardware.gpio import owned_commands

    gpio_owned = set(owned_commands(cfg.gpio)) if cfg.gpio.enabled else set()
    arduino = "arduino" if cfg.arduino.enabled else None
    owners: dict[str, str | None] = {"route": arduino}
    for command in ("lid", "led", "buzzer"):
        owners[command] = "gpio" if command in gpio_owned else arduino
    return owners


class App:
    """Builds the components from config and runs them until a stop signal."""

    def __init__(self, cfg: Config, config_path: Path | None = None, logging_setup: LoggingSetup | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.logging_setup = logging_setup
        self.notifier = notifier or Notifier()
        self.bus = Bus()
        self.supervisor = Supervisor(self.bus, restart_policy(cfg))
        self.registry = RequestRegistry()
        self.store: Store | None = None
        self.outbox: Outbox | None = None
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._factories: dict[str, WorkerFactory] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._last_watchdog = 0.0
        self._hung_reported: set[str] = set()
        self.simulated_arduino: Any = None
        self._actions = self.bus.subscribe("app", (AppAction,), maxsize=100)
        self._action_handlers: dict[ActionKind, Callable[[AppAction], Any]] = {
            ActionKind.CONFIG_SET: self._change_config,
            ActionKind.CONFIG_ROLLBACK: self._change_config,
            ActionKind.RESTART_WORKER: self._restart_worker,
            ActionKind.REFRESH_WORKER: self._restart_worker,
            ActionKind.EXIT: self._exit,
        }
        """The main-thread work of each action kind; a handler returns the answer's data or ANSWERED_LATER."""
        self._exit_at: float | None = None
        self.exit_code = 0
        """The process exit status `run` returns: EX_TEMPFAIL after a requested daemon restart."""

    # -- start / stop ------------------------------------------------------------------

    def start(self) -> None:
        """Run the start steps in order; on failure undo what was done and re-raise."""
        steps: list[tuple[str, Callable[[], Callable[[], None] | None]]] = [
            ("storage", self._start_storage),
            ("outbox", self._start_outbox),
            ("simulators", self._start_simulators),
            ("workers", self._start_workers),
        ]
        for name, step in steps:
            logger.debug("start step: %s", name)
            try:
                undo = step()
            except Exception:
                logger.exception("start step %s failed", name, extra=ev("start_failed"))
                self.stop()
                raise
            if undo is not None:
                self._undo.append((name, undo))
        self.notifier.ready(self.status_line())
        logger.info("smartbin-daemon %s started as %s (root topic %s)", __version__, self.cfg.device.id,
                    self.cfg.root_topic, extra=ev("daemon_started"))

    def stop(self) -> None:
        """Undo the start steps in reverse order."""
        self.notifier.stopping()
        while self._undo:
            name, undo = self._undo.pop()
            logger.debug("stop step: %s", name)
            try:
                undo()
            except Exception:
                logger.exception("stop step %s failed", name)

    def _start_storage(self) -> Callable[[], None]:
        path = Path(self.cfg.storage.path)
        path.mkdir(parents=True, exist_ok=True)
        self.store = Store(path / DB_NAME)
        return self.store.close

    def _start_outbox(self) -> None:
        assert self.store is not None
        ob = self.cfg.mqtt.outbox
        self.outbox = Outbox(self.store, max_events=ob.max_events, max_age_days=ob.max_age_days)
        self.bus.attach_sink(self.outbox)
        if self.store.recovered_from is not None:
            self.bus.raise_alert(Alert(source="storage", code="db_recovered", severity="critical",
                                       message=f"database was unusable and moved aside to {self.store.recovered_from}"))
        return None

    def _start_simulators(self) -> Callable[[], None] | None:
        """Simulated hardware speaks the real protocols on real devices (a pty), so the real code paths run."""
        a = self.cfg.arduino
        if not (a.enabled and a.backend == "simulator"):
            return None
        from .hardware.arduino.simulator import SimulatedArduino

        link = a.simulator.link if a.simulator.link.is_absolute() else Path(self.cfg.storage.path) / a.simulator.link
        sim = SimulatedArduino(link, compartments=a.simulator.compartments, empty_mm=a.simulator.empty_mm,
                               item_mm=a.simulator.item_mm, telemetry_interval_s=a.simulator.telemetry_interval_s)
        sim.start()
        self.simulated_arduino = sim
        return sim.stop

    def _start_workers(self) -> Callable[[], None]:
        self._factories = self.worker_factories()
        workers = [factory(self.cfg) for factory in self._factories.values()]
        self._register_requests(workers)
        for worker in workers:
            self.supervisor.add(worker)
        self.supervisor.start_all()
        return self._stop_workers

    def worker_factories(self) -> dict[str, WorkerFactory]:
        """The factory of each configured component's worker, by name (the storage and outbox steps ran)."""
        assert self.outbox is not None
        outbox = self.outbox
        factories: dict[str, WorkerFactory] = {
            "mqtt": lambda cfg: MqttWorker(self.bus, cfg, outbox, self.registry),
            "daemon": lambda cfg: DaemonControl(self.bus, cfg, self.registry),
            "alerts": lambda cfg: AlertsWorker(self.bus, cfg),
        }
        if self.cfg.health.enabled:
            from .health.monitor import HealthMonitor

            health_store = self.store
            factories["health"] = lambda cfg: HealthMonitor(self.bus, cfg.health, Path(cfg.storage.path),
                                                            store=health_store)
        if self.cfg.arduino.enabled:
            from .hardware.arduino.link import ArduinoLink
            from .hardware.gpio import owned_commands

            factories["arduino"] = lambda cfg: ArduinoLink(self.bus, cfg.arduino, Path(cfg.storage.path),
                                                        exclude=frozenset(owned_commands(cfg.gpio)))
        if self.cfg.gpio.enabled:
            from .hardware.gpio import GpioWorker

            factories["gpio"] = lambda cfg: GpioWorker(self.bus, cfg.gpio)
        if self.cfg.camera.enabled or self.cfg.detector.enabled:
            from .vision.frames import LatestFrame

            frames = LatestFrame()  # the camera writes the newest frame, the detector reads it
            base_dir = self.config_path.parent if self.config_path is not None else Path.cwd()
            if self.cfg.camera.enabled:
                from .vision.camera import CameraWorker

                factories["camera"] = lambda cfg: CameraWorker(self.bus, cfg.camera, frames, base_dir=base_dir)
            if self.cfg.detector.enabled:
                from .vision.detector import DetectorWorker
                from .vision.evidence import WaterMarks

                factories["detector"] = lambda cfg: DetectorWorker(
                    self.bus, cfg.detector, cfg.camera, cfg.evidence, frames, Path(cfg.storage.path),
                    water_marks=WaterMarks(cfg.storage.high_water_pct, cfg.storage.low_water_pct))
        if self.cfg.bins.enabled:
            from .bins.tracker import FillTracker
            from .bins.workflow import SortingWorkflow

            assert self.store is not None
            store = self.store
            owners = actuator_owners(self.cfg)
            vision = {"camera": self.cfg.camera.enabled, "detector": self.cfg.detector.enabled}
            factories["fill"] = lambda cfg: FillTracker(self.bus, cfg.bins, store)
            factories["workflow"] = lambda cfg: SortingWorkflow(self.bus, cfg.bins, store, owners=owners,
                                                             vision=vision)
        if self.cfg.simulation.enabled:
            from .simulation import ItemFeeder

            sim_arduino = self.simulated_arduino
            factories["simulation"] = lambda cfg: ItemFeeder(self.bus, cfg.simulation, Path(cfg.storage.path),
                                                          bins=cfg.bins, arduino=sim_arduino)
        return factories

    def _register_requests(self, workers: list[Worker]) -> None:
        """Register what each worker offers (GPIO: lid/led/buzzer of configured devices; the Arduino: the rest)."""
        for worker in workers:
            for spec in worker.requests():
                self.registry.register(spec)

    def _stop_workers(self) -> None:
        # The MQTT worker is stopped last so it can still publish what the others say on the way down.
        names = [n for n in self.supervisor.names() if n != "mqtt"]
        deadline = time.monotonic() + self.cfg.runtime.stop_timeout_s
        for name in reversed(names):
            self.supervisor.worker(name).request_stop()
        for name in reversed(names):
            self.supervisor.stop(name, timeout=max(0.1, deadline - time.monotonic()))
        if "mqtt" in self.supervisor.names():
            self.supervisor.stop("mqtt", timeout=max(1.0, deadline - time.monotonic() + 2.0))

    # -- main loop ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; handlers only set flags."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()

    def request_stop(self) -> None:
        """Ask the main loop to end."""
        self._stop.set()

    def run_forever(self) -> None:
        """Supervise until a stop is requested."""
        while not self._stop.wait(SUPERVISE_INTERVAL_S):
            self.tick()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()

    def tick(self) -> None:
        """One supervision round: restarts, watchdog, status line, folded log repeats, queued actions."""
        self.supervisor.check()
        self._feed_watchdog()
        self.notifier.status(self.status_line())
        if self.logging_setup is not None:
            self.logging_setup.repeats.flush()
        self.run_actions()
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self._stop.set()

    def _feed_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        hung = self.supervisor.hung()
        for name in set(hung) - self._hung_reported:
            logger.error("worker %s is hung (no heartbeat for %.0fs); withholding the systemd watchdog",
                         name, self.supervisor.worker(name).heartbeat_age(), extra=ev("watchdog_withheld", component=name))
        self._hung_reported = set(hung)
        now = time.monotonic()
        if not hung and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.notifier.watchdog()

    def status_line(self) -> str:
        """One human line for `systemctl status`: `mqtt connected · health ok · 0 failed`."""
        st = self.bus.states()
        mqtt, arduino, camera = _typed(st, "mqtt", MqttState), _typed(st, "arduino", ArduinoState), _typed(st, "camera", CameraState)
        detector, workflow = _typed(st, "detector", DetectorState), _typed(st, "workflow", WorkflowState)
        health = _typed(st, "health", HealthState)
        parts = [f"mqtt {mqtt.status if mqtt else 'starting'}"]
        if "arduino" in self._factories:
            parts.append(f"arduino {arduino.status if arduino else 'starting'}")
        if "camera" in self._factories:
            parts.append(f"camera {camera.status if camera else 'starting'}")
        if "detector" in self._factories:
            parts.append(f"detector {detector.gate_state if detector else 'starting'}")
        if "workflow" in self._factories:
            parts.append(f"sorting {workflow.state if workflow else 'starting'}")
        if "health" in self._factories:
            parts.append(f"health {health.status if health else 'starting'}")
        counts = self.supervisor.counts()
        parts.append(f"{counts.get('failed', 0)} failed")
        hung = self.supervisor.hung()
        if hung:
            parts.append("hung: " + ",".join(hung))
        return " · ".join(parts)

    # -- reload --------------------------------------------------------------------------

    def reload(self, source: str = "sighup", answer: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """SIGHUP or a config request: re-read the config, apply what can live, report what needs a restart.

        `answer` (a request's reply) is called once the change is applied but before the MQTT worker is
        replaced: the new MQTT worker would not know the request, so the old one must send the answer."""
        if self.config_path is None:
            return {"applied": [], "restart_required": []}
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            logger.error("config reload rejected, keeping the running config:\n%s", "\n".join(exc.errors),
                         extra=ev("config_reload_rejected"))
            return {"error": exc.errors}
        changed = config_diff(self.cfg, new)
        applied: list[str] = []
        restart_required: list[str] = []
        workers_to_restart: set[str] = set()
        for path in changed:
            if path.startswith(_PROCESS_SECTIONS):
                restart_required.append(path)
                continue
            applied.append(path)
            for worker, prefixes in _WORKER_SECTIONS.items():
                if path.startswith(prefixes) and worker in self._factories:
                    workers_to_restart.add(worker)
        # Keep process-level values as they are until a restart.
        merged = new.model_copy(update={"device": new.device.model_copy(update={"id": self.cfg.device.id}),
                                        "storage": self.cfg.storage})
        self.cfg = merged
        if self.logging_setup is not None:
            self.logging_setup.set_level(merged.logging.level)
            self.logging_setup.set_repeat_window(merged.logging.repeat_window_s)
        self.supervisor.policy = restart_policy(merged)
        for name in sorted(workers_to_restart - {"mqtt"}):
            self.supervisor.replace(self._factories[name](merged))
        self.bus.publish(ConfigApplied(merged, tuple(applied), tuple(restart_required)))
        if changed:
            self.bus.emit_event("config_changed", {"applied": applied, "restart_required": restart_required,
                                                   "source": source}, "daemon")
        logger.info("config reloaded (%s): %d change(s) applied%s%s", source, len(applied),
                    f" ({', '.join(applied)})" if applied else "",
                    f"; restart required for {', '.join(restart_required)}" if restart_required else "",
                    extra=ev("config_reloaded"))
        result = {"applied": applied, "restart_required": restart_required}
        if answer is not None:
            answer(result)
        if "mqtt" in workers_to_restart:  # the answer above is in its inbox: it sends answers before it stops
            self.supervisor.replace(self._factories["mqtt"](merged))
        return result

    # -- actions handed over by the daemon component ---------------------------------------

    def run_actions(self) -> None:
        """Do the work the `daemon` component queued for the main thread, answering each request."""
        while (action := self._actions.get(0)) is not None:
            try:
                data = self._action_handlers[action.kind](action)
                if data is ANSWERED_LATER:
                    continue
            except RequestError as exc:
                self._answer(action, False, exc.data, str(exc))
            except ConfigError as exc:
                self._answer(action, False, {"errors": exc.errors},
                             f"{exc.path}: invalid configuration ({len(exc.errors)} error(s)): " + "; ".join(exc.errors))
            except OSError as exc:
                hint = ""
                config = action.kind in (ActionKind.CONFIG_SET, ActionKind.CONFIG_ROLLBACK)
                if config and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    hint = (" (the daemon may not write its config folder: under the shipped systemd unit it is "
                            "read-only; see the README, Remote configuration)")
                logger.error("%s failed: %s%s", action.command, exc, hint, extra=ev("config_write_failed"))
                self._answer(action, False, None, f"{action.command}: {exc}{hint}")
            except Exception as exc:  # noqa: BLE001 - a request must get an answer, not take the main loop down
                logger.exception("%s failed", action.command)
                self._answer(action, False, None, f"{type(exc).__name__}: {exc}")
            else:
                self._answer(action, True, data, None)

    def _answer(self, action: AppAction, ok: bool, data: Any, error: str | None) -> None:
        if action.request_id is not None:
            self.bus.publish(Response(action.request_id, action.command, ok, data=data, error=error))

    def _restart_worker(self, action: AppAction) -> Any:
        """restart_worker / refresh_worker: restart one worker through the supervisor."""
        name = str(action.args.get("component"))
        known = self.supervisor.names()
        if name not in known:
            raise RequestError(f"unknown component {name!r}; known: {', '.join(known)} (or null/'daemon' for the "
                               "whole daemon)", data={"known": known})
        if name == "mqtt" and action.request_id is not None:
            # Answers travel through this worker: answer first; it sends queued answers before it stops.
            self._answer(action, True, {"component": name, "restarted": True, "status": "restarting"}, None)
            self.supervisor.restart(name)
            return ANSWERED_LATER
        self.supervisor.restart(name)
        self.supervisor.publish_state()
        return {"component": name, "restarted": True, "status": self.supervisor.table()[name]["status"]}

    def _exit(self, action: AppAction) -> None:
        """exit: stop after a grace period (the answer leaves first) with EX_TEMPFAIL, so systemd restarts us."""
        self.exit_code = EX_TEMPFAIL
        self._exit_at = time.monotonic() + RESTART_GRACE_S

    def _change_config(self, action: AppAction) -> object:
        """config/set or config/rollback: write the file atomically, then apply it like SIGHUP."""
        if self.config_path is None:
            raise RequestError("the daemon was started without a config file; there is nothing to change")
        if action.kind == ActionKind.CONFIG_SET:
            try:
                prev = set_config_file(self.config_path, action.args.get("config") or {})
            except ConfigError as exc:
                logger.warning("config/set rejected, file unchanged:\n%s", "\n".join(exc.errors),
                               extra=ev("config_set_rejected"))
                raise
            source = "request"
        else:
            prev = rollback_config_file(self.config_path)
            source = "rollback"
        logger.info("%s: %s rewritten atomically, previous version kept as %s", action.command, self.config_path, prev,
                    extra=ev("config_written"))
        previous = str(prev) if prev is not None else None
        result = self.reload(source, answer=lambda r: self._answer(action, True, {**r, "previous": previous}, None))
        if "error" in result:
            raise RequestError(f"the file was written but the reload rejected it: {'; '.join(result['error'])}",
                               data={"errors": result["error"], "previous": previous})
        return ANSWERED_LATER


S = TypeVar("S", bound=State)


def _typed(states: dict[str, dict[str, Any]], component: str, model: type[S]) -> S | None:
    """A component's last published state as its model, or None before its first publication."""
    return model.from_json(states[component]) if component in states else None
