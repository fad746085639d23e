"""SmartBin serial protocol v1: frame encoding, CRC-8 and a bounded line parser (pure, no I/O).

See PROTOCOL.md beside this file; the firmware in firmware/smartbin_fw implements the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

PROTOCOL_VERSION = 1
MAX_FRAME = 120
"""Bytes from '$' to the CRC inclusive; an Uno holds one 128-byte line buffer."""

HOST_TYPES = frozenset({"HELLO", "PING", "ROUTE", "LID", "LED", "BUZ", "TARE", "RESET"})
MCU_TYPES = frozenset({"ACK", "NAK", "BOOT", "TEL", "HB", "EVT", "FLT"})
IDEMPOTENT = frozenset({"HELLO", "PING", "LID", "LED", "BUZ", "TARE", "RESET"})

# Error kinds, counted separately by receivers.
GARBAGE, OVERSIZE, BAD_ENCODING, MALFORMED, BAD_CHECKSUM, UNKNOWN_TYPE = (
    "garbage", "oversize", "bad_encoding", "malformed", "bad_checksum", "unknown_type",
)
ERROR_KINDS = (GARBAGE, OVERSIZE, BAD_ENCODING, MALFORMED, BAD_CHECKSUM, UNKNOWN_TYPE)

# \Z, not $: `$` also matches before a trailing "\n", which would let encode() emit a newline inside a frame.
_TYPE_RE = re.compile(r"^[A-Z]{2,8}\Z")
_KEY_RE = re.compile(r"^[a-z_]{1,12}\Z")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:+-]{0,40}\Z")
_SEQ_RE = re.compile(r"^[0-9]{1,5}\Z")
_CC_RE = re.compile(rb"^[0-9A-F]{2}\Z")


def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC_TABLE = _crc8_table()


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS (poly 0x07, init 0, no reflection)."""
    crc = 0
    for b in data:
        crc = _CRC_TABLE[crc ^ b]
    return crc


class FrameError(ValueError):
    """A line that is not a valid frame; `kind` is one of ERROR_KINDS."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    seq: int
    type: str
    args: dict[str, str] = field(default_factory=dict)
    subject: str | None = None
    """For ACK/NAK: the TYPE being answered."""

    def encode(self) -> bytes:
        """The wire form including '\\n'."""
        return encode(self.seq, self.type, self.args, self.subject)


def encode(seq: int, type_: str, args: Mapping[str, object] | None = None, subject: str | None = None) -> bytes:
    """Build `$<seq> <TYPE>[ <subject>][ k=v]...*CC\\n`; raises ValueError on anything the MCU could not parse."""
    if not 0 <= seq <= 65535:
        raise ValueError(f"seq out of range: {seq}")
    if not _TYPE_RE.match(type_):
        raise ValueError(f"invalid type {type_!r}")
    parts = [str(seq), type_]
    if (subject is not None) != (type_ in ("ACK", "NAK")):
        raise ValueError(f"{type_} {'needs' if subject is None else 'takes no'} subject")
    if subject is not None:
        if not _TYPE_RE.match(subject):
            raise ValueError(f"invalid subject {subject!r}")
        parts.append(subject)
    for key, value in (args or {}).items():
        text = str(value)
        if not _KEY_RE.match(key) or not _VALUE_RE.match(text):
            raise ValueError(f"invalid argument {key}={text!r}")
        parts.append(f"{key}={text}")
    body = " ".join(parts).encode("ascii")
    line = b"$" + body + b"*" + f"{crc8(body):02X}".encode("ascii")
    if len(line) > MAX_FRAME:
        raise ValueError(f"frame too long ({len(line)} > {MAX_FRAME} bytes)")
    return line + b"\n"


def parse_line(line: bytes, known_types: frozenset[str] = MCU_TYPES | HOST_TYPES) -> Frame:
    """Decode one line (without or with its trailing newline); raise FrameError with a kind."""
    line = line.rstrip(b"\r\n")
    if len(line) > MAX_FRAME:
        raise FrameError(OVERSIZE, f"{len(line)} bytes")
    start = line.rfind(b"$")
    if start < 0:
        raise FrameError(GARBAGE, "no start marker")
    frame = line[start:]
    if any(b < 0x20 or b > 0x7E for b in frame):
        raise FrameError(BAD_ENCODING, "non-ASCII or control bytes")
    star = frame.rfind(b"*")
    if star < 0 or len(frame) - star != 3:
        raise FrameError(MALFORMED, "missing *CC checksum")
    body, cc = frame[1:star], frame[star + 1:]
    if not _CC_RE.match(cc):
        raise FrameError(MALFORMED, "checksum is not two upper-case hex digits")
    expected = int(cc, 16)
    if crc8(body) != expected:
        raise FrameError(BAD_CHECKSUM, f"crc {crc8(body):02X} != {cc.decode()}")
    tokens = body.decode("ascii").split(" ")
    if len(tokens) < 2 or not _SEQ_RE.match(tokens[0]) or int(tokens[0]) > 65535:
        raise FrameError(MALFORMED, "bad sequence number")
    type_ = tokens[1]
    if not _TYPE_RE.match(type_):
        raise FrameError(MALFORMED, "bad type")
    if type_ not in known_types:
        raise FrameError(UNKNOWN_TYPE, type_)
    rest = tokens[2:]
    subject = None
    if type_ in ("ACK", "NAK"):
        if not rest or not _TYPE_RE.match(rest[0]):
            raise FrameError(MALFORMED, f"{type_} without the acknowledged type")
        subject, rest = rest[0], rest[1:]
    args: dict[str, str] = {}
    for token in rest:
        key, sep, value = token.partition("=")
        if not sep or not _KEY_RE.match(key) or not _VALUE_RE.match(value):
            raise FrameError(MALFORMED, f"bad argument {token[:20]!r}")
        args[key] = value
    return Frame(int(tokens[0]), type_, args, subject)


class LineBuffer:
    """Accumulates serial bytes into lines, never holding more than `limit` bytes of one line.

    Why: a noisy line without newlines must not grow memory; an over-long line is dropped up to the
    next newline and reported once as `oversize`.
    """

    def __init__(self, limit: int = MAX_FRAME + 8) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Add bytes; return complete lines (and an `oversize` error per dropped line)."""
        out: list[bytes | FrameError] = []
        parts = data.split(b"\n")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if self._discarding:
                if not last:
                    self._discarding = False
                continue
            self._buf += part
            if len(self._buf) > self.limit:
                out.append(FrameError(OVERSIZE, f"line longer than {self.limit} bytes"))
                self._buf.clear()
                self._discarding = last
                continue
            if not last:
                if self._buf.strip(b"\r"):
                    out.append(bytes(self._buf))
                self._buf.clear()
        return out

    def reset(self) -> None:
        """Forget any partial line (after a reconnect)."""
        self._buf.clear()
        self._discarding = False
