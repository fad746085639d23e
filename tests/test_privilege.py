"""Privilege follows the effect, over the whole request catalogue.

The daemon runs in-process with `security.privileged: hmac` and its config in a real file (so `config/set` really
writes it): a private mosquitto, the simulated Arduino on a pty (it owns the lid and the flap), mock GPIO (presence
beam and service button), the shipped ONNX model on an image-folder camera, the fill tracker, the sorting workflow
and SQLite. Its own `help` answer is the source of truth: every command's documented argument combinations are
generated from its `args_schema` (every enum value, both booleans, optional fields absent and present, the schema's
numeric edges, `null` where allowed, the bin's own compartment ids, worker names and model path), so a command added
later is swept without touching this file, and the generator refuses a schema it does not understand.

Scenarios:

- unsigned (`test_unsigned_requests_never_move_unlock_rewrite_or_erase`): every generated case, privileged or not,
  sent without a signature, in two states where nothing moves unless a request makes it (see `_operator_lock_phase`
  and `_own_lock_phase`). Afterwards no ROUTE, no TARE and no LID open/unlock reached the MCU, the lid is still
  locked, the config file and the effective config are unchanged, counters, totals, emptying times and calibration
  are unchanged (state and SQLite), no worker was restarted, the daemon answers `ping`; every privileged case got
  the error naming the missing signature, no unprivileged one was refused for authorisation (they are served, or
  answered with their own error, e.g. `nothing to clear`), and no unsigned `maintenance`/`clear_error` unlocked.
- signed (`test_signed_privileged_requests_take_effect`): each privileged command of the catalogue, signed, does
  what it says (ROUTE/LID/TARE frames, calibration, counters, config file, model, storage, restart), signed
  `maintenance on` and signed `workflow/clear_error` unlock the lid, and every generated privileged case passes the
  signature check.

A revoked-key scenario needs only `send_cases(running, privileged_only(cases), auth_for=<signer with the revoked
key>)`, `Snapshot.take` before and `assert_nothing_moved` after, and the answers' errors (see `sign_with`).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from smartbin_daemon.app import App
from smartbin_daemon.config import load_config, redacted_dict
from smartbin_daemon.control import prev_path
from smartbin_daemon.hardware.arduino.protocol import Frame
from smartbin_daemon.hardware.arduino.simulator import SimulatedArduino
from smartbin_daemon.messages import SimulatedPresence
from smartbin_daemon.runtime.auth import sign

from .conftest import REPO, Broker, live_query, wait_until, write_config
from .test_bin_e2e import COMPARTMENTS

DEVICE = "privilege-bin"
ROOT = f"smartbin/{DEVICE}"
SECRET = "privilege-test-" + "5e" * 16
REVOKED_KEY = "nodered"
REVOKED_SECRET = "revoked-key-" + "7a" * 16
"""A key that was configured and then revoked (`security.keys.nodered.revoked: true`)."""
MODEL = (REPO / "models" / "smartbin-waste-s.onnx").resolve()
SAMPLES = sorted((REPO / "tests" / "data" / "samples").glob("*.jpg"))[:2]
FULL_FILL_MM = 490.0
"""Simulated fill height that makes every compartment `full` (98 % of the 500 mm span)."""
ITEMS_BEFORE = 2
"""Items sorted before the scenarios, so a counter reset would show."""
UNSIGNED_REFUSAL = "unsigned privileged request refused"
AUTH_ERROR = re.compile(r"privileged|auth\b|auth\.|signature|signed", re.I)
"""What an authorisation refusal mentions; an unprivileged case's error must not."""
FORBIDDEN_LID_OPS = ("open", "unlock")

AuthFactory = Callable[[str, "dict[str, Any] | None"], "dict[str, Any] | None"]
"""(command, args as sent) -> the `auth` object to send, or None for none."""


# =========================================================================== cases from the catalogue


ABSENT: Any = object()
"""An optional field left out."""


@dataclass
class Case:
    """One request: a command with its args as sent (None: no `args` key at all), and whether the catalogue says it
    is privileged with these args."""

    command: str
    args: dict[str, Any] | None
    privileged: bool

    def __str__(self) -> str:
        return f"{self.command} {'(no args)' if self.args is None else json.dumps(self.args, sort_keys=True)}"


