"""Talking to the daemon: the config smartbinctl reads, the broker session, the state snapshot (broker or state file) and signed requests."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import queue
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
import yaml
from pydantic import SecretStr

from ..config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    resolve_secret_file,
)
from ..control import STATE_FILE
from ..mqtt.paho_client import build_client, set_nodelay
from ..runtime.auth import sign

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
COMPONENTS = ("daemon", "app", "mqtt", "health", "arduino", "gpio", "camera", "detector", "fill", "workflow", "alerts",
              "simulation")
"""Values of SMARTBIN_COMPONENT in the journal (see logs.component_of)."""

_SECRET_FILE_ERROR = re.compile(r"^(?P<key>mqtt\.password_file|security\.hmac_secret_file): cannot read")


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


