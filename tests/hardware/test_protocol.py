"""protocol.py: CRC-8, encode/parse round trips, every error kind, LineBuffer, and hypothesis fuzzing."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smartbin_daemon.hardware.arduino.protocol import (
    BAD_CHECKSUM,
    BAD_ENCODING,
    ERROR_KINDS,
    GARBAGE,
    HOST_TYPES,
    MALFORMED,
    MAX_FRAME,
    MCU_TYPES,
    OVERSIZE,
    UNKNOWN_TYPE,
    Frame,
    FrameError,
    LineBuffer,
    crc8,
    encode,
    parse_line,
)

FUZZ = settings(
    max_examples=int(os.environ.get("SMARTBIN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _with_crc(body: bytes) -> bytes:
    """`$body*CC` with the correct CRC, so that structural checks are what gets exercised."""
    return b"$" + body + b"*" + f"{crc8(body):02X}".encode()


def _kind(line: bytes, **kw: object) -> str:
    with pytest.raises(FrameError) as info:
        parse_line(line, **kw)  # type: ignore[arg-type]
    return info.value.kind


# -- CRC -----------------------------------------------------------------------------------------------


def test_crc8_smbus_check_value() -> None:
    assert crc8(b"123456789") == 0xF4
    assert crc8(b"") == 0
    assert crc8(b"\x00") == 0
    assert crc8(b"\x01") == 0x07


def test_crc8_matches_a_bitwise_reference() -> None:
    def bitwise(data: bytes) -> int:
        crc = 0
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        return crc

    for data in (b"1 PING", b"0 BOOT fw=smartbin-fw ver=1.0.0 proto=1", bytes(range(256))):
        assert crc8(data) == bitwise(data)


# -- encode / parse --------------------------------------------------------------------------------------


def test_encode_known_frames() -> None:
    assert encode(1, "HELLO", {"proto": 1}) == b"$1 HELLO proto=1*CF\n"
    assert encode(2, "PING") == b"$2 PING*8C\n"
    assert encode(3, "ACK", {"bin": 2, "id": "1a2b"}, "ROUTE") == b"$3 ACK ROUTE bin=2 id=1a2b*4C\n"


@pytest.mark.parametrize("frame", [
    Frame(0, "BOOT", {"fw": "smartbin-fw", "ver": "1.0.0", "proto": "1"}),
    Frame(65535, "TEL", {"d": "412,380,-1", "lid": "closed", "w": "-3", "t": "21.5"}),
    Frame(7, "NAK", {"err": "bad_arg"}, "LID"),
    Frame(8, "ACK", {}, "RESET"),
    Frame(9, "HB", {"up": ""}),
])
def test_round_trip(frame: Frame) -> None:
    wire = frame.encode()
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    assert parse_line(wire) == frame
    assert parse_line(wire.rstrip(b"\n") + b"\r\n") == frame


def test_garbage_before_the_start_marker_is_skipped() -> None:
    assert parse_line(b"\x00\xffnoise $2 PING*8C") == Frame(2, "PING")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seq": -1, "type_": "PING"}, "seq"),
    ({"seq": 65536, "type_": "PING"}, "seq"),
    ({"seq": 1, "type_": "ping"}, "type"),
    ({"seq": 1, "type_": "P"}, "type"),
    ({"seq": 1, "type_": "PING\n"}, "type"),
    ({"seq": 1, "type_": "LED", "args": {"p": "on\n"}}, "argument"),
    ({"seq": 1, "type_": "LED", "args": {"P": "on"}}, "argument"),
    ({"seq": 1, "type_": "LED", "args": {"p": "o n"}}, "argument"),
    ({"seq": 1, "type_": "LED", "args": {"p": "x" * 41}}, "argument"),
    ({"seq": 1, "type_": "ACK"}, "subject"),
    ({"seq": 1, "type_": "PING", "subject": "HELLO"}, "subject"),
    ({"seq": 1, "type_": "ACK", "subject": "ping"}, "subject"),
    ({"seq": 1, "type_": "TEL", "args": {f"k{c}": "x" * 30 for c in "abcd"}}, "too long"),
])
def test_encode_refuses_what_the_mcu_could_not_parse(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("line", "kind"), [
    (b"hello world", GARBAGE),
    (b"", GARBAGE),
    (b"$1 PING*8C" + b" " * 200, OVERSIZE),
    (b"x" * 112 + b"$2 PING*8C", OVERSIZE),  # the whole line counts, like the MCU's 128-byte buffer
    (b"$2 PI\xc3\x9cNG*8C", BAD_ENCODING),
    (b"$2 PING\t*8C", BAD_ENCODING),
    (b"$2 PING*8C\x00", BAD_ENCODING),
    (b"$2 PING", MALFORMED),  # no checksum
    (b"$2 PING*8", MALFORMED),
    (b"$2 PING*8CC", MALFORMED),
    (b"$2 PING*ZZ", MALFORMED),
    (b"$2 PING*8c", MALFORMED),  # lower-case hex is not the wire format
    (b"$2 PING*+C", MALFORMED),  # int() would accept a sign: the parser must not
    (b"$2 PING* C", MALFORMED),
    (b"$2 PING*8D", BAD_CHECKSUM),
    (b"$2 PONG*8C", BAD_CHECKSUM),
    (_with_crc(b"2"), MALFORMED),  # no type
    (_with_crc(b"x PING"), MALFORMED),
    (_with_crc(b"123456 PING"), MALFORMED),
    (_with_crc(b"65536 PING"), MALFORMED),
    (_with_crc(b"2 Ping"), MALFORMED),
    (_with_crc(b"2  PING"), MALFORMED),  # double space
    (_with_crc(b"2 PING "), MALFORMED),  # trailing space
    (_with_crc(b"2 LED p"), MALFORMED),  # bare token outside ACK/NAK
    (_with_crc(b"2 LED P=on"), MALFORMED),
    (_with_crc(b"2 LED p=o;n"), MALFORMED),
    (_with_crc(b"2 LED " + b"k" * 13 + b"=1"), MALFORMED),
    (_with_crc(b"2 LED p=" + b"x" * 41), MALFORMED),
    (_with_crc(b"2 ACK"), MALFORMED),  # ACK without the acknowledged type
    (_with_crc(b"2 ACK p=1"), MALFORMED),
    (_with_crc(b"2 FOO"), UNKNOWN_TYPE),
])
def test_each_error_kind(line: bytes, kind: str) -> None:
    assert _kind(line) == kind


def test_known_types_are_per_direction() -> None:
    ping = encode(2, "PING")
    ack = encode(2, "ACK", {"up": 1}, "PING")
    assert parse_line(ping, known_types=HOST_TYPES) == Frame(2, "PING")
    assert _kind(ping, known_types=MCU_TYPES) == UNKNOWN_TYPE
    assert _kind(ack, known_types=HOST_TYPES) == UNKNOWN_TYPE
    assert parse_line(ack, known_types=MCU_TYPES).subject == "PING"


def test_max_frame_boundary() -> None:
    z = MAX_FRAME - 4 - len(b"1 TEL a=" + b"x" * 40 + b" b=" + b"y" * 40 + b" c=")  # '$' + body + '*CC'
    args = {"a": "x" * 40, "b": "y" * 40, "c": "z" * z}
    wire = encode(1, "TEL", args)
    assert len(wire) == MAX_FRAME + 1
    assert parse_line(wire) == Frame(1, "TEL", args)
    with pytest.raises(ValueError, match="too long"):
        encode(1, "TEL", {**args, "c": "z" * (z + 1)})
    assert _kind(wire.rstrip(b"\n").replace(b" c=", b" c=z")[:-3] + b"*00") == OVERSIZE


def test_a_dollar_inside_the_seq_can_resync_onto_a_valid_shorter_frame() -> None:
    """Documented limit: a byte corrupted into '$' restarts the frame (PROTOCOL.md); when the CRC of the
    skipped prefix is 0 the rest is a valid frame with a truncated seq — same TYPE and args, never others."""
    assert crc8(b"423") == 0
    line = encode(4231, "ROUTE", {"bin": 2, "id": "1a2b"}).rstrip(b"\n")
    corrupted = line[:3] + b"$" + line[4:]
    assert corrupted.startswith(b"$42$1 ROUTE")
    assert parse_line(corrupted) == Frame(1, "ROUTE", {"bin": "2", "id": "1a2b"})


# -- LineBuffer ---------------------------------------------------------------------------------------


def test_linebuffer_splits_lines_across_chunks() -> None:
    buf = LineBuffer()
    wire = encode(1, "PING") + encode(2, "HELLO", {"proto": 1})
    out: list[bytes | FrameError] = []
    for i in range(len(wire)):
        out += buf.feed(wire[i:i + 1])
    assert out == [encode(1, "PING").rstrip(b"\n"), encode(2, "HELLO", {"proto": 1}).rstrip(b"\n")]


def test_linebuffer_crlf_and_blank_lines() -> None:
    buf = LineBuffer()
    out = buf.feed(b"$2 PING*8C\r\n\r\n\n\r")
    assert out == [b"$2 PING*8C\r"]
    assert parse_line(out[0]) == Frame(2, "PING")
    assert buf.feed(b"\n") == [], "a lone \\r line is blank"


def test_linebuffer_discards_an_oversize_line_and_recovers() -> None:
    buf = LineBuffer()
    out = buf.feed(b"x" * 100)
    assert out == []
    out = buf.feed(b"y" * 100)
    assert len(out) == 1 and isinstance(out[0], FrameError) and out[0].kind == OVERSIZE
    assert buf.feed(b"z" * 500) == [], "reported once per line"
    assert buf.feed(b"tail\n$2 PING*8C\n") == [b"$2 PING*8C"]


def test_linebuffer_limit_is_inclusive() -> None:
    buf = LineBuffer(limit=10)
    assert buf.feed(b"a" * 10 + b"\n") == [b"a" * 10]
    out = buf.feed(b"b" * 11 + b"\nok\n")
    assert [getattr(o, "kind", o) for o in out] == [OVERSIZE, b"ok"]


def test_linebuffer_reset_forgets_a_partial_line() -> None:
    buf = LineBuffer()
    buf.feed(b"$2 PI")
    buf.reset()
    assert buf.feed(b"NG*8C\n$2 PING*8C\n") == [b"NG*8C", b"$2 PING*8C"]
    buf.feed(b"x" * 200)
    buf.reset()
    assert buf.feed(b"$2 PING*8C\n") == [b"$2 PING*8C"], "reset also ends discarding"


# -- property-based fuzzing -----------------------------------------------------------------------------

_pieces = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"\n", b"\r\n", b"\r", b"$", b"*", encode(1, "PING"), encode(2, "HB", {"up": 9}),
                     b"x" * 127, b"x" * 128, b"x" * 129]),
)


def _reference_lines(data: bytes, limit: int) -> list[bytes | str]:
    """What LineBuffer must produce for `data`, however it is chunked."""
    out: list[bytes | str] = []
    parts = data.split(b"\n")
    for i, part in enumerate(parts):
        complete = i < len(parts) - 1
        if len(part) > limit:
            out.append(OVERSIZE)
        elif complete and part.strip(b"\r"):
            out.append(part)
    return out


@FUZZ
@given(pieces=st.lists(_pieces, max_size=20), cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=30),
       limit=st.sampled_from([8, 64, MAX_FRAME + 8]))
def test_fuzz_linebuffer_any_bytes_any_chunking(pieces: list[bytes], cuts: list[int], limit: int) -> None:
    data = b"".join(pieces)
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    buf = LineBuffer(limit=limit)
    out: list[bytes | str] = []
    for a, b in zip(points, points[1:], strict=False):
        for item in buf.feed(data[a:b]):
            if isinstance(item, FrameError):
                assert item.kind == OVERSIZE
                out.append(item.kind)
            else:
                assert isinstance(item, bytes) and len(item) <= limit and b"\n" not in item
                out.append(item)
    assert out == _reference_lines(data, limit)


_frame_like = st.text(alphabet="$*0123456789ABCDEF PINGACKTEL=abdp,._-\r\n\x00\xe9", max_size=160)
_token_soup = st.lists(st.sampled_from(["1", "65535", "65536", "007", "", "PING", "ACK", "NAK", "TEL", "FOO", "P",
                                        "p=on", "d=1,-2", "x", "k=", "=v", "a=b=c", "up=5"]), max_size=6)


@FUZZ
@given(line=st.one_of(st.binary(max_size=200), _frame_like.map(lambda s: s.encode("utf-8")),
                      st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=130)
                      .map(lambda s: _with_crc(s.encode())),
                      _token_soup.map(lambda tokens: _with_crc(" ".join(tokens).encode()))))
def test_fuzz_parse_line_only_raises_frame_errors(line: bytes) -> None:
    try:
        frame = parse_line(line)
    except FrameError as err:
        assert err.kind in ERROR_KINDS
    else:
        assert parse_line(frame.encode()) == frame, "whatever parses re-encodes to the same frame"


_types = st.sampled_from(sorted(HOST_TYPES | MCU_TYPES - {"ACK", "NAK"}))
_keys = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
_values = st.from_regex(r"[A-Za-z0-9_.,:+-]{0,40}", fullmatch=True)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    """Any frame encode() accepts in content (it may still be too long)."""
    seq = draw(st.integers(min_value=0, max_value=65535))
    args = draw(st.dictionaries(_keys, _values, max_size=4))
    if draw(st.booleans()):
        return Frame(seq, draw(st.sampled_from(["ACK", "NAK"])), args, draw(st.sampled_from(sorted(HOST_TYPES))))
    return Frame(seq, draw(_types), args)


@FUZZ
@given(frame=frames())
def test_fuzz_valid_frames_round_trip(frame: Frame) -> None:
    try:
        wire = frame.encode()
    except ValueError as err:
        assert "too long" in str(err)
        body = " ".join([str(frame.seq), frame.type, *([frame.subject] if frame.subject else []),
                         *(f"{k}={v}" for k, v in frame.args.items())])
        assert len(body) + 4 > MAX_FRAME
        return
    assert len(wire) - 1 <= MAX_FRAME
    assert parse_line(wire) == frame


@FUZZ
@given(frame=frames(), data=st.data())
def test_fuzz_single_byte_corruption_is_never_a_different_valid_frame(frame: Frame, data: st.DataObject) -> None:
    try:
        line = frame.encode().rstrip(b"\n")
    except ValueError:
        assume(False)
        return
    pos = data.draw(st.integers(min_value=0, max_value=len(line) - 1), label="pos")
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != line[pos]), label="byte")
    corrupted = line[:pos] + bytes([new]) + line[pos + 1:]
    try:
        parsed = parse_line(corrupted)
    except FrameError as err:
        assert err.kind in ERROR_KINDS
        return
    if parsed == frame:
        return
    # The only way through: the byte became '$' inside the seq digits and the CRC of the skipped prefix
    # happened to be 0 (see test_a_dollar_inside_the_seq_...). TYPE and args are then intact.
    assert new == ord("$") and 1 < pos <= len(str(frame.seq)), (corrupted, parsed)
    assert (parsed.type, parsed.subject, parsed.args) == (frame.type, frame.subject, frame.args)
    digits = corrupted[pos + 1:].split(b" ")[0].decode()
    assert str(frame.seq).endswith(digits) and parsed.seq == int(digits)
