"""Every Home Assistant template the daemon declares renders against its component's typed state model.

The entities are gathered as the daemon gathers them (each configured worker's `entities()`, from the App's own
worker factories for a bin with every component), the payloads built by mqtt/discovery.py, and every `*_template`
in them rendered with jinja2 (as HA does: `value_json` is the parsed JSON) under StrictUndefined, against an
example of each state model serialised as the daemon publishes it. A template naming a field the model lacks fails.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from smartbin_daemon.app import App
from smartbin_daemon.config import parse_config
from smartbin_daemon.mqtt.discovery import Topics, entity_config
from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.bus import Entity
from smartbin_daemon.runtime.state import State
from smartbin_daemon.runtime.status import ConnectionStatus
from smartbin_daemon.states import STATE_MODELS, HealthStatus, SortingState
from smartbin_daemon.states.alerts import ActiveAlert, AlertCounts, AlertsState, WebhookCounters
from smartbin_daemon.states.arduino import ArduinoState, LinkCounters
from smartbin_daemon.states.camera import CameraPreview, CameraState
from smartbin_daemon.states.daemon import Audit, DaemonState
from smartbin_daemon.states.detector import DetectorState, GateState, LastDecision, Percentiles, Thresholds
from smartbin_daemon.states.fill import BinLevel, Calibration, CompartmentFill, FillState, SensorRef
from smartbin_daemon.states.gpio import GpioState, StatusLed
from smartbin_daemon.states.health import HealthState
from smartbin_daemon.states.mqtt import MqttState, OutboxCounts
from smartbin_daemon.states.selftest import PartResult, PartStatus, SelfTestState, SelfTestStatus
from smartbin_daemon.states.simulation import SimulationState
from smartbin_daemon.states.workflow import ItemInFlight, SortingCounts, WorkflowState
from smartbin_daemon.store import Store

REPO = Path(__file__).resolve().parents[2]
ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)


def _compartment(cid: str) -> CompartmentFill:
    return CompartmentFill(
        name=cid.title(), categories=["plastic"], fill_pct=42.0, level=BinLevel.OK, full=False, distance_mm=320.0,
        items=3, items_total=9, emptied_at="2024-05-01T10:00:00Z", rate_pct_per_h=1.5,
        predicted_full_at="2024-05-03T10:00:00Z", seconds_to_full=3600, capacity_l=40.0, free_l=23.2,
        calibration=Calibration(empty_mm=600.0, full_mm=100.0, source="config", calibrated_at=None),
        sensor=SensorRef(source="arduino", channel=1), rejected_readings={"outlier": 1})


def example_states(compartments: list[str], distances: list[str]) -> dict[str, State]:
    """One populated example of every component's state (optional parts present, so their templates are checked)."""
    pct = Percentiles(p50=12.5, p95=20.1)
    last_item = {"item_id": "a1", "category": "plastic", "outcome": "sorted", "at": "2024-05-01T10:00:00Z"}
    return {
        "daemon": DaemonState(version="1.0", pid=42, started_at="2024-05-01T10:00:00Z", uptime_s=60,
                              workers={"mqtt": {"status": "running"}}, failed_workers=[], restart_required=[],
                              bus_dropped={}, audit=Audit(privileged_accepted={}, refused=0, signing_keys=[],
                                                          revoked_keys=[])),
        "mqtt": MqttState(status=ConnectionStatus.CONNECTED, broker="localhost:1883", protocol="5", tls=False,
                          connected_since=None, connects=1, disconnects=0, last_error=None, requests=0, request_errors=0,
                          requests_unauthorized=0, requests_rate_limited=0, requests_privileged={},
                          outbox=OutboxCounts(pending=0, inflight=0, sent=1, acked=1, rejected=0, dropped=0,
                                              dropped_by_size=0, dropped_by_age=0)),
        "health": HealthState(status=HealthStatus.OK, score=100, conditions=["throttled"],
                              cpu={"percent": 12.0, "per_core": [12.0], "count": 1},
                              memory={"percent": 40.0}, swap={"percent": 0.0},
                              disk={"storage": {"percent": 30.0}, "root": {"percent": 30.0}},
                              temperatures={"cpu_c": 50.0, "gpu_c": None, "zones": []}, uptime_s=100,
                              network={"bytes_sent": 1, "bytes_recv": 1, "sent_bytes_per_s": 10.0,
                                       "recv_bytes_per_s": 20.0}, process={"rss_mb": 80.0},
                              pi=None, gpu={"present": True, "source": "jetson", "load_pct": 10.0, "temp_c": 40.0,
                                            "memory_pct": None},
                              power=None,
                              system={"hostname": "bin", "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.6.31",
                                      "architecture": "aarch64", "cpu_model": "Raspberry Pi 4 Model B Rev 1.4",
                                      "cpu_cores": 4, "cpu_threads": 4, "boot_time": "2024-05-01T09:00:00Z",
                                      "cpu_clock_mhz": {"current": 1500.0, "min": 600.0, "max": 1500.0},
                                      "ip": "192.168.1.20", "addresses": {"wlan0": ["192.168.1.20"]},
                                      "wifi": [{"interface": "wlan0", "link_quality": 58.0, "signal_dbm": -52.0,
                                                "ssid": None}]},
                              clock={"wall_time": "2024-05-01T10:00:00Z", "valid": True, "ntp_synchronized": None,
                                     "ntp_source": "unknown", "unsynchronized_for_s": None},
                              storage={"path": "/var/lib/smartbin", "total_bytes": 2000,
                                       **{c: {"bytes": 400, "files": 2} for c in ("database", "evidence", "dataset",
                                                                                  "bundles", "logs")},
                                       "other": {"bytes": 0, "files": 0}, "complete": True, "walk_ms": 3.0,
                                       "age_s": 1.0},
                              ts="2024-05-01T10:00:00Z"),
        "arduino": ArduinoState(status=ConnectionStatus.CONNECTED, connected=True, port="/dev/ttyACM0",
                                firmware="smartbin_fw", firmware_version="1.0", protocol=1, compartments=3,
                                sensors=["distance"], last_seen=None, rtt_ms=4.2, distances_mm=[300, 400, 500],
                                lid="closed", weight_g=412.0, temperature_c=31.5, fault=None, last_error=None,
                                counters=LinkCounters(frames_in=1, frames_out=1, checksum_errors=0, bad_frames=0,
                                                      errors={}, timeouts=0, retries=0, naks=0, reconnects=0,
                                                      write_errors=0)),
        "gpio": GpioState(pin_factory="mock", presence=False, door="closed", button="released", lid={"state": "closed"},
                          led=StatusLed(pattern="on", fault=False), buzzer="off",
                          distances={d: 300.0 for d in distances}, counters={"errors": 0}),
        "camera": CameraState(status=ConnectionStatus.CONNECTED, source="/dev/video0", kind="v4l2", resolution="640x480",
                              fps=9.8, target_fps=10.0, frames=100, decoded=10, last_frame_age_s=0.1,
                              reconnects_last_hour=0, stalls_last_hour=0, reconnects_total=0, stalls_total=0,
                              errors_total=0, open_attempts_total=1, last_error=None, last_error_at=None,
                              next_retry_s=None, unavailable_alert=False, source_stats={},
                              preview=CameraPreview(on=True, remaining_s=120, fps=1.0, paused=False, frames=3,
                                                    skipped_busy=0, last_bytes=21000)),
        "detector": DetectorState(enabled=True, continuous=False, gate="presence", gate_state=GateState.IDLE,
                                  model="waste-s", backend="onnxruntime", device="cpu", imgsz=640,
                                  thresholds=Thresholds(min_confidence=0.5, min_margin=0.1,
                                                        source={"min_confidence": "config", "min_margin": "config"}),
                                  warnings=[], inferences=5, decisions=1, decisions_per_minute=1, stale_frames=0,
                                  inference_ms=pct, stages_ms={"inference": pct},
                                  last=LastDecision(item_id="a1", category="plastic", class_name="bottle",
                                                    confidence=0.91, uncertain=False, snapshot=None,
                                                    at="2024-05-01T10:00:00Z"),
                                  evidence=None),
        "fill": FillState(compartments={c: _compartment(c) for c in compartments}, maintenance=False, lid_open=False),
        "workflow": WorkflowState(state=SortingState.IDLE, maintenance=False, maintenance_pending=False,
                                  item=ItemInFlight(item_id="a1", category="plastic", compartment="recycling",
                                                    route_attempts=1),
                                  error=None, blocked=None, vision="ok", degraded_policy="residual",
                                  levels={c: "ok" for c in compartments}, counts=SortingCounts(sorted=2),
                                  last_item=last_item),
        "simulation": SimulationState(items=1, samples=10, current="a.jpg", expected_category="plastic",
                                      interval_s=8.0, emptied=0),
        "alerts": AlertsState(active=[ActiveAlert(id="e1", source="fill", code="compartment_full_a", severity="warning",
                                                  since="2024-05-01T10:00:00.000Z", message="compartment A is full")],
                              counts=AlertCounts(warning=1, critical=0, total=1),
                              webhook=WebhookCounters(enabled=True, sent=1, last_sent_at="2024-05-01T10:00:00.000Z")),
        "selftest": SelfTestState(status=SelfTestStatus.FAIL, started_at="2024-05-01T10:00:00Z",
                                  finished_at="2024-05-01T10:00:09Z", duration_s=9.1, move=True, authority="signed",
                                  passed=1, failed=1, skipped=0,
                                  parts=[PartResult(part="camera", name="camera", status=PartStatus.PASS, value=9.8,
                                                    unit="fps", detail="12 new frames", duration_ms=220.0,
                                                    at="2024-05-01T10:00:01Z"),
                                         PartResult(part="routes", name="paper", status=PartStatus.FAIL,
                                                    detail="no answer in 5 s", duration_ms=5000.0,
                                                    at="2024-05-01T10:00:06Z")]),
    }


