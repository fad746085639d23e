"""`smartbinctl`: the field technician's CLI — status, live events, requests, calibration, logs and doctor.

It talks to the daemon the way everyone else does, over MQTT (retained state, events, requests), with
the broker, device id, TLS and credentials of the daemon's own config file. When the broker cannot be
reached, `status` falls back to the state file the daemon writes under `storage.path`.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import grp
import json
import logging
import os
import pwd
import queue
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import paho.mqtt.client as paho
import yaml
from pydantic import SecretStr

from . import __version__
from .config import (
    WASTE_CATEGORIES,
    Config,
    ConfigError,
    classmap_path_for,
    load_config,
    parse_config,
    resolve_secret_file,
)
from .control import STATE_FILE
from .mqtt.client import build_client, set_nodelay
from .runtime.auth import sign
from .runtime.commands import COMMAND_RE

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/smartbin/config.yaml"
DEFAULT_UNIT = "smartbin"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
STATUS_WAIT_S = 1.5
"""How long `status` waits for the retained state messages (it stops earlier once they stop arriving)."""
RETAINED_QUIET_S = 0.4
EXIT_OK, EXIT_ERROR, EXIT_NO_ANSWER = 0, 1, 2
"""0: ok; 1: the daemon answered with an error (or doctor found a FAIL); 2: usage error, bad config, no answer."""
BAR_WIDTH = 20
COMPONENTS = ("daemon", "app", "mqtt", "health", "arduino", "gpio", "camera", "detector", "fill", "workflow",
              "simulation")
"""Values of SMARTBIN_COMPONENT in the journal (see logs.component_of)."""

_SECRET_FILE_ERROR = re.compile(r"^(?P<key>mqtt\.password_file|security\.hmac_secret_file): cannot read")


# --------------------------------------------------------------------------- config


@dataclass
class CtlConfig:
    """The daemon config as smartbinctl uses it, plus notes about what could not be read."""

    cfg: Config
    path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative paths in the config are taken from there."""
        return self.path.resolve().parent


def load_ctl_config(path: str | os.PathLike[str]) -> CtlConfig:
    """Load the daemon config; a secret file this user cannot read is left out with a note instead of failing."""
    p = Path(path)
    try:
        return CtlConfig(load_config(p), p)
    except ConfigError as exc:
        keys = [m.group("key") for e in exc.errors if (m := _SECRET_FILE_ERROR.match(e))]
        if not keys or len(keys) != len(exc.errors):
            raise
        errors = exc.errors
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    for key in keys:
        section, name = key.split(".", 1)
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    cfg = parse_config(data, str(p), p.resolve().parent)
    notes = [f"{e}; continuing without it (sudo may be needed to read it)" for e in errors]
    return CtlConfig(cfg, p, notes)


def apply_overrides(cfg: Config, host: str | None = None, port: int | None = None, username: str | None = None,
                    password: str | None = None) -> None:
    """`--host` / `--port` replace the broker address of the config, `--username` / `--password-file` its login."""
    if host:
        cfg.mqtt.host = host
    if port:
        cfg.mqtt.port = port
    if username:
        cfg.mqtt.username = username
        cfg.mqtt.password = SecretStr(password) if password is not None else None


def read_login(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """`--username` and its password: from `--password-file`, else asked for on a terminal, else none."""
    username = getattr(args, "username", None)
    if not username:
        return None, None
    password_file = getattr(args, "password_file", None)
    if password_file:
        return username, Path(password_file).read_text(encoding="utf-8").strip()
    if sys.stdin.isatty():
        return username, getpass.getpass(f"MQTT password for {username}: ")
    return username, None


def signing_secret(cfg: Config, base_dir: Path | None = None) -> tuple[str | None, str | None]:
    """The request-signing secret (`security.hmac_secret` or `security.hmac_secret_file`) and a note when unreadable.

    Read with getattr: configs without a `security` section (older daemons) simply have no secret.
    """
    security = getattr(cfg, "security", None)
    if security is None:
        return None, None
    value = getattr(security, "hmac_secret", None)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str) and value:
        return value, None
    secret_file = getattr(security, "hmac_secret_file", None)
    if not secret_file:
        return None, None
    path = resolve_secret_file(Path(secret_file))
    if not path.is_absolute() and not path.exists() and base_dir is not None:
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return None, f"cannot read security.hmac_secret_file {str(path)!r}: {exc.strerror or exc}; requests go unsigned"
    if not text:
        return None, f"security.hmac_secret_file {str(path)!r} is empty; requests go unsigned"
    return text, None


def signing_key(cfg: Config, base_dir: Path | None, wanted: str | None) -> tuple[str | None, str | None, str | None]:
    """(key id to name in `auth`, secret, note): `wanted` (--key / $SMARTBIN_KEY), else the single key the config has.

    The key id is left out (the first signature format) only when `hmac_secret(_file)` is the bin's one key.
    """
    security = getattr(cfg, "security", None)
    named = {k: v.secret.get_secret_value() for k, v in (getattr(security, "keys", None) or {}).items()
             if not v.revoked and v.secret is not None}
    legacy, note = signing_secret(cfg, base_dir)
    if wanted:
        if wanted == "default" and legacy:
            return ("default" if named else None), legacy, None
        if wanted in named:
            return wanted, named[wanted], None
        return None, None, f"no usable signing key {wanted!r} in the config; requests go unsigned"
    if legacy:
        return ("default" if named else None), legacy, note
    if len(named) == 1:
        key_id = next(iter(named))
        return key_id, named[key_id], note
    if named:
        return None, None, f"several signing keys ({', '.join(sorted(named))}): choose one with --key; requests go unsigned"
    return None, None, note


# --------------------------------------------------------------------------- MQTT


