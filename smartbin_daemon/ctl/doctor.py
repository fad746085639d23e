"""`smartbinctl doctor`: one check per thing that can stop a bin (config, broker, daemon, serial, camera, GPIO, disk, model, signing, systemd)."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import (
    WASTE_CATEGORIES,
    Config,
    ConfigError,
    classmap_path_for,
)
from .render import fmt_duration
from .session import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_UNIT,
    BrokerError,
    BrokerSession,
    CtlConfig,
    _parse_iso,
    apply_overrides,
    collect_from_broker,
    load_ctl_config,
    signing_secret,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- doctor


Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class CheckResult:
    """One doctor finding: status, the check's name, what was found and what to do about it."""

    status: Status
    check: str
    finding: str
    advice: str = ""

    def line(self) -> str:
        """`OK    broker: connected to ... — advice`."""
        return f"{self.status:<4}  {self.check}: {self.finding}" + (f" — {self.advice}" if self.advice else "")


@dataclass(frozen=True)
class Identity:
    """Who runs smartbinctl: user name, the groups this process has, and the groups /etc/group lists for the user."""

    user: str
    groups: frozenset[str]
    member_of: frozenset[str]
    root: bool = False


def current_identity() -> Identity:
    """The identity of this process."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    names: set[str] = set()
    for gid in {os.getegid(), *os.getgroups()}:
        with contextlib.suppress(KeyError):
            names.add(grp.getgrgid(gid).gr_name)
    member_of = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    return Identity(user, frozenset(names), frozenset(member_of | names), root=uid == 0)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def device_access(path: Path, wanted_group: str, identity: Identity,
                  access: Callable[[Path, int], bool]) -> tuple[bool, str, str]:
    """Whether this user can read and write a device node; if not, why and the `usermod` advice."""
    if access(path, os.R_OK | os.W_OK):
        return True, "", ""
    group = wanted_group
    with contextlib.suppress(OSError):
        st = path.stat()
        if stat.S_ISCHR(st.st_mode) and st.st_gid != 0:
            group = _group_name(st.st_gid)  # the node's real group (dialout, uucp, video, gpio ...)
    if group in identity.groups:
        return False, f"not readable+writable by {identity.user} although it is in group {group}", \
            f"check the device's mode (`ls -l {path}`)"
    if group in identity.member_of:
        return False, f"not readable+writable by {identity.user}: added to group {group} but this login predates it", \
            "log out and back in (or `newgrp " + group + "`)"
    return False, f"not readable+writable by {identity.user} (device group {group}; {identity.user} is not in it)", \
        f"sudo usermod -aG {group} {identity.user}, then log in again"


def check_config(path: str | os.PathLike[str]) -> tuple[CheckResult, CtlConfig | None]:
    """The config file loads and validates (every error listed by key path)."""
    try:
        ctl = load_ctl_config(path)
    except ConfigError as exc:
        return CheckResult("FAIL", "config", f"{exc.path}: {len(exc.errors)} error(s): {'; '.join(exc.errors)}",
                           f"fix those keys, then `smartbin-daemon check-config {path}`"), None
    if ctl.notes:
        return CheckResult("WARN", "config", f"{path}: valid, but " + "; ".join(ctl.notes),
                           "run smartbinctl with sudo (the daemon reads it through its unit)"), ctl
    cfg = ctl.cfg
    return CheckResult("OK", "config", f"{path} is valid (device {cfg.device.id}, topics {cfg.root_topic}/...)"), ctl


def check_serial_port(cfg: Config, *, comports: Callable[[], Iterable[Any]] | None = None,
                      identity: Identity | None = None,
                      access: Callable[[Path, int], bool] = os.access) -> CheckResult:
    """The Arduino's serial port exists (path or VID:PID) and this user may open it (dialout)."""
    a = cfg.arduino
    if not a.enabled:
        return CheckResult("OK", "serial port", "Arduino link disabled (arduino.enabled: false)")
    if a.backend == "simulator":
        return CheckResult("OK", "serial port", "simulated Arduino on a pseudo-terminal (arduino.backend: simulator)")
    ident = identity or current_identity()
    dialout = (f"whoever opens it needs the dialout group (`sudo usermod -aG dialout {ident.user}`; the smartbin "
               "service gets it from its unit)")
    port: Path | None = None
    how = ""
    if a.port:
        port = Path(a.port)
        how = f"arduino.port {a.port}"
        if not port.exists():
            return CheckResult("FAIL", "serial port", f"{how} does not exist",
                               "plug the Arduino in, look at `ls -l /dev/serial/by-id/` and fix arduino.port (or set "
                               "arduino.vid_pid; `sudo ./install.sh --arduino-usb VID:PID` adds the "
                               f"/dev/smartbin-arduino udev rule); {dialout}")
    else:
        if comports is None:
            from serial.tools import list_ports

            comports = list_ports.comports
        vid_pid = a.vid_pid or ""
        vid, pid = (int(x, 16) for x in vid_pid.split(":"))
        found = sorted(comports(), key=lambda p: str(p.device))
        match = [p for p in found if p.vid == vid and p.pid == pid]
        if not match:
            seen = ", ".join(f"{p.device} {p.vid or 0:04x}:{p.pid or 0:04x}" for p in found) or "no USB serial devices"
            return CheckResult("FAIL", "serial port", f"no serial device with VID:PID {vid_pid} (found: {seen})",
                               "plug the Arduino in (`lsusb` shows its VID:PID) or fix arduino.vid_pid / set "
                               f"arduino.port; {dialout}")
        port = Path(str(match[0].device))
        how = f"VID:PID {vid_pid} is {port}"
    ok, why, advice = device_access(port, "dialout", ident, access)
    if not ok:
        return CheckResult("FAIL", "serial port", f"{how}: {why}",
                           advice + " (the smartbin service gets dialout from its unit)")
    return CheckResult("OK", "serial port", f"{how} present, readable and writable by {ident.user}")