@dataclass
class Hints:
    """Sensible values where a schema alone cannot tell (strings and free-form objects), by field name."""

    strings: dict[str, list[Any]] = field(default_factory=dict)
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _dedupe(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not any(type(v) is type(o) and v == o for o in out):  # True and 1 are different cases
            out.append(v)
    return out


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/$defs/"), f"unsupported $ref {ref!r}"
    return _resolve(root["$defs"][ref.rsplit("/", 1)[1]], root)


def field_values(name: str, schema: dict[str, Any], root: dict[str, Any], example: Any, hints: Hints) -> list[Any]:
    """Every documented value worth sending for one field (never ABSENT; the caller adds that for optional ones)."""
    schema = _resolve(schema, root)
    if "anyOf" in schema or "oneOf" in schema:
        return _dedupe([v for branch in schema.get("anyOf", schema.get("oneOf", []))
                        for v in field_values(name, branch, root, example, hints)])
    if "enum" in schema:
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    kind = schema.get("type")
    if kind == "null":
        return [None]
    if kind == "boolean":
        return [True, False]
    if kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.001
        values: list[Any] = []
        if "minimum" in schema:
            values.append(schema["minimum"])
        if "exclusiveMinimum" in schema:
            values.append(schema["exclusiveMinimum"] + step)
        if isinstance(example, (int, float)) and not isinstance(example, bool):
            values.append(example)
        if "maximum" in schema:
            values.append(schema["maximum"])
        if "exclusiveMaximum" in schema:
            values.append(schema["exclusiveMaximum"] - step)
        return _dedupe(values or [0, 1])
    if kind == "string":
        candidates = list(hints.strings.get(name, []))
        if isinstance(example, str):
            candidates.append(example)
        pattern = schema.get("pattern")
        ok = [s for s in _dedupe(candidates)
              if (pattern is None or re.search(pattern, s))
              and schema.get("minLength", 0) <= len(s) <= schema.get("maxLength", 10**9)]
        assert ok, f"no sensible value for string field {name!r} ({schema}); add one to the hints"
        return ok
    if kind == "array":
        items = field_values(name, schema["items"], root, None, hints)
        lo, hi = max(1, schema.get("minItems", 0)), min(len(items), schema.get("maxItems", len(items)))
        if len(items) > 5:  # too many to combine (e.g. the self-test's parts): each one alone, and all of them
            return [[item] for item in items] + [items]
        return [list(combo) for size in range(lo, hi + 1) for combo in itertools.combinations(items, size)]
    if kind == "object":
        docs = list(hints.objects.get(name, []))
        if isinstance(example, dict):
            docs.append(example)
        assert docs, f"no sensible document for object field {name!r}; add one to the hints"
        return _dedupe(docs)
    raise AssertionError(f"the case generator does not understand the schema of {name!r}: {schema}")


def privileged_for(entry: dict[str, Any], args: dict[str, Any]) -> bool:
    """What the catalogue's `privileged` (true, false or "when <field> is <a> or <b>") says for these args."""
    privilege = entry["privileged"]
    if isinstance(privilege, bool):
        return privilege
    match = re.fullmatch(r"when (\w+) is (.+)", str(privilege))
    assert match, f"unknown privilege condition {privilege!r}: teach privileged_for() to read it"
    name, values = match.group(1), match.group(2).split(" or ")
    value = args.get(name, entry["args_schema"].get("properties", {}).get(name, {}).get("default"))
    return str(value) in values


def cases_for(command: str, entry: dict[str, Any], hints: Hints) -> list[Case]:
    """Every combination of the documented values of a command's args (optional fields also left out)."""
    schema = entry["args_schema"]
    assert schema.get("type") == "object", (command, schema)
    required = set(schema.get("required", []))
    example = (entry.get("example") or {}).get("args") or {}
    fields: list[tuple[str, list[Any]]] = []
    for name, sub in schema.get("properties", {}).items():
        values = field_values(name, sub, schema, example.get(name), hints)
        fields.append((name, values if name in required else [ABSENT, *values]))
    cases = []
    if entry["privileged"] is False:
        # Its privilege cannot depend on the args: each documented value once, one field at a time, is enough.
        base = {name: values[0] for name, values in fields if name in required}
        cases.append(Case(command, base, False))
        for name, values in fields:
            cases += [Case(command, {**base, name: v}, False) for v in values[int(name in required):] if v is not ABSENT]
    else:
        for combo in itertools.product(*(values for _, values in fields)):
            args = {name: value for (name, _), value in zip(fields, combo) if value is not ABSENT}
            cases.append(Case(command, args, privileged_for(entry, args)))
    if not required:
        cases.insert(0, Case(command, None, privileged_for(entry, {})))  # no `args` key at all
    assert len(cases) <= 64, f"{command}: {len(cases)} combinations; reduce the hints"
    return cases


def generate_cases(catalogue: dict[str, Any], hints: Hints) -> list[Case]:
    """The cases of every command of the catalogue, in catalogue order."""
    return [case for command in sorted(catalogue) for case in cases_for(command, catalogue[command], hints)]


def privileged_only(cases: list[Case]) -> list[Case]:
    """The cases the catalogue marks privileged."""
    return [c for c in cases if c.privileged]


def hints_for(running: RunningBin) -> Hints:
    """Strings and documents from the running bin itself: its compartments, workers, model and config."""
    config = running.ask("config/get")["data"]
    workers = sorted(running.ask("status")["data"]["components"]["daemon"]["workers"])
    backup = running.ask("backup")["data"]
    return Hints(
        strings={
            "compartment": [c["id"] for c in config["bins"]["compartments"]],
            "component": ["daemon", *workers],
            "path": [str(config["detector"]["model"])],
            "command_id": ["0", "ffffffff"],  # shortest and longest id the pattern allows
            "since": ["2026-01-01T00:00:00Z"],
            "until": ["2026-01-02T00:00:00Z"],
            "category": ["plastic"],
        },
        objects={
            "config": [
                {},
                {"logging": {"level": "DEBUG"}},
                {"security": {"privileged": "broker_acl"}},  # would switch signing off
                {"bins": {"workflow": {"fallback_compartment": config["bins"]["compartments"][-1]["id"]}}},
                {"bins": {"compartments": [{**c, "calibration": {"empty_mm": 700, "full_mm": 50}}
                                           for c in config["bins"]["compartments"]]}},
            ],
            "document": [  # restore: this bin's own backup with its counters zeroed, and another bin's
                {**backup, "fill": {"compartments": {cid: {**part, "items": 0, "items_total": 0}
                                                     for cid, part in backup["fill"]["compartments"].items()}}},
                {**backup, "device": "another-bin"},
            ],
            "compartments": [{cid: {**part, "items": 0, "items_total": 0, "calibration_source": "request",
                                    "empty_mm": 700.0}
                              for cid, part in backup["fill"]["compartments"].items()}],
        },
    )


# =========================================================================== talking to the bin


class Requester:
    """An MQTT client that sends requests and collects the responses by transaction (no per-request sleeps)."""

    def __init__(self, port: int, root: str) -> None:
        self.root = root
        self._answers: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"privilege-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{root}/response/#", qos=1)
        assert subscribed.wait(5), "no SUBACK for the response topics"

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._cond:
            self._answers[str(body.get("transaction"))] = body
            self._cond.notify_all()

    def ask(self, command: str, args: dict[str, Any] | None = None, auth: dict[str, Any] | None = None,
            timeout: float = 20.0) -> dict[str, Any]:
        """Send one request (no `args` key when args is None) and wait for its response."""
        transaction = uuid.uuid4().hex
        body: dict[str, Any] = {"transaction": transaction}
        if args is not None:
            body["args"] = args
        if auth is not None:
            body["auth"] = auth
        self.client.publish(f"{self.root}/request/{command}", json.dumps(body), qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: transaction in self._answers, timeout):
                raise AssertionError(f"no answer to {command} {args} within {timeout:g}s")
            return self._answers.pop(transaction)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def sign_with(secret: str, device: str = DEVICE, **extra: Any) -> AuthFactory:
    """An auth factory signing every request with `secret` (extra: e.g. a named key for `sign`)."""
    return lambda command, args: sign(secret, device, command, args, **extra)


