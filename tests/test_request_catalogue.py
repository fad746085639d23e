"""Every request of the full simulation bin: documented in the README with its argument schema, and a bad
argument always gets an error response naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, Broker, DaemonProcess, Probe
from .test_bin_e2e import SIM_ROOT, fast_simulation_config

README = (REPO / "README.md").read_text()
SCHEMA_BLOCK = re.compile(r"<!-- request-schemas:begin -->\n(.*?)<!-- request-schemas:end -->", re.S)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Probe]]:
    """`help` of a daemon running config/simulation.yaml (every component on), and a probe to talk to it."""
    tmp = tmp_path_factory.mktemp("catalogue")
    broker = Broker(tmp)
    broker.start()
    config = fast_simulation_config(tmp, broker.port, simulation={"item_interval_s": 3600, "item_dwell_s": 1},
                                    health={"enabled": True, "interval_s": 60})
    daemon = DaemonProcess(config)
    probe = Probe(broker.port)
    try:
        probe.subscribe(f"{SIM_ROOT}/#")
        probe.wait_for(f"{SIM_ROOT}/availability", lambda m: m.payload == b"online", timeout=60)
        yield probe.request(SIM_ROOT, "help", timeout=20)["data"], probe
    finally:
        probe.close()
        daemon.stop()
        broker.stop()


def schema_line(command: str, entry: dict[str, Any]) -> str:
    """The README line of one command: its args JSON schema, compact and key-sorted."""
    return f"`{command}`: `{json.dumps(entry['args_schema'], sort_keys=True, separators=(',', ':'))}`"


def test_every_request_of_the_full_bin_has_a_row_and_its_exact_schema_in_the_readme(
        catalogue: tuple[dict[str, Any], Probe], tmp_path: Path) -> None:
    commands, _ = catalogue
    assert len(commands) >= 20
    missing_rows = [c for c in commands if not re.search(rf"^\| `{re.escape(c)}` \|", README, flags=re.M)]
    assert not missing_rows, f"README request table lacks {missing_rows}"
    block = SCHEMA_BLOCK.search(README)
    expected = "\n".join(f"- {schema_line(c, commands[c])}" for c in sorted(commands)) + "\n"
    if block is None or block.group(1) != expected:
        out = tmp_path / "request-schemas.md"
        out.write_text(expected)
        pytest.fail(f"README request schemas are out of date; the current block is in {out}")


def test_every_request_answers_an_unknown_argument_with_an_error_naming_it(
        catalogue: tuple[dict[str, Any], Probe]) -> None:
    commands, probe = catalogue
    for command in sorted(commands):
        resp = probe.request(SIM_ROOT, command, {"args": {"bogus_field": 1}}, timeout=15)
        assert resp["status"] == "error", (command, resp)
        assert "args.bogus_field" in resp["error"], (command, resp["error"])


def test_a_wrong_type_is_named_by_its_field(catalogue: tuple[dict[str, Any], Probe]) -> None:
    _, probe = catalogue
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("route", {"compartment": "two"}, "args.compartment"),
        ("route", {"compartment": 99}, "args.compartment"),
        ("lid", {"op": "explode"}, "args.op"),
        ("bin/calibrate", {"compartment": "paper", "point": "half"}, "args.point"),
        ("bin/calibrate", {"compartment": "a/b", "point": "empty"}, "args.compartment"),
        ("maintenance", {"on": "maybe"}, "args.on"),
        ("config/set", {"config": "not a mapping"}, "args.config"),
        ("storage/cleanup", {"what": ["everything"]}, "args.what"),
        ("camera/preview", {"on": "maybe"}, "args.on"),
        ("camera/preview", {"on": True, "minutes": 500}, "args.minutes"),
        ("restore", {"document": "not a mapping"}, "args.document"),
        ("restore", {"document": {}, "force": "sometimes"}, "args.force"),
        ("bin/restore", {"compartments": {"paper": {"items": -1}}}, "args.compartments.paper"),
        ("history/fill", {"compartment": "recycling", "limit": 501}, "args.limit"),
        ("history/health", {"since": "yesterday"}, "args.since"),
        ("history/counts", {"period": "week"}, "args.period"),
        ("history/items", {"limit": "many"}, "args.limit"),
        ("selftest", {"parts": ["everything"]}, "args.parts"),
        ("selftest", {"parts": []}, "args.parts"),
        ("selftest", {"move": "maybe"}, "args.move"),
        ("alerts/ack", {"id": 12}, "args.id"),
        ("alerts/ack", {"id": "not an id!"}, "args.id"),
    ]
    for command, args, field in cases:
        resp = probe.request(SIM_ROOT, command, {"args": args}, timeout=15)
        assert resp["status"] == "error" and field in resp["error"], (command, args, resp)


def test_the_documented_examples_are_valid_requests(catalogue: tuple[dict[str, Any], Probe]) -> None:
    commands, _ = catalogue
    for command, entry in commands.items():
        example = entry["example"]
        assert set(example) <= {"transaction", "args", "auth"}, command
        props = entry["args_schema"].get("properties", {})
        assert set(example.get("args", {})) <= set(props), (command, example)
