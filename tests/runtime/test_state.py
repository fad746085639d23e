"""The typed state base: the published dict, and tolerant parsing of what an older daemon (or a test) publishes."""

from __future__ import annotations

import json

from smartbin_daemon.runtime.status import CONNECTED, ConnectionStatus
from smartbin_daemon.states import CameraState, DetectorState, FillState, parse_state
from smartbin_daemon.states.fill import BinLevel


def test_enums_publish_as_their_plain_strings() -> None:
    assert json.dumps(CameraState.from_json({"status": "connected"}).to_json()["status"]) == '"connected"'
    assert type(CameraState.from_json({"status": "connected"}).to_json()["status"]) is str
    assert f"{CONNECTED}" == str(CONNECTED) == "%s" % CONNECTED == "connected"  # noqa: UP031 - as logging formats


def test_from_json_types_nested_fields_and_tolerates_missing_and_unknown_keys() -> None:
    fill = FillState.from_json({"compartments": {"paper": {"level": "full", "fill_pct": 97.0, "new_key": 1}}})
    assert fill.compartments["paper"].level is BinLevel.FULL and fill.compartments["paper"].fill_pct == 97.0
    assert fill.compartments["paper"].items == 0 and fill.compartments["paper"].distance_mm is None
    det = DetectorState.from_json({"enabled": False, "last": {"category": "paper"}})
    assert det.enabled is False and det.model is None and det.last is not None and det.last.category == "paper"
    cam = CameraState.from_json({"status": "warming_up"})  # a status this version does not know stays a string
    assert cam.status == "warming_up" and cam.status != ConnectionStatus.CONNECTED
    assert CameraState.from_json(None).status is None
    assert parse_state("nobody", {}) is None


def test_a_published_state_parses_back_to_an_equal_model() -> None:
    det = DetectorState.from_json({"enabled": True, "model": "m", "gate_state": "collecting",
                                   "inference_ms": {"p50": 1.0, "p95": 2.0}, "stages_ms": {"inference": {"p50": 1.0}}})
    assert DetectorState.from_json(json.loads(json.dumps(det.to_json()))) == det