def unsigned(command: str, args: dict[str, Any] | None) -> None:
    """The auth factory of an unsigned request."""
    return None


@dataclass
class RunningBin:
    """The daemon in this process, its simulated MCU, its config file and storage, and a requester."""

    app: App
    sim: SimulatedArduino
    config: Path
    storage: Path
    requester: Requester
    main_loop: threading.Thread
    sent: list[tuple[int, Case]] = field(default_factory=list)
    """(frames received so far, case) after each case `send_cases` sent."""

    def blame(self, index: int) -> str:
        """The case after which frame number `index` had arrived (effects are asynchronous: it or one before)."""
        return next((str(case) for count, case in self.sent if count > index), "after the last case")

    def ask(self, command: str, args: dict[str, Any] | None = None, auth: dict[str, Any] | None = None,
            timeout: float = 20.0) -> dict[str, Any]:
        """Send a request (unsigned unless `auth`) and return the response."""
        return self.requester.ask(command, args, auth, timeout)

    def signed(self, command: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """Send a request signed with the bin's secret."""
        return self.ask(command, args, sign(SECRET, DEVICE, command, args), timeout)

    def state(self, component: str) -> dict[str, Any]:
        """A component's latest published state."""
        return self.app.bus.states().get(component) or {}

    def compartments(self) -> dict[str, dict[str, Any]]:
        """The fill tracker's compartments."""
        return self.state("fill").get("compartments") or {}

    def frames(self, since: int = 0) -> list[Frame]:
        """Frames the simulated MCU received (since an index)."""
        with self.sim._lock:  # noqa: SLF001 - the simulator appends under its lock
            return list(self.sim.received)[since:]

    def present(self, on: bool) -> None:
        """Break (True) or restore (False) the mock presence beam: the real GPIO path."""
        self.app.bus.publish(SimulatedPresence(on))
        time.sleep(0.2)  # settle_s 0.05 plus the gpio worker's poll

    def wait_lid(self, state: str, what: str) -> None:
        """Wait until the simulated lid is in `state` and the link has reported it."""
        wait_until(lambda: self.sim.lid == state and self.state("arduino").get("lid") == state, 5,
                   what=f"{what}: lid {state} (sim {self.sim.lid})")
        time.sleep(0.3)  # the workflow has taken the DoorChanged by now

    def workflow_state(self) -> str:
        """The sorting state."""
        return str(self.state("workflow").get("state"))


def ok(answer: dict[str, Any]) -> Any:
    """The data of an ok answer."""
    assert answer["status"] == "ok", answer
    return answer["data"]


def send_cases(running: RunningBin, cases: list[Case], auth_for: AuthFactory) -> list[tuple[Case, dict[str, Any]]]:
    """Send each case (in order) with the auth the factory gives; the answers, paired with their cases.

    The revoked-key scenario: `send_cases(running, privileged_only(cases), sign_with(revoked, key="old"))`.
    `running.sent` remembers how many MCU frames had arrived after each case, to name the case behind a frame."""
    answers = []
    for case in cases:
        answers.append((case, running.ask(case.command, case.args, auth_for(case.command, case.args))))
        running.sent.append((len(running.frames()), case))
    return answers


# =========================================================================== what must not change


FILL_FIELDS = ("items", "items_total", "emptied_at", "calibration")
FILL_ROWS_SQL = ("SELECT compartment, items, items_total, emptied_at, empty_mm, full_mm, calibrated_at FROM fill_state "
                 "ORDER BY compartment")


@dataclass
class Snapshot:
    """What an unauthorised request must leave alone."""

    frames: int
    routes: int
    config_bytes: bytes
    prev_exists: bool
    effective: dict[str, Any]
    config_get: dict[str, Any]
    fill: dict[str, dict[str, Any]]
    fill_rows: list[tuple[Any, ...]]
    workers: dict[str, tuple[int, int]]
    workflow_counts: dict[str, int]
    unauthorized: int

    @staticmethod
    def take(running: RunningBin) -> Snapshot:
        """Everything at this moment."""
        slots = running.app.supervisor._slots  # noqa: SLF001 - thread identity tells a restarted worker
        return Snapshot(
            frames=len(running.frames()),
            routes=len(running.sim.routes),
            config_bytes=running.config.read_bytes(),
            prev_exists=prev_path(running.config).exists(),
            effective=redacted_dict(running.app.cfg),
            config_get=ok(running.ask("config/get")),
            fill={cid: {k: c[k] for k in FILL_FIELDS} for cid, c in running.compartments().items()},
            fill_rows=live_query(running.storage, FILL_ROWS_SQL),
            workers={name: (id(slot.worker), id(slot.thread)) for name, slot in slots.items()},
            workflow_counts=dict(running.state("workflow")["counts"]),
            unauthorized=int(running.state("mqtt").get("requests_unauthorized", 0)),
        )


def assert_nothing_moved(running: RunningBin, before: Snapshot, what: str) -> None:
    """No flap, lid-open/unlock or tare frame since `before`, the lid locked, config/fill/workers untouched."""
    frames = running.frames(before.frames)
    moved = [f"{f.type} {f.args} (first seen after {running.blame(before.frames + i)})" for i, f in enumerate(frames)
             if f.type in ("ROUTE", "TARE") or (f.type == "LID" and f.args.get("op") in FORBIDDEN_LID_OPS)]
    assert not moved, f"{what}: the MCU received {moved}"
    assert running.sim.routes[before.routes:] == [], f"{what}: the flap moved: {running.sim.routes[before.routes:]}"
    assert running.sim.lid == "locked", f"{what}: the lid is {running.sim.lid}"
    assert running.config.read_bytes() == before.config_bytes, f"{what}: the config file changed"
    assert prev_path(running.config).exists() == before.prev_exists, f"{what}: a config .prev appeared"
    assert redacted_dict(running.app.cfg) == before.effective, f"{what}: the effective config changed"
    assert ok(running.ask("config/get")) == before.config_get, f"{what}: config/get changed"
    fill = {cid: {k: c[k] for k in FILL_FIELDS} for cid, c in running.compartments().items()}
    assert fill == before.fill, f"{what}: counters or calibration changed"
    assert live_query(running.storage, FILL_ROWS_SQL) == before.fill_rows, f"{what}: fill_state rows changed"
    slots = running.app.supervisor._slots  # noqa: SLF001
    workers = {name: (id(slot.worker), id(slot.thread)) for name, slot in slots.items()}
    assert workers == before.workers, f"{what}: a worker was restarted or replaced"
    table = running.app.supervisor.table()
    assert all(entry["status"] == "running" and entry["restarts"] == 0 for entry in table.values()), table
    counts = running.state("workflow")["counts"]
    assert counts == before.workflow_counts, f"{what}: an item was sorted, refused or failed: {counts}"
    assert ok(running.ask("ping"))["pong"] is True
    assert running.main_loop.is_alive(), f"{what}: the daemon's main loop ended"


def assert_unsigned_answers(answers: list[tuple[Case, dict[str, Any]]], what: str) -> None:
    """Privileged cases refused for the missing signature, naming the command; the others served."""
    problems = []
    for case, answer in answers:
        if case.privileged:
            error = str(answer.get("error"))
            if answer["status"] != "error" or UNSIGNED_REFUSAL not in error or repr(case.command) not in error:
                problems.append(f"{case}: expected the unsigned refusal, got {answer}")
        elif answer["status"] != "ok" and AUTH_ERROR.search(str(answer.get("error"))):
            problems.append(f"{case}: unprivileged, but refused for authorisation: {answer['error']}")
        if case.command in ("maintenance", "workflow/clear_error") and answer["status"] == "ok" \
                and answer["data"]["lid_unlocked"] is not False:
            problems.append(f"{case}: unsigned, yet lid_unlocked: {answer['data']}")
    assert not problems, f"{what}:\n" + "\n".join(problems)


# =========================================================================== the running bin


@pytest.fixture
def running(tmp_path: Path, broker: Broker) -> Iterator[RunningBin]:
    """The whole bin in this process with `security.privileged: hmac`, ready, with ITEMS_BEFORE items sorted."""
    etc = tmp_path / "etc"
    etc.mkdir()
    secret_file = etc / "hmac-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    scene = tmp_path / "scene"
    scene.mkdir()
    for sample in SAMPLES:
        shutil.copy(sample, scene / sample.name)
    storage = tmp_path / "state"
    config = write_config(
        etc / "config.yaml", broker.port, storage, device_id=DEVICE,
        mqtt={"state_interval_s": 1},
        logging={"level": "INFO"},
        health={"enabled": True, "interval_s": 3600},  # swept for its requests; sampled once
        security={"privileged": "hmac", "hmac_secret_file": str(secret_file),
                  "keys": {REVOKED_KEY: {"secret": REVOKED_SECRET, "revoked": True}},
                  "rate_limit_per_min": 100_000, "privileged_rate_limit_per_min": 100_000},
        arduino={"enabled": True, "backend": "simulator", "boot_wait_s": 0.2,
                 "simulator": {"compartments": 3, "item_mm": 12}},
        gpio={"enabled": True, "pin_factory": "mock", "presence": {"pin": "GPIO17", "settle_s": 0.05},
              "button": {"pin": "GPIO27"}},
        camera={"enabled": True, "kind": "images", "source": str(scene), "fps": 10},
        detector={"enabled": True, "model": str(MODEL), "threads": 1, "settle_s": 0.1, "frames_per_decision": 3},
        bins={"enabled": True, "compartments": COMPARTMENTS,
              "workflow": {"confirm_timeout_s": 3, "degraded_policy": "refuse"},
              "fill": {"filter": {"window": 3, "min_samples": 2, "confirm_s": 1, "settle_s": 0.5},
                       "emptying": {"confirm_s": 1}}},
    )
    app = App(load_config(config), config)
    app.start()
    sim: SimulatedArduino = app.simulated_arduino
    with sim._lock:  # noqa: SLF001 - keep every frame, not the last 256
        sim.received = deque(sim.received)
    main_loop = threading.Thread(target=app.run_forever, name="test-main-loop", daemon=True)
    main_loop.start()
    requester = Requester(broker.port, ROOT)
    bin_ = RunningBin(app, sim, config, storage, requester, main_loop)
    try:
        wait_until(lambda: bin_.state("arduino").get("status") == "connected", 20, what="the arduino link")
        wait_until(lambda: bin_.state("detector").get("model") and bin_.state("camera").get("status") == "connected",
                   30, what="the model and the camera")
        wait_until(lambda: bin_.state("workflow").get("vision") == "ok", 15, what="vision ok in the workflow")
        wait_until(lambda: len(bin_.compartments()) == 3 and all(c["level"] for c in bin_.compartments().values()),
                   15, what="fill levels of every compartment")
        wait_until(lambda: bin_.ask("ping", timeout=2)["status"] == "ok", 20, what="the daemon answering on MQTT")
        for n in range(1, ITEMS_BEFORE + 1):
            bin_.present(True)
            wait_until(lambda: bin_.state("workflow")["counts"]["sorted"] >= n, 30,  # noqa: B023 - called at once
                       what=f"item {n} sorted by the real pipeline")
            bin_.present(False)
            wait_until(lambda: bin_.workflow_state() == "idle", 10, what="idle after the item")
        wait_until(lambda: sum(c["items_total"] for c in bin_.compartments().values()) == ITEMS_BEFORE, 10,
                   what="the sorted items counted")
        yield bin_
    finally:
        app.request_stop()
        main_loop.join(15)
        app.stop()
        requester.close()


def fill_every_compartment(running: RunningBin) -> None:
    """Every compartment physically full (simulated echoes), so every item is refused: nothing routes on its own."""
    with running.sim._lock:  # noqa: SLF001 - a physical fact of the simulated bin
        running.sim._fill = [FULL_FILL_MM] * running.sim.spec.compartments  # noqa: SLF001
    wait_until(lambda: all(c["level"] == "full" for c in running.compartments().values())
               and all(level == "full" for level in running.state("workflow").get("levels", {}).values()), 20,
               what="every compartment full")


def the_cases(running: RunningBin) -> tuple[dict[str, Any], list[Case]]:
    """The catalogue (`help`) and the generated cases; every command has at least one."""
    catalogue = ok(running.ask("help"))
    cases = generate_cases(catalogue, hints_for(running))
    per_command: dict[str, int] = {}
    for case in cases:
        per_command[case.command] = per_command.get(case.command, 0) + 1
    assert set(per_command) == set(catalogue), "every command of the catalogue gets cases, and only those"
    assert all(n >= 1 for n in per_command.values())
    return catalogue, cases


# =========================================================================== the generator on its own


def test_the_generator_sends_every_documented_value() -> None:
    entry = {
        "privileged": "when op is open or unlock",
        "example": {"transaction": "t1", "args": {"op": "open", "n": 3}},
        "args_schema": {
            "type": "object", "required": ["op"],
            "properties": {
                "op": {"enum": ["open", "close", "lock", "unlock"], "type": "string"},
                "n": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 16}, {"type": "null"}], "default": None},
                "flag": {"type": "boolean", "default": False},
            },
        },
    }
    cases = cases_for("lid", entry, Hints())
    assert len(cases) == 4 * 5 * 3  # op; n absent/1/3/16/null; flag absent/true/false
    assert {c.args["op"] for c in cases if c.args} == {"open", "close", "lock", "unlock"}
    assert {json.dumps(c.args.get("n", "absent")) for c in cases if c.args} == {'"absent"', "1", "3", "16", "null"}
    assert all(c.privileged == (c.args is not None and c.args["op"] in ("open", "unlock")) for c in cases)
    array = {"type": "array", "items": {"enum": ["a", "b"], "type": "string"}, "minItems": 1}
    assert field_values("what", array, {}, None, Hints()) == [["a"], ["b"], ["a", "b"]]
    number = {"anyOf": [{"exclusiveMinimum": 0, "maximum": 5000, "type": "number"}, {"type": "null"}]}
    assert field_values("mm", number, {}, None, Hints()) == [0.001, 5000, None]
    no_args = cases_for("ping", {"privileged": False, "example": {"args": {}},
                                 "args_schema": {"type": "object", "properties": {}}}, Hints())
    assert [c.args for c in no_args] == [None, {}]
    unprivileged = cases_for("history/x", {"privileged": False, "example": {"args": {}}, "args_schema": {
        "type": "object", "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": ["x", "y"]}}}}, Hints())
    assert [c.args for c in unprivileged] == [None, {}, {"a": 1}, {"a": 2}, {"a": 3}, {"b": "x"}, {"b": "y"}], \
        "an unprivileged command's values one field at a time, not every combination"
    with pytest.raises(AssertionError, match="unknown privilege condition"):
        privileged_for({"privileged": "on full moon", "args_schema": {}}, {})
    with pytest.raises(AssertionError, match="no sensible value"):
        cases_for("x", {"privileged": False, "args_schema": {"type": "object", "properties": {
            "name": {"type": "string"}}, "required": ["name"]}}, Hints())


