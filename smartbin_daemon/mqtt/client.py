"""The MQTT worker: the only code that talks to the broker.

It drives paho's network loop from its own thread, so connecting, backoff, publishing, request
routing and outbox replay all happen in one place, in order. paho callbacks only put a message on
this worker's inbox; nothing is handled inside them.
"""

from __future__ import annotations

import json
import logging
import select
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..clock import iso_utc
from ..config import Config
from ..logs import ev
from ..runtime.auth import AuthError, Verifier
from ..runtime.backoff import RetrySchedule
from ..runtime.bus import (
    ACL,
    SIGNED,
    UNSIGNED,
    BinaryPublish,
    Bus,
    Discovery,
    Entity,
    EventsPending,
    Request,
    Response,
    StateUpdate,
)
from ..runtime.commands import ParsedRequest, RateLimiter, RequestError, RequestRegistry, valid_command
from ..runtime.status import AUTH_FAILED, CONNECTED, CONNECTING, DISCONNECTED
from ..runtime.wake import WakePipe
from ..runtime.worker import Worker
from ..states.mqtt import MqttState, OutboxCounts
from . import discovery as disco
from .discovery import Topics
from .discovery_ledger import DiscoveryLedger
from .outbox import Backlog, Outbox
from .paho_client import build_client, set_nodelay

logger = logging.getLogger(__name__)

LOOP_TIMEOUT_S = 0.05
DISCOVERY_SETTLE_S = 15.0
"""After the first connection, how long every worker has to announce its entities before the discovery configs a
previous run left and this run has not published are cleared (see discovery_ledger.py)."""

# CONNACK reason codes that mean "your credentials/identity are wrong": retry slowly.
_AUTH_REASONS = {"Bad user name or password", "Not authorized", "Client identifier not valid", "Banned"}


# --------------------------------------------------------------------------- inbox messages from callbacks


@dataclass(frozen=True)
class _Connack:
    reason: str
    failed: bool