def _envelope(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": "e" * 32, "seq": 7, "type": type_, "ts": "2024-05-01T10:00:00.000Z", "ts_source": "clock",
            "device": "sim-bin", "component": "x", "data": data}


EXAMPLE_EVENTS: dict[str, dict[str, Any]] = {
    "item_sorted": _envelope("item_sorted", {
        "item_id": "a1", "detection_id": "d1", "class_name": "bottle", "category": "plastic", "confidence": 0.9,
        "uncertain": False, "reason": None, "compartment": "recycling", "compartment_name": "Recycling", "flap": 1,
        "route_attempts": 1, "started_at": "2024-05-01T10:00:00.000Z", "notes": [], "maintenance": False,
        "outcome": "sorted", "confirmation": "drop", "confirmed": True, "latency": {"total_ms": 800}}),
    "bin_level": _envelope("bin_level", {"compartment": "paper", "name": "Paper", "level": "full",
                                         "previous": "almost_full", "fill_pct": 96.0, "maintenance": False}),
    "bin_emptied": _envelope("bin_emptied", {"compartment": "paper", "name": "Paper", "items": 12, "peak_fill_pct": 97.0,
                                             "fill_pct": 2.0, "emptied_at": "2024-05-01T10:00:00.000Z",
                                             "source": "sensor", "maintenance": False}),
    "alert": _envelope("alert", {"source": "workflow", "code": "route_failed", "severity": "critical",
                                 "message": "no ACK", "active": True}),
}
"""An example envelope of each event an HA `event` entity listens to, as the README's Events table gives it."""