# =========================================================================== unsigned


def _operator_lock_phase(running: RunningBin, cases: list[Case]) -> list[tuple[Case, dict[str, Any]]]:
    """Every compartment full, an operator's signed `lid lock`, an item in the beam and refused (`blocked`).

    Why this state: nothing routes unless a request makes it. The item in the beam is refused (its compartment is full
    and there is no fallback), presence is edge-triggered so the waiting item never starts again on its own, and the
    only ways out are privileged (emptying, calibration, config, a signed clear or maintenance) or pause the bin.
    The lid is locked by someone else than the workflow, so nothing the workflow does may undo it."""
    ok(running.signed("lid", {"op": "lock"}))
    running.wait_lid("locked", "the operator's signed lock")
    running.present(True)  # the item stays in the beam for the whole phase
    wait_until(lambda: (running.state("workflow").get("blocked") or {}).get("code") == "compartment_full", 20,
               what="the item refused: blocked, compartment full")
    before = Snapshot.take(running)
    answers = send_cases(running, cases, unsigned)
    ok(running.ask("detection", {"enabled": True}))  # the cases left detection off (unprivileged either way)
    time.sleep(1.0)  # late effects (a LID frame after an ACK, a reload, a restart) would show up now
    assert_unsigned_answers(answers, "operator lock, blocked")
    assert_nothing_moved(running, before, "operator lock, blocked")
    refused = len(privileged_only(cases))
    wait_until(lambda: running.state("mqtt").get("requests_unauthorized", 0) - before.unauthorized == refused, 5,
               what=f"{refused} refusals counted in requests_unauthorized")
    cleared = [a for c, a in answers if c.command == "workflow/clear_error" and a["status"] == "ok"]
    assert cleared and cleared[0]["data"]["cleared"]["code"] == "compartment_full", "the unsigned clear met the block"
    return answers