@dataclass(frozen=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


@dataclass(frozen=True)
class _Published:
    mid: int
    reason: str
    failed: bool


@dataclass
class _Pending:
    command: str
    transaction: Any
    deadline: float
    response_topic: str | None
    correlation: bytes | None


def _short(value: Any, limit: int = 64) -> str:
    """A requester's value for a log line: repr, cut short (no line breaks from the payload)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Counters:
    connects: int = 0
    disconnects: int = 0
    requests: int = 0
    request_errors: int = 0
    unauthorized: int = 0
    rate_limited: int = 0
    privileged: dict[str, int] = field(default_factory=dict)
    """Accepted privileged requests by signing key (or `acl`)."""
    events_sent: int = 0
    events_acked: int = 0
    events_rejected: int = 0
    last_error: str | None = None
    connected_since: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")


class MqttWorker(Worker):
    """Connection, availability/LWT, retained state, durable events, requests and HA discovery."""

    critical = True

    def __init__(self, bus: Bus, cfg: Config, outbox: Outbox, registry: RequestRegistry, *, name: str = "mqtt") -> None:
        super().__init__(
            name, bus, tick_s=LOOP_TIMEOUT_S,
            inbox=(StateUpdate, EventsPending, Discovery, Response, BinaryPublish), inbox_size=5000,
        )
        self.cfg = cfg
        self.outbox = outbox
        self.registry = registry
        self.topics = Topics.from_config(cfg)
        self._client: paho.Client | None = None
        self.status = DISCONNECTED
        self._retry = RetrySchedule(cfg.mqtt.reconnect.min_s, cfg.mqtt.reconnect.max_s, self.clock)
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._acked: list[int] = []  # seqs PUBACKed during this inbox drain, forgotten together at its end
        self._last_sent_seq = 0
        self._pending: dict[str, _Pending] = {}
        self._discovery = DiscoveryLedger(self.outbox, DISCOVERY_SETTLE_S, self.clock)
        self._binary: dict[str, BinaryPublish] = {}  # latest retained binary payloads, republished on reconnect
        self._last_state_publish = 0.0
        self._last_own_state: dict[str, Any] | None = None
        self._last_own_state_at = 0.0
        self._last_prune = 0.0
        self._connect_deadline = 0.0
        self.counters = _Counters()
        ob = cfg.mqtt.outbox
        self._backlog = Backlog(min(ob.alert_events, ob.max_events), ob.alert_age_min * 60)
        sec = cfg.security
        keys = sec.signing_keys()
        self.verifier: Verifier | None = None
        if keys or sec.revoked_keys():
            # not_before: a request signed before this worker existed may already have been seen by its predecessor
            self.verifier = Verifier(keys, cfg.device.id, revoked=sec.revoked_keys(), max_skew_s=sec.max_skew_s,
                                     not_before=time.time())
        self.limiter = RateLimiter(sec.rate_limit_per_min, sec.privileged_rate_limit_per_min)
        self._loop_thread: int | None = None
        self._wake = WakePipe()

    # -- lifecycle ----------------------------------------------------------------

    def setup(self) -> None:
        self.status = DISCONNECTED
        self._client = None
        self._inflight.clear()
        self._last_sent_seq = 0
        self._retry = RetrySchedule(self.cfg.mqtt.reconnect.min_s, self.cfg.mqtt.reconnect.max_s, self.clock)
        self._retry.now()
        self._loop_thread = threading.get_ident()
        assert self.inbox is not None
        self.inbox.set_waker(self._wake_network_loop)
        self.bus.publish(Discovery(self.name, self.entities()))
        self._publish_own_state(force=True)

    def _wake_network_loop(self) -> None:
        """Cut the network loop's select() short when another thread hands this worker a response, state or event.

        Why: the loop waits up to LOOP_TIMEOUT_S on the broker socket; it also watches this worker's own wake-up
        pipe (see `_network_loop`), so a request's response goes out at once.
        """
        if threading.get_ident() == self._loop_thread:
            return  # paho's callbacks run on this thread, inside the loop: nothing to wake
        self._wake.poke()

    def _send_queued_answers(self) -> None:
        """Answers handed over before a stop (the reply to `restart mqtt`, or to a config change that restarts this
        worker) go out before the offline message; other queued work is left to the next worker."""
        assert self.inbox is not None
        while (msg := self.inbox.get(0) if len(self.inbox) else None) is not None:
            if isinstance(msg, Response):
                self.handle(msg)

    def _network_loop(self, client: paho.Client, timeout: float) -> paho.MQTTErrorCode:
        """One pass of paho's network loop through its public hooks (socket, want_write, loop_read/write/misc),
        selecting on the broker socket and this worker's wake-up pipe."""
        sock = client.socket()
        if sock is None:
            return paho.MQTTErrorCode.MQTT_ERR_NO_CONN
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0  # TLS bytes already decrypted
        try:
            readable, writable, _ = select.select([sock, self._wake], [sock] if client.want_write() else [], [],
                                                  0.0 if pending else timeout)
        except (TypeError, ValueError, OSError):  # the socket was closed under us: the connection is gone
            return paho.MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._wake in readable:
            self._wake.clear()
        if sock in readable or pending:
            rc = client.loop_read()
            if rc or client.socket() is None:
                return rc
        if sock in writable or client.want_write():
            rc = client.loop_write()
            if rc or client.socket() is None:
                return rc
        return client.loop_misc()

    def teardown(self) -> None:
        self._forget_acked()
        client = self._client
        if client is None:
            return
        if self.status == CONNECTED:
            try:
                self._send_queued_answers()
                info = client.publish(self.topics.availability, "offline", qos=1, retain=True)
                deadline = time.monotonic() + 2.0
                while not info.is_published() and time.monotonic() < deadline:
                    client.loop(0.05)
                    if not client.is_connected():
                        break
                client.disconnect()
                client.loop(0.05)
                logger.info("published offline and disconnected", extra=ev("mqtt_offline_published"))
            except Exception as exc:  # noqa: BLE001 - shutting down: log and carry on
                logger.warning("clean MQTT shutdown failed: %s", exc)
        else:
            try:
                client.disconnect()
                client.loop(0.01)
            except Exception:  # noqa: BLE001 - nothing useful to do with a half-open socket at exit
                pass
        self._client = None
        self.status = DISCONNECTED

    def step(self) -> None:
        now = time.monotonic()
        if self._client is None or self.status in (DISCONNECTED, AUTH_FAILED):
            if self._retry.due(now):
                self._connect()
            else:
                self._drain_inbox(min(LOOP_TIMEOUT_S * 4, self._retry.wait_s(now)))
                self._housekeeping()
                return
        client = self._client
        if client is not None:
            rc = self._network_loop(client, LOOP_TIMEOUT_S)
            if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN) and self.status in (CONNECTED, CONNECTING):
                self._on_lost(f"network loop: {paho.error_string(rc)}")
        self._drain_inbox(0.0)
        self._housekeeping()

    # -- connection -------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        m = self.cfg.mqtt
        client = build_client(m, m.client_id or f"smartbin-{self.cfg.device.id}", reconnect_on_failure=False)
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        client.max_inflight_messages_set(m.outbox.inflight + 20)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_message = self._cb_message
        client.on_publish = self._cb_publish
        return client

    def _connect(self) -> None:
        m = self.cfg.mqtt
        if self._client is None:
            self._client = self._make_client()
            self._inflight.clear()
            self._last_sent_seq = 0
        self.status = CONNECTING
        self._connect_deadline = time.monotonic() + max(10.0, float(m.keepalive_s))
        try:
            # connect() on the same client object keeps paho's unacknowledged QoS 1 messages,
            # which it re-sends itself after the CONNACK: the outbox must not send them again.
            if m.protocol == "5":
                self._client.connect(m.host, m.port, keepalive=m.keepalive_s, clean_start=True)
            else:
                self._client.connect(m.host, m.port, keepalive=m.keepalive_s)
            set_nodelay(self._client)
        except Exception as exc:  # noqa: BLE001 - OSError, SSLError, and paho's odd half-open socket errors
            self._schedule_retry(f"connect to {m.host}:{m.port} failed: {type(exc).__name__}: {exc}")

    def _schedule_retry(self, error: str, delay: float | None = None) -> None:
        self.counters.last_error = error
        delay = self._retry.failed(delay)
        if self.status != AUTH_FAILED:
            self.status = DISCONNECTED
        logger.warning("%s; retrying in %.0fs", error, delay, extra=ev("mqtt_connect_failed"))
        self._publish_own_state(force=True)

    def _on_lost(self, reason: str) -> None:
        was_connected = self.status == CONNECTED
        self.status = DISCONNECTED
        self.counters.connected_since = None
        if was_connected:
            self.counters.disconnects += 1
            logger.warning("connection to broker lost: %s", reason, extra=ev("mqtt_disconnected"))
        self._schedule_retry(f"disconnected: {reason}")

    # -- paho callbacks: enqueue only ---------------------------------------------------

    def _enqueue(self, msg: Any) -> None:
        assert self.inbox is not None
        self.inbox.put(msg)

    def _cb_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._enqueue(_Connack(str(reason), bool(getattr(reason, "is_failure", False))))

    def _cb_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._enqueue(_Disconnected(str(reason)))

    def _cb_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._enqueue(_Incoming(message.topic, bytes(message.payload), response_topic, correlation))

    def _cb_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._enqueue(_Published(mid, str(reason), bool(getattr(reason, "is_failure", False))))

    # -- inbox ---------------------------------------------------------------------------

    def _drain_inbox(self, wait_s: float) -> None:
        self.drain(wait_s, limit=1000)
        self._forget_acked()

    def _forget_acked(self) -> None:
        """Delete this drain's acknowledged events from the outbox in one transaction.

        Why batched: one SQLite commit (an fsync) per PUBACK was most of the time of a long replay. A crash
        before this commit only means those events are sent again, which at-least-once delivery allows.
        """
        if self._acked:
            acked, self._acked = self._acked, []
            self.outbox.ack_many(acked)

    def handle(self, msg: Any) -> None:
        if isinstance(msg, _Connack):
            self._on_connack(msg)
        elif isinstance(msg, _Disconnected):
            if self.status in (CONNECTED, CONNECTING):
                self._on_lost(msg.reason)
        elif isinstance(msg, _Published):
            self._on_published(msg)
        elif isinstance(msg, _Incoming):
            self._on_incoming(msg)
        elif isinstance(msg, StateUpdate):
            if msg.component != self.name:
                self._publish_state(msg.component, msg.state)
        elif isinstance(msg, EventsPending):
            self._flush_outbox()
        elif isinstance(msg, Discovery):
            self._publish_discovery(msg.component, msg.entities)
        elif isinstance(msg, Response):
            self._on_response(msg)
        elif isinstance(msg, BinaryPublish):
            self._binary[msg.subtopic] = msg
            self._publish(self.topics.state(msg.subtopic), msg.payload, qos=0, retain=msg.retain)

    def _on_connack(self, msg: _Connack) -> None:
        if msg.failed:
            auth = msg.reason in _AUTH_REASONS
            self.status = AUTH_FAILED if auth else DISCONNECTED
            if self._client is not None:
                try:
                    self._client.disconnect()
                except Exception:  # noqa: BLE001
                    pass
            if auth:
                logger.error("broker refused our credentials (%s); check mqtt.username/password; "
                             "retrying in %.0fs", msg.reason, self.cfg.mqtt.reconnect.auth_failure_s,
                             extra=ev("mqtt_auth_failed"))
                self._schedule_retry(f"authentication failed: {msg.reason}", self.cfg.mqtt.reconnect.auth_failure_s)
            else:
                self._schedule_retry(f"broker refused connection: {msg.reason}")
            return
        self.status = CONNECTED
        self.counters.connects += 1
        self.counters.connected_since = time.time()
        self.counters.last_error = None
        self._retry.succeeded()
        logger.info("connected to %s:%d (MQTT %s)", self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.protocol,
                    extra=ev("mqtt_connected"))
        client = self._client
        assert client is not None
        client.subscribe(self.topics.requests, qos=1)
        if self.cfg.mqtt.discovery:
            client.subscribe(self.topics.ha_status, qos=1)
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        if self.cfg.mqtt.discovery:
            self._discovery.connected()
        self._republish_everything()
        self._flush_outbox()

    def _republish_everything(self) -> None:
        if self.cfg.mqtt.discovery:
            for component, entities in self.bus.entities().items():
                self._publish_discovery(component, entities, force=True)
        for component, state in self.bus.states().items():
            if component != self.name:
                self._publish_state(component, state)
        for blob in self._binary.values():
            if blob.retain:
                self._publish(self.topics.state(blob.subtopic), blob.payload, qos=0, retain=True)
        self._publish_own_state(force=True)
        self._last_state_publish = time.monotonic()

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                 properties: Properties | None = None) -> paho.MQTTMessageInfo | None:
        if self._client is None or self.status != CONNECTED:
            return None
        problem = disco.publish_topic_problem(topic)
        if problem is not None:  # never hand paho a topic it would raise on or the broker would drop us for
            logger.error("not publishing to an unsafe topic %r: %s", topic[:200], problem, extra=ev("mqtt_unsafe_topic"))
            return None
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def _publish_state(self, component: str, state: dict[str, Any]) -> None:
        self._publish(self.topics.state(component), _json(state), qos=0, retain=True)

    def _publish_discovery(self, component: str, entities: tuple[Entity, ...], force: bool = False) -> None:
        if not self.cfg.mqtt.discovery or self.status != CONNECTED:
            return
        before = self._discovery.published.get(component, {})
        now: dict[str, bytes] = {}
        hide_privileged = self.cfg.security.privileged == "hmac"
        for entity in entities:
            topic = self.topics.discovery(entity)
            if hide_privileged and disco.entity_privileged(entity, self.registry, self.topics):
                # HA cannot sign: an empty retained config removes a button that could only be refused
                now[topic] = b""
            else:
                now[topic] = disco.encode(disco.entity_config(self.cfg, self.topics, entity))
            if force or before.get(topic) != now[topic]:
                self._publish(topic, now[topic], qos=1, retain=True)
        for stale in set(before) - set(now):
            if before[stale]:
                self._publish(stale, b"", qos=1, retain=True)  # empty retained config removes the entity
        self._discovery.replace(component, now)

    def _clear_stale_discovery(self) -> None:
        """Empty the retained configs an earlier run published that this run has not: HA removes those entities."""
        stale = self._discovery.stale_due()
        for topic in stale:
            self._publish(topic, b"", qos=1, retain=True)
        if stale:
            logger.info("cleared %d discovery config(s) of entities this configuration no longer has", len(stale),
                        extra=ev("mqtt_discovery_cleared"))

    def _flush_outbox(self) -> None:
        if self.status != CONNECTED or self._client is None:
            return
        window = self.cfg.mqtt.outbox.inflight - len(self._inflight)
        while window > 0:
            batch = self.outbox.pending(after_seq=self._last_sent_seq, limit=window)
            if not batch:
                break
            for event in batch:
                info = self._client.publish(self.topics.event(event.type), event.payload(self.cfg.device.id), qos=1)
                if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    # paho did not queue it; it stays in the outbox and goes out on a later flush
                    return
                # SUCCESS or NO_CONN: paho holds it and (re)sends it until the PUBACK arrives
                self._inflight[info.mid] = event.seq
                self._last_sent_seq = event.seq
                self.counters.events_sent += 1
                window -= 1

    def _on_published(self, msg: _Published) -> None:
        seq = self._inflight.pop(msg.mid, None)
        if seq is None:
            return
        if msg.failed:
            self.counters.events_rejected += 1
            logger.warning("broker rejected event seq %d (%s); dropping it", seq, msg.reason, extra=ev("mqtt_event_rejected"))
        else:
            self.counters.events_acked += 1
        self._acked.append(seq)
        if len(self._inflight) < self.cfg.mqtt.outbox.inflight // 2 or not self._inflight:
            self._flush_outbox()

    # -- requests ----------------------------------------------------------------------------

    def _on_incoming(self, msg: _Incoming) -> None:
        if msg.topic == self.topics.ha_status:
            if msg.payload.strip().lower() == b"online":
                logger.info("Home Assistant came online; republishing discovery", extra=ev("ha_birth"))
                self._republish_everything()
            return
        if not msg.topic.startswith(self.topics.request_prefix):
            return
        command = msg.topic[len(self.topics.request_prefix):]
        self.counters.requests += 1
        rt_problem = self.topics.response_topic_problem(msg.response_topic)
        response_topic = msg.response_topic if rt_problem is None else None
        if not valid_command(command):
            # The name would go back into <root>/response/<command>: answer only a (valid) MQTT 5 response topic.
            self._reply(command, None, False, None,
                        "invalid command name: use lower-case letters, digits and '_' in '/'-separated levels "
                        "(send 'help' for the catalogue)", response_topic, msg.correlation, on_command_topic=False)
            return
        try:
            parsed = self.registry.parse(command, msg.payload, self.cfg.mqtt.request_max_bytes)
        except RequestError as exc:
            self._reply(command, exc.transaction, False, None, str(exc), response_topic, msg.correlation)
            return
        if rt_problem is not None:
            self._reply(command, parsed.transaction, False, None, f"response_topic: {rt_problem}", None, None)
            return
        refusal, authority, key_id = self._admit(parsed)
        if refusal is not None:
            self._reply(command, parsed.transaction, False, None, refusal, response_topic, msg.correlation)
            return
        request_id = uuid.uuid4().hex
        delivered = self.bus.publish(Request(target=parsed.spec.owner, command=command, args=parsed.args,
                                             request_id=request_id, authority=authority, key_id=key_id,
                                             transaction=parsed.transaction))
        if not delivered:
            self._reply(command, parsed.transaction, False, None,
                        f"component {parsed.spec.owner!r} is not running", response_topic, msg.correlation)
            return
        wait_s = max(self.cfg.mqtt.request_timeout_s, parsed.spec.answer_within_s or 0.0)
        self._pending[request_id] = _Pending(command, parsed.transaction, time.monotonic() + wait_s,
                                             response_topic, msg.correlation)

    def _admit(self, parsed: ParsedRequest) -> tuple[str | None, str, str | None]:
        """Authorisation, then the per-command rate limit: (the refusal or None, the authority, the signing key id).

        A signature is checked whenever one is sent, also on an unprivileged command: a signed `maintenance` or
        `workflow/clear_error` may then unlock the lid, an unsigned one may not (the owner decides by authority).
        """
        command = parsed.spec.command
        privileged = parsed.spec.is_privileged(parsed.args)
        sec = self.cfg.security
        authority, key_id = UNSIGNED, None
        if sec.privileged == "broker_acl":
            authority = ACL if privileged else UNSIGNED  # only a privileged topic is guarded by the broker's ACL
        elif privileged or (parsed.auth is not None and self.verifier is not None):
            problem: str | None = None
            if self.verifier is None:
                problem = (f"privileged request refused: {command!r} must be signed, but this bin has no signing secret; "
                           "set security.hmac_secret_file (a file holding a long random secret, e.g. from "
                           "`openssl rand -hex 32`) and sign requests with it, or set security.privileged: broker_acl "
                           f"if the broker's ACL alone restricts who may publish to {self.topics.command(command)}")
            else:
                try:
                    key_id = self.verifier.verify(command, parsed.raw_args, parsed.auth)
                    authority = SIGNED
                except AuthError as exc:
                    problem = str(exc)
            if problem is not None:
                self.counters.unauthorized += 1
                logger.warning("refused %s request %s: %s", "privileged" if privileged else "signed", command, problem,
                               extra=ev("request_unauthorized"))
                return problem, authority, None
        retry_in = self.limiter.take(command, privileged, time.monotonic())
        if retry_in is not None:
            self.counters.rate_limited += 1
            limit = self.limiter.limit(privileged)
            logger.warning("rate limited %s requests (at most %d per minute)", command, limit,
                           extra=ev("request_rate_limited"))
            return (f"rate limited: at most {limit} {command} requests per minute; retry in {retry_in:.1f}s", authority,
                    key_id)
        if privileged:
            who = key_id or authority
            self.counters.privileged[who] = self.counters.privileged.get(who, 0) + 1
            logger.info("privileged request %s accepted (%s%s, transaction %s)", command, authority,
                        f" key {key_id}" if key_id else "", _short(parsed.transaction),
                        extra=ev("request_privileged", command=command, key=key_id or "", authority=authority))
        return None, authority, key_id

    def _on_response(self, resp: Response) -> None:
        pending = self._pending.pop(resp.request_id, None)
        if pending is None:
            return
        self._reply(pending.command, pending.transaction, resp.ok, resp.data, resp.error,
                    pending.response_topic, pending.correlation)

    def _reply(self, command: str, transaction: Any, ok: bool, data: Any, error: str | None,
               response_topic: str | None, correlation: bytes | None, *, on_command_topic: bool = True) -> None:
        if not ok:
            self.counters.request_errors += 1
            shown = command if valid_command(command) else repr(command[:200])  # no control characters in the log
            logger.info("request %s failed: %s", shown, (error or "")[:200], extra=ev("request_error"))
        body = {"transaction": transaction, "status": "ok" if ok else "error", "data": data, "error": error}
        payload = _json(body)
        if on_command_topic:
            self._publish(self.topics.response(command), payload, qos=1)
        if response_topic and self.cfg.mqtt.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            self._publish(response_topic, payload, qos=1, properties=props)

    # -- periodic ----------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.status == CONNECTING and now > self._connect_deadline:
            self._on_lost("no CONNACK from broker")
        for request_id, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[request_id]
                self._reply(pending.command, pending.transaction, False, None,
                            f"timed out after {self.cfg.mqtt.request_timeout_s:.0f}s waiting for the owning component",
                            pending.response_topic, pending.correlation)
        if self.status == CONNECTED and now - self._last_state_publish >= self.cfg.mqtt.state_interval_s:
            self._last_state_publish = now
            for component, state in self.bus.states().items():
                if component != self.name:
                    self._publish_state(component, state)
            self._publish_own_state(force=True)
        if self.status == CONNECTED:
            self._clear_stale_discovery()
        if now - self._last_prune >= 300:
            self._last_prune = now
            self.outbox.prune_expired()
        if (alert := self._backlog.check(now, len(self.outbox), self.outbox.oldest_age_s)) is not None:
            self.bus.raise_alert(alert)
        self._publish_own_state()

    def own_state(self) -> MqttState:
        """The `mqtt` component state."""
        c = self.counters
        dropped = self.outbox.dropped()
        return MqttState(
            status=self.status,
            broker=f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}",
            protocol=self.cfg.mqtt.protocol,
            tls=self.cfg.mqtt.tls.enabled,
            connected_since=iso_utc(c.connected_since) if c.connected_since else None,
            connects=c.connects,
            disconnects=c.disconnects,
            last_error=c.last_error,
            requests=c.requests,
            request_errors=c.request_errors,
            requests_unauthorized=c.unauthorized,
            requests_rate_limited=c.rate_limited,
            requests_privileged=dict(c.privileged),
            outbox=OutboxCounts(
                pending=len(self.outbox),
                inflight=len(self._inflight),
                sent=c.events_sent,
                acked=c.events_acked,
                rejected=c.events_rejected,
                dropped=dropped.get("dropped", 0),
                dropped_by_size=dropped.get("dropped_size", 0),
                dropped_by_age=dropped.get("dropped_age", 0),
                oldest_age_s=self._backlog.oldest_age_s,
            ),
        )

    def _publish_own_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_own_state_at < 1.0:
            return
        state = self.own_state().to_json()  # the MQTT edge: the model becomes the published dict
        if force or state != self._last_own_state:
            self._last_own_state = state
            self._last_own_state_at = now
            self.bus.set_state(self.name, state)
            self._publish_state(self.name, state)

    def entities(self) -> tuple[Entity, ...]:
        """HA entities of the MQTT component itself."""
        diag = {"entity_category": "diagnostic"}
        return (
            Entity("sensor", "mqtt_outbox_pending", "Outbox pending events", self.name, "{{ value_json.outbox.pending }}",
                   {**diag, "state_class": "measurement", "icon": "mdi:tray-full"}),
            Entity("sensor", "mqtt_outbox_dropped", "Outbox dropped events", self.name, "{{ value_json.outbox.dropped }}",
                   {**diag, "state_class": "total_increasing", "icon": "mdi:tray-remove"}),
            Entity("sensor", "mqtt_disconnects", "Broker disconnects", self.name, "{{ value_json.disconnects }}",
                   {**diag, "state_class": "total_increasing", "icon": "mdi:lan-disconnect"}),
        )
