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

import datetime as dt
import importlib.metadata
import io
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .clock import iso_utc
from .config import REDACTED, Config, ConfigError, load_config, parse_config, redacted_dict
from .logs import ev, under_systemd
from .runtime import files
from .runtime.bus import Bus, Discovery, Entity, Request, StateUpdate
from .runtime.commands import (
    ANSWERED_LATER,
    NoArgs,
    RequestError,
    RequestRegistry,
    RequestSpec,
    command,
    declared_specs,
)
from .runtime.supervisor import WorkersChanged
from .runtime.worker import Worker
from .states.daemon import Audit, DaemonState
from .states.mqtt import MqttState

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

PREV_SUFFIX = ".prev"
BUNDLE_DIR = "bundles"
BUNDLE_PREFIX = "smartbin-bundle-"
BUNDLE_KEEP = 5
BUNDLE_FILES = ("journal.txt", "config.yaml", "state.json", "versions.json", "workers.json")
JOURNAL_UNIT = "smartbin"
JOURNAL_TIMEOUT_S = 6.0
"""Below mqtt.request_timeout_s (default 10 s) so the bundle's answer normally arrives in time."""
JOURNAL_MAX_BYTES = 16 * 1024 * 1024
"""Only the newest 16 MiB of a day's journal go into a bundle."""
VERSION_PACKAGES = ("paho-mqtt", "pydantic", "pydantic-core", "PyYAML", "numpy", "pyserial", "gpiozero", "ultralytics",
                    "torch", "torchvision", "opencv-python", "opencv-python-headless", "opencv-contrib-python",
                    "onnxruntime", "onnxruntime-gpu", "nvidia-ml-py")
"""Package versions a bundle reports (read from the installed metadata; nothing is imported)."""

# Same folders as vision.evidence.SNAPSHOT_DIR / DATASET_DIR (not imported from there: that module loads OpenCV).
CLEANUP_FOLDERS: dict[str, Path] = {"evidence": Path("evidence") / "snapshots", "dataset": Path("dataset")}
CLEANUP_KEEP: dict[str, frozenset[str]] = {"evidence": frozenset(),
                                            "dataset": frozenset({"data.yaml", "README.txt", "images", "labels"})}
"""Top-level entries a cleanup keeps (folders are emptied): the dataset's description and folders, which the
detector writes only when it starts."""


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


CleanupTarget = Literal["evidence", "dataset"]


def _all_cleanup_targets() -> list[CleanupTarget]:
    """The default of storage/cleanup: both folders."""
    return ["evidence", "dataset"]


class CleanupArgs(BaseModel):
    """Arguments of storage/cleanup."""

    model_config = ConfigDict(extra="forbid")
    what: list[CleanupTarget] = Field(
        default_factory=_all_cleanup_targets, min_length=1,
        description="evidence: the annotated snapshots; dataset: the active-learning images and labels")