@pytest.fixture(scope="module")
def bin_with_everything(tmp_path_factory: pytest.TempPathFactory) -> tuple[App, list[Entity]]:
    """The simulation config plus GPIO distance sensors and LED; the entities of every worker the App builds."""
    tmp = tmp_path_factory.mktemp("templates")
    doc = yaml.safe_load((REPO / "config" / "simulation.yaml").read_text())
    doc["storage"]["path"] = str(tmp)
    doc["camera"]["source"] = str(tmp / "scene")
    doc["detector"]["model"] = str(REPO / "models" / "smartbin-waste-s.onnx")
    doc["simulation"]["samples"] = str(REPO / "tests" / "data" / "samples")
    doc["gpio"]["distance"] = [{"compartment": 1, "trigger": "GPIO5", "echo": "GPIO6"}]
    app = App(parse_config(doc))
    app.store = Store(tmp / "db")
    app.outbox = Outbox(app.store)
    workers = [factory(app.cfg) for factory in app.worker_factories().values()]
    entities = [e for w in workers for e in w.entities()]
    return app, entities


def _published(state: State) -> dict[str, Any]:
    """What HA's `value_json` is: the state as the daemon publishes it, parsed back."""
    return json.loads(json.dumps(state.to_json(), separators=(",", ":"), default=str))


