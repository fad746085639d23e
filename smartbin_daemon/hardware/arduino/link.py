"""The Arduino link manager: finds and opens the serial port, handshakes, parses telemetry, sends
ACKed commands with retries, and recovers from unplugs, resets, noise and silence by itself.

One thread does everything (read, parse, write, timeouts), so there is no shared state and no
writer can be left blocked: writes have a timeout, and the wait for serial data also watches the
worker's own wake-up pipe, which the bus pokes when a request arrives (no other thread touches the port).
"""

from __future__ import annotations

import collections
import logging
import secrets
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import serial
from serial.tools import list_ports

from ...clock import iso_utc
from ...config import ArduinoConfig
from ...logs import audit, ev
from ...messages import (
    BuzzerArgs,
    DistanceReading,
    DoorChanged,
    ItemDropped,
    LedArgs,
    LidArgs,
    RouteArgs,
    TemperatureReading,
    WeightReading,
)
from ...runtime.backoff import RetrySchedule
from ...runtime.bus import Alert, Bus, Discovery, Entity, Request
from ...runtime.commands import ANSWERED_LATER, NoArgs, RequestError, RequestSpec, command
from ...runtime.status import CONNECTED, CONNECTING, DISCONNECTED, INCOMPATIBLE, STALE
from ...runtime.wake import WakePipe
from ...runtime.worker import Worker
from ...states.arduino import ArduinoState, LinkCounters
from .protocol import (
    ERROR_KINDS,
    IDEMPOTENT,
    MCU_TYPES,
    PROTOCOL_VERSION,
    Frame,
    FrameError,
    LineBuffer,
    encode,
    parse_line,
)

logger = logging.getLogger(__name__)

AUDITED = frozenset({"ROUTE", "LID", "TARE"})
"""Frames that move the flap or the lid or rewrite the load cell's zero: each one gets an audit line."""

READ_TIMEOUT_S = 0.2
WRITE_TIMEOUT_S = 1.0
PING_INTERVAL_S = 5.0


@dataclass
class _Pending:
    seq: int
    type: str
    line: bytes
    deadline: float
    sent_at: float
    attempts: int = 1
    request: Request | None = None
    busy: bool = False
    """The MCU answered NAK busy: the next expiry is a planned resend, not a timeout."""


@dataclass
class _Counters:
    frames_in: int = 0
    frames_out: int = 0
    timeouts: int = 0
    naks: int = 0
    reconnects: int = 0
    write_errors: int = 0
    retries: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


def find_port(cfg: ArduinoConfig, storage: Path) -> str | None:
    """The device path to open: simulator link, explicit path/udev symlink, or a VID:PID match."""
    if cfg.backend == "simulator":
        link = cfg.simulator.link if cfg.simulator.link.is_absolute() else storage / cfg.simulator.link
        return str(link)
    if cfg.port:
        return cfg.port
    if cfg.vid_pid:
        vid, pid = (int(x, 16) for x in cfg.vid_pid.split(":"))
        for info in sorted(list_ports.comports(), key=lambda p: p.device):
            if info.vid == vid and info.pid == pid:
                return str(info.device)
    return None