class BrokerError(Exception):
    """The broker could not be reached or refused us: `reason` in words, `advice` on what to do, `kind` for code."""

    def __init__(self, reason: str, advice: str = "", kind: str = "unreachable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.advice = advice
        self.kind = kind


@dataclass(frozen=True)
class Message:
    """One message received from the broker."""

    topic: str
    payload: bytes
    retain: bool


def connect_error(exc: BaseException, host: str, port: int, timeout: float) -> BrokerError:
    """Turn a socket/TLS exception from connecting into words and advice."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(f"TLS certificate of {where} not accepted: {exc.verify_message or exc}",
                           "check mqtt.tls.ca and that the broker's certificate names mqtt.host", "tls")
    if isinstance(exc, ssl.SSLError):
        return BrokerError(f"TLS handshake with {where} failed: {exc.reason or exc}",
                           "check mqtt.tls.* and that mqtt.port is the broker's TLS port (usually 8883)", "tls")
    if isinstance(exc, ConnectionRefusedError):
        return BrokerError(f"connection refused by {where}",
                           "is the broker running? (`systemctl status mosquitto`); check mqtt.host and mqtt.port",
                           "refused")
    if isinstance(exc, socket.gaierror):
        return BrokerError(f"cannot resolve {host!r}: {exc.strerror or exc}", "check mqtt.host and the DNS", "dns")
    if isinstance(exc, TimeoutError):
        return BrokerError(f"timed out connecting to {where} after {timeout:g}s",
                           "check the network path and firewall, mqtt.host and mqtt.port", "timeout")
    if isinstance(exc, OSError):
        return BrokerError(f"cannot connect to {where}: {exc.strerror or exc}",
                           "check the network, mqtt.host and mqtt.port", "unreachable")
    return BrokerError(f"cannot connect to {where}: {type(exc).__name__}: {exc}", "check mqtt.* in the config")


def connack_error(reason: Any, host: str, port: int, username: str | None = None) -> BrokerError:
    """Turn a refused CONNACK into words and advice (mosquitto answers `Not authorized` to a wrong password too)."""
    text = str(reason)
    if text == "Bad user name or password":
        return BrokerError(f"bad credentials: {host}:{port} rejected mqtt.username/password",
                           "check mqtt.username and mqtt.password (or mqtt.password_file)", "auth")
    if text == "Not authorized" and username is None:
        return BrokerError(f"not authorized: {host}:{port} refuses anonymous clients",
                           "set mqtt.username and mqtt.password (or mqtt.password_file)", "auth")
    if text == "Not authorized":
        return BrokerError(f"bad credentials or not authorized: {host}:{port} refused user {username!r}",
                           "check mqtt.username and mqtt.password (or mqtt.password_file), and the broker's "
                           "password file/ACL for that user", "auth")
    if text in ("Server unavailable", "Server busy"):
        return BrokerError(f"broker {host}:{port} is unavailable ({text})", "retry later; check the broker's log", "refused")
    return BrokerError(f"{host}:{port} refused the connection: {text}", "check the broker's log", "refused")


def make_client(cfg: Config, *, reconnect: bool = False) -> paho.Client:
    """A paho client with the config's protocol, credentials and TLS, and a client id of its own."""
    # Never the daemon's client id: the broker would disconnect the daemon to let us in.
    client = build_client(cfg.mqtt, f"smartbinctl-{cfg.device.id}-{uuid.uuid4().hex[:8]}", reconnect_on_failure=reconnect)
    client.reconnect_delay_set(1, 10)
    return client


class BrokerSession:
    """A short-lived connection to the broker: connect, subscribe (waiting for SUBACK), publish, read messages."""

    def __init__(self, cfg: Config, timeout: float = DEFAULT_CONNECT_TIMEOUT_S, *, reconnect: bool = False,
                 on_note: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.messages: queue.Queue[Message] = queue.Queue()
        self.client = make_client(cfg, reconnect=reconnect)
        self._on_note = on_note
        self._connack: Any = None
        self._connack_event = threading.Event()
        self._ever_connected = False
        self._closing = False
        self._topics: list[tuple[str, int]] = []
        self._subacks: dict[int, list[Any]] = {}
        self._pubacks: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._cb_connect
        self.client.on_publish = self._cb_publish
        self.client.on_disconnect = self._cb_disconnect
        self.client.on_message = self._cb_message
        self.client.on_subscribe = self._cb_subscribe

    def __enter__(self) -> BrokerSession:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cb_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connack = reason
        self._connack_event.set()
        if getattr(reason, "is_failure", False):
            return
        if self._ever_connected and self._on_note is not None:
            self._on_note("reconnected to the broker")
        self._ever_connected = True
        for topic, qos in self._topics:
            client.subscribe(topic, qos)

    def _cb_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._ever_connected and not self._closing and self._on_note is not None:
            self._on_note(f"connection to the broker lost ({reason}); reconnecting ...")

    def _cb_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put(Message(message.topic, bytes(message.payload), bool(message.retain)))

    def _cb_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(reasons)
            self._cond.notify_all()

    def _cb_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._pubacks[mid] = reason  # called before paho marks the message published

    def connect(self) -> None:
        """Connect and wait for the CONNACK; raise BrokerError saying why it failed."""
        m = self.cfg.mqtt
        self.client.connect_timeout = self.timeout
        try:
            if m.protocol == "5":
                self.client.connect(m.host, m.port, keepalive=30, clean_start=True)
            else:
                self.client.connect(m.host, m.port, keepalive=30)
        except Exception as exc:  # noqa: BLE001 - socket, TLS and paho errors all become a BrokerError
            raise connect_error(exc, m.host, m.port, self.timeout) from None
        set_nodelay(self.client)
        self.client.loop_start()
        if not self._connack_event.wait(self.timeout):
            self.close()
            raise BrokerError(f"no MQTT answer (CONNACK) from {m.host}:{m.port} within {self.timeout:g}s",
                              "is mqtt.port really an MQTT port (TLS vs. plain)? check the broker's log", "timeout")
        if getattr(self._connack, "is_failure", False):
            self.close()
            raise connack_error(self._connack, m.host, m.port, m.username)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK (so retained messages are on their way)."""
        self._topics.append((topic, qos))
        result, mid = self.client.subscribe(topic, qos)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"cannot subscribe to {topic}: {paho.error_string(result)}")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while mid not in self._subacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(f"no SUBACK for {topic} within {self.timeout:g}s", "check the broker's log", "timeout")
                self._cond.wait(left)
            reasons = self._subacks.pop(mid)
        for reason in reasons:
            if getattr(reason, "is_failure", False):
                raise BrokerError(f"the broker refused the subscription to {topic}: {reason}",
                                  "check the broker's ACL for mqtt.username", "denied")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """Publish and wait until the broker has it (PUBACK for QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"cannot publish to {topic}: {exc}") from None
        if not info.is_published():
            raise BrokerError(f"the broker did not acknowledge the publish to {topic} within {self.timeout:g}s",
                              "check the broker's ACL and log", "timeout")
        reason = self._pubacks.pop(info.mid, None)
        if getattr(reason, "is_failure", False):
            who = f"user {self.cfg.mqtt.username!r}" if self.cfg.mqtt.username else "anonymous clients"
            raise BrokerError(f"the broker refused the publish to {topic}: {reason}",
                              f"its ACL does not let {who} publish there; use an administrator's login "
                              "(--username/--password-file)", "denied")

    def get(self, timeout: float) -> Message | None:
        """The next message, or None after `timeout` seconds."""
        try:
            return self.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._closing = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


# --------------------------------------------------------------------------- collecting the state


@dataclass
class Snapshot:
    """Every component's state, where it came from, and what the reader should know about its freshness."""

    source: Literal["broker", "state_file"]
    components: dict[str, dict[str, Any]]
    availability: str | None = None
    broker: str = ""
    header: str = ""
    state_file: str | None = None
    written_at: str | None = None
    broker_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """What `status --json` prints."""
        out: dict[str, Any] = {"source": self.source, "broker": self.broker, "availability": self.availability}
        if self.source == "state_file":
            out.update({"state_file": self.state_file, "written_at": self.written_at, "broker_error": self.broker_error})
        out["components"] = self.components
        return out


def collect_from_broker(cfg: Config, timeout: float, wait_s: float = STATUS_WAIT_S) -> Snapshot:
    """Read the retained `<root>/<component>` states and the availability (raise BrokerError if unreachable)."""
    root = cfg.root_topic
    components: dict[str, dict[str, Any]] = {}
    availability: str | None = None
    with BrokerSession(cfg, timeout) as session:
        session.subscribe(f"{root}/+", qos=0)
        start = time.monotonic()
        deadline = start + wait_s
        last_retained: float | None = None
        while True:
            now = time.monotonic()
            if now >= deadline or (last_retained is not None and now - last_retained >= RETAINED_QUIET_S):
                break
            msg = session.get(min(0.1, deadline - now))
            if msg is None:
                continue
            if msg.retain:
                last_retained = time.monotonic()
            component = msg.topic[len(root) + 1:]
            if component == "availability":
                availability = msg.payload.decode("utf-8", "replace").strip()
                continue
            try:
                state = json.loads(msg.payload)
            except ValueError:
                continue
            if isinstance(state, dict):
                components[component] = state
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    return Snapshot("broker", components, availability, where,
                    header=f"live from broker {where} at {_fmt_time(time.time())}")


def read_state_file(cfg: Config, broker_error: str, now: float | None = None) -> Snapshot:
    """The daemon's local state file (written every 30 s and at shutdown); raise OSError/ValueError if unusable."""
    path = Path(cfg.storage.path) / STATE_FILE
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("components"), dict):
        raise ValueError(f"{path} does not hold a components object")
    written_at = str(doc.get("written_at") or "")
    stamp = _parse_iso(written_at)
    now = time.time() if now is None else now
    age = f"{max(0.0, now - stamp):.0f} s ago" if stamp is not None else "age unknown"
    header = f"{broker_error}: showing the local state file written at {written_at or '?'} ({age})"
    return Snapshot("state_file", doc["components"], None, f"{cfg.mqtt.host}:{cfg.mqtt.port}", header=header,
                    state_file=str(path), written_at=written_at, broker_error=broker_error)


def collect_snapshot(cfg: Config, timeout: float, wait_s: float = STATUS_WAIT_S) -> Snapshot:
    """From the broker if it answers and holds state; else from the local state file (raise OSError if neither)."""
    try:
        snap = collect_from_broker(cfg, timeout, wait_s)
    except BrokerError as exc:
        problem = f"broker unreachable ({exc.reason})"
    else:
        if snap.components:
            return snap
        problem = (f"no retained state under {cfg.root_topic}/ on {snap.broker} (availability: "
                   f"{snap.availability or 'none'}; wrong device.id, or the broker's ACL hides it from this user?)")
    return read_state_file(cfg, problem)


# --------------------------------------------------------------------------- rendering `status`


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_clock(ts: float | None) -> str:
    if ts is None:
        return "--:--:--"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%H:%M:%S")


def fmt_duration(seconds: Any) -> str:
    """`45s`, `12m 5s`, `3h 12m`, `2d 3h`."""
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _approx(seconds: float) -> str:
    if seconds < 3600:
        return f"~{max(1, round(seconds / 60))}min"
    if seconds < 48 * 3600:
        return f"~{round(seconds / 3600)}h"
    return f"~{round(seconds / 86400)}d"


def _num(value: Any, fmt: str = "{:.1f}", unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return fmt.format(value) + unit


def _dig(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def fill_bar(pct: Any, width: int = BAR_WIDTH) -> str:
    """`[#######.............]` for 35 %."""
    value = float(pct) if isinstance(pct, (int, float)) and not isinstance(pct, bool) else 0.0
    filled = max(0, min(width, round(value / 100.0 * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def compartment_line(cid: str, c: dict[str, Any], width: int = 0, level_width: int = 0) -> str:
    """`recycling  [#######.............]  35.2%  ok  12 items  full in ~3h (2026-11-22 14:05 UTC)`."""
    pct = c.get("fill_pct")
    level = str(c.get("level") or "unknown")
    items = c.get("items")
    number = f"{pct:5.1f}%" if isinstance(pct, (int, float)) and not isinstance(pct, bool) else "  n/a "
    parts = [f"{cid:<{width}}", f"{fill_bar(pct)} {number}", f"{level:<{level_width}}",
             f"{items if items is not None else '?'} items"]
    seconds = c.get("seconds_to_full")
    predicted = _parse_iso(c.get("predicted_full_at"))
    if level == "full" or c.get("full"):
        parts.append("FULL: empty it")
    elif isinstance(seconds, (int, float)) and predicted is not None:
        parts.append(f"full in {_approx(float(seconds))} ({_fmt_time(predicted)})")
    else:
        parts.append("no forecast yet")
    return "  ".join(parts)


def derive_problems(components: dict[str, dict[str, Any]], availability: str | None) -> list[str]:
    """Active alerts and last errors that can be read off the states, most severe first."""
    out: list[tuple[int, str]] = []

    def add(severity: str, source: str, text: str) -> None:
        out.append(({"critical": 0, "warning": 1, "info": 2}[severity], f"{severity:<8} {source}: {text}"))

    if availability == "offline":
        add("critical", "daemon", "availability is offline: the daemon is stopped or lost the broker; "
                                  "the states below are the last it published")
    daemon = components.get("daemon") or {}
    raw_workers = daemon.get("workers")
    workers: dict[str, Any] = raw_workers if isinstance(raw_workers, dict) else {}
    for name in daemon.get("failed_workers") or []:
        add("critical", "daemon", f"worker {name} failed: {_dig(workers, name, 'last_error') or 'no error recorded'}")
    for name, w in sorted(workers.items()):
        if not isinstance(w, dict) or w.get("status") == "failed":
            continue
        if w.get("status") not in ("running", None):
            add("warning", "daemon", f"worker {name} is {w.get('status')}: {w.get('last_error') or ''}".rstrip(": "))
        elif w.get("restarts"):
            add("info", "daemon", f"worker {name} restarted {w['restarts']}x (last error: {w.get('last_error')})")
    if daemon.get("restart_required"):
        add("warning", "daemon", f"config changed, restart needed for: {', '.join(daemon['restart_required'])}")
    mqtt = components.get("mqtt") or {}
    if mqtt and mqtt.get("status") not in ("connected", None):
        add("critical", "mqtt", f"{mqtt.get('status')}: {mqtt.get('last_error') or 'no error recorded'}")
    if _dig(mqtt, "outbox", "dropped"):
        add("warning", "mqtt", f"{mqtt['outbox']['dropped']} event(s) dropped from the outbox")
    arduino = components.get("arduino") or {}
    if arduino:
        if arduino.get("status") != "connected":
            add("critical", "arduino", f"link {arduino.get('status')}: {arduino.get('last_error') or 'no error recorded'}")
        elif arduino.get("last_error"):
            add("info", "arduino", f"last error: {arduino['last_error']}")
        if arduino.get("fault"):
            add("warning", "arduino", f"MCU reports fault {arduino['fault']}")
    camera = components.get("camera") or {}
    if camera:
        if camera.get("unavailable_alert") or camera.get("status") not in ("connected", None):
            add("critical", "camera", f"{camera.get('status')}: {camera.get('last_error') or 'no error recorded'}")
        elif camera.get("last_error"):
            add("info", "camera", f"last error: {camera['last_error']} (at {camera.get('last_error_at') or '?'})")
    detector = components.get("detector") or {}
    for warning in detector.get("warnings") or []:
        add("warning", "detector", str(warning))
    if _dig(detector, "evidence", "last_error"):
        add("warning", "detector", f"evidence: {detector['evidence']['last_error']}")
    if detector and detector.get("enabled") is False:
        add("info", "detector", "detection is switched off")
    fill = components.get("fill") or {}
    for cid, c in (fill.get("compartments") or {}).items():
        if isinstance(c, dict) and (c.get("level") == "full" or c.get("full")):
            add("warning", "fill", f"compartment_full_{cid}: {c.get('name') or cid} is full ({_num(c.get('fill_pct'))}%)")
    workflow = components.get("workflow") or {}
    if isinstance(workflow.get("error"), dict):
        e = workflow["error"]
        add("critical", "workflow", f"{e.get('code')}: {e.get('message')} (since {e.get('at')}; lid locked until "
                                    "`smartbinctl request workflow/clear_error`)")
    if isinstance(workflow.get("blocked"), dict):
        b = workflow["blocked"]
        add("critical", "workflow", f"refused_{b.get('code')}: {b.get('message')} (since {b.get('at')})")
    if workflow.get("vision") not in ("ok", None):
        add("warning", "workflow", f"vision down: {workflow['vision']} (policy {workflow.get('degraded_policy')})")
    if workflow.get("maintenance"):
        add("info", "workflow", "maintenance mode is on (sorting paused)")
    health = components.get("health") or {}
    for condition in health.get("conditions") or []:
        add("critical" if health.get("status") == "critical" else "warning", "health", str(condition))
    if _dig(components.get("gpio"), "counters", "errors"):
        add("warning", "gpio", f"{components['gpio']['counters']['errors']} device error(s)")
    return [text for _rank, text in sorted(out, key=lambda t: t[0])]


def render_status(snap: Snapshot, cfg: Config) -> str:
    """The human-readable `status` screen."""
    c = snap.components
    lines: list[str] = []
    if snap.source == "state_file":
        lines.append(snap.header)
        lines.append("")
    lines.append(f"SmartBin {cfg.device.id} ({cfg.root_topic})" + (f" — {snap.header}" if snap.source == "broker" else ""))

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<13} {text}")

    daemon = c.get("daemon")
    if daemon:
        workers = daemon.get("workers") or {}
        running = sum(1 for w in workers.values() if isinstance(w, dict) and w.get("status") == "running")
        failed = daemon.get("failed_workers") or []
        started = _parse_iso(daemon.get("started_at"))
        uptime = daemon.get("uptime_s")
        written = _parse_iso(snap.written_at)
        if snap.source == "broker" and snap.availability == "online" and started is not None:
            uptime = time.time() - started  # the retained state may be up to mqtt.state_interval_s old
        elif snap.source == "state_file" and started is not None and written is not None:
            uptime = written - started  # up that long when the file was written
        row("daemon", f"v{daemon.get('version', '?')} · up {fmt_duration(uptime)} (since "
                      f"{_fmt_time(started)}) · pid {daemon.get('pid', '?')} · {running}/{len(workers)} workers running · "
                      f"failed: {', '.join(failed) if failed else 'none'}")
    else:
        row("daemon", "no state published")
    if snap.source == "broker":
        avail = snap.availability or "unknown (nothing retained)"
        row("availability", avail + (" (daemon stopped or disconnected)" if avail == "offline" else ""))
    else:
        row("availability", "unknown (broker unreachable)")
    mqtt = c.get("mqtt")
    if mqtt:
        ob = mqtt.get("outbox") or {}
        row("mqtt", f"{mqtt.get('status')} to {mqtt.get('broker')} · outbox {ob.get('pending', '?')} pending, "
                    f"{ob.get('inflight', 0)} in flight, {ob.get('dropped', 0)} dropped")
    arduino = c.get("arduino")
    if arduino:
        cnt = arduino.get("counters") or {}
        errors = (cnt.get("checksum_errors", 0) or 0) + (cnt.get("bad_frames", 0) or 0)
        fw = f"{arduino.get('firmware') or '?'} {arduino.get('firmware_version') or ''}".strip()
        row("arduino", f"{arduino.get('status')} · port {arduino.get('port') or 'none'} · firmware {fw} "
                       f"(protocol {arduino.get('protocol', '?')}) · rtt {_num(arduino.get('rtt_ms'), unit=' ms')} · "
                       f"errors {errors} frame, {cnt.get('timeouts', 0)} timeouts, {cnt.get('retries', 0)} retries, "
                       f"{cnt.get('reconnects', 0)} reconnects")
    else:
        row("arduino", "not reported (disabled?)")
    camera = c.get("camera")
    if camera:
        row("camera", f"{camera.get('status')} · {_num(camera.get('fps'))} fps (target {_num(camera.get('target_fps'))}) · "
                      f"{camera.get('resolution') or '?'} · {camera.get('kind') or '?'}: {camera.get('source') or '?'}")
    else:
        row("camera", "not reported (disabled?)")
    detector = c.get("detector")
    if detector:
        last = detector.get("last") or {}
        last_text = f" · last: {last.get('category')}{' (uncertain)' if last.get('uncertain') else ''}" if last else ""
        row("detector", f"{detector.get('model') or 'no model'} on {detector.get('device') or '?'} · "
                        f"{'on' if detector.get('enabled') else 'OFF'} · gate {detector.get('gate')}: "
                        f"{detector.get('gate_state')} · inference p50 {_num(_dig(detector, 'inference_ms', 'p50'), unit=' ms')} "
                        f"(p95 {_num(_dig(detector, 'inference_ms', 'p95'), unit=' ms')}) · "
                        f"{detector.get('decisions', 0)} decisions{last_text}")
    else:
        row("detector", "not reported (disabled?)")
    workflow = c.get("workflow")
    if workflow:
        counts = workflow.get("counts") or {}
        item = workflow.get("last_item") or {}
        last = ""
        if item and item.get("outcome") == "sorted":
            total = _dig(item, "latency", "total_ms")
            last = (f" · last item: {item.get('category')} → {item.get('compartment')}"
                    f"{' (' + _num(total, '{:.0f}', ' ms') + ')' if isinstance(total, (int, float)) else ''}")
        elif item:
            last = f" · last item: {item.get('category')} {item.get('outcome')}"
        row("sorting", f"{workflow.get('state')}{' (maintenance)' if workflow.get('maintenance') else ''} · "
                       f"{counts.get('sorted', 0)} sorted, {counts.get('refused', 0)} refused, {counts.get('failed', 0)} failed"
                       f"{last}")
        if isinstance(workflow.get("error"), dict):
            row("", f"ERROR {workflow['error'].get('code')}: {workflow['error'].get('message')}")
        if isinstance(workflow.get("blocked"), dict):
            row("", f"BLOCKED {workflow['blocked'].get('code')}: {workflow['blocked'].get('message')}")
    else:
        row("sorting", "not reported (bins disabled?)")
    compartments = (c.get("fill") or {}).get("compartments") or {}
    if compartments:
        lines.append("compartments")
        width = max(len(cid) for cid in compartments)
        level_width = max(len(str(comp.get("level") or "unknown")) for comp in compartments.values() if isinstance(comp, dict))
        for cid, comp in compartments.items():
            if isinstance(comp, dict):
                lines.append("  " + compartment_line(cid, comp, width, level_width))
    health = c.get("health")
    if health:
        temp = _dig(health, "temperatures", "cpu_c")
        row("health", f"{health.get('status')} · score {health.get('score', '?')} · cpu {_num(_dig(health, 'cpu', 'percent'), unit='%')}"
                      f" · ram {_num(_dig(health, 'memory', 'percent'), unit='%')} · disk "
                      f"{_num(_dig(health, 'disk', 'storage', 'percent'), unit='%')} · temp {_num(temp, unit=' °C')}")
    else:
        row("health", "not reported (health monitor disabled?)")
    problems = derive_problems(c, snap.availability)
    lines.append("errors/alerts" + ("  none" if not problems else ""))
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


# --------------------------------------------------------------------------- events (`watch`)


def _latency(d: dict[str, Any]) -> str:
    lat = d.get("latency") or {}
    total = lat.get("total_ms")
    if not isinstance(total, (int, float)):
        return ""
    return f"  {total:.0f} ms (decision {_num(lat.get('presence_to_decision_ms'), '{:.0f}')} ms)"


def format_event(envelope: dict[str, Any]) -> str:
    """One line for one event: time, type and the fields that matter for it."""
    etype = str(envelope.get("type") or "?")
    d = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    assert isinstance(d, dict)
    clock = _fmt_clock(_parse_iso(envelope.get("ts")))
    if etype == "item_sorted":
        conf = d.get("confidence")
        text = (f"{d.get('category')} → {d.get('compartment')} (flap {d.get('flap')})"
                f"{_latency(d)}  {d.get('class_name') or '-'} {_num(conf, '{:.2f}')}"
                f"{' uncertain' if d.get('uncertain') else ''}  confirmed: {d.get('confirmation')}  item {d.get('item_id')}")
    elif etype == "item_refused":
        text = f"{d.get('category')} REFUSED ({d.get('code')}): {d.get('error')}  item {d.get('item_id')}"
    elif etype == "item_failed":
        text = f"{d.get('category')} → {d.get('compartment')} FAILED: {d.get('error')}  item {d.get('item_id')}"
    elif etype == "item_interrupted":
        text = (f"item {d.get('item_id')} interrupted in state {d.get('state')} "
                f"({d.get('category')} → {d.get('compartment')}) {d.get('note') or ''}").rstrip()
    elif etype == "alert":
        text = (f"{str(d.get('severity') or '?').upper()} {d.get('code')} {d.get('message')} "
                f"{'ACTIVE' if d.get('active') else 'cleared'} ({d.get('source')})")
    elif etype == "bin_level":
        text = (f"{d.get('compartment')} ({d.get('name')}): {d.get('previous')} → {d.get('level')} "
                f"at {_num(d.get('fill_pct'))}%")
    elif etype == "bin_emptied":
        text = (f"{d.get('compartment')} ({d.get('name')}) emptied: {d.get('items')} items, peak "
                f"{_num(d.get('peak_fill_pct'))}%, now {_num(d.get('fill_pct'))}% ({d.get('source')})")
    elif etype == "detection":
        text = (f"{d.get('category')} (class {d.get('class_name') or '-'}, {_num(d.get('confidence'), '{:.2f}')}, margin "
                f"{_num(d.get('margin'), '{:.2f}')}) → {d.get('compartment')}"
                f"{'  uncertain: ' + str(d.get('reason')) if d.get('uncertain') else ''}  item {d.get('item_id')}")
    elif etype == "item_present":
        text = f"item present ({d.get('source')})"
    elif etype in ("door_opened", "door_closed"):
        text = f"{etype.replace('_', ' ')} ({d.get('source')})"
    elif etype == "button_pressed":
        text = f"{d.get('kind')} press, {_num(d.get('duration_s'))} s"
    elif etype == "maintenance":
        text = f"maintenance {'ON' if d.get('on') else 'off'} ({d.get('reason')})"
    elif etype == "config_changed":
        text = (f"applied: {', '.join(d.get('applied') or []) or '-'}; restart required: "
                f"{', '.join(d.get('restart_required') or []) or '-'}")
    else:
        text = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in list(d.items())[:8])
    if d.get("maintenance") and etype != "maintenance":
        text += "  [maintenance]"
    return f"{clock}  {etype:<16} {text}"


# --------------------------------------------------------------------------- requests


@dataclass
class Answer:
    """The outcome of a request: the response body, or why there is none."""

    response: dict[str, Any] | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """The daemon answered `status: ok`."""
        return self.response is not None and self.response.get("status") == "ok"


def build_request(cfg: Config, command: str, args: dict[str, Any], secret: str | None,
                  transaction: str | None = None, key: str | None = None) -> dict[str, Any]:
    """The request payload: transaction, args and, when a secret is readable, the HMAC `auth` object."""
    body: dict[str, Any] = {"transaction": transaction or uuid.uuid4().hex, "args": args}
    if secret:
        body["auth"] = sign(secret, cfg.device.id, command, args, key=key)
    return body


def send_request(cfg: Config, command: str, args: dict[str, Any], *, secret: str | None, connect_timeout: float,
                 answer_timeout: float, key: str | None = None) -> Answer:
    """Publish `<root>/request/<command>` and wait for the response with our transaction (raise BrokerError)."""
    root = cfg.root_topic
    body = build_request(cfg, command, args, secret, key=key)
    availability: str | None = None
    with BrokerSession(cfg, connect_timeout) as session:
        session.subscribe(f"{root}/response/{command}")
        session.subscribe(f"{root}/availability")
        session.publish(f"{root}/request/{command}", json.dumps(body, separators=(",", ":")))
        deadline = time.monotonic() + answer_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = session.get(min(0.2, left))
            if msg is None:
                continue
            if msg.topic == f"{root}/availability":
                availability = msg.payload.decode("utf-8", "replace").strip()
                continue
            try:
                response = json.loads(msg.payload)
            except ValueError:
                continue
            if isinstance(response, dict) and response.get("transaction") == body["transaction"]:
                return Answer(response)
    why = f"no answer to {command!r} within {answer_timeout:g}s"
    if availability == "offline":
        why += " — the daemon is offline (availability: offline); check `systemctl status smartbin`"
    elif availability is None:
        why += f" — nothing retained on {root}/availability: is device.id right and has the daemon ever run?"
    else:
        why += " — the daemon is online but did not answer; see `smartbinctl logs mqtt`"
    return Answer(None, why)


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


# --------------------------------------------------------------------------- journalctl


def journalctl_command(*, unit: str = DEFAULT_UNIT, component: str | None = None, follow: bool = False,
                       lines: int | None = None, event: str | None = None, item: str | None = None,
                       since: str | None = None, until: str | None = None, priority: str | None = None,
                       output: str | None = None) -> list[str]:
    """The journalctl command line for a filtered view of the daemon's log."""
    cmd = ["journalctl", "-u", unit]
    if follow:
        cmd.append("-f")
    if lines is not None:
        cmd += ["-n", str(lines)]
    if since:
        cmd += ["--since", since]
    if until:
        cmd += ["--until", until]
    if priority:
        cmd += ["-p", priority]
    if output:
        cmd += ["-o", output]
    if component:
        cmd.append(f"SMARTBIN_COMPONENT={component}")
    if event:
        cmd.append(f"SMARTBIN_EVENT={event}")
    if item:
        cmd.append(f"SMARTBIN_ITEM={item}")
    return cmd


# --------------------------------------------------------------------------- commands


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> CtlConfig | None:
    try:
        ctl = load_ctl_config(args.config)
    except ConfigError as exc:
        _err(f"smartbinctl: cannot use the config {exc.path}:")
        for line in exc.errors:
            _err(f"  - {line}")
        return None
    for note in ctl.notes:
        _err(f"note: {note}")
    try:
        username, password = read_login(args)
    except OSError as exc:
        _err(f"smartbinctl: cannot read --password-file: {exc.strerror or exc}")
        return None
    apply_overrides(ctl.cfg, args.host, args.port, username, password)
    return ctl


def _connect_timeout(args: argparse.Namespace) -> float:
    return float(args.timeout) if args.timeout else DEFAULT_CONNECT_TIMEOUT_S


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status screen (or the raw states with --json)."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    try:
        snap = collect_snapshot(ctl.cfg, _connect_timeout(args), args.wait)
    except (OSError, ValueError) as exc:
        _err(f"smartbinctl: the broker gave no state and the local state file is unusable: {exc}")
        _err(f"(the daemon writes {Path(ctl.cfg.storage.path) / STATE_FILE} every 30 s; reading it may need sudo)")
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps(snap.as_json(), indent=2, default=str))
    else:
        print(render_status(snap, ctl.cfg))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Print live events, one line each, until Ctrl-C (or SIGTERM)."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    root = ctl.cfg.root_topic
    types = set(args.type or [])
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGINT explicitly too: a shell starting us in the background may have set it to "ignore".
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    session = BrokerSession(ctl.cfg, _connect_timeout(args), reconnect=True, on_note=lambda t: _err(f"note: {t}"))
    try:
        session.connect()
        session.subscribe(f"{root}/event/#")
    except BrokerError as exc:
        session.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _err(f"smartbinctl: {exc.reason}" + (f" — {exc.advice}" if exc.advice else ""))
        return EXIT_NO_ANSWER
    if not args.raw:
        _err(f"watching {root}/event/# on {ctl.cfg.mqtt.host}:{ctl.cfg.mqtt.port} (times UTC; Ctrl-C to stop)")
    try:
        while not stop.is_set():
            msg = session.get(0.2)
            if msg is None:
                continue
            try:
                envelope = json.loads(msg.payload)
            except ValueError:
                continue
            if not isinstance(envelope, dict):
                continue
            etype = str(envelope.get("type") or msg.topic.rsplit("/", 1)[-1])
            if types and etype not in types:
                continue
            if args.raw:
                print(json.dumps(envelope, separators=(",", ":"), default=str), flush=True)
            else:
                print(format_event(envelope), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _parse_args_json(text: str | None) -> dict[str, Any] | None:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        _err(f"smartbinctl: the args are not valid JSON ({exc}); e.g. '{{\"compartment\": 1}}'")
        return None
    if not isinstance(value, dict):
        _err(f"smartbinctl: the args must be a JSON object, e.g. '{{\"compartment\": 1}}', not {type(value).__name__}")
        return None
    return value


def _request(args: argparse.Namespace, ctl: CtlConfig, command: str, payload: dict[str, Any]) -> Answer | None:
    key, secret, note = signing_key(ctl.cfg, ctl.base_dir, getattr(args, "key", None) or os.environ.get("SMARTBIN_KEY"))
    if note:
        _err(f"note: {note}")
    answer_timeout = float(args.timeout) if args.timeout else ctl.cfg.mqtt.request_timeout_s + 2.0
    try:
        return send_request(ctl.cfg, command, payload, secret=secret, connect_timeout=_connect_timeout(args),
                            answer_timeout=answer_timeout, key=key)
    except BrokerError as exc:
        _err(f"smartbinctl: {exc.reason}" + (f" — {exc.advice}" if exc.advice else ""))
        return None


def cmd_request(args: argparse.Namespace) -> int:
    """Send one request and print the response."""
    if not COMMAND_RE.match(args.command):
        _err(f"smartbinctl: {args.command!r} is not a command name (e.g. ping, route, bin/calibrate; "
             "`smartbinctl request help` lists them)")
        return EXIT_NO_ANSWER
    payload = _parse_args_json(args.args)
    if payload is None:
        return EXIT_NO_ANSWER
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    answer = _request(args, ctl, args.command, payload)
    if answer is None:
        return EXIT_NO_ANSWER
    if answer.response is None:
        _err(f"smartbinctl: {answer.problem}")
        return EXIT_NO_ANSWER
    print(json.dumps(answer.response, indent=2, default=str))
    if not answer.ok:
        _err(f"error: {answer.response.get('error')}")
        return EXIT_ERROR
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`bin/calibrate` for one compartment, the result in words."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    payload: dict[str, Any] = {"compartment": args.compartment, "point": args.point}
    if args.distance_mm is not None:
        payload["distance_mm"] = args.distance_mm
    answer = _request(args, ctl, "bin/calibrate", payload)
    if answer is None:
        return EXIT_NO_ANSWER
    if answer.response is None:
        _err(f"smartbinctl: {answer.problem}")
        return EXIT_NO_ANSWER
    if not answer.ok:
        _err(f"calibration of {args.compartment} failed: {answer.response.get('error')}")
        return EXIT_ERROR
    data = answer.response.get("data") or {}
    empty, full = data.get("empty_mm"), data.get("full_mm")
    taken = f"{args.distance_mm:g} mm as given" if args.distance_mm is not None else "the current sensor reading"
    span = f"; usable height {empty - full:.1f} mm" if isinstance(empty, (int, float)) and isinstance(full, (int, float)) else ""
    print(f"{data.get('compartment', args.compartment)}: {args.point} point set from {taken}. "
          f"Calibration now: empty = {_num(empty, unit=' mm')}, full = {_num(full, unit=' mm')}{span}. "
          "Saved on the bin; it overrides the config from now on.")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Run (exec) journalctl with the SMARTBIN_* filters, or print the command with --dry-run."""
    cmd = journalctl_command(unit=args.unit, component=args.component, follow=args.follow, lines=args.lines,
                             event=args.event, item=args.item, since=args.since, until=args.until,
                             priority=args.priority, output=args.output)
    if args.component and args.component not in COMPONENTS:
        _err(f"note: {args.component!r} is not one of the usual components ({', '.join(COMPONENTS)}); filtering anyway")
    if args.dry_run:
        print(shlex.join(cmd))
        return EXIT_OK
    if shutil.which(cmd[0]) is None:
        _err("smartbinctl: journalctl not found (no systemd here?); this is the command:\n  " + shlex.join(cmd))
        return EXIT_NO_ANSWER
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return EXIT_OK  # not reached


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run every check, one line each; exit 1 when any FAILs."""
    try:
        username, password = read_login(args)
    except OSError as exc:
        _err(f"smartbinctl: cannot read --password-file: {exc.strerror or exc}")
        return EXIT_NO_ANSWER
    failed = False
    for result in doctor_checks(args.config, host=args.host, port=args.port, username=username, password=password,
                                timeout=_connect_timeout(args), unit=args.unit):
        print(result.line(), flush=True)
        failed = failed or result.status == "FAIL"
    return EXIT_ERROR if failed else EXIT_OK


# --------------------------------------------------------------------------- argument parsing


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Global options; on subcommands they default to SUPPRESS so `smartbinctl status --config X` works too."""
    p = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--config", "-c", default=default(DEFAULT_CONFIG),
                   help=f"the daemon's config file (default {DEFAULT_CONFIG})")
    p.add_argument("--host", default=default(None), help="broker host (overrides mqtt.host)")
    p.add_argument("--port", type=int, default=default(None), help="broker port (overrides mqtt.port)")
    p.add_argument("--username", "-u", default=default(None),
                   help="log in to the broker as this user instead of mqtt.username (e.g. an administrator the "
                        "broker's ACL lets send requests); the password comes from --password-file or is asked for")
    p.add_argument("--password-file", default=default(None), help="file holding the --username's password")
    p.add_argument("--timeout", type=float, default=default(None),
                   help=f"seconds to wait for the broker (default {DEFAULT_CONNECT_TIMEOUT_S:g}) and for an answer "
                        "(default mqtt.request_timeout_s + 2)")
    p.add_argument("--key", default=default(None),
                   help="the security.keys id to sign requests with (default: $SMARTBIN_KEY, else the config's only key)")
    p.add_argument("--verbose", "-v", action="store_true", default=default(False), help="debug logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The smartbinctl command line."""
    parser = argparse.ArgumentParser(
        prog="smartbinctl", parents=[_common(False)],
        description="SmartBin technician CLI: talks to the daemon over MQTT using the daemon's own config file.",
        epilog="exit codes: 0 ok; 1 the daemon answered with an error / doctor found a FAIL; "
               "2 usage or config error, broker unreachable, no answer")
    parser.add_argument("--version", action="version", version=f"smartbinctl {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    common = _common(True)

    p = sub.add_parser("status", parents=[common], help="one screen: daemon, links, sorting, compartments, health, errors")
    p.add_argument("--json", action="store_true", help="print the raw collected states as JSON")
    p.add_argument("--wait", type=float, default=STATUS_WAIT_S, help="seconds to wait for retained states (default 1.5)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", parents=[common], help="live events, one line each (Ctrl-C to stop)")
    p.add_argument("--raw", action="store_true", help="print each event's JSON envelope")
    p.add_argument("--type", action="append", metavar="TYPE", help="only this event type (repeatable)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("request", parents=[common], help="send a request, print the response",
                       description="Send <root>/request/<command> and print the response. Exit 0 on status ok, "
                                   "1 on an error response, 2 on no answer or a usage error.")
    p.add_argument("command", help="e.g. ping, status, help, route, bin/calibrate, workflow/clear_error")
    p.add_argument("args", nargs="?", help="the args as a JSON object, e.g. '{\"compartment\": 1}'")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("calibrate", parents=[common], help="set a compartment's empty or full distance (bin/calibrate)")
    p.add_argument("compartment", help="compartment id, e.g. recycling")
    p.add_argument("point", choices=("empty", "full"), help="which calibration point the compartment is at now")
    p.add_argument("--distance-mm", type=float, help="use this distance instead of the current sensor reading")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("logs", parents=[common], help="journalctl -u smartbin with SMARTBIN_* filters")
    p.add_argument("component", nargs="?", help=f"one component: {', '.join(COMPONENTS)}")
    p.add_argument("-f", "--follow", action="store_true", help="follow")
    p.add_argument("-n", "--lines", type=int, help="last N lines")
    p.add_argument("--event", help="a SMARTBIN_EVENT id, e.g. worker_crashed, item_sorted")
    p.add_argument("--item", help="one item's id (SMARTBIN_ITEM)")
    p.add_argument("--since", help="journalctl --since, e.g. '1 hour ago', today, '2026-11-21 10:00'")
    p.add_argument("--until", help="journalctl --until")
    p.add_argument("-p", "--priority", help="journalctl -p, e.g. warning")
    p.add_argument("-o", "--output", help="journalctl -o, e.g. verbose, json-pretty")
    p.add_argument("--unit", default=DEFAULT_UNIT, help=f"systemd unit (default {DEFAULT_UNIT})")
    p.add_argument("--dry-run", action="store_true", help="print the journalctl command instead of running it")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("doctor", parents=[common], help="check config, devices, broker, disk, model and the unit")
    p.add_argument("--unit", default=DEFAULT_UNIT, help=f"systemd unit (default {DEFAULT_UNIT})")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit after `| head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