def _templates(app: App, entity: Entity) -> list[tuple[str, str, str]]:
    """(key, template, component whose state it reads) of every template in the entity's discovery payload."""
    payload = entity_config(app.cfg, Topics.from_config(app.cfg), entity)
    out = []
    for key, template in payload.items():
        if key.endswith("_template") and isinstance(template, str):
            component = entity.component
            if key == "json_attributes_template":
                component = str(payload.get("json_attributes_topic", component)).rsplit("/", 1)[-1]
            if "/event/" in str(payload.get("state_topic", "")):
                component = "event/" + str(payload["state_topic"]).rsplit("/", 1)[-1]
            out.append((key, template, component))
    return out


def test_every_component_state_has_a_model_and_an_example(bin_with_everything: tuple[App, list[Entity]]) -> None:
    app, entities = bin_with_everything
    examples = example_states([c.id for c in app.cfg.bins.compartments], ["1"])
    assert set(examples) == set(STATE_MODELS)
    assert all(isinstance(examples[name], model) for name, model in STATE_MODELS.items())
    assert set(app.worker_factories()) <= set(STATE_MODELS), "a new component needs a state model in states/"
    assert {e.component for e in entities} <= set(STATE_MODELS)


def test_every_entity_template_renders_against_its_state_model(bin_with_everything: tuple[App, list[Entity]]) -> None:
    app, entities = bin_with_everything
    examples = example_states([c.id for c in app.cfg.bins.compartments], ["1"])
    rendered = 0
    for entity in entities:
        for key, template, component in _templates(app, entity):
            value = EXAMPLE_EVENTS[component[6:]] if component.startswith("event/") else _published(examples[component])
            try:
                out = ENV.from_string(template).render(value_json=value)
            except jinja2.UndefinedError as exc:
                pytest.fail(f"{entity.object_id}.{key} = {template!r} names a field {component}'s state lacks: {exc}")
            if entity.platform == "event":  # HA wants JSON with an event_type it was told about
                assert json.loads(out)["event_type"] in entity.options["event_types"], (entity.object_id, out)
            rendered += 1
    assert rendered >= 30, rendered  # every component's sensors, not a silently empty list
    assert {"workflow_last_item"} <= {e.object_id for e in entities if "json_attributes_template" in e.options}


def test_a_renamed_field_breaks_its_template(bin_with_everything: tuple[App, list[Entity]]) -> None:
    app, entities = bin_with_everything
    examples = example_states([c.id for c in app.cfg.bins.compartments], ["1"])
    entity = next(e for e in entities if e.object_id == "mqtt_outbox_pending")
    state = _published(examples["mqtt"])
    state["outbox"]["queued"] = state["outbox"].pop("pending")  # as if OutboxCounts.pending were renamed
    with pytest.raises(jinja2.UndefinedError):
        ENV.from_string(entity.value_template or "").render(value_json=state)
    camera = next(e for e in entities if e.object_id == "camera_fps")
    state = _published(examples["camera"])
    del state["fps"]
    with pytest.raises(jinja2.UndefinedError):
        ENV.from_string(camera.value_template or "").render(value_json=state)