def _own_lock_phase(running: RunningBin, cases: list[Case]) -> list[tuple[Case, dict[str, Any]]]:
    """The lid locked by the workflow itself: the operator's lock taken off first (signed maintenance on and off),
    detection switched off (anyone may pause), a new item refused (`blocked`, vision down, `degraded_policy: refuse`).

    Why: the workflow releases its own lock when a block ends for a trusted cause; every unsigned way to end this
    block (switching detection on again, clearing it, maintenance) must leave the lid locked. Regression: an unsigned
    `detection {"enabled": true}` ended this block as "vision is back", a trusted cause, and unlocked the lid."""
    assert ok(running.signed("maintenance", {"on": True}))["lid_unlocked"] is True  # a technician, signed
    running.wait_lid("closed", "signed maintenance")
    ok(running.signed("maintenance", {"on": False}))
    wait_until(lambda: running.workflow_state() == "idle", 5, what="idle after maintenance")
    ok(running.ask("detection", {"enabled": False}))
    wait_until(lambda: running.state("workflow").get("vision") != "ok", 5, what="vision down in the workflow")
    running.present(False)
    running.present(True)  # a new item
    wait_until(lambda: (running.state("workflow").get("blocked") or {}).get("code") == "vision_down", 20,
               what="the item refused: blocked, vision down")
    running.wait_lid("locked", "the workflow's own lock")
    before = Snapshot.take(running)
    answers = send_cases(running, cases, unsigned)
    ok(running.ask("detection", {"enabled": True}))
    time.sleep(1.0)
    assert_unsigned_answers(answers, "own lock, blocked")
    assert_nothing_moved(running, before, "own lock, blocked")
    assert running.state("workflow")["blocked"] is None, "an unsigned request ended the block (and the lid stayed locked)"
    return answers


