"""Property-based fuzzing of what comes from outside: request payloads (every command), request signatures and
config documents. Nothing may raise anything but the documented error, and every error names its field.

SMARTBIN_FUZZ_EXAMPLES sets the number of cases per property (300 in CI; the bench runs 10,000).
Serial frames are fuzzed in tests/hardware/test_protocol.py with the same knob.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartbin_daemon.alerts.worker import AlertsWorker
from smartbin_daemon.bins.tracker import FillTracker
from smartbin_daemon.bins.workflow import SortingWorkflow
from smartbin_daemon.config import ConfigError, parse_config
from smartbin_daemon.control import core_requests
from smartbin_daemon.hardware.arduino.link import ArduinoLink
from smartbin_daemon.health.monitor import HealthMonitor
from smartbin_daemon.runtime.auth import AuthError, Verifier, sign
from smartbin_daemon.runtime.bus import Bus
from smartbin_daemon.runtime.commands import ParsedRequest, RequestError, RequestRegistry
from smartbin_daemon.store import Store
from smartbin_daemon.vision.camera import CameraWorker
from smartbin_daemon.vision.detector import DetectorWorker
from smartbin_daemon.vision.frames import LatestFrame

from .conftest import REPO

FUZZ = settings(max_examples=int(os.environ.get("SMARTBIN_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SIM_DOC: dict[str, Any] = yaml.safe_load((REPO / "config" / "simulation.yaml").read_text())


def full_registry(tmp: Path) -> RequestRegistry:
    """Every command the full bin answers, registered the way the app does."""
    cfg = parse_config(SIM_DOC, base_dir=REPO / "config")
    bus = Bus()
    store = Store(tmp / "fuzz.db")
    registry = RequestRegistry()
    specs = [*core_requests(), *ArduinoLink(bus, cfg.arduino, tmp).requests(),
             *DetectorWorker(bus, cfg.detector, cfg.camera, cfg.evidence, LatestFrame(), tmp).requests(),
             *CameraWorker(bus, cfg.camera, LatestFrame(), base_dir=tmp).requests(),
             *FillTracker(bus, cfg.bins, store).requests(),
             *SortingWorkflow(bus, cfg.bins, store, owners={}, vision={}).requests(),
             *HealthMonitor(bus, cfg.health, tmp, store=store).requests(),
             *AlertsWorker(bus, cfg).requests()]
    for spec in specs:
        registry.register(spec)
    return registry


REGISTRY = full_registry(Path(os.environ.get("TMPDIR", "/tmp")))
COMMANDS = sorted(s.command for s in REGISTRY.specs())

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                                 st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                           max_leaves=20)


def _arg_dicts(command: str) -> st.SearchStrategy[dict[str, Any]]:
    """Dictionaries built from the command's own argument names (so validation, not just `unknown field`, runs)."""
    spec = REGISTRY.get(command)
    assert spec is not None
    names = sorted(spec.schema().get("properties", {})) or ["x"]
    return st.dictionaries(st.sampled_from(names + ["bogus"]), json_values, max_size=4)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    command = draw(st.sampled_from(COMMANDS + ["no/such", "UPPER", ""]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return command, draw(st.binary(max_size=300))
    if kind == 1:
        return command, json.dumps(draw(json_values)).encode()
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["transaction"] = draw(json_values)
    if command in COMMANDS and draw(st.booleans()):
        body["args"] = draw(_arg_dicts(command))
    elif draw(st.booleans()):
        body["args"] = draw(json_values)
    if draw(st.booleans()):
        body["auth"] = draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=8))] = draw(json_values)
    return command, json.dumps(body, allow_nan=False).encode()


@FUZZ
@given(case=payloads())
def test_every_request_payload_parses_or_gets_a_well_formed_error(case: tuple[str, bytes]) -> None:
    command, payload = case
    try:
        parsed = REGISTRY.parse(command, payload, 65536)
    except RequestError as err:
        assert str(err).strip(), "an error response must say what is wrong"
        assert "\n" not in str(err)
        return
    assert isinstance(parsed, ParsedRequest) and parsed.spec.command == command
    parsed.spec.args.model_validate(parsed.args)  # what reaches the owner is valid for its schema
    json.dumps(parsed.args)  # and JSON-able (it may be echoed back)


def test_the_request_fuzzer_covers_the_whole_catalogue() -> None:
    assert {"route", "lid", "bin/calibrate", "maintenance", "config/set", "model/reload", "camera/preview", "backup",
            "restore", "bin/restore"} <= set(COMMANDS)


VERIFIER_SECRET = "fuzz-secret"


@FUZZ
@given(command=st.sampled_from(COMMANDS), args=json_values, auth=json_values, skew=st.floats(-1e6, 1e6))
def test_any_auth_object_is_accepted_only_when_genuine(command: str, args: Any, auth: Any, skew: float) -> None:
    verifier = Verifier(VERIFIER_SECRET, "sim-bin")
    args_dict = args if isinstance(args, dict) else {"v": args}
    with pytest.raises(AuthError):
        verifier.verify(command, args_dict, auth)
    genuine = sign(VERIFIER_SECRET, "sim-bin", command, args_dict)
    genuine["ts"] += skew if math.isfinite(skew) else 0
    if abs(skew) > verifier.max_skew_s:
        with pytest.raises(AuthError, match="auth"):
            verifier.verify(command, args_dict, genuine)


# --------------------------------------------------------------------------- config

_SEGMENT = r'(\.?[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])'
ERROR_LINE = re.compile(rf"^(<root>|<yaml>|<file>|({_SEGMENT})+): \S")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


SIM_PATHS = _paths(SIM_DOC)
config_values = st.one_of(json_values, st.floats(), st.sampled_from([-1, 0, 1, 10**9, "", "a/b", "#", "GPIO99", [], {}]))


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(SIM_PATHS), config_values, st.booleans()), min_size=1, max_size=6))
def test_any_mutated_config_loads_or_names_every_error_by_key_path(mutations: list[tuple[tuple[Any, ...], Any, bool]]) -> None:
    doc = copy.deepcopy(SIM_DOC)
    for path, value, delete in mutations:
        node: Any = doc
        for key in path[:-1]:
            if (isinstance(node, dict) and key in node) or (
                    isinstance(node, list) and isinstance(key, int) and key < len(node)):
                node = node[key]
            else:
                node = None
                break
        last = path[-1]
        if isinstance(node, dict):
            if delete:
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
    try:
        parse_config(doc, "fuzz.yaml", REPO / "config")
    except ConfigError as err:
        assert err.errors, "a rejected config names at least one problem"
        for line in err.errors:
            assert ERROR_LINE.match(line), line
