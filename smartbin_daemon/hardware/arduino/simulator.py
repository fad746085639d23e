"""A simulated SmartBin Arduino speaking protocol v1 on a real pseudo-terminal (host side uses pyserial).

The simulator owns a pty pair and publishes the slave's path through a symlink (`link`), like a udev
rule would for the real board. One thread serves the master side: it parses host commands with
protocol.py, replies per PROTOCOL.md and emits TEL/HB/EVT frames. Faults (unplug, garbage, lost ACKs,
slow ACKs, reboots, protocol bumps, jams) are scriptable from tests or the `--fault` CLI option
(simulator_cli.py); what the board is comes from board.py. Physical state (compartment fill, load on the
scale, lid position) and the tare offset (EEPROM) survive reboots; RAM state (sequence counter, ROUTE
dedupe memory, LED/buzzer patterns, the energised lock relay) does not. A host opening the port (pyserial
flushes the input queue on open, seen as TIOCPKT_FLUSHREAD) resets the board, like the Uno's DTR auto-reset.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import logging
import os
import random
import re
import select
import struct
import termios
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...runtime.wake import WakePipe
from .board import (  # noqa: F401 - the value sets are re-exported: tests and tools know them from here
    BUZ_PATTERNS,
    DEDUPE_DEPTH,
    FAULT_CODES,
    ITEM_WEIGHT_G,
    LED_PATTERNS,
    LID_OPS,
    LID_STATES,
    MAX_COMPARTMENTS,
    MIN_DISTANCE_MM,
    NAK_CODES,
    SENSOR_NAMES,
    BoardSpec,
    lid_transition,
)
from .protocol import (
    HOST_TYPES,
    Frame,
    FrameError,
    LineBuffer,
    encode,
    parse_line,
)

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9A-Fa-f]{1,8}\Z")
_UINT_RE = re.compile(r"^[0-9]{1,5}\Z")
_READ_CHUNK = 4096
_MAX_WAIT_S = 0.25

Action = Callable[[float], None]
DropAction = Callable[[float | None], None]
"""Runs when an item lands; gets None when the board is off or resetting and cannot report it."""


class SimulatedArduino:
    """An Arduino Uno running smartbin-fw, behind a pty whose path is published as the symlink `link`."""

    def __init__(self, link: Path, spec: BoardSpec | None = None, **settings: Any) -> None:
        """`settings` are BoardSpec fields (e.g. `compartments=3, seed=1`), or pass a whole `spec`."""
        self.spec = spec if spec is not None else BoardSpec(**settings)
        self.link = Path(link)
        self._rng = random.Random(self.spec.seed)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wakeup: WakePipe | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._gen = 0
        self.path: str | None = None
        # Physical state: survives reboots and unplugging.
        self._fill = [0.0] * self.spec.compartments
        self._bin_weight = [0.0] * self.spec.compartments
        self._lid = "closed"
        self._jammed: set[int] = set()
        self._tare_g = 0.0  # EEPROM on the board: survives resets
        # Faults.
        self._ack_delay_s = 0.0
        self._drop_acks = 0
        self._stuck_echo: dict[int, int | None] = {}
        # Observable history.
        self.routes: list[tuple[str, int]] = []
        self.errors: Counter[str] = Counter()
        self.frames_in = 0
        self.frames_out = 0
        self.received: deque[Frame] = deque(maxlen=256)
        self.boots = 0
        self.dropped_bytes = 0
        # RAM state, set by _power_on().
        self._booting = True
        self._boot_due = 0.0
        self._powered_at = 0.0
        self._seq = 0
        self._dedupe: deque[int] = deque(maxlen=DEDUPE_DEPTH)
        self._led = "off"
        self._buzzer = "off"
        self._route_busy_until = 0.0
        self._out: list[tuple[float, int, Action]] = []
        self._out_order = 0
        self._drops: list[tuple[float, int, DropAction]] = []
        self._next_tel = 0.0
        self._next_hb = 0.0
        self._rx = LineBuffer()
        self._hung = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the pty, publish the link and start serving; the BOOT banner follows after boot_delay_s."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._wakeup = WakePipe()
            try:
                self._plug()
            except BaseException:
                self._close_wake_pipe()
                raise
            self._power_on(time.monotonic())
            self._thread = threading.Thread(target=self._serve, name=f"smartbin-sim:{self.link.name}", daemon=True)
            self._thread.start()
        logger.info("simulated arduino on %s -> %s", self.link, self.path)

    def stop(self) -> None:
        """Stop serving, close every fd and remove the link; safe to call twice."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stop.set()
            self._wake()
        thread.join(timeout=2.0)
        if thread.is_alive():
            logger.warning("simulator thread did not stop within 2 s")
        with self._lock:
            self._unplug_locked()
            self._close_wake_pipe()
        logger.info("simulated arduino stopped")

    def __enter__(self) -> SimulatedArduino:
        """Start on entering a with-block."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving a with-block."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the serving thread is alive."""
        return (thread := self._thread) is not None and thread.is_alive()

    @property
    def plugged(self) -> bool:
        """Whether the pty exists (the USB cable is in)."""
        return self._master is not None

    # -- observable state --------------------------------------------------------------------

    @property
    def lid(self) -> str:
        """Lid state: open, closed or locked."""
        with self._lock:
            return self._lid

    @property
    def weight_g(self) -> float:
        """Net load-cell reading in grams (gross load minus the tare offset)."""
        with self._lock:
            return sum(self._bin_weight) - self._tare_g

    @property
    def led(self) -> str:
        """Last LED pattern commanded since boot."""
        with self._lock:
            return self._led

    @property
    def buzzer(self) -> str:
        """Last buzzer pattern commanded since boot."""
        with self._lock:
            return self._buzzer

    @property
    def booting(self) -> bool:
        """True between a reset and its BOOT banner (input is ignored, like the Uno bootloader does)."""
        return self._booting

    @property
    def dedupe_ids(self) -> list[int]:
        """The ROUTE ids (as numbers) the board currently remembers, oldest first."""
        with self._lock:
            return list(self._dedupe)

    def fill_mm(self, compartment: int) -> float:
        """Fill height of compartment 1..n in mm (0 when empty)."""
        return self._fill[self._index(compartment)]

    def distance_mm(self, compartment: int) -> float:
        """Noise-free ultrasonic distance of compartment 1..n in mm (what TEL d= reports, ±2 mm)."""
        return self.spec.empty_mm - self.fill_mm(compartment)

    def uptime_ms(self) -> int:
        """Milliseconds since the last reset (power-on, RESET, reboot, port open)."""
        return int((time.monotonic() - self._powered_at) * 1000)

    # -- faults and physical events (thread-safe) --------------------------------------------

    def unplug(self) -> None:
        """Pull the USB cable: close both pty fds and remove the link; the host sees a hangup."""
        with self._lock:
            self._unplug_locked()
            self._wake()
        logger.info("simulated arduino unplugged")

    def replug(self) -> None:
        """Plug the cable back in: a new pty (new path), the link re-pointed, a fresh boot."""
        with self._lock:
            if self._thread is None:
                raise RuntimeError("simulator is not running")
            self._unplug_locked()
            self._plug()
            self._power_on(time.monotonic())
            self._wake()
        logger.info("simulated arduino replugged on %s", self.path)

    def inject_garbage(self, data: bytes) -> None:
        """Write raw bytes to the host, as line noise would."""
        with self._lock:
            self._write(bytes(data))

    def set_ack_delay(self, seconds: float) -> None:
        """Delay every ACK/NAK by `seconds` (commands still execute at once)."""
        with self._lock:
            self._ack_delay_s = max(0.0, float(seconds))

    def drop_acks(self, count: int) -> None:
        """Swallow the next `count` replies while still executing their commands (a lost ACK)."""
        with self._lock:
            self._drop_acks = max(0, int(count))

    def reboot(self) -> None:
        """Reset the board (watchdog, brown-out): RAM state is lost and a BOOT banner follows."""
        with self._lock:
            if self._master is not None:
                self._power_on(time.monotonic())
                self._wake()

    def set_protocol_version(self, version: int) -> None:
        """Pretend to be firmware speaking protocol `version` (reported in BOOT and HELLO)."""
        with self._lock:
            self.spec.proto = int(version)

    def empty(self, compartment: int) -> None:
        """Empty compartment 1..n (someone took the bag out)."""
        with self._lock:
            i = self._index(compartment)
            self._fill[i] = 0.0
            self._bin_weight[i] = 0.0

    def set_lid(self, state: str) -> None:
        """A physical lid change (opened/closed by hand): an EVT lid=<state> follows if it changed."""
        if state not in LID_STATES:
            raise ValueError(f"lid state must be one of {LID_STATES}, not {state!r}")
        with self._lock:
            self._set_lid(state, time.monotonic())

    def hang(self, hung: bool = True) -> None:
        """Freeze the firmware (a stuck loop without watchdog): the port stays open but goes silent."""
        with self._lock:
            self._hung = hung
        self._wake()

    def stick_echo(self, compartment: int, mm: int | None) -> None:
        """Make compartment 1..n's ultrasonic sensor report `mm` (-1: no echo) whatever the fill; None: heal it."""
        with self._lock:
            self._stuck_echo[self._index(compartment)] = mm

    def jam(self, compartment: int, jammed: bool = True) -> None:
        """Jam (or free) the flap towards compartment 1..n: ROUTEs there end in FLT servo_stall, no drop."""
        with self._lock:
            i = self._index(compartment)
            if jammed:
                self._jammed.add(i + 1)
            else:
                self._jammed.discard(i + 1)

    def emit_fault(self, code: str, compartment: int | None = None) -> None:
        """Send an unsolicited `FLT code=<code> [bin=<n>]`."""
        if code not in FAULT_CODES:
            raise ValueError(f"fault code must be one of {FAULT_CODES}, not {code!r}")
        args: dict[str, object] = {"code": code}
        if compartment is not None:
            args["bin"] = self._index(compartment) + 1
        with self._lock:
            if not self._booting:
                self._send_unsolicited("FLT", args)

    # -- pty handling ------------------------------------------------------------------------

    def _plug(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            # Packet mode: the host's tcflush() on open shows up as a status byte (our DTR line).
            fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
            path = os.ttyname(slave)
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(path, tmp)
            try:
                os.replace(tmp, self.link)
            except OSError:
                os.unlink(tmp)
                raise
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self.path = master, slave, path
        self._gen += 1

    def _unplug_locked(self) -> None:
        master, slave, path = self._master, self._slave, self.path
        self._master = self._slave = None
        self.path = None
        self._gen += 1
        self._land_pending_drops()
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if path is not None:
            try:
                if os.readlink(self.link) == path:
                    os.unlink(self.link)
            except OSError:
                pass

    def _close_wake_pipe(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.close()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.poke()

    def _write(self, data: bytes) -> bool:
        """Write to the host; a closed port or a full pty buffer drops the bytes (never raises)."""
        with self._lock:
            fd = self._master
            if fd is None:
                return False
            view = memoryview(data)
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    self.dropped_bytes += len(view)
                    logger.debug("pty buffer full (host not reading): dropped %d bytes", len(view))
                    return False
                except OSError as exc:
                    logger.debug("write to pty failed: %s", exc)
                    return False
                view = view[n:]
            return True

    # -- serving -----------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception:
                # Whatever happens, the board keeps running (a real MCU has nobody to raise to).
                self.errors["internal"] += 1
                logger.exception("simulator loop error")
                self._stop.wait(0.05)

    def _serve_once(self) -> None:
        with self._lock:
            fd, gen, wakeup = self._master, self._gen, self._wakeup
            timeout = max(0.0, self._next_deadline() - time.monotonic())
            if self._hung:  # a stuck firmware loop: the port stays open, nothing is read or sent
                fd, timeout = None, _MAX_WAIT_S
        watch = [x for x in (wakeup, fd) if x is not None]
        try:
            ready, _, _ = select.select(watch, [], [], timeout)
        except (OSError, ValueError):
            ready = []  # an fd was closed under us by unplug(); the next round sees the new state
        if wakeup is not None and wakeup in ready:
            wakeup.clear()
        with self._lock:
            if self._hung:
                return
            now = time.monotonic()
            if fd is not None and fd in ready and gen == self._gen:
                self._read_master(fd, now)
            self._tick(now)

    def _read_master(self, fd: int, now: float) -> None:
        try:
            packet = os.read(fd, _READ_CHUNK + 1)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                logger.debug("pty read failed: %s", exc)
            return
        if not packet:
            return
        if packet[0] != termios.TIOCPKT_DATA:
            if packet[0] & termios.TIOCPKT_FLUSHREAD and self.spec.reset_on_open:
                logger.debug("host flushed its input (port opened): resetting like DTR does")
                self._power_on(now)
            return
        self._on_bytes(packet[1:], now)

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadline = now + _MAX_WAIT_S
        if self._master is None:
            return deadline
        if self._booting:
            return min(deadline, self._boot_due)
        candidates = [deadline, self._next_tel, self._next_hb]
        if self._out:
            candidates.append(self._out[0][0])
        if self._drops:
            candidates.append(self._drops[0][0])
        return min(candidates)

    def _tick(self, now: float) -> None:
        while self._drops and self._drops[0][0] <= now:
            _, _, action = heapq.heappop(self._drops)
            action(now)
        if self._master is None:
            return
        if self._booting:
            if now < self._boot_due:
                return
            self._finish_boot(now)
        while self._out and self._out[0][0] <= now:
            _, _, send = heapq.heappop(self._out)
            send(now)
            if self._booting:  # a RESET action ran
                return
        if now >= self._next_tel:
            self._send_telemetry()
            self._next_tel = max(self._next_tel + self.spec.telemetry_interval_s, now + self.spec.telemetry_interval_s / 2)
        if now >= self._next_hb:
            self._send_unsolicited("HB", {"up": self.uptime_ms()})
            self._next_hb = max(self._next_hb + self.spec.heartbeat_interval_s, now + self.spec.heartbeat_interval_s / 2)

    # -- board state -------------------------------------------------------------------------

    def _power_on(self, now: float) -> None:
        """A reset: RAM state is lost; the BOOT banner is due after boot_delay_s."""
        self._land_pending_drops()
        self._booting = True
        self._powered_at = now
        self._boot_due = now + self.spec.boot_delay_s
        self._seq = 0
        self._dedupe.clear()
        self._led = "off"
        self._buzzer = "off"
        self._route_busy_until = 0.0
        self._out.clear()
        self._rx.reset()
        if self._lid == "locked":
            self._lid = "closed"  # the lock relay drops out while the MCU is in reset

    def _finish_boot(self, now: float) -> None:
        self._booting = False
        self.boots += 1
        self._send(0, "BOOT", {"fw": self.spec.fw, "ver": self.spec.version, "proto": self.spec.proto})
        self._next_tel = now + self.spec.telemetry_interval_s
        self._next_hb = now + self.spec.heartbeat_interval_s

    def _land_pending_drops(self) -> None:
        """Items already released fall anyway, but nobody reports them (the MCU is off or resetting)."""
        drops, self._drops = self._drops, []
        for _, _, action in sorted(drops):
            action(None)

    def _set_lid(self, state: str, now: float) -> None:
        if state == self._lid:
            return
        self._lid = state
        if self._master is not None and not self._booting:
            self._send_unsolicited("EVT", {"lid": state})

    def _index(self, compartment: int) -> int:
        if not isinstance(compartment, int) or not 1 <= compartment <= self.spec.compartments:
            raise ValueError(f"compartment must be 1..{self.spec.compartments}, not {compartment!r}")
        return compartment - 1

    # -- output ------------------------------------------------------------------------------

    def _send(self, seq: int, type_: str, args: dict[str, object], subject: str | None = None) -> None:
        try:
            data = encode(seq, type_, args, subject)
        except ValueError:
            logger.exception("simulator built an invalid frame")
            self.errors["internal"] += 1
            return
        if self._write(data):
            self.frames_out += 1

    def _send_unsolicited(self, type_: str, args: dict[str, object]) -> None:
        self._seq = self._seq % 65535 + 1
        self._send(self._seq, type_, args)

    def _schedule(self, due: float, action: Action) -> None:
        self._out_order += 1
        heapq.heappush(self._out, (due, self._out_order, action))

    def _send_telemetry(self) -> None:
        distances = self.spec.echoes(self._fill, self._stuck_echo, self._rng)
        args: dict[str, object] = {"d": ",".join(map(str, distances)), "lid": self._lid}
        if "hx711" in self.spec.sensors:
            args["w"] = round(self.weight_g)
        if "temp" in self.spec.sensors:
            args["t"] = f"{self.spec.temperature_c + self._rng.uniform(-0.2, 0.2):.1f}"
        self._send_unsolicited("TEL", args)

    # -- input -------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes, now: float) -> None:
        if self._booting:
            return  # the bootloader swallows whatever arrives while the board resets
        for item in self._rx.feed(data):
            if isinstance(item, FrameError):
                self.errors[item.kind] += 1
                continue
            try:
                frame = parse_line(item, known_types=HOST_TYPES)
            except FrameError as err:
                self.errors[err.kind] += 1
                logger.debug("simulator skipped a bad frame: %s", err)
                continue
            self.frames_in += 1
            self.received.append(frame)
            self._handle(frame, now)
            if self._booting:
                return

    def _reply(self, cmd: Frame, now: float, args: dict[str, object] | None = None, *,
               nak: str | None = None, then: Action | None = None) -> None:
        """Queue the ACK/NAK for `cmd` (after the ACK delay, unless a drop_acks fault swallows it)."""
        due = now + self._ack_delay_s
        if self._drop_acks > 0:
            self._drop_acks -= 1
            logger.debug("simulator swallowed the reply to %s %s", cmd.seq, cmd.type)
        elif nak is not None:
            self._schedule(due, lambda _t: self._send(cmd.seq, "NAK", {"err": nak}, cmd.type))
        else:
            reply = dict(args or {})
            self._schedule(due, lambda _t: self._send(cmd.seq, "ACK", reply, cmd.type))
        if then is not None:
            self._schedule(due, then)

    def _handle(self, cmd: Frame, now: float) -> None:
        handler = {
            "HELLO": self._cmd_hello,
            "PING": self._cmd_ping,
            "ROUTE": self._cmd_route,
            "LID": self._cmd_lid,
            "LED": self._cmd_led,
            "BUZ": self._cmd_buz,
            "TARE": self._cmd_tare,
            "RESET": self._cmd_reset,
        }[cmd.type]
        handler(cmd, now)

    def _keys_ok(self, cmd: Frame, now: float, required: tuple[str, ...] = ()) -> bool:
        """NAK bad_arg (and return False) when args are missing or unknown."""
        if set(cmd.args) != set(required):
            self._reply(cmd, now, nak="bad_arg")
            return False
        return True

    def _cmd_hello(self, cmd: Frame, now: float) -> None:
        if not self._keys_ok(cmd, now, ("proto",)):
            return
        if not _UINT_RE.match(cmd.args["proto"]):
            self._reply(cmd, now, nak="bad_arg")
            return
        self._reply(cmd, now, {"fw": self.spec.fw, "ver": self.spec.version, "proto": self.spec.proto,
                               "bins": self.spec.compartments, "sensors": ",".join(self.spec.sensors)})

    def _cmd_ping(self, cmd: Frame, now: float) -> None:
        if self._keys_ok(cmd, now):
            self._reply(cmd, now, {"up": self.uptime_ms()})

    def _cmd_route(self, cmd: Frame, now: float) -> None:
        if not self._keys_ok(cmd, now, ("bin", "id")):
            return
        bin_text, id_text = cmd.args["bin"], cmd.args["id"]
        if not _UINT_RE.match(bin_text) or not 1 <= int(bin_text) <= self.spec.compartments or not _ID_RE.match(id_text):
            self._reply(cmd, now, nak="bad_arg")
            return
        bin_ = int(bin_text)
        item = int(id_text, 16)
        if item in self._dedupe:
            logger.debug("simulator: duplicate ROUTE id %s, not executed again", id_text)
            self._reply(cmd, now, {"bin": bin_, "id": id_text, "dup": 1})
            return
        if now < self._route_busy_until:
            self._reply(cmd, now, nak="busy")
            return
        self._dedupe.append(item)
        self.routes.append((id_text, bin_))
        self._route_busy_until = now + self.spec.drop_delay_s
        self._reply(cmd, now, {"bin": bin_, "id": id_text})
        self._out_order += 1
        heapq.heappush(self._drops, (now + self.spec.drop_delay_s, self._out_order, lambda t: self._drop(bin_, t)))

    def _drop(self, bin_: int, now: float | None) -> None:
        """The item reaches compartment `bin_`; `now` is None when nobody is there to report it."""
        report = now is not None and self._master is not None and not self._booting
        if bin_ in self._jammed:
            if report:
                self._send_unsolicited("FLT", {"code": "servo_stall", "bin": bin_})
            return
        i = bin_ - 1
        self._fill[i] = min(self._fill[i] + self.spec.item_mm, self.spec.empty_mm - MIN_DISTANCE_MM)
        self._bin_weight[i] += self._rng.uniform(*ITEM_WEIGHT_G)
        if report and ("drop" in self.spec.sensors or "hx711" in self.spec.sensors):
            self._send_unsolicited("EVT", {"drop": bin_})

    def _cmd_lid(self, cmd: Frame, now: float) -> None:
        if not self._keys_ok(cmd, now, ("op",)):
            return
        op = cmd.args["op"]
        if op not in LID_OPS:
            self._reply(cmd, now, nak="bad_arg")
            return
        state, err = lid_transition(self._lid, op)
        if err is not None:
            self._reply(cmd, now, nak=err)
            return
        self._reply(cmd, now, {"lid": state}, then=lambda t: self._set_lid(state, t))

    def _cmd_led(self, cmd: Frame, now: float) -> None:
        if self._keys_ok(cmd, now, ("p",)):
            if cmd.args["p"] not in LED_PATTERNS:
                self._reply(cmd, now, nak="bad_arg")
                return
            self._led = cmd.args["p"]
            self._reply(cmd, now)

    def _cmd_buz(self, cmd: Frame, now: float) -> None:
        if self._keys_ok(cmd, now, ("p",)):
            if cmd.args["p"] not in BUZ_PATTERNS:
                self._reply(cmd, now, nak="bad_arg")
                return
            self._buzzer = cmd.args["p"]
            self._reply(cmd, now)

    def _cmd_tare(self, cmd: Frame, now: float) -> None:
        if not self._keys_ok(cmd, now):
            return
        if "hx711" not in self.spec.sensors:
            self._reply(cmd, now, nak="unknown")
            return
        self._tare_g = sum(self._bin_weight)
        self._reply(cmd, now)

    def _cmd_reset(self, cmd: Frame, now: float) -> None:
        if self._keys_ok(cmd, now):
            self._reply(cmd, now, then=self._power_on)


if __name__ == "__main__":
    from .simulator_cli import main

    raise SystemExit(main())