def _redact_url(url: str) -> str:
    return re.sub(r"//[^/@\s]+@", "//***@", url)


def check_camera(cfg: Config, base_dir: Path, *, identity: Identity | None = None,
                 access: Callable[[Path, int], bool] = os.access) -> CheckResult:
    """The camera source exists: a /dev/video* node (group video), a file or folder; URLs and pipelines are reported."""
    cam = cfg.camera
    if not cam.enabled:
        return CheckResult("OK", "camera", "camera disabled (camera.enabled: false)")
    source = cam.source.strip()
    lowered = source.lower()
    if cam.kind == "picamera2" or lowered == "picamera2" or lowered.startswith("picamera2:"):
        return CheckResult("OK", "camera", f"{source}: Pi camera module (not probed here)",
                           "`rpicam-hello --list-cameras` lists the cameras libcamera sees")
    if cam.kind == "gstreamer" or "!" in source:
        return CheckResult("OK", "camera", "GStreamer pipeline (not probed here)")
    if cam.kind == "url" or re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        return CheckResult("OK", "camera", f"network stream {_redact_url(source)} (not probed here)")
    if cam.kind == "v4l2" or source.isdigit() or source.startswith("/dev/"):
        dev = Path(f"/dev/video{source}") if source.isdigit() else Path(source)
        if not dev.exists():
            return CheckResult("FAIL", "camera", f"{dev} does not exist (camera.source {source!r})",
                               "plug the camera in, list devices with `v4l2-ctl --list-devices` and fix camera.source")
        ident = identity or current_identity()
        ok, why, advice = device_access(dev, "video", ident, access)
        if not ok:
            return CheckResult("FAIL", "camera", f"{dev}: {why}", advice + " (the smartbin service gets video from its unit)")
        return CheckResult("OK", "camera", f"{dev} present, readable and writable by {ident.user}")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base_dir / path
    scene = cfg.storage.path / cfg.simulation.scene
    if cfg.simulation.enabled and path.resolve() == scene.resolve():
        note = "exists" if path.is_dir() else "created by the simulation at start"
        return CheckResult("OK", "camera", f"simulated scene folder {path} ({note})")
    if path.is_dir():
        images = [p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp")]
        if not images:
            return CheckResult("WARN", "camera", f"image folder {path} holds no images", "put .jpg/.png files there")
        return CheckResult("OK", "camera", f"image folder {path} ({len(images)} images)")
    if path.is_file():
        if not access(path, os.R_OK):
            return CheckResult("FAIL", "camera", f"video file {path} is not readable", f"check `ls -l {path}`")
        return CheckResult("OK", "camera", f"video file {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return CheckResult("FAIL", "camera", f"{path} does not exist (camera.source {source!r})",
                       "fix camera.source: a device (0, /dev/video0), picamera2, a URL, a pipeline, a file or a folder")


def check_gpio(cfg: Config, *, chips: Sequence[Path] | None = None, identity: Identity | None = None,
               access: Callable[[Path, int], bool] = os.access) -> CheckResult:
    """With real GPIO (not the mock factory), a /dev/gpiochip* exists and this user may open it (group gpio)."""
    g = cfg.gpio
    if not g.enabled:
        return CheckResult("OK", "gpio", "GPIO disabled (gpio.enabled: false)")
    if g.pin_factory == "mock":
        return CheckResult("OK", "gpio", "mock pin factory (simulation), no GPIO chip needed")
    found = sorted(Path("/dev").glob("gpiochip*")) if chips is None else list(chips)
    if not found:
        return CheckResult("FAIL", "gpio", f"no /dev/gpiochip* here (gpio.pin_factory: {g.pin_factory})",
                           "is this a Raspberry Pi/Jetson with the GPIO character device? for a bench test set "
                           "gpio.pin_factory: mock")
    ident = identity or current_identity()
    for chip in found:
        ok, why, advice = device_access(chip, "gpio", ident, access)
        if not ok:
            return CheckResult("FAIL", "gpio", f"{chip}: {why}", advice + " (the smartbin service gets gpio from its unit)")
    return CheckResult("OK", "gpio", f"{', '.join(str(c) for c in found)} accessible by {ident.user} "
                                     f"(pin factory {g.pin_factory})")


def check_broker(cfg: Config, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> CheckResult:
    """Connect with the config's credentials and TLS; say why when the broker refuses or cannot be reached."""
    m = cfg.mqtt
    how = f"MQTT {m.protocol}, TLS {'on' if m.tls.enabled else 'off'}, " + (f"user {m.username}" if m.username else "anonymous")
    start = time.monotonic()
    try:
        with BrokerSession(cfg, timeout):
            elapsed = (time.monotonic() - start) * 1000.0
    except BrokerError as exc:
        return CheckResult("FAIL", "broker", f"{exc.reason} ({how})", exc.advice)
    return CheckResult("OK", "broker", f"connected to {m.host}:{m.port} ({how}) in {elapsed:.0f} ms")


def check_daemon(cfg: Config, timeout: float = DEFAULT_CONNECT_TIMEOUT_S, wait_s: float = 1.0) -> CheckResult:
    """The daemon's retained availability and worker table on the broker."""
    try:
        snap = collect_from_broker(cfg, timeout, wait_s)
    except BrokerError as exc:
        return CheckResult("WARN", "daemon", f"not checked: {exc.reason}", "see the broker check")
    daemon = snap.components.get("daemon")
    if snap.availability is None and daemon is None:
        return CheckResult("WARN", "daemon", f"nothing retained under {cfg.root_topic}/ on {snap.broker}",
                           "has the daemon ever run against this broker with this device.id? `smartbinctl logs mqtt`")
    if snap.availability != "online":
        return CheckResult("FAIL", "daemon", f"availability {snap.availability or 'unknown'}",
                           "`systemctl status smartbin`; `smartbinctl logs -n 50`")
    failed = (daemon or {}).get("failed_workers") or []
    if failed:
        return CheckResult("FAIL", "daemon", f"online, but worker(s) failed: {', '.join(failed)}",
                           "`smartbinctl logs --event worker_crashed` shows why; then `sudo systemctl restart smartbin`")
    started = _parse_iso((daemon or {}).get("started_at"))
    uptime = time.time() - started if started is not None else (daemon or {}).get("uptime_s")
    return CheckResult("OK", "daemon", f"online, v{(daemon or {}).get('version', '?')}, up "
                                       f"{fmt_duration(uptime)}, no failed workers")


def check_disk(path: Path, *, warn_pct: float = 90.0, fail_pct: float = 98.0,
               usage: Callable[[Path], Any] = shutil.disk_usage) -> CheckResult:
    """Disk usage of the filesystem holding storage.path: WARN above 90 %, FAIL above 98 %."""
    target = Path(path)
    note = ""
    while not target.exists() and target != target.parent:
        target = target.parent
        note = f" ({path} does not exist yet; the daemon creates it)"
    try:
        u = usage(target)
    except OSError as exc:
        return CheckResult("FAIL", "disk", f"cannot measure {target}: {exc.strerror or exc}")
    pct = u.used / (u.used + u.free) * 100.0 if (u.used + u.free) else 0.0
    finding = f"{path}: {pct:.1f}% used, {u.free / 1e9:.1f} GB free{note}"
    advice = ("free space: old evidence (`storage.path`/evidence), the dataset, `journalctl --vacuum-size=200M`, "
              "or lower evidence.*_quota_mb")
    if pct > fail_pct:
        return CheckResult("FAIL", "disk", finding, advice)
    if pct > warn_pct:
        return CheckResult("WARN", "disk", finding, advice)
    return CheckResult("OK", "disk", finding)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def check_model(cfg: Config) -> CheckResult:
    """The detector's model exists and its class map beside it parses and maps every class to a known category."""
    det = cfg.detector
    if not det.enabled:
        return CheckResult("OK", "model", "detection disabled (detector.enabled: false)")
    model = Path(det.model)
    if not model.exists():
        return CheckResult("FAIL", "model", f"{model} does not exist",
                           "fix detector.model (install.sh installs models to /opt/smartbin/models) or export one "
                           "with `smartbin-train`")
    size = _size(model)
    if size == 0:
        return CheckResult("FAIL", "model", f"{model} is empty", "copy the model file again")
    cmap = det.classmap or classmap_path_for(model)  # as the detector resolves it
    advice = "`smartbin-train` writes <model>.classes.yaml beside the model it exports; copy it along"
    try:
        doc = yaml.safe_load(cmap.read_text(encoding="utf-8"))
    except OSError as exc:
        return CheckResult("FAIL", "model", f"{model.name} ({size / 1e6:.1f} MB), but class map {cmap}: "
                                            f"{exc.strerror or exc}", advice)
    except yaml.YAMLError as exc:
        return CheckResult("FAIL", "model", f"class map {cmap} is not valid YAML: {exc}", advice)
    classes = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(classes, list) or not classes:
        return CheckResult("FAIL", "model", f"class map {cmap} has no `classes` list", advice)
    problems: list[str] = []
    categories: set[str] = set()
    for i, entry in enumerate(classes):
        if not isinstance(entry, dict) or not all(k in entry for k in ("index", "name", "category")):
            problems.append(f"classes[{i}] needs index, name and category")
            continue
        if entry["category"] not in WASTE_CATEGORIES:
            problems.append(f"class {entry['name']!r} maps to unknown category {entry['category']!r}")
        categories.add(str(entry["category"]))
    if problems:
        return CheckResult("FAIL", "model", f"class map {cmap}: {'; '.join(problems)}",
                           f"categories are {', '.join(WASTE_CATEGORIES)}; {advice}")
    missing = [c for c in WASTE_CATEGORIES if c not in categories]
    finding = (f"{model.name} ({size / 1e6:.1f} MB), class map {cmap.name}: {len(classes)} classes → "
               f"{len(categories)} categories")
    if missing:
        return CheckResult("WARN", "model", f"{finding}; no class for {', '.join(missing)}",
                           "those categories can only be reached as residual; retrain to cover them")
    return CheckResult("OK", "model", finding)


def check_signing(cfg: Config, base_dir: Path | None = None) -> CheckResult | None:
    """Whether requests can be signed (None on daemons without a `security` section)."""
    if getattr(cfg, "security", None) is None:
        return None
    secret, note = signing_secret(cfg, base_dir)
    mode = getattr(getattr(cfg, "security", None), "privileged", "hmac")
    if mode == "broker_acl":
        return CheckResult("OK", "signing", "privileged requests are left to the broker's ACL (security.privileged: "
                                            "broker_acl)" + ("; requests are signed anyway" if secret else ""))
    if note:
        return CheckResult("WARN", "signing", note, "run smartbinctl with sudo to sign privileged requests")
    if secret:
        return CheckResult("OK", "signing", "request secret readable: requests are signed (HMAC-SHA256)")
    return CheckResult("WARN", "signing", "no request secret configured: the daemon refuses every privileged request "
                                          "(route, model/reload, ...)",
                       "set security.hmac_secret_file to a root-only file holding `openssl rand -hex 32`, or "
                       "security.privileged: broker_acl")


RunFn = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)


def check_systemd_unit(unit: str = DEFAULT_UNIT, *, run: RunFn = _run) -> CheckResult:
    """`systemctl is-active` / `is-enabled` of the unit; no systemd or no unit is a WARN, not a crash."""
    name = unit if "." in unit else f"{unit}.service"
    try:
        active = run(["systemctl", "is-active", name])
        enabled = run(["systemctl", "is-enabled", name])
    except FileNotFoundError:
        return CheckResult("WARN", "systemd unit", "systemctl not found (no systemd here)",
                           "run the daemon by hand: smartbin-daemon run --config <file>")
    except subprocess.TimeoutExpired:
        return CheckResult("WARN", "systemd unit", "systemctl did not answer within 10 s", "`systemctl status " + name + "`")
    state = active.stdout.strip()
    enabled_state = enabled.stdout.strip()
    errors = (active.stderr + enabled.stderr).strip()
    if enabled_state == "not-found" or "No such file" in errors or "not found" in errors or "not loaded" in errors:
        return CheckResult("WARN", "systemd unit", f"{name} is not installed",
                           "install it with `sudo ./install.sh`, or run `smartbin-daemon run --config <file>` by hand")
    if "not been booted with systemd" in errors or "Failed to connect to bus" in errors:
        return CheckResult("WARN", "systemd unit", f"systemd is not running here (container?); {name} {enabled_state or '?'}",
                           "run the daemon by hand: smartbin-daemon run --config <file>")
    if state == "active":
        if enabled_state not in ("enabled", "static", "enabled-runtime", "alias", "indirect", "generated"):
            return CheckResult("WARN", "systemd unit", f"{name} active but {enabled_state or 'not enabled'}: it will not "
                                                       "start at boot", f"sudo systemctl enable {name}")
        return CheckResult("OK", "systemd unit", f"{name} active, {enabled_state}")
    if state in ("activating", "reloading", "deactivating"):
        return CheckResult("WARN", "systemd unit", f"{name} {state}", f"look again in a moment: `systemctl status {name}`")
    if state == "failed":
        return CheckResult("FAIL", "systemd unit", f"{name} failed ({enabled_state})",
                           f"`journalctl -u {unit} -n 30` says why (status 78 = bad config: run `smartbin-daemon "
                           f"check-config`); then `sudo systemctl restart {name}`")
    return CheckResult("FAIL", "systemd unit", f"{name} {state or 'unknown'} ({enabled_state or '?'})",
                       f"sudo systemctl start {name}" + ("" if enabled_state == "enabled" else f" && sudo systemctl enable {name}"))


def doctor_checks(config_path: str, *, host: str | None = None, port: int | None = None,
                  username: str | None = None, password: str | None = None,
                  timeout: float = DEFAULT_CONNECT_TIMEOUT_S, unit: str = DEFAULT_UNIT) -> Iterator[CheckResult]:
    """Every doctor check in order, each yielded as soon as it is done."""
    result, ctl = check_config(config_path)
    yield result
    if ctl is not None:
        cfg = ctl.cfg
        apply_overrides(cfg, host, port, username, password)
        yield check_serial_port(cfg)
        yield check_camera(cfg, ctl.base_dir)
        yield check_gpio(cfg)
        yield check_broker(cfg, timeout)
        yield check_daemon(cfg, timeout)
        yield check_disk(cfg.storage.path)
        yield check_model(cfg)
        signing = check_signing(cfg, ctl.base_dir)
        if signing is not None:
            yield signing
    yield check_systemd_unit(unit)


