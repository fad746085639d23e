"""Named signing keys: each revocable on its own, named in the request, counted and audited."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.config import ConfigError, parse_config
from smartbin_daemon.control import core_requests
from smartbin_daemon.ctl import signing_key
from smartbin_daemon.hardware.arduino.link import ArduinoLink
from smartbin_daemon.mqtt.client import MqttWorker, _Incoming
from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.auth import AuthError, Verifier, sign
from smartbin_daemon.runtime.bus import Bus, Request
from smartbin_daemon.runtime.commands import RequestRegistry
from smartbin_daemon.runtime.status import CONNECTED
from smartbin_daemon.store import Store

DEVICE = "keybin"
NOW = 1_750_000_000.0
ARGS = {"compartment": 2}
KEYS = {"technician": "tech-secret-0123456789", "nodered": "nodered-secret-0123456789"}


def test_a_named_key_signs_and_the_verifier_says_which() -> None:
    v = Verifier(dict(KEYS), DEVICE)
    assert v.verify("route", ARGS, sign(KEYS["nodered"], DEVICE, "route", ARGS, ts=NOW, key="nodered"), now=NOW) == "nodered"
    # the key id is signed too: another key's name on this secret does not verify
    forged = sign(KEYS["nodered"], DEVICE, "route", ARGS, ts=NOW, key="technician")
    with pytest.raises(AuthError, match="auth.sig: signature does not match"):
        v.verify("route", ARGS, forged, now=NOW)


@pytest.mark.parametrize(("auth_key", "message"), [
    ("intruder", "auth.key: unknown key 'intruder'"),
    ("Bad Key!", "auth.key: must be a key id"),
    (None, "auth.key: required: this bin has several signing keys"),
])
def test_bad_key_ids_are_named(auth_key: str | None, message: str) -> None:
    v = Verifier(dict(KEYS), DEVICE, revoked=frozenset({"fleet"}))
    auth = sign(KEYS["technician"], DEVICE, "route", ARGS, ts=NOW, key=auth_key)
    with pytest.raises(AuthError, match=message.replace(".", r"\.").replace("(", r"\(")):
        v.verify("route", ARGS, auth, now=NOW)


def test_a_revoked_key_is_refused_as_revoked_and_the_others_keep_working() -> None:
    v = Verifier({"technician": KEYS["technician"]}, DEVICE, revoked=frozenset({"nodered"}))
    with pytest.raises(AuthError, match="auth.key: key 'nodered' is revoked"):
        v.verify("route", ARGS, sign(KEYS["nodered"], DEVICE, "route", ARGS, ts=NOW, key="nodered"), now=NOW)
    assert v.verify("route", ARGS, sign(KEYS["technician"], DEVICE, "route", ARGS, ts=NOW, key="technician"),
                    now=NOW) == "technician"
    # the first format (no key id) still works while one key is active
    assert v.verify("route", ARGS, sign(KEYS["technician"], DEVICE, "route", ARGS, ts=NOW + 1), now=NOW) == "technician"


def _doc(tmp_path: Path, **security: Any) -> dict[str, Any]:
    return {"device": {"id": DEVICE}, "storage": {"path": str(tmp_path)}, "security": security}


def test_keys_are_configured_by_id_and_errors_name_the_key_path(tmp_path: Path) -> None:
    (tmp_path / "tech.key").write_text(KEYS["technician"] + "\n")
    cfg = parse_config(_doc(tmp_path, keys={"technician": {"secret_file": "tech.key"},
                                            "nodered": {"secret": KEYS["nodered"]},
                                            "fleet": {"revoked": True}}), base_dir=tmp_path)
    assert cfg.security.signing_keys() == KEYS and cfg.security.revoked_keys() == {"fleet"}
    with pytest.raises(ConfigError) as err:
        parse_config(_doc(tmp_path, keys={"technician": {"secret_file": "absent.key"}, "Bad": {"secret": "x"},
                                          "nodered": {}}), base_dir=tmp_path)
    text = "\n".join(err.value.errors)
    assert "security.keys.Bad" in text and "security.keys.nodered: give secret or secret_file" in text
    with pytest.raises(ConfigError) as err:
        parse_config(_doc(tmp_path, keys={"technician": {"secret_file": "absent.key"}}), base_dir=tmp_path)
    assert err.value.errors[0].startswith("security.keys.technician.secret_file: cannot read")
    with pytest.raises(ConfigError, match="keys.default"):
        parse_config(_doc(tmp_path, hmac_secret="x" * 20, keys={"default": {"secret": "y" * 20}}))


def test_smartbinctl_picks_the_key_it_is_told_or_the_only_one(tmp_path: Path) -> None:
    one = parse_config(_doc(tmp_path, keys={"technician": {"secret": KEYS["technician"]}}))
    assert signing_key(one, None, None) == ("technician", KEYS["technician"], None)
    both = parse_config(_doc(tmp_path, keys={k: {"secret": v} for k, v in KEYS.items()}))
    assert signing_key(both, None, "nodered") == ("nodered", KEYS["nodered"], None)
    key, secret, note = signing_key(both, None, None)
    assert (key, secret) == (None, None) and "choose one with --key" in str(note)
    legacy = parse_config(_doc(tmp_path, hmac_secret="legacy-secret-0123456789"))
    assert signing_key(legacy, None, None) == (None, "legacy-secret-0123456789", None)


def _worker(tmp_path: Path, **security: Any) -> tuple[MqttWorker, list[tuple[str, bytes]], Any]:
    cfg = parse_config(_doc(tmp_path, **security))
    registry = RequestRegistry()
    for spec in [*core_requests(), *ArduinoLink(Bus(), cfg.arduino, tmp_path).requests()]:
        registry.register(spec)
    bus = Bus()
    worker = MqttWorker(bus, cfg, Outbox(Store(tmp_path / "db")), registry)
    published: list[tuple[str, bytes]] = []

    class Client:
        def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False, properties: Any = None) -> None:
            published.append((topic, payload if isinstance(payload, bytes) else payload.encode()))

    worker._client = Client()  # type: ignore[assignment]
    worker.status = CONNECTED
    return worker, published, bus.subscribe("arduino", (Request,))


def _incoming(command: str, body: dict[str, Any]) -> _Incoming:
    return _Incoming(f"smartbin/{DEVICE}/request/{command}", json.dumps(body).encode(), None, None)


def test_accepted_privileged_requests_are_counted_by_key_logged_and_carry_the_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker, published, owner = _worker(tmp_path, keys={"technician": {"secret": KEYS["technician"]},
                                                       "nodered": {"secret": KEYS["nodered"], "revoked": True}})
    caplog.set_level("INFO")
    worker.handle(_incoming("route", {"transaction": "t-ok", "args": ARGS,
                                      "auth": sign(KEYS["technician"], DEVICE, "route", ARGS, key="technician")}))
    worker.handle(_incoming("route", {"transaction": "t-revoked", "args": ARGS,
                                      "auth": sign(KEYS["nodered"], DEVICE, "route", ARGS, key="nodered")}))
    routed = owner.get(0)
    assert (routed.authority, routed.key_id, routed.transaction) == ("signed", "technician", "t-ok")
    assert owner.get(0) is None, "the revoked key's request never reached the owner"
    answers = [json.loads(p) for _, p in published]
    assert [a["transaction"] for a in answers] == ["t-revoked"]
    assert answers[0]["error"] == "auth.key: key 'nodered' is revoked"
    state = worker.own_state().to_json()
    assert state["requests_privileged"] == {"technician": 1} and state["requests_unauthorized"] == 1
    accepted = [r for r in caplog.records if getattr(r, "SMARTBIN_EVENT", None) == "request_privileged"]
    assert len(accepted) == 1 and accepted[0].SMARTBIN_KEY == "technician" and "'t-ok'" in accepted[0].getMessage()


def test_every_frame_that_moves_something_gets_an_audit_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from smartbin_daemon.hardware.arduino.simulator import SimulatedArduino

    link_path = tmp_path / "tty"
    cfg = parse_config({"device": {"id": DEVICE}, "storage": {"path": str(tmp_path)},
                        "arduino": {"enabled": True, "backend": "serial", "port": str(link_path), "boot_wait_s": 0.2}})
    with SimulatedArduino(link_path, compartments=3):
        bus = Bus()
        link = ArduinoLink(bus, cfg.arduino, tmp_path)
        import threading

        thread = threading.Thread(target=link.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while link.status != CONNECTED and time.monotonic() < deadline:
                time.sleep(0.05)
            caplog.set_level("INFO")
            bus.publish(Request("arduino", "route", {"compartment": 1, "command_id": None}, "r1", authority="signed",
                                key_id="technician", transaction="t9"))
            bus.publish(Request("arduino", "led", {"pattern": "blink"}, "r2", authority="unsigned"))
            bus.publish(Request("arduino", "lid", {"op": "lock"}, "r3"))
            deadline = time.monotonic() + 5
            while len([r for r in caplog.records if getattr(r, "SMARTBIN_EVENT", "") == "actuator_command"]) < 2 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            link.request_stop()
            thread.join(5)
    lines = [r.getMessage() for r in caplog.records if getattr(r, "SMARTBIN_EVENT", "") == "actuator_command"]
    assert any(m.startswith("audit: route bin=1") and "by signed key technician (transaction 't9')" in m for m in lines)
    assert any(m.startswith("audit: lid op=lock by internal") for m in lines)
    assert not any(" led " in m or m.startswith("audit: led") for m in lines), "signalling is not audited"