# --------------------------------------------------------------------------- config file: merge, write, roll back


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`: mappings merge key by key, anything else (lists, scalars, null) replaces."""
    out = dict(base)
    for key, value in patch.items():
        current = out.get(key)
        out[key] = deep_merge(current, value) if isinstance(value, dict) and isinstance(current, dict) else value
    return out


def prev_path(path: Path) -> Path:
    """Where the previous version of a config file is kept: `<file>.prev`."""
    return path.with_name(path.name + PREV_SUFFIX)


def config_target(path: Path) -> Path:
    """The file behind a (possibly symlinked) config path: writes replace it, not the link."""
    return Path(os.path.realpath(path))


def read_config_document(path: Path) -> dict[str, Any]:
    """The config file's YAML document as written (not the effective config); ConfigError if unusable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, [f"<file>: cannot read {str(path)!r}: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"<yaml>: the current file does not parse: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, [f"<root>: the current file holds a {type(data).__name__}, not a mapping"])
    return data


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Temp files an interrupted write (power loss, kill -9) left behind."""
    for stale in [*folder.glob(f".{name}.tmp-*"), *folder.glob(f".{name}{PREV_SUFFIX}.tmp-*")]:
        try:
            stale.unlink()
        except OSError:
            pass


def _keep_previous(target: Path) -> Path:
    """Make `<file>.prev` a copy of the current file, atomically (hard link, else a synced copy)."""
    prev = prev_path(target)
    if prev.exists() and os.path.samefile(prev, target):
        return prev  # already a link to the current file (a write died after this step): rename() would be a no-op
    staged = target.with_name(f".{prev.name}.tmp-{os.getpid()}")
    try:
        staged.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(target, staged)
    except OSError:  # no hard links here (some file systems, fs.protected_hardlinks): copy
        shutil.copy2(target, staged)
        with open(staged, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(staged, prev)
    return prev


def write_atomic(path: Path, data: bytes) -> Path | None:
    """Replace the config file `path` with `data` so that a crash at any point leaves the old or the new file,
    complete, and the current one kept as `<file>.prev` (before the replace). Returns the `.prev` path (None: no
    old file)."""
    target = config_target(path)
    _remove_stale_temps(target.parent, target.name)
    existed = target.exists()
    mode = stat.S_IMODE(target.stat().st_mode) if existed else 0o640
    kept: list[Path] = []
    files.write_atomic(target, data, mode=mode,
                       before_replace=(lambda: kept.append(_keep_previous(target))) if existed else None)
    return kept[0] if kept else None


def dump_config_document(doc: dict[str, Any], note: str) -> bytes:
    """YAML text of a config document with a one-line comment saying who wrote it."""
    return (f"# {note}\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)).encode("utf-8")


def set_config_file(path: Path, partial: dict[str, Any]) -> Path | None:
    """Merge `partial` into the file's document, validate the result, write it atomically; returns `.prev`.

    Raises ConfigError (every problem by key path; secrets never echoed) and leaves the file alone."""
    target = config_target(path)
    merged = deep_merge(read_config_document(target), partial)
    parse_config(merged, str(path), target.parent)
    note = f"written by smartbin-daemon config/set at {iso_utc(time.time())}; the previous version is {target.name}{PREV_SUFFIX}"
    return write_atomic(target, dump_config_document(merged, note))


def rollback_config_file(path: Path) -> Path:
    """Swap the config file with `<file>.prev` (the current one becomes the new `.prev`); returns `.prev`."""
    target = config_target(path)
    prev = prev_path(target)
    if not prev.is_file():
        raise RequestError(f"nothing to roll back to: {prev} does not exist (it is written by config/set)")
    data = prev.read_bytes()
    load_config(prev)  # a broken .prev (edited by hand) is refused: ConfigError
    written = write_atomic(target, data)
    assert written is not None
    return written


# --------------------------------------------------------------------------- support bundle


def secret_values(cfg: Config) -> list[str]:
    """The secret strings of a config (MQTT password, security.hmac_secret when that section exists)."""
    found: list[str] = []
    candidates: list[Any] = [cfg.mqtt.password]
    security = getattr(cfg, "security", None)
    if security is not None:
        candidates.append(getattr(security, "hmac_secret", None))
        candidates.extend(getattr(key, "secret", None) for key in (getattr(security, "keys", None) or {}).values())
    for value in candidates:
        if value is None:
            continue
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        if text:
            found.append(text)
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (also in its JSON-escaped form) replaced by the redaction marker."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


def read_journal(unit: str = JOURNAL_UNIT, timeout_s: float = JOURNAL_TIMEOUT_S) -> str:
    """The last 24 h of the unit's journal, or a note saying why there is none."""
    exe = shutil.which("journalctl")
    cmd = [exe or "journalctl", "-u", unit, "--since", "-24h", "-o", "short-iso", "--no-pager"]
    if exe is None:
        return f"# journalctl is not available on this system; no journal in this bundle\n# ({' '.join(cmd)})\n"
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout if isinstance(exc.stdout, bytes) else b""
        return (f"# {' '.join(cmd)} did not finish within {timeout_s:.0f}s; what it printed until then:\n"
                + _tail(partial).decode("utf-8", "replace"))
    except OSError as exc:
        return f"# {' '.join(cmd)} could not run: {exc}\n"
    out = _tail(proc.stdout).decode("utf-8", "replace")
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        return f"# {' '.join(cmd)} failed (exit {proc.returncode}): {err}\n{out}"
    return out


def _tail(data: bytes) -> bytes:
    if len(data) <= JOURNAL_MAX_BYTES:
        return data
    return b"# ... older lines cut: only the newest %d bytes are kept\n" % JOURNAL_MAX_BYTES + data[-JOURNAL_MAX_BYTES:]


def versions() -> dict[str, Any]:
    """Daemon, Python, platform and package versions (from package metadata: nothing heavy is imported)."""
    packages: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"daemon": __version__, "python": sys.version, "executable": sys.executable,
            "platform": platform.platform(), "machine": platform.machine(), "packages": packages}


def build_bundle(storage: Path, cfg: Config, states: dict[str, Any], workers: dict[str, Any],
                 journal: Callable[[], str] = read_journal, keep: int = BUNDLE_KEEP) -> dict[str, Any]:
    """Write `<storage>/bundles/smartbin-bundle-<UTC stamp>.tar.gz` (secrets scrubbed), keep the newest `keep`."""
    folder = Path(storage) / BUNDLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{BUNDLE_PREFIX}*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass
    secrets = secret_values(cfg)
    now = time.time()
    stamp = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    members = {
        "journal.txt": journal(),
        "config.yaml": yaml.safe_dump(redacted_dict(cfg), sort_keys=False, allow_unicode=True),
        "state.json": json.dumps(states, default=str, indent=1),
        "versions.json": json.dumps(versions(), indent=1),
        "workers.json": json.dumps(workers, default=str, indent=1),
    }
    path = folder / f"{BUNDLE_PREFIX}{stamp}.tar.gz"

    def write_bundle(fh: BinaryIO) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for name in BUNDLE_FILES:
                data = scrub(members[name], secrets).encode("utf-8")
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(now)
                info.mode = 0o640
                tar.addfile(info, io.BytesIO(data))

    files.write_atomic(path, write_bundle, mode=0o640, tmp=folder / f".{path.name}.tmp")
    removed = []
    bundles = sorted(folder.glob(f"{BUNDLE_PREFIX}*.tar.gz"))
    for old in bundles[: max(0, len(bundles) - keep)]:
        try:
            old.unlink()
            removed.append(old.name)
        except OSError as exc:
            logger.warning("cannot delete old bundle %s: %s", old, exc)
    return {"path": str(path), "bytes": path.stat().st_size, "files": list(BUNDLE_FILES), "removed": removed}


# --------------------------------------------------------------------------- storage cleanup


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def empty_folder(root: Path, storage: Path, keep_top: frozenset[str] = frozenset()) -> dict[str, int]:
    """Delete every file and emptied folder below `root` (symlinks are removed, never followed); keep `root`
    and the top-level entries named in `keep_top` (a kept folder is emptied). Refuses a `root` that leads
    outside `storage`."""
    counts = {"files": 0, "bytes": 0, "errors": 0}
    if root.is_symlink() or not root.is_dir():
        return counts
    real_storage = Path(os.path.realpath(storage))
    if not _inside(Path(os.path.realpath(root)), real_storage):
        raise RequestError(f"{root} leads outside {storage} (a symlinked folder); not touched")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
        here = Path(dirpath)
        # os.walk(followlinks=False) lists a symlink to a folder in dirnames without entering it: unlink the link.
        for name in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
            if here == root and name in keep_top:
                continue
            victim = here / name
            try:
                st = victim.lstat()
                victim.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                counts["errors"] += 1
                logger.warning("storage cleanup: cannot delete %s: %s", victim, exc)
                continue
            counts["files"] += 1
            counts["bytes"] += st.st_size if stat.S_ISREG(st.st_mode) else 0
        if here != root and not (here.parent == root and here.name in keep_top):
            try:
                here.rmdir()  # an emptied folder (a snapshot date); only when empty
            except OSError:
                pass
    return counts


def clean_storage(storage: Path, what: Iterable[str]) -> dict[str, Any]:
    """Empty the chosen folders below storage.path; per folder and total counts of files and bytes."""
    out: dict[str, Any] = {}
    files = freed = 0
    for name in what:
        folder = Path(storage) / CLEANUP_FOLDERS[name]
        counts = empty_folder(folder, Path(storage), CLEANUP_KEEP[name])
        out[name] = {"path": str(folder), **counts}
        files += counts["files"]
        freed += counts["bytes"]
    return {"folders": out, "files": files, "bytes_freed": freed}


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
        self._jobs: dict[str, threading.Thread] = {}

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
            Entity("sensor", "daemon_uptime", "Daemon uptime", self.name, "{{ value_json.uptime_s }}",
                   {**diag, "device_class": "duration", "unit_of_measurement": "s", "state_class": "measurement"}),
            Entity("sensor", "daemon_failed_workers", "Failed workers", self.name,
                   "{{ value_json.failed_workers | length }}", {**diag, "icon": "mdi:alert-circle-outline"}),
        )


def core_requests() -> list[RequestSpec]:
    """Commands owned by the daemon component (as `DaemonControl` declares them)."""
    return declared_specs(DaemonControl, "daemon")
