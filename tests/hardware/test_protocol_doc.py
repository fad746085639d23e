"""PROTOCOL.md is the contract: its example frames, tables and constants against the parser, the simulator
and the reference firmware source.

The command and unsolicited examples run against both backends: the Python simulator ("python-sim") and the
reference firmware ("firmware": built with Debian's AVR toolchain and run under simavr, see firmware.py, or the
board named by SMARTBIN_FW_PORT).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smartbin_daemon.hardware.arduino import simulator
from smartbin_daemon.hardware.arduino.board import BoardSpec
from smartbin_daemon.hardware.arduino.protocol import (
    _CRC_TABLE,
    HOST_TYPES,
    MAX_FRAME,
    MCU_TYPES,
    PROTOCOL_VERSION,
    Frame,
    LineBuffer,
    parse_line,
)
from smartbin_daemon.hardware.arduino.simulator import SimulatedArduino
from tests.hardware.test_simulator import FAST, Host

ARDUINO_DIR = Path(simulator.__file__).resolve().parent
DOC = ARDUINO_DIR / "PROTOCOL.md"
SKETCH = ARDUINO_DIR / "firmware" / "smartbin_fw" / "smartbin_fw.ino"
DOC_SENSORS = ("us", "lid", "hx711", "temp")  # what the documented HELLO reply lists
UNSOLICITED = ("BOOT", "TEL", "HB", "EVT", "FLT")
VOLATILE = {"up"}  # values that depend on time


def doc_text() -> str:
    """PROTOCOL.md."""
    return DOC.read_text(encoding="utf-8")


def doc_lines() -> list[str]:
    """The example frames between the frames:begin/end markers."""
    text = doc_text()
    block = text.split("<!-- frames:begin -->", 1)[1].split("<!-- frames:end -->", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("```")]


def doc_frames() -> list[Frame]:
    """The example frames, parsed."""
    return [parse_line(line.encode("ascii")) for line in doc_lines()]


def section(title: str) -> str:
    """The text of one `## title` section."""
    text = doc_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def table_first_column(text: str) -> list[str]:
    """Backticked names in the first column of the markdown table rows in `text`."""
    return re.findall(r"^\| `([A-Z]+)` \|", text, flags=re.M)


# -- the examples themselves ---------------------------------------------------------------------------


def test_examples_parse_and_are_canonical() -> None:
    lines = doc_lines()
    assert len(lines) >= 10
    for line in lines:
        frame = parse_line(line.encode("ascii"))
        assert frame.encode() == (line + "\n").encode("ascii"), "examples are in encode()'s canonical form"
        assert len(line) <= MAX_FRAME
        if frame.type in HOST_TYPES:
            assert frame.seq != 0, "the host never uses seq 0"
        if frame.type == "BOOT":
            assert frame.seq == 0


def test_every_type_has_an_example() -> None:
    types = {f.type for f in doc_frames()}
    assert {"ACK", "NAK", *UNSOLICITED} <= types
    assert {"HELLO", "PING", "ROUTE", "LID"} <= types


def test_documented_replies_answer_documented_commands() -> None:
    frames = doc_frames()
    commands = {(f.seq, f.type) for f in frames if f.type in HOST_TYPES}
    for reply in (f for f in frames if f.type in ("ACK", "NAK")):
        assert (reply.seq, reply.subject) in commands, f"reply without its command: {reply}"


# -- tables against the code -------------------------------------------------------------------------------


def test_tables_list_exactly_the_types_the_code_knows() -> None:
    commands = table_first_column(section("Commands (host → MCU) and replies"))
    assert sorted(commands) == sorted(HOST_TYPES)
    assert sorted(table_first_column(section("Unsolicited frames (MCU → host)"))) == sorted(UNSOLICITED)
    assert set(UNSOLICITED) | {"ACK", "NAK"} == MCU_TYPES


def test_codes_and_patterns_match_the_simulator() -> None:
    commands = section("Commands (host → MCU) and replies")
    naks = re.search(r"NAK codes: (.*?)\.", commands)
    assert naks is not None
    assert re.findall(r"`(\w+)`", naks.group(1)) == list(simulator.NAK_CODES)
    led = re.search(r"\| `LED` \| `p=([^`]+)`", commands)
    buz = re.search(r"\| `BUZ` \| `p=([^`]+)`", commands)
    lid = re.search(r"\| `LID` \| `op=([^`]+)`", commands)
    assert led and buz and lid
    assert led.group(1).split("\\|") == list(simulator.LED_PATTERNS)
    assert buz.group(1).split("\\|") == list(simulator.BUZ_PATTERNS)
    assert lid.group(1).split("\\|") == list(simulator.LID_OPS)
    sensors = re.search(r"list ⊆ `([a-z0-9,]+)`", commands)
    assert sensors and sensors.group(1).split(",") == list(simulator.SENSOR_NAMES)
    unsolicited = section("Unsolicited frames (MCU → host)")
    faults = re.search(r"on a fault: (.*?) \|", unsolicited)
    assert faults and re.findall(r"`(\w+)`", faults.group(1)) == list(simulator.FAULT_CODES)
    assert "the last 8 `id`s" in commands and simulator.DEDUPE_DEPTH == 8
    assert f"at most {MAX_FRAME} bytes" in section("Framing")


def test_lid_table_matches_the_state_machine() -> None:
    rows = re.findall(r"^\| `(open|close|lock|unlock)` \| (.+?) \| (.+?) \| (.+?) \|$", doc_text(), flags=re.M)
    assert len(rows) == 4
    for op, *cells in rows:
        for state, cell in zip(("open", "closed", "locked"), cells, strict=True):
            new, err = simulator.lid_transition(state, op)
            expected = f"NAK `{err}`" if err else f"`{new}`"
            assert cell.startswith(expected), (op, state, cell)


# -- the firmware source against the same constants ----------------------------------------------------------


def _define(source: str, name: str) -> str:
    match = re.search(rf"^#define {name} (\S+)", source, flags=re.M)
    assert match, name
    return match.group(1)


def test_firmware_constants_match() -> None:
    src = SKETCH.read_text(encoding="utf-8")
    table = re.search(r"CRC8_TABLE\[256\] PROGMEM = \{(.*?)\};", src, flags=re.S)
    assert table
    assert [int(x, 16) for x in re.findall(r"0x([0-9A-F]{2})", table.group(1))] == _CRC_TABLE
    assert int(_define(src, "PROTO_VERSION")) == PROTOCOL_VERSION
    assert int(_define(src, "MAX_FRAME")) == MAX_FRAME
    assert int(_define(src, "RX_BUF_SIZE")) == LineBuffer().limit
    assert int(_define(src, "DEDUPE_DEPTH")) == simulator.DEDUPE_DEPTH
    assert _define(src, "TEL_INTERVAL_MS") == "500UL" and "every 500 ms" in doc_text()
    assert _define(src, "HB_INTERVAL_MS") == "1000UL" and "every 1 s" in doc_text()
    assert _define(src, "SERIAL_BAUD") == "115200UL" and "115200 8N1" in doc_text()
    board = BoardSpec()
    assert _define(src, "FW_NAME") == f'"{board.fw}"'
    assert _define(src, "FW_VERSION") == f'"{board.version}"'
    host_types = re.search(r"HOST_TYPES\[\] = \{(.*?)\};", src)
    assert host_types and set(re.findall(r'"([A-Z]+)"', host_types.group(1))) == HOST_TYPES
    for table_name, names in (("LED_PATTERNS", simulator.LED_PATTERNS), ("BUZ_PATTERNS", simulator.BUZ_PATTERNS)):
        body = re.search(rf"PatternDef {table_name}\[\] = \{{(.*?)\n\}};", src, flags=re.S)
        assert body and tuple(re.findall(r'\{"(\w+)"', body.group(1))) == names
    assert set(re.findall(r'sendNak\(cmd, "(\w+)"\)', src)) | {"locked", "busy"} <= set(simulator.NAK_CODES)
    assert set(re.findall(r'sendFault\("(\w+)"', src)) <= set(simulator.FAULT_CODES)
    lid_names = re.search(r"LID_NAMES\[3\] = \{(.*?)\};", src)
    assert lid_names and tuple(re.findall(r'"(\w+)"', lid_names.group(1))) == simulator.LID_STATES
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", src, flags=re.S)
    assert not re.search(r"\b(String|malloc|calloc|realloc|free|new|delete)\b", code), "no String class, no heap"


# -- the examples against a live board -------------------------------------------------------------------------


@pytest.fixture(params=["python-sim", "firmware"])
def board(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Host, SimulatedArduino | None]]:
    """A host connected to the simulator (configured like the doc's HELLO) or to the firmware, freshly reset."""
    if request.param == "firmware":
        host = Host(request.getfixturevalue("firmware_port"))
        try:
            yield "firmware", host, None
        finally:
            host.close()
        return
    sim = SimulatedArduino(tmp_path / "arduino", **{**FAST, "sensors": DOC_SENSORS})
    sim.start()
    host = Host(sim.link)
    try:
        host.wait_boot()
        yield "python-sim", host, sim
    finally:
        host.close()
        sim.stop()


def _precondition(kind: str, host: Host, reply: Frame) -> None:
    """Bring the board into the state a documented NAK needs, with commands only (works on both)."""
    if reply.type == "NAK" and reply.subject == "LID" and reply.args.get("err") == "locked":
        host.command("LID", {"op": "close"}, seq=900, timeout=2.0)
        if kind == "firmware":
            time.sleep(1.0)  # the lid needs LID_MOVE_MS to shut before it can be locked
        assert host.command("LID", {"op": "lock"}, seq=901, timeout=2.0).args == {"lid": "locked"}


def test_command_examples_get_the_documented_replies(board: tuple[str, Host, SimulatedArduino | None]) -> None:
    kind, host, _ = board
    frames = doc_frames()
    volatile = VOLATILE | ({"sensors", "bins"} if kind == "firmware" else set())
    checked = 0
    for command in (f for f in frames if f.type in HOST_TYPES):
        documented = [f for f in frames if f.type in ("ACK", "NAK") and f.seq == command.seq
                      and f.subject == command.type]
        assert documented, command
        for expected in documented:
            _precondition(kind, host, expected)
            reply = host.command(command.type, dict(command.args), seq=command.seq, timeout=2.0)
            assert (reply.seq, reply.type, reply.subject) == (expected.seq, expected.type, expected.subject)
            assert set(reply.args) == set(expected.args), (expected, reply)
            for key, value in expected.args.items():
                if key not in volatile:
                    assert reply.args[key] == value, (key, expected, reply)
                elif key == "up":
                    assert reply.args[key].isdigit()
            checked += 1
    assert checked >= 5


def _capture(kind: str, host: Host, sim: SimulatedArduino | None) -> list[Frame]:
    """Make the board emit every unsolicited type and return what arrived."""
    start = host.mark()
    assert host.command("LID", {"op": "open"}, timeout=2.0).type == "ACK"
    host.command("LID", {"op": "close"}, timeout=2.0)
    if sim is not None:
        sim.jam(2)
        assert host.command("ROUTE", {"bin": 2, "id": "f1"}).type == "ACK"
        host.wait_for(lambda f: f.type == "FLT", start=start)
        sim.jam(2, jammed=False)
        assert host.command("ROUTE", {"bin": 1, "id": "f2"}).type == "ACK"
    else:
        time.sleep(1.0)
        host.command("ROUTE", {"bin": 1, "id": "f2"}, timeout=2.0)
    host.wait_for(lambda f: f.type == "EVT" and "drop" in f.args, timeout=5.0, start=start)
    mark = host.mark()
    assert host.command("RESET", timeout=2.0).type == "ACK"
    host.wait_boot(timeout=5.0, start=mark)
    deadline = time.monotonic() + (15.0 if kind == "firmware" else 2.0)
    while time.monotonic() < deadline and not set(UNSOLICITED) <= {f.type for f in host.frames[start:]}:
        host.poll()
    return host.frames[start:]


def test_unsolicited_examples_have_the_shape_the_board_emits(board: tuple[str, Host, SimulatedArduino | None]) -> None:
    kind, host, sim = board
    captured = _capture(kind, host, sim)
    shapes: dict[str, set[frozenset[str]]] = {}
    for frame in captured:
        shapes.setdefault(frame.type, set()).add(frozenset(frame.args))
    for example in (f for f in doc_frames() if f.type in UNSOLICITED):
        if kind == "firmware" and example.type == "TEL":
            assert {"d", "lid"} <= set(example.args)  # w/t depend on the fitted sensors
            continue
        assert frozenset(example.args) in shapes.get(example.type, set()), (example, shapes.get(example.type))
    bins = 3
    for frame in captured:
        if frame.type == "TEL":
            assert len(frame.args["d"].split(",")) == bins
            assert all(re.fullmatch(r"-1|\d+", d) for d in frame.args["d"].split(","))
            assert frame.args["lid"] in simulator.LID_STATES
            if "t" in frame.args:
                assert re.fullmatch(r"-?\d+\.\d", frame.args["t"])
            if "w" in frame.args:
                assert re.fullmatch(r"-?\d+", frame.args["w"])
        elif frame.type == "EVT":
            assert len(frame.args) == 1
            (key, value), = frame.args.items()
            assert (key == "lid" and value in simulator.LID_STATES) or (key == "drop" and 1 <= int(value) <= bins)
        elif frame.type == "FLT":
            assert frame.args["code"] in simulator.FAULT_CODES
        elif frame.type == "BOOT":
            assert frame.seq == 0 and frame.args["proto"] == str(PROTOCOL_VERSION)
    unsolicited = [f for f in captured if f.type in UNSOLICITED and f.type != "BOOT"]
    assert all(f.seq != 0 for f in unsolicited), "only BOOT uses seq 0"


def test_examples_fit_the_mcu_line_buffer() -> None:
    assert all(len(line) + len("\r\n") <= LineBuffer().limit for line in doc_lines())