class ArduinoLink(Worker):
    """Owner of the serial port and of the `route`, `tare` (and, unless GPIO has them, lid/led/buzzer) requests."""

    critical = True

    def __init__(self, bus: Bus, cfg: ArduinoConfig, storage: Path, *, name: str = "arduino",
                 exclude: frozenset[str] = frozenset(), clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, bus, tick_s=READ_TIMEOUT_S, inbox=(Request,), clock=clock)
        self.cfg = cfg
        self.exclude = exclude
        """Actuator commands another component (GPIO) owns."""
        self.storage = storage
        self.ser: serial.Serial | None = None
        self.port: str | None = None
        self.status = DISCONNECTED
        self.counters = _Counters()
        self._buffer = LineBuffer()
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._retry = RetrySchedule(cfg.reconnect_min_s, cfg.reconnect_max_s, self.clock)
        self._opened_at = 0.0
        self._wake = WakePipe()
        self._hello_sent = False
        self._last_rx = 0.0
        self._last_rx_wall: float | None = None
        self._last_ping = 0.0
        self.rtt_ms: float | None = None
        self.firmware: dict[str, Any] = {}
        self.telemetry: dict[str, Any] = {"distances_mm": [], "lid": None, "weight_g": None, "temperature_c": None}
        self.fault: str | None = None
        self.last_error: str | None = None
        self._down_since: float | None = None
        """When (this worker's clock) the link stopped being connected; None while connected."""
        self._down_alerted = False

    # -- catalogue -------------------------------------------------------------------------

    def offer(self, spec: RequestSpec) -> RequestSpec | None:
        """Every command this link declares, less those another component owns (GPIO lid/led/buzzer)."""
        return None if spec.command in self.exclude else spec

    def entities(self) -> tuple[Entity, ...]:
        """HA entities of the link."""
        diag = {"entity_category": "diagnostic"}
        lid_buttons: tuple[Entity, ...] = () if "lid" in self.exclude else tuple(
            Entity("button", f"arduino_lid_{op}", f"Lid {op}", self.name, None,
                   {"command_topic": "lid", "payload_press": f'{{"args": {{"op": "{op}"}}}}',
                    "icon": "mdi:delete-empty" if op == "open" else "mdi:delete"})
            for op in ("open", "close")
        )
        return lid_buttons + (
            Entity("binary_sensor", "arduino_connected", "Arduino connected", self.name,
                   "{{ 'ON' if value_json.status == 'connected' else 'OFF' }}",
                   {"device_class": "connectivity", **diag}),
            Entity("sensor", "arduino_rtt", "Arduino round trip", self.name, "{{ value_json.rtt_ms }}",
                   {"unit_of_measurement": "ms", "state_class": "measurement", "icon": "mdi:timer-outline", **diag}),
            Entity("sensor", "arduino_checksum_errors", "Arduino checksum errors", self.name,
                   "{{ value_json.counters.checksum_errors }}",
                   {"state_class": "total_increasing", "icon": "mdi:alert-outline", **diag}),
            Entity("sensor", "arduino_frame_errors", "Arduino bad frames", self.name,
                   "{{ value_json.counters.bad_frames }}",
                   {"state_class": "total_increasing", "icon": "mdi:alert-outline", **diag}),
            Entity("sensor", "arduino_timeouts", "Arduino ACK timeouts", self.name, "{{ value_json.counters.timeouts }}",
                   {"state_class": "total_increasing", "icon": "mdi:timer-alert-outline", **diag}),
            Entity("sensor", "arduino_reconnects", "Arduino reconnects", self.name, "{{ value_json.counters.reconnects }}",
                   {"state_class": "total_increasing", "icon": "mdi:usb-port", **diag}),
            Entity("sensor", "arduino_weight", "Weight", self.name, "{{ value_json.weight_g }}",
                   {"device_class": "weight", "unit_of_measurement": "g", "state_class": "measurement",
                    "icon": "mdi:scale"}),
            Entity("sensor", "arduino_temperature", "MCU temperature", self.name, "{{ value_json.temperature_c }}",
                   {"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement", **diag}),
            Entity("button", "arduino_test_route", "Test route (compartment 1)", self.name, None,
                   {"command_topic": "route", "payload_press": '{"args": {"compartment": 1}}', "icon": "mdi:call-split",
                    "entity_category": "config"}),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._close("starting")
        self.status = DISCONNECTED
        self._retry = RetrySchedule(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self.clock)
        self._retry.now()
        assert self.inbox is not None
        self.inbox.set_waker(self._wake_reader)
        self.bus.publish(Discovery(self.name, self.entities()))
        self.publish_state(self.own_state, force=True)

    def teardown(self) -> None:
        if self.inbox is not None:
            self.inbox.set_waker(None)
        self._fail_all_pending("link stopped")
        self._close("stopping")
        self.status = DISCONNECTED
        self.publish_state(self.own_state, force=True)

    def _wake_reader(self) -> None:
        """Called on the requester's thread: only pokes the pipe the read loop waits on."""
        self._wake.poke()

    def step(self) -> None:
        self._check_down()
        now = self.clock()  # the retry schedule's clock
        if self.ser is None:
            if self._retry.due(now):
                self._open()
            else:
                msg = self.next_message(min(self.tick_s, self._retry.wait_s(now)))
                if msg is not None:
                    self.handle(msg)
            self.publish_state(self.own_state)
            return
        self._read_once()
        self.drain()
        self._timers()
        self.publish_state(self.own_state)

    def _check_down(self) -> None:
        """Raise `link_down` once the link has not been connected for `alert_after_s`; clear it when it is back."""
        now = self.clock()
        if self.status == CONNECTED:
            self._down_since = None
            if self._down_alerted:
                self._down_alerted = False
                self.bus.raise_alert(Alert(self.name, "link_down", "info", f"Arduino link is back on {self.port}",
                                           active=False))
            return
        if self._down_since is None:
            self._down_since = now
        elif not self._down_alerted and now - self._down_since >= self.cfg.alert_after_s:
            self._down_alerted = True
            logger.error("arduino link down for %.0fs (%s)", now - self._down_since, self.last_error or self.status,
                         extra=ev("arduino_link_down"))
            self.bus.raise_alert(Alert(self.name, "link_down", "critical",
                                       f"Arduino link down for {now - self._down_since:.0f}s: "
                                       f"{self.last_error or self.status}"))

    # -- connection --------------------------------------------------------------------------

    def _open(self) -> None:
        port = find_port(self.cfg, self.storage)
        if port is None:
            self._retry_later(f"no serial port matches {self.cfg.vid_pid or self.cfg.port}")
            return
        try:
            ser = serial.Serial(port, self.cfg.baudrate, timeout=READ_TIMEOUT_S, write_timeout=WRITE_TIMEOUT_S,
                                exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._retry_later(f"cannot open {port}: {exc}")
            return
        self.ser = ser
        self.port = port
        self._buffer.reset()
        self._opened_at = time.monotonic()
        self._last_rx = self._opened_at
        self._hello_sent = False
        self.status = CONNECTING
        logger.info("opened %s; waiting up to %.1fs for the boot banner", port, self.cfg.boot_wait_s,
                    extra=ev("arduino_port_opened"))
        self.publish_state(self.own_state, force=True)

    def _retry_later(self, error: str, delay: float | None = None) -> None:
        self.last_error = error
        delay = self._retry.failed(delay)
        logger.warning("arduino: %s; retrying in %.1fs", error, delay, extra=ev("arduino_connect_failed"))
        self.publish_state(self.own_state, force=True)

    def _close(self, reason: str) -> None:
        ser, self.ser = self.ser, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError):
                pass
        self._buffer.reset()

    def _lost(self, reason: str) -> None:
        was = self.status
        self._fail_all_pending(f"link lost: {reason}")
        self._close(reason)
        self.status = DISCONNECTED
        self.counters.reconnects += 1
        if was in (CONNECTED, STALE):
            logger.warning("arduino link lost (%s)", reason, extra=ev("arduino_disconnected"))
        self._retry_later(reason)

    # -- reading -----------------------------------------------------------------------------

    def _read_once(self) -> None:
        ser = self.ser
        assert ser is not None
        try:
            ready, _, _ = select.select([ser.fileno(), self._wake], [], [], READ_TIMEOUT_S)
            if self._wake in ready:
                self._wake.clear()
            data = ser.read(max(1, min(ser.in_waiting, 4096))) if ser.fileno() in ready else b""
        except (serial.SerialException, OSError, ValueError) as exc:
            self._lost(f"read failed: {exc}")
            return
        if not data:
            return
        for item in self._buffer.feed(data):
            if isinstance(item, FrameError):
                self._bad_frame(item, b"")
                continue
            try:
                frame = parse_line(item, known_types=MCU_TYPES)
            except FrameError as err:
                self._bad_frame(err, item)
                continue
            self.counters.frames_in += 1
            self._last_rx = time.monotonic()
            self._last_rx_wall = time.time()
            self._on_frame(frame)

    def _bad_frame(self, err: FrameError, line: bytes) -> None:
        self.counters.errors[err.kind] += 1
        logger.warning("arduino: skipped a bad frame (%s)", err.kind, extra=ev("arduino_bad_frame"))
        logger.debug("arduino bad frame %s: %r", err.detail, line[:80])

    def _on_frame(self, frame: Frame) -> None:
        if self.status == STALE:
            self.status = CONNECTED
            logger.info("arduino link is live again", extra=ev("arduino_live"))
        t = frame.type
        if t in ("ACK", "NAK"):
            self._on_reply(frame)
        elif t == "BOOT":
            self._on_boot(frame)
        elif t == "TEL":
            self._on_telemetry(frame)
        elif t == "EVT":
            self._on_event(frame)
        elif t == "FLT":
            self._on_fault(frame)
        # HB only refreshes liveness

    def _on_boot(self, frame: Frame) -> None:
        logger.info("arduino booted: %s %s (protocol %s)", frame.args.get("fw"), frame.args.get("ver"),
                    frame.args.get("proto"), extra=ev("arduino_boot"))
        if self.status in (CONNECTED, STALE):
            # A reset mid-session (brown-out, watchdog): handshake again before sending anything else.
            self._fail_all_pending("arduino rebooted")
            self.status = CONNECTING
            self.publish_state(self.own_state, force=True)  # consumers re-assert LED/lock once it is back
        self._send_hello()

    def _send_hello(self) -> None:
        self._hello_sent = True
        self._send("HELLO", {"proto": PROTOCOL_VERSION})

    def _on_reply(self, frame: Frame) -> None:
        pending = self._pending.get(frame.seq)
        if pending is None or pending.type != frame.subject:
            logger.debug("arduino: reply %s %s for no pending command", frame.seq, frame.subject)
            return
        del self._pending[frame.seq]
        now = time.monotonic()
        rtt = (now - pending.sent_at) * 1000.0
        if frame.type == "NAK":
            self.counters.naks += 1
            error = frame.args.get("err", "unknown")
            if error == "busy" and pending.type == "ROUTE" and pending.attempts <= self.cfg.retries:
                # The flap is still moving for the previous item: try again shortly, same seq and id.
                pending.busy = True
                pending.deadline = now + self.cfg.ack_timeout_s
                self._pending[frame.seq] = pending
                logger.info("arduino busy; will retry ROUTE seq %d", frame.seq, extra=ev("arduino_busy"))
                return
            logger.warning("arduino refused %s: %s", pending.type, error, extra=ev("arduino_nak"))
            if pending.type == "HELLO":
                self._lost(f"handshake refused: {error}")
            self._answer(pending, False, None, f"arduino refused {pending.type}: err={error}")
            return
        if pending.type in ("PING", "HELLO"):
            self.rtt_ms = round(rtt, 1)
        if pending.type == "HELLO":
            self._on_hello_ack(frame)
            return
        data: dict[str, Any] = {"acked": True, "rtt_ms": round(rtt, 1), **frame.args}
        if pending.type == "ROUTE":
            data["duplicate"] = frame.args.get("dup") == "1"
        self._answer(pending, True, data, None)

    def _on_hello_ack(self, frame: Frame) -> None:
        try:
            proto = int(frame.args.get("proto", "-1"))
            bins = int(frame.args.get("bins", "0"))
        except ValueError:
            self._lost("handshake reply is malformed")
            return
        self.firmware = {
            "name": frame.args.get("fw"),
            "version": frame.args.get("ver"),
            "protocol": proto,
            "compartments": bins,
            "sensors": [s for s in frame.args.get("sensors", "").split(",") if s],
        }
        if proto != PROTOCOL_VERSION:
            self.status = INCOMPATIBLE
            error = (f"firmware {self.firmware['name']} {self.firmware['version']} speaks protocol {proto}, "
                     f"this daemon speaks {PROTOCOL_VERSION}; no commands will be sent (update one of them)")
            logger.error("arduino: %s", error, extra=ev("arduino_incompatible"))
            self.bus.raise_alert(Alert(self.name, "protocol_mismatch", "critical", error))
            self._fail_all_pending("incompatible protocol")
            self._close("incompatible")
            self.last_error = error
            self._retry.failed(self.cfg.incompatible_retry_s)
            self.publish_state(self.own_state, force=True)
            return
        self.status = CONNECTED
        self.last_error = None
        self._retry.succeeded()
        self._last_ping = time.monotonic()
        logger.info("arduino connected on %s: %s %s, protocol %d, %d compartments, sensors %s", self.port,
                    self.firmware["name"], self.firmware["version"], proto, bins,
                    ",".join(self.firmware["sensors"]) or "none", extra=ev("arduino_connected"))
        self.publish_state(self.own_state, force=True)

    def _on_telemetry(self, frame: Frame) -> None:
        now = time.monotonic()
        args = frame.args
        if "d" in args:
            distances: list[float | None] = []
            for i, text in enumerate(args["d"].split(","), start=1):
                try:
                    mm = float(text)
                except ValueError:
                    self.counters.errors["malformed"] += 1
                    return
                value = None if mm < 0 else mm
                distances.append(value)
                self.bus.publish(DistanceReading("arduino", i, value, now))
            self.telemetry["distances_mm"] = distances
        if "lid" in args:
            self._lid(args["lid"], now)
        if "w" in args:
            try:
                grams = float(args["w"])
            except ValueError:
                self.counters.errors["malformed"] += 1
            else:
                self.telemetry["weight_g"] = grams
                self.bus.publish(WeightReading(grams, now))
        if "t" in args:
            try:
                celsius = float(args["t"])
            except ValueError:
                self.counters.errors["malformed"] += 1
            else:
                self.telemetry["temperature_c"] = celsius
                self.bus.publish(TemperatureReading(celsius, now))

    def _lid(self, state: str, now: float) -> None:
        if state != self.telemetry.get("lid"):
            previous = self.telemetry.get("lid")
            self.telemetry["lid"] = state
            self.bus.publish(DoorChanged("arduino", state, now))
            if previous is not None:
                self.bus.emit_event("door_opened" if state == "open" else "door_closed",
                                    {"source": "arduino", "state": state}, self.name)

    def _on_event(self, frame: Frame) -> None:
        now = time.monotonic()
        if "drop" in frame.args:
            try:
                self.bus.publish(ItemDropped(int(frame.args["drop"]), now))
            except ValueError:
                self.counters.errors["malformed"] += 1
        if "lid" in frame.args:
            self._lid(frame.args["lid"], now)

    def _on_fault(self, frame: Frame) -> None:
        code = frame.args.get("code", "unknown")
        where = f" (compartment {frame.args['bin']})" if "bin" in frame.args else ""
        self.fault = code
        logger.error("arduino reports fault %s%s", code, where, extra=ev("arduino_fault"))
        self.bus.raise_alert(Alert(self.name, f"fault_{code}", "critical", f"Arduino fault {code}{where}"))

    # -- writing -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = self._seq % 65535 + 1
        return self._seq

    def _send(self, type_: str, args: dict[str, Any], request: Request | None = None) -> None:
        seq = self._next_seq()
        line = encode(seq, type_, args)
        now = time.monotonic()
        pending = _Pending(seq, type_, line, now + self.cfg.ack_timeout_s, now, request=request)
        self._pending[seq] = pending
        self._write(line)

    def _write(self, line: bytes) -> bool:
        ser = self.ser
        if ser is None:
            return False
        try:
            ser.write(line)
        except serial.SerialTimeoutException:
            self.counters.write_errors += 1
            self._lost("write timed out (MCU not reading)")
            return False
        except (serial.SerialException, OSError) as exc:
            self.counters.write_errors += 1
            self._lost(f"write failed: {exc}")
            return False
        self.counters.frames_out += 1
        return True

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Request):
            self.answer(msg)

    # -- requests: each is sent as a frame and answered when the MCU ACKs (or it times out) -----------

    @command("route", RouteArgs, privileged=True, example={"compartment": 2},
             summary="Move the flap to a compartment and release the item (manual test).")
    def _route(self, req: Request, args: RouteArgs) -> object:
        self._require_link()
        bins = int(self.firmware.get("compartments") or 0)
        if bins and not 1 <= args.compartment <= bins:
            raise RequestError(f"args.compartment: the Arduino has compartments 1..{bins}")
        return self._send_request(req, "ROUTE", {"bin": args.compartment,
                                                 "id": args.command_id or secrets.token_hex(4)})

    @command("tare", privileged=True, summary="Zero the load cell (rewrites its calibration).")
    def _tare(self, req: Request, args: NoArgs) -> object:
        return self._send_request(req, "TARE", {})

    @command("lid", LidArgs, example={"op": "open"}, privileged_when=RequestSpec.arg_in("op", "open", "unlock"),
             summary="Open, close, lock or unlock the lid.")
    def _lid_request(self, req: Request, args: LidArgs) -> object:
        return self._send_request(req, "LID", {"op": args.op})

    @command("led", LedArgs, example={"pattern": "blink"}, summary="Set the status LED pattern.")
    def _led(self, req: Request, args: LedArgs) -> object:
        return self._send_request(req, "LED", {"p": args.pattern})

    @command("buzzer", BuzzerArgs, example={"pattern": "beep"}, summary="Play a buzzer pattern.")
    def _buzzer(self, req: Request, args: BuzzerArgs) -> object:
        return self._send_request(req, "BUZ", {"p": args.pattern})

    def _require_link(self) -> None:
        """Commands fail fast while the link is not up."""
        if self.status != CONNECTED:
            raise RequestError(f"arduino is {self.status} ({self.last_error or 'link not established'})")

    def _send_request(self, req: Request, type_: str, args: dict[str, Any]) -> object:
        """Send a request's frame (audited when it moves something); the ACK or its absence answers it."""
        self._require_link()
        if type_ in AUDITED:
            audit(logger, req.command, " ".join(f"{k}={v}" for k, v in args.items()), authority=req.authority,
                  key=req.key_id, transaction=req.transaction)
        self._send(type_, args, req)
        return ANSWERED_LATER

    def _answer(self, pending: _Pending, ok: bool, data: Any, error: str | None) -> None:
        if pending.request is None:
            return
        if ok:
            self.reply(pending.request, data)
        else:
            self.refuse(pending.request, error or "failed", data)

    def _fail_all_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            self._answer(p, False, None, f"{p.type} not acknowledged: {reason}")

    # -- timers --------------------------------------------------------------------------------

    def _timers(self) -> None:
        now = time.monotonic()
        if self.ser is None:
            return
        if self.status == CONNECTING and not self._hello_sent and now - self._opened_at >= self.cfg.boot_wait_s:
            self._send_hello()  # no banner (board without DTR reset): handshake anyway
        for seq, p in list(self._pending.items()):
            if now < p.deadline:
                continue
            if not p.busy:
                self.counters.timeouts += 1
            p.busy = False
            retryable = p.type in IDEMPOTENT or p.type == "ROUTE"  # ROUTE carries an id: a retry never runs twice
            if retryable and p.attempts <= self.cfg.retries and self.ser is not None:
                p.attempts += 1
                p.deadline = now + self.cfg.ack_timeout_s
                p.sent_at = now
                self.counters.retries += 1
                logger.info("arduino: no ACK for %s seq %d; retry %d", p.type, seq, p.attempts - 1,
                            extra=ev("arduino_retry"))
                self._write(p.line)
                continue
            del self._pending[seq]
            logger.warning("arduino: %s seq %d not acknowledged after %d attempt(s)", p.type, seq, p.attempts,
                           extra=ev("arduino_ack_timeout"))
            self._answer(p, False, None, f"no ACK from the Arduino after {p.attempts} attempt(s)")
            if p.type == "HELLO":
                self._lost("no reply to the handshake")
                return
        if self.ser is None:
            return
        silent = now - self._last_rx
        if self.status == CONNECTED and silent >= self.cfg.stale_after_s:
            self.status = STALE
            logger.warning("arduino silent for %.1fs: link stale", silent, extra=ev("arduino_stale"))
            self.publish_state(self.own_state, force=True)
        if self.status in (STALE, CONNECTING) and silent >= self.cfg.reconnect_after_s:
            self._lost(f"silent for {silent:.1f}s")
            return
        if self.status == CONNECTED and now - self._last_ping >= PING_INTERVAL_S:
            self._last_ping = now
            self._send("PING", {})

    # -- state ----------------------------------------------------------------------------------

    def own_state(self) -> ArduinoState:
        """The `arduino` state."""
        c = self.counters
        errors = {kind: c.errors.get(kind, 0) for kind in ERROR_KINDS}
        t = self.telemetry
        return ArduinoState(
            status=self.status,
            connected=self.status in (CONNECTED, STALE),
            port=self.port,
            firmware=self.firmware.get("name"),
            firmware_version=self.firmware.get("version"),
            protocol=self.firmware.get("protocol"),
            compartments=self.firmware.get("compartments"),
            sensors=self.firmware.get("sensors", []),
            last_seen=iso_utc(self._last_rx_wall) if self._last_rx_wall else None,
            rtt_ms=self.rtt_ms,
            distances_mm=t["distances_mm"],
            lid=t["lid"],
            weight_g=t["weight_g"],
            temperature_c=t["temperature_c"],
            fault=self.fault,
            last_error=self.last_error,
            counters=LinkCounters(
                frames_in=c.frames_in,
                frames_out=c.frames_out,
                checksum_errors=errors["bad_checksum"],
                bad_frames=sum(errors.values()),
                errors=errors,
                timeouts=c.timeouts,
                retries=c.retries,
                naks=c.naks,
                reconnects=c.reconnects,
                write_errors=c.write_errors,
            ),
        )