def test_unsigned_requests_never_move_unlock_rewrite_or_erase(running: RunningBin) -> None:
    catalogue, cases = the_cases(running)
    privileged = privileged_only(cases)
    assert privileged and len(privileged) < len(cases)
    fill_every_compartment(running)
    t0 = time.monotonic()
    answers = _operator_lock_phase(running, cases) + _own_lock_phase(running, cases)
    per_command = {cmd: sum(c.command == cmd for c in cases) for cmd in sorted(catalogue)}
    served = sum(a["status"] == "ok" for c, a in answers if not c.privileged)
    errors = sorted({f"{c.command}: {a['error']}" for c, a in answers if not c.privileged and a["status"] != "ok"})
    print(f"\nPRIVILEGE unsigned: {len(catalogue)} commands, {len(cases)} cases ({len(privileged)} privileged) x 2 "
          f"states in {time.monotonic() - t0:.1f}s; unprivileged served {served}/{2 * (len(cases) - len(privileged))}, "
          f"other answers {errors}\nPRIVILEGE cases per command: {per_command}")


# =========================================================================== signed


def test_signed_privileged_requests_take_effect(running: RunningBin) -> None:
    catalogue, cases = the_cases(running)
    covered: set[str] = set()

    def signed(command: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        covered.add(command)
        return ok(running.signed(command, args, timeout))

    def frames_since(mark: int, type_: str) -> list[Frame]:
        return [f for f in running.frames(mark) if f.type == type_]

    fill_every_compartment(running)
    ids = list(running.compartments())

    # tare: the load cell's zero is rewritten on the MCU
    mark = len(running.frames())
    signed("tare")
    assert frames_since(mark, "TARE")

    # bin/reset_counters with totals, bin/emptied: counters in the state and in SQLite
    target = max(ids, key=lambda cid: running.compartments()[cid]["items_total"])
    assert running.compartments()[target]["items_total"] > 0
    assert signed("bin/reset_counters", {"compartment": target, "totals": True}) == {"reset": [target], "totals": True}
    wait_until(lambda: running.compartments()[target]["items_total"] == 0, 5, what="totals reset")
    assert live_query(running.storage, f"SELECT items, items_total FROM fill_state WHERE compartment = '{target}'") == [(0, 0)]
    assert sorted(signed("bin/emptied")["emptied"]) == sorted(ids)
    assert all(c["items"] == 0 and c["emptied_at"] for c in running.compartments().values())

    # bin/calibrate: persisted, overrides the config
    data = signed("bin/calibrate", {"compartment": ids[1], "point": "empty", "distance_mm": 700})
    assert data["empty_mm"] == 700
    assert running.compartments()[ids[1]]["calibration"]["source"] == "request"
    assert live_query(running.storage, f"SELECT empty_mm FROM fill_state WHERE compartment = '{ids[1]}'") == [(700.0,)]

    # restore (a backup taken now brings the calibration back) and bin/restore (the fill tracker's part on its own)
    backup = ok(running.ask("backup"))
    assert backup["fill"]["compartments"][ids[1]]["empty_mm"] == 700
    signed("bin/calibrate", {"compartment": ids[1], "point": "empty", "distance_mm": 650})
    assert signed("restore", {"document": backup})["restored"]["fill"]["restored"] == sorted(ids)
    wait_until(lambda: running.compartments()[ids[1]]["calibration"]["empty_mm"] == 700, 5, what="calibration restored")
    part = {ids[0]: {**backup["fill"]["compartments"][ids[0]], "items": 7, "items_total": 9}}
    assert signed("bin/restore", {"compartments": part}) == {"restored": [ids[0]], "unchanged": sorted(ids[1:])}
    assert live_query(running.storage, f"SELECT items, items_total FROM fill_state WHERE compartment = '{ids[0]}'") \
        == [(7, 9)]

    # detection continuous
    assert signed("detection", {"continuous": True})["continuous"] is True
    wait_until(lambda: running.state("detector").get("continuous") is True, 5, what="continuous mode")
    ok(running.ask("detection", {"continuous": False}))  # switching it off is anyone's

    # model/reload of the shipped model
    assert signed("model/reload", {"path": str(MODEL)}, timeout=60)["model"]

    # storage/cleanup deletes a snapshot taken just before
    snapshot = Path(ok(running.ask("snapshot"))["path"])
    assert snapshot.exists()
    assert signed("storage/cleanup", {"what": ["evidence"]})["files"] >= 1
    assert not snapshot.exists()

    # config/set writes the file and applies it; config/rollback restores it
    original = running.config.read_bytes()
    signed("config/set", {"config": {"logging": {"level": "WARNING"}}})
    assert yaml.safe_load(running.config.read_text())["logging"]["level"] == "WARNING"
    assert running.app.cfg.logging.level == "WARNING" and prev_path(running.config).exists()
    signed("config/rollback")
    assert running.config.read_bytes() == original and running.app.cfg.logging.level == "INFO"

    # restart of one worker
    thread = running.app.supervisor._slots["gpio"].thread  # noqa: SLF001
    assert signed("restart", {"component": "gpio"})["restarted"] is True
    assert running.app.supervisor._slots["gpio"].thread is not thread  # noqa: SLF001

    # route moves the flap
    mark = len(running.frames())
    assert signed("route", {"compartment": 2, "command_id": "c0ffee"})["acked"] is True
    assert [f.args for f in frames_since(mark, "ROUTE")] == [{"bin": "2", "id": "c0ffee"}]
    assert ("c0ffee", 2) in running.sim.routes

    # lid unlock and open
    signed("lid", {"op": "lock"})
    running.wait_lid("locked", "signed lock")
    mark = len(running.frames())
    signed("lid", {"op": "unlock"})
    running.wait_lid("closed", "signed unlock")
    signed("lid", {"op": "open"})
    running.wait_lid("open", "signed open")
    assert [f.args["op"] for f in frames_since(mark, "LID")] == ["unlock", "open"]
    ok(running.ask("lid", {"op": "close"}))  # closing is anyone's
    running.wait_lid("closed", "unsigned close")

    # maintenance, signed: the operator's lock is undone for the technician
    signed("lid", {"op": "lock"})
    running.wait_lid("locked", "signed lock before maintenance")
    assert signed("maintenance", {"on": True})["lid_unlocked"] is True
    running.wait_lid("closed", "signed maintenance")
    signed("maintenance", {"on": False})
    wait_until(lambda: running.workflow_state() == "idle", 5, what="idle after maintenance")

    # workflow/clear_error, signed: the workflow's own lock (an item refused, every compartment full) is undone
    running.present(True)
    wait_until(lambda: running.workflow_state() == "blocked", 20, what="the item refused")
    running.wait_lid("locked", "the workflow's lock")
    assert signed("workflow/clear_error")["lid_unlocked"] is True
    running.wait_lid("closed", "signed clear_error")
    running.present(False)

    # selftest with movement: the lid locked and unlocked, the flap routed to every compartment and home
    mark = len(running.frames())
    result = signed("selftest", {"parts": ["lid", "routes"]}, timeout=60)
    assert result["status"] == "pass", result
    assert [f.args["op"] for f in frames_since(mark, "LID")][:2] == ["lock", "unlock"]
    assert len(frames_since(mark, "ROUTE")) == len(ids) + 1
    wait_until(lambda: running.workflow_state() == "idle", 5, what="idle after the self-test")

    # every generated privileged case passes the signature check (restart and config/* were checked above: a sweep
    # of them would restart workers and rewrite the config mid-test)
    sweep = [c for c in privileged_only(cases) if c.command not in ("restart", "config/set", "config/rollback")]
    refused = [(str(c), a["error"]) for c, a in send_cases(running, sweep, sign_with(SECRET))
               if a["status"] != "ok" and AUTH_ERROR.search(str(a["error"]))]
    assert not refused, refused

    # restart of the whole daemon, last: it answers, stops its main loop and exits 75
    data = signed("restart", {"component": None})
    assert data["exiting"] is True and data["exit_code"] == 75
    running.main_loop.join(15)
    assert not running.main_loop.is_alive() and running.app.exit_code == 75

    expected = {c for c, e in catalogue.items() if e["privileged"] is not False} | {"maintenance", "workflow/clear_error"}
    assert covered >= expected, f"privileged commands without an effect check: {sorted(expected - covered)}"
    print(f"\nPRIVILEGE signed: {len(expected)} commands checked, {len(sweep)} privileged cases swept")


# =========================================================================== revoked and unknown keys


def test_a_revoked_or_unknown_key_moves_nothing(running: RunningBin) -> None:
    """The operator-lock state again; every privileged case signed with a revoked key, then with an unknown one."""
    _, cases = the_cases(running)
    privileged = privileged_only(cases)
    fill_every_compartment(running)
    ok(running.signed("lid", {"op": "lock"}))
    running.wait_lid("locked", "the operator's signed lock")
    running.present(True)
    wait_until(lambda: (running.state("workflow").get("blocked") or {}).get("code") == "compartment_full", 20,
               what="the item refused: blocked, compartment full")
    before = Snapshot.take(running)
    revoked = send_cases(running, privileged, sign_with(REVOKED_SECRET, key=REVOKED_KEY))
    unknown = send_cases(running, privileged, sign_with("a-secret-nobody-configured", key="intruder"))
    time.sleep(1.0)
    assert_nothing_moved(running, before, "revoked and unknown keys")
    wrong = [(c, a) for c, a in revoked if a.get("error") != f"auth.key: key {REVOKED_KEY!r} is revoked"]
    wrong += [(c, a) for c, a in unknown if a.get("error") != "auth.key: unknown key 'intruder'"]
    assert not wrong, wrong[:5]
    audit = running.state("daemon")["audit"]
    assert audit["revoked_keys"] == [REVOKED_KEY] and audit["signing_keys"] == ["default"]