def _nullable_paths(hint: Any, value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a published state whose field the model lets be null (inside `Any`: every leaf)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and path:
            yield path
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            yield from _nullable_paths(inner[0], value, path)
        return
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint)
        for f in dataclasses.fields(hint):
            if f.name in value:
                yield from _nullable_paths(hints[f.name], value[f.name], (*path, f.name))
    elif hint is Any:  # an untyped dict's shape is fixed by its producer; any reading in it may be missing
        if path and not isinstance(value, (dict, list)):
            yield path
        if isinstance(value, dict):
            for k, v in value.items():
                yield from _nullable_paths(Any, v, (*path, k))
        elif isinstance(value, list) and value:
            yield from _nullable_paths(Any, value[0], (*path, 0))
    elif origin is dict and isinstance(value, dict):
        for k, v in value.items():
            yield from _nullable_paths(args[1], v, (*path, k))
    elif origin is list and isinstance(value, list) and value:
        yield from _nullable_paths(args[0], value[0], (*path, 0))


def _with_null(state: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    out = copy.deepcopy(state)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = None
    return out


def test_templates_survive_every_null_the_state_models_allow(bin_with_everything: tuple[App, list[Entity]]) -> None:
    """A null anywhere the model allows one renders without error, to HA's `None` (unknown) or a real value, never ''.

    (HA renders with a lenient Undefined: a template that stumbles on a null logs a warning and gives an empty
    state, an invalid timestamp or an invalid enum option; StrictUndefined makes that stumble an error here.)
    """
    app, entities = bin_with_everything
    examples = example_states([c.id for c in app.cfg.bins.compartments], ["1"])
    checked = 0
    failures: list[str] = []
    for entity in entities:
        for key, template, component in _templates(app, entity):
            if component.startswith("event/"):
                continue
            base = _published(examples[component])
            for path in _nullable_paths(STATE_MODELS[component], base):
                state = _with_null(base, path)
                try:
                    out = ENV.from_string(template).render(value_json=state)
                except (jinja2.UndefinedError, TypeError) as exc:
                    failures.append(f"{entity.object_id}.{key} when {component}.{'.'.join(map(str, path))} is null: {exc}")
                    continue
                assert out.strip() != "", (entity.object_id, key, path)
                if key == "json_attributes_template":
                    assert isinstance(json.loads(out), dict), (entity.object_id, out)
                elif entity.options.get("device_class") == "timestamp" and out != "None":
                    datetime.fromisoformat(out.replace("Z", "+00:00"))
                elif entity.options.get("device_class") == "enum":
                    assert out in [*entity.options["options"], "None"], (entity.object_id, path, out)
                checked += 1
    assert not failures, "\n".join(failures)
    assert checked > 200, checked


def test_field_names_that_are_dict_methods_read_the_field(bin_with_everything: tuple[App, list[Entity]]) -> None:
    """`items`, `values`, `keys` are fields of the fill state; a published template reads them, not dict methods."""
    app, entities = bin_with_everything
    examples = example_states([c.id for c in app.cfg.bins.compartments], ["1"])
    cid = app.cfg.bins.compartments[0].id
    entity = next(e for e in entities if e.object_id == f"bin_{cid}_items")
    (_, template, _), = _templates(app, entity)
    lenient = jinja2.Environment()  # as HA: an attribute lookup that finds a method is not an error
    assert lenient.from_string(template).render(value_json=_published(examples["fill"])) == "3"
    for entity in entities:
        for _, template, _ in _templates(app, entity):
            assert not re.search(r"value_json\.\w", template), (entity.object_id, template)


def test_every_topic_is_a_full_topic_commands_go_at_qos_1_and_expiry_is_as_documented(
        bin_with_everything: tuple[App, list[Entity]]) -> None:
    app, entities = bin_with_everything
    topics = Topics.from_config(app.cfg)
    for entity in entities:
        payload = entity_config(app.cfg, topics, entity)
        for key, value in payload.items():
            if key == "topic" or key.endswith("_topic"):
                assert str(value).startswith(topics.root + "/"), (entity.object_id, key, value)
        if "command_topic" in payload:
            assert payload["qos"] == 1, entity.object_id
        if entity.platform in ("sensor", "binary_sensor") and entity.component in ("fill", "workflow", "camera"):
            assert payload["expire_after"] == 30, (entity.object_id, payload["expire_after"])  # README: 30 s for these
