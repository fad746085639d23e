"""Privileged requests: HMAC signatures, replay and clock rules, rate limits, topic safety, HA discovery, secrecy."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from smartbin_daemon.config import (
    REDACTED,
    CompartmentConfig,
    Config,
    ConfigError,
    GpioConfig,
    config_diff,
    load_config,
    parse_config,
    redacted_dict,
)
from smartbin_daemon.control import core_requests
from smartbin_daemon.hardware.arduino.link import ArduinoLink
from smartbin_daemon.hardware.gpio import GpioWorker, gpio_request_specs
from smartbin_daemon.mqtt import discovery as disco
from smartbin_daemon.mqtt.client import MqttWorker, _Incoming
from smartbin_daemon.mqtt.outbox import Outbox
from smartbin_daemon.runtime.auth import CLOCK_SANE_AFTER, AuthError, Verifier, sign, signing_string
from smartbin_daemon.runtime.bus import Bus, Discovery, Request
from smartbin_daemon.runtime.commands import RateLimiter, RequestRegistry, RequestSpec, valid_command
from smartbin_daemon.runtime.status import CONNECTED
from smartbin_daemon.store import Store

from .conftest import REPO, Broker, DaemonProcess, Probe, wait_until, write_config

SECRET = "unit-test-secret-0123456789abcdef"
DEVICE = "testbin"
ROOT = f"smartbin/{DEVICE}"
NOW = 1_750_000_000.0
ARGS = {"compartment": 2}


# =========================================================================== auth.py


def refusal(command: str, args: dict[str, Any] | None, auth: Any, now: float = NOW + 1,
            verifier: Verifier | None = None) -> str:
    """The AuthError message for a request that must be refused."""
    with pytest.raises(AuthError) as ei:
        (verifier or Verifier(SECRET, DEVICE)).verify(command, args, auth, now=now)
    return str(ei.value)


def test_a_correct_signature_is_accepted() -> None:
    Verifier(SECRET, DEVICE).verify("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW), now=NOW + 1)


def test_sign_makes_a_fresh_timestamp_and_nonce() -> None:
    a, b = sign(SECRET, DEVICE, "route", ARGS), sign(SECRET, DEVICE, "route", ARGS)
    assert set(a) == {"ts", "nonce", "sig"} and a["nonce"] != b["nonce"]
    assert abs(a["ts"] - time.time()) < 5 and re.fullmatch(r"[0-9a-f]{32}", a["nonce"])
    Verifier(SECRET, DEVICE).verify("route", ARGS, a)


def test_the_signing_string_is_exactly_as_documented() -> None:
    text = signing_string("kitchen", "route", {"z": [1, "ä"], "a": None}, 1700000000, "0123456789abcdef")
    assert text == 'kitchen\nroute\n{"a":null,"z":[1,"ä"]}\n1700000000.0\n0123456789abcdef'.encode()
    assert signing_string("k", "ping", None, 1700000000.25, "ab" * 8).split(b"\n")[2:4] == [b"{}", b"1700000000.25"]
    # Any HMAC-SHA256 implementation over that string gives the daemon's signature.
    auth = sign(SECRET, "kitchen", "route", ARGS, ts=1700000000, nonce="0123456789abcdef")
    manual = hmac.new(SECRET.encode(), b'kitchen\nroute\n{"compartment":2}\n1700000000.0\n0123456789abcdef',
                      hashlib.sha256).hexdigest()
    assert auth["sig"] == manual


def test_a_wrong_secret_is_refused() -> None:
    assert "auth.sig: signature does not match" in refusal("route", ARGS, sign("another-secret", DEVICE, "route", ARGS, ts=NOW))


def test_tampered_args_are_refused() -> None:
    assert "auth.sig" in refusal("route", {"compartment": 3}, sign(SECRET, DEVICE, "route", ARGS, ts=NOW))
    assert "auth.sig" in refusal("route", {**ARGS, "command_id": "a1"}, sign(SECRET, DEVICE, "route", ARGS, ts=NOW))


def test_a_signature_for_another_command_is_refused() -> None:
    auth = sign(SECRET, DEVICE, "lid", {"op": "close"}, ts=NOW)
    assert "auth.sig" in refusal("lid", {"op": "open"}, auth)
    assert "auth.sig" in refusal("model/reload", {}, sign(SECRET, DEVICE, "route", {}, ts=NOW))


def test_a_signature_for_another_bin_is_refused() -> None:
    assert "auth.sig" in refusal("route", ARGS, sign(SECRET, "otherbin", "route", ARGS, ts=NOW))


def test_a_stale_timestamp_is_refused() -> None:
    message = refusal("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW - 301), now=NOW)
    assert message.startswith("auth.ts: stale") and "+301s" in message
    Verifier(SECRET, DEVICE).verify("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW - 299), now=NOW)


def test_a_timestamp_from_the_future_is_refused() -> None:
    message = refusal("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW + 301), now=NOW)
    assert message.startswith("auth.ts:") and "future" in message and "-301s" in message
    v = Verifier(SECRET, DEVICE, max_skew_s=30)
    assert "±30s" in refusal("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW + 31), now=NOW, verifier=v)


def test_a_replayed_nonce_is_refused() -> None:
    v = Verifier(SECRET, DEVICE)
    auth = sign(SECRET, DEVICE, "route", ARGS, ts=NOW)
    v.verify("route", ARGS, auth, now=NOW + 1)
    assert "auth.nonce: already used" in refusal("route", ARGS, auth, now=NOW + 2, verifier=v)
    # the same nonce under a new, valid signature (other args) is a replay too
    again = sign(SECRET, DEVICE, "route", {"compartment": 1}, ts=NOW + 1, nonce=auth["nonce"])
    assert "already used" in refusal("route", {"compartment": 1}, again, now=NOW + 2, verifier=v)


def test_the_nonce_memory_is_bounded() -> None:
    v = Verifier(SECRET, DEVICE, max_skew_s=10, max_nonces=5)
    for i in range(8):
        v.verify("ping", {}, sign(SECRET, DEVICE, "ping", {}, ts=NOW + i), now=NOW + i)
    assert len(v._nonces) == 5
    v.verify("ping", {}, sign(SECRET, DEVICE, "ping", {}, ts=NOW + 100), now=NOW + 100)
    assert len(v._nonces) == 1, "nonces older than twice the window are forgotten (their ts is stale anyway)"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (None, "unsigned privileged request refused: 'route' must carry auth"),
        ("ts=1,nonce=2", "auth: must be an object with key, ts, nonce and sig"),
        ([1, 2, 3], "auth: must be an object"),
        ({}, "auth: must be an object"),
        ({"ts": NOW, "nonce": "ab" * 8}, "auth: must be an object with key, ts, nonce and sig"),
        ({"ts": NOW, "nonce": "ab" * 8, "sig": "0" * 64, "extra": 1}, "auth: must be an object"),
        ({"ts": str(NOW), "nonce": "ab" * 8, "sig": "0" * 64}, "auth.ts: must be a finite number"),
        ({"ts": True, "nonce": "ab" * 8, "sig": "0" * 64}, "auth.ts: must be a finite number"),
        ({"ts": None, "nonce": "ab" * 8, "sig": "0" * 64}, "auth.ts: must be a finite number"),
        ({"ts": math.nan, "nonce": "ab" * 8, "sig": "0" * 64}, "auth.ts: must be a finite number"),
        ({"ts": math.inf, "nonce": "ab" * 8, "sig": "0" * 64}, "auth.ts: must be a finite number"),
        ({"ts": NOW, "nonce": "AB" * 8, "sig": "0" * 64}, "auth.nonce: must be 16-64 lower-case hex"),
        ({"ts": NOW, "nonce": "ab" * 4, "sig": "0" * 64}, "auth.nonce"),
        ({"ts": NOW, "nonce": "ab" * 33, "sig": "0" * 64}, "auth.nonce"),
        ({"ts": NOW, "nonce": 1234567890123456, "sig": "0" * 64}, "auth.nonce"),
        ({"ts": NOW, "nonce": "ab" * 8, "sig": "0" * 63}, "auth.sig: must be 64 lower-case hex"),
        ({"ts": NOW, "nonce": "ab" * 8, "sig": "A" * 64}, "auth.sig: must be 64"),
        ({"ts": NOW, "nonce": "ab" * 8, "sig": 0}, "auth.sig: must be 64"),
        ({"ts": NOW, "nonce": "ab" * 8, "sig": "0" * 64}, "auth.sig: signature does not match"),
    ],
)
def test_malformed_auth_is_refused_with_the_field_named(auth: Any, message: str) -> None:
    assert message in refusal("route", ARGS, auth)


def test_a_nan_timestamp_cannot_slip_through_the_window_even_when_signed() -> None:
    auth = sign(SECRET, DEVICE, "route", ARGS, ts=math.nan)
    assert "finite" in refusal("route", ARGS, auth)


def test_an_unset_device_clock_refuses_signed_requests() -> None:
    early = 86_400.0 * 3  # a Pi without RTC before NTP thinks it is January 1970
    assert early < CLOCK_SANE_AFTER
    message = refusal("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=early), now=early + 1)
    assert "clock is not set" in message


def test_requests_signed_before_the_verifier_started_are_refused() -> None:
    v = Verifier(SECRET, DEVICE, not_before=NOW)
    assert "signed before" in refusal("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW - 5), verifier=v)
    v.verify("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW), now=NOW + 1)
    stepped = Verifier(SECRET, DEVICE, not_before=NOW + 3600)  # started with a fast clock, then NTP stepped it back
    stepped.verify("route", ARGS, sign(SECRET, DEVICE, "route", ARGS, ts=NOW), now=NOW + 1)


def test_the_verifier_never_shows_its_secret() -> None:
    v = Verifier(SECRET, DEVICE)
    assert SECRET not in repr(v) and SECRET not in str(v)


# =========================================================================== rate limiter


@pytest.mark.parametrize(("per_min", "burst"), [(60, 10), (10, 2), (12, 2), (7, 2), (6, 1), (1, 1), (600, 100)])
def test_the_burst_is_a_sixth_of_the_limit_rounded_up(per_min: int, burst: int) -> None:
    assert RateLimiter.burst(per_min) == burst


def test_the_token_bucket_allows_a_burst_then_one_request_per_interval() -> None:
    limiter = RateLimiter(12, 10)  # burst 2, one token every 5 s
    assert limiter.take("ping", False, 100.0) is None
    assert limiter.take("ping", False, 100.0) is None
    retry = limiter.take("ping", False, 100.0)
    assert retry == pytest.approx(5.0)
    assert limiter.take("ping", False, 102.0) == pytest.approx(3.0), "a refused request spends nothing"
    assert limiter.take("ping", False, 105.0) is None
    assert limiter.take("ping", False, 105.1) is not None
    # a long idle time refills to the burst, not beyond
    assert [limiter.take("ping", False, 10_000.0) for _ in range(3)] == [None, None, pytest.approx(5.0)]


def test_buckets_are_per_command_and_privileged_requests_have_their_own_limit() -> None:
    limiter = RateLimiter(6, 6)
    assert limiter.take("ping", False, 0.0) is None
    assert limiter.take("ping", False, 0.0) is not None
    assert limiter.take("status", False, 0.0) is None, "another command has its own bucket"
    assert limiter.take("lid", False, 0.0) is None
    assert limiter.take("lid", True, 0.0) is None, "lid open (privileged) and lid close have separate buckets"
    assert limiter.limit(True) == 6 and limiter.limit(False) == 6
    strict = RateLimiter(60, 1)
    assert strict.take("route", True, 0.0) is None
    assert strict.take("route", True, 0.0) == pytest.approx(60.0)


def test_a_zero_limit_disables_rate_limiting() -> None:
    limiter = RateLimiter(0, 0)
    assert all(limiter.take("ping", p, 0.0) is None for p in (False, True) for _ in range(1000))


# =========================================================================== privileged commands in the catalogue


def test_route_and_lid_open_unlock_are_privileged_on_the_arduino(tmp_path: Path) -> None:
    specs = {s.command: s for s in ArduinoLink(Bus(), Config().arduino, tmp_path).requests()}
    assert specs["route"].privileged and specs["route"].is_privileged({"compartment": 1})
    lid = specs["lid"]
    assert {op: lid.is_privileged({"op": op}) for op in ("open", "close", "lock", "unlock")} == \
        {"open": True, "close": False, "lock": False, "unlock": True}
    assert specs["tare"].is_privileged({}), "zeroing the load cell rewrites its calibration"
    assert not any(specs[c].is_privileged({}) for c in ("led", "buzzer"))


def test_the_gpio_lid_is_privileged_for_open_and_unlock() -> None:
    cfg = GpioConfig.model_validate({"enabled": True, "lid": {"kind": "relay", "pin": 5}})
    lid = {s.command: s for s in gpio_request_specs(cfg)}["lid"]
    assert lid.is_privileged({"op": "unlock"}) and lid.is_privileged({"op": "open"})
    assert not lid.is_privileged({"op": "lock"}) and not lid.is_privileged({"op": "close"})


def test_model_reload_is_privileged(tmp_path: Path) -> None:
    from smartbin_daemon.vision.detector import DetectorWorker
    from smartbin_daemon.vision.frames import LatestFrame

    cfg = Config()
    worker = DetectorWorker(Bus(), cfg.detector, cfg.camera, cfg.evidence, LatestFrame(), tmp_path)
    specs = {s.command: s for s in worker.requests()}
    assert specs["model/reload"].privileged
    assert not specs["snapshot"].privileged
    detection = specs["detection"]  # pausing fails safe; continuous decisions can start items and move the flap
    assert not detection.is_privileged({"enabled": False, "continuous": False})
    assert detection.is_privileged({"enabled": True, "continuous": True})


def test_help_documents_privilege_as_true_false_or_the_condition(tmp_path: Path) -> None:
    registry = RequestRegistry()
    for spec in [*core_requests(), *ArduinoLink(Bus(), Config().arduino, tmp_path).requests()]:
        registry.register(spec)
    catalogue = registry.catalogue()
    assert catalogue["route"]["privileged"] is True
    assert catalogue["ping"]["privileged"] is False and catalogue["tare"]["privileged"] is True
    assert catalogue["lid"]["privileged"] == "when op is open or unlock"
    json.dumps(catalogue)  # still plain JSON
    custom = RequestSpec("x", "o", "s", privileged_when=lambda a: bool(a))
    assert custom.privilege() == "depends on the args" and custom.is_privileged({"a": 1})


def test_parse_keeps_the_args_as_sent_for_the_signature(tmp_path: Path) -> None:
    registry = RequestRegistry()
    for spec in ArduinoLink(Bus(), Config().arduino, tmp_path).requests():
        registry.register(spec)
    auth = {"ts": 1, "nonce": "x", "sig": "y"}
    parsed = registry.parse("route", json.dumps({"args": ARGS, "auth": auth}).encode(), 65536)
    assert parsed.raw_args == ARGS and parsed.args == {**ARGS, "command_id": None}
    assert parsed.auth == auth


# =========================================================================== config


def test_security_defaults() -> None:
    sec = Config().security
    assert (sec.hmac_secret, sec.hmac_secret_file, sec.privileged) == (None, None, "hmac")
    assert (sec.max_skew_s, sec.rate_limit_per_min, sec.privileged_rate_limit_per_min) == (300, 60, 30)
    assert list(Config.model_fields).index("security") == list(Config.model_fields).index("mqtt") + 1


def errors_of(doc: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(doc, base_dir=base_dir)
    return ei.value.errors


def test_the_secret_file_is_read_from_the_credentials_directory_first(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    creds, conf = tmp_path / "creds", tmp_path / "etc"
    creds.mkdir()
    conf.mkdir()
    (creds / "hmac-secret").write_text("from-credentials\n")
    (conf / "hmac-secret").write_text("next-to-config\n")
    (conf / "config.yaml").write_text(yaml.safe_dump({"security": {"hmac_secret_file": "hmac-secret"},
                                                      "storage": {"path": str(tmp_path / "s")}}))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load_config(conf / "config.yaml").security.secret() == "next-to-config"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_config(conf / "config.yaml").security.secret() == "from-credentials"


def test_secret_problems_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("  \n")
    assert errors_of({"security": {"hmac_secret": "a-secret", "hmac_secret_file": "f"}}) == \
        ["security.hmac_secret_file: give hmac_secret or hmac_secret_file, not both"]
    assert errors_of({"security": {"hmac_secret_file": str(tmp_path / "empty")}}) == \
        [f"security.hmac_secret_file: {str(tmp_path / 'empty')!r} is empty"]
    missing = errors_of({"security": {"hmac_secret_file": "nope"}}, base_dir=tmp_path)
    assert len(missing) == 1 and missing[0].startswith("security.hmac_secret_file: cannot read 'nope'")
    assert errors_of({"security": {"hmac_secret": " "}}) == ["security.hmac_secret: must not be empty"]
    bad = errors_of({"security": {"privileged": "none", "rate_limit_per_min": -1, "max_skew_s": 0}})
    assert {e.split(":")[0] for e in bad} == {"security.privileged", "security.rate_limit_per_min", "security.max_skew_s"}


def test_the_secret_is_redacted_everywhere_in_config_output() -> None:
    canary = "canary-" + uuid.uuid4().hex
    doc = {"security": {"hmac_secret": canary}}
    cfg = parse_config(doc)
    assert cfg.security.secret() == canary
    dumped = redacted_dict(cfg)
    assert dumped["security"]["hmac_secret"] == REDACTED and canary not in json.dumps(dumped)
    assert canary not in repr(cfg) and canary not in str(cfg.security)
    errors = errors_of({"security": {"hmac_secret": [canary]}})
    assert errors == [f"security.hmac_secret: Input should be a valid string (got {REDACTED})"]
    both = errors_of({"security": {"hmac_secret": canary, "hmac_secret_file": "x"}})
    assert canary not in "\n".join(both)


def test_config_diff_reports_a_changed_secret_without_its_value() -> None:
    old, new = parse_config({"security": {"hmac_secret": "old-canary"}}), parse_config({"security": {"hmac_secret": "new-canary"}})
    diff = config_diff(old, new)
    assert diff == ["security.hmac_secret"]
    assert "canary" not in repr(diff)
    assert config_diff(old, parse_config({"security": {"hmac_secret": "old-canary"}})) == []
    assert config_diff(parse_config({}), old) == ["security.hmac_secret"]


def test_check_config_never_prints_the_secret(tmp_path: Path) -> None:
    canary = "canary-" + uuid.uuid4().hex
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"security": {"hmac_secret": canary}, "storage": {"path": str(tmp_path / "s")}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"security": {"hmac_secret": canary, "hmac_secret_file": "x", "max_skew_s": -1}}))
    for path, code in ((good, 0), (bad, 78)):
        result = subprocess.run([sys.executable, "-m", "smartbin_daemon", "check-config", str(path)],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == code, result.stderr
        assert canary not in result.stdout + result.stderr
    ok = subprocess.run([sys.executable, "-m", "smartbin_daemon", "check-config", str(good)],
                        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert yaml.safe_load(ok.stdout)["security"]["hmac_secret"] == REDACTED


# =========================================================================== topic safety (unit level)


@pytest.mark.parametrize("bad", ["a+b", "a#", "a/b", "a\x00b", "+", "#", "/", ""])
def test_names_that_go_into_topics_cannot_carry_wildcards_slashes_or_nul(bad: str) -> None:
    for section, key in (("device", "id"), ("mqtt", "base_topic"), ("mqtt", "discovery_prefix")):
        errors = errors_of({section: {key: bad}})
        assert errors and errors[0].startswith(f"{section}.{key}:"), errors
    with pytest.raises(ValidationError):
        CompartmentConfig.model_validate({"id": bad, "name": "x", "categories": ["residual"]})


@pytest.mark.parametrize("bad", ["a/+", "a/#", "+", "#", "a//b", "/a", "a/", "a\x00", "Ping", "a b", "", "x" * 129])
def test_command_names_cannot_carry_wildcards_empty_levels_or_nul(bad: str) -> None:
    assert not valid_command(bad)
    with pytest.raises(ValueError, match="invalid command name"):
        RequestRegistry().register(RequestSpec(bad, "daemon", "bad"))


@pytest.mark.parametrize(
    ("topic", "problem"),
    [("", "empty"), ("a/+/b", "wildcards"), ("a/#", "wildcards"), ("a\x00b", "NUL"), ("x" * 65536, "too long"),
     ("a/\udc80", "UTF-8")],
)
def test_unpublishable_topics_are_recognised(topic: str, problem: str) -> None:
    found = disco.publish_topic_problem(topic)
    assert found is not None and problem in found
    assert disco.publish_topic_problem("client/replies/42") is None


class FakeClient:
    """Stands in for paho: records publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool, Any]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, properties: Any = None) -> Any:
        if "+" in topic or "#" in topic or not topic:
            raise ValueError("paho refuses this topic")  # what paho does: the worker must never get here
        self.published.append((topic, payload if isinstance(payload, bytes) else payload.encode(), retain, properties))
        return None


def offline_worker(tmp_path: Path, **security: Any) -> tuple[MqttWorker, FakeClient, Any]:
    """An MqttWorker 'connected' to a fake client, with the arduino commands registered and an arduino inbox."""
    cfg = parse_config({"device": {"id": DEVICE}, "storage": {"path": str(tmp_path)}, "security": security})
    bus = Bus()
    registry = RequestRegistry()
    for spec in [*core_requests(), *ArduinoLink(Bus(), cfg.arduino, tmp_path).requests()]:
        registry.register(spec)
    worker = MqttWorker(bus, cfg, Outbox(Store(tmp_path / "db")), registry)
    client = FakeClient()
    worker._client = client  # type: ignore[assignment]
    worker.status = CONNECTED
    owner = bus.subscribe("arduino", (Request,))  # stands in for the link: routed requests land here
    return worker, client, owner


def incoming(command: str, body: dict[str, Any] | bytes, response_topic: str | None = None) -> _Incoming:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _Incoming(f"{ROOT}/request/{command}", payload, response_topic, b"corr" if response_topic else None)


@pytest.mark.parametrize(
    ("response_topic", "problem"),
    [
        ("client/#", "response_topic: must not contain '+' or '#'"),
        ("client/+/replies", "response_topic: must not contain '+' or '#'"),
        ("", "response_topic: must not be empty"),
        ("client/\x00/x", "response_topic: must not contain NUL"),
        ("$SYS/broker/x", "response_topic: must not start with '$'"),
        (f"{ROOT}/availability", "response_topic: must not point at this bin's own topics"),
        (f"{ROOT}/request/route", "response_topic: must not point at this bin's own topics"),
        ("homeassistant/button/testbin/x/config", "response_topic: must not point at this bin's own topics"),
    ],
)
def test_a_bad_mqtt5_response_topic_is_refused_on_the_command_response_topic(
        tmp_path: Path, response_topic: str, problem: str) -> None:
    worker, client, owner = offline_worker(tmp_path, privileged="broker_acl")
    worker.handle(incoming("route", {"transaction": "t1", "args": ARGS}, response_topic))
    assert [p[0] for p in client.published] == [f"{ROOT}/response/route"]
    body = json.loads(client.published[0][1])
    assert body["status"] == "error" and body["transaction"] == "t1" and problem in body["error"]
    assert owner.get(0) is None, "the request was not executed"


def test_a_good_response_topic_and_own_response_subtree_are_honoured(tmp_path: Path) -> None:
    worker, client, owner = offline_worker(tmp_path)
    worker.handle(incoming("nope", {"transaction": "t1"}, "client/replies/42"))
    worker.handle(incoming("nope", {"transaction": "t2"}, f"{ROOT}/response/mine"))
    assert [p[0] for p in client.published] == [f"{ROOT}/response/nope", "client/replies/42",
                                                f"{ROOT}/response/nope", f"{ROOT}/response/mine"]


@pytest.mark.parametrize("command", ["pi\x00ng", "Ping", "a//b", "a/", "ping/+", "x" * 200])
def test_an_invalid_command_name_is_never_echoed_into_a_topic(tmp_path: Path, command: str) -> None:
    worker, client, _ = offline_worker(tmp_path)
    worker.handle(_Incoming(f"{ROOT}/request/{command}", b"{}", None, None))
    assert client.published == [], "no <root>/response/<garbage> topic"
    worker.handle(_Incoming(f"{ROOT}/request/{command}", b'{"transaction": 1}', "client/replies/1", b"c"))
    assert [p[0] for p in client.published] == ["client/replies/1"]
    assert "invalid command name" in json.loads(client.published[0][1])["error"]


def test_transaction_and_args_never_reach_a_topic(tmp_path: Path) -> None:
    worker, client, _ = offline_worker(tmp_path)
    worker.handle(incoming("ping", {"transaction": "x/#/+\x00", "args": {}}))
    worker.handle(incoming("lid", {"transaction": "t", "args": {"op": "close/#"}}))
    worker.handle(incoming("route", {"transaction": "t", "args": {"compartment": "1/#"}}))
    assert {p[0] for p in client.published} == {f"{ROOT}/response/ping", f"{ROOT}/response/lid", f"{ROOT}/response/route"}


def test_the_publish_guard_drops_unsafe_topics_instead_of_crashing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker, client, _ = offline_worker(tmp_path)
    for topic in ("smartbin/testbin/+", "smartbin/#", "", "a\x00b"):
        assert worker._publish(topic, b"x") is None
    assert client.published == []
    assert "unsafe topic" in caplog.text


def test_privileged_requests_are_checked_in_the_worker(tmp_path: Path) -> None:
    worker, client, owner = offline_worker(tmp_path, hmac_secret=SECRET)
    worker.handle(incoming("route", {"transaction": "a", "args": ARGS}))
    auth = sign(SECRET, DEVICE, "route", ARGS)
    worker.handle(incoming("route", {"transaction": "b", "args": ARGS, "auth": auth}))
    worker.handle(incoming("lid", {"transaction": "c", "args": {"op": "close"}, "auth": "not an auth object"}))
    worker.handle(incoming("lid", {"transaction": "d", "args": {"op": "close"}}))
    led_auth = sign(SECRET, DEVICE, "led", {"pattern": "blink"})
    worker.handle(incoming("led", {"transaction": "e", "args": {"pattern": "blink"}, "auth": led_auth}))
    replies = [json.loads(p[1]) for p in client.published]
    assert [r["transaction"] for r in replies] == ["a", "c"]
    assert replies[0]["error"].startswith("unsigned privileged request refused")
    assert replies[1]["error"].startswith("auth: must be an object"), "a signature sent is always checked"
    routed = [owner.get(0), owner.get(0), owner.get(0)]
    assert [(r.command, r.authority) for r in routed] == [("route", "signed"), ("lid", "unsigned"),
                                                         ("led", "signed")]
    assert routed[0].args == {**ARGS, "command_id": None}
    assert worker.own_state().to_json()["requests_unauthorized"] == 2


# =========================================================================== HA discovery (unit level)


def test_privileged_controls_are_recognised(tmp_path: Path) -> None:
    registry = RequestRegistry()
    cfg = Config()
    link = ArduinoLink(Bus(), cfg.arduino, tmp_path)
    gpio_cfg = GpioConfig.model_validate({"enabled": True, "lid": {"kind": "relay", "pin": 5}})
    for spec in [*link.requests(), *gpio_request_specs(gpio_cfg)]:
        if registry.get(spec.command) is None:
            registry.register(spec)
    topics = disco.Topics("smartbin/testbin", "homeassistant", "testbin")
    entities = {e.object_id: e for e in [*link.entities(), *GpioWorker(Bus(), gpio_cfg).entities()]}
    flagged = {oid for oid, e in entities.items() if disco.entity_privileged(e, registry, topics)}
    assert flagged == {"arduino_test_route", "arduino_lid_open", "gpio_lid_unlock"}


@pytest.mark.parametrize(("mode", "advertised"), [("hmac", False), ("broker_acl", True)])
def test_privileged_buttons_are_removed_from_home_assistant_only_in_hmac_mode(tmp_path: Path, mode: str,
                                                                              advertised: bool) -> None:
    worker, client, _ = offline_worker(tmp_path, privileged=mode)
    link = ArduinoLink(Bus(), worker.cfg.arduino, tmp_path)
    worker.handle(Discovery("arduino", link.entities()))
    sent = {p[0].split("/")[3]: (p[1], p[2]) for p in client.published}
    for oid in ("arduino_test_route", "arduino_lid_open"):
        payload, retained = sent[oid]
        assert retained and (payload != b"") is advertised, oid
    assert sent["arduino_lid_close"][0] != b"" and sent["arduino_connected"][0] != b""


# =========================================================================== end to end: daemon subprocess


ARDUINO = {"enabled": True, "backend": "simulator", "boot_wait_s": 0.2}


def start_daemon(tmp_path: Path, broker: Broker, daemon_factory: Callable[..., DaemonProcess], probe: Probe,
                 name: str = "c", arduino: bool = True, **security: Any) -> tuple[DaemonProcess, Path]:
    """A daemon with the Arduino simulator and the given security section, online and linked."""
    sections: dict[str, Any] = {"security": security, "health": {"enabled": False}}
    if arduino:
        sections["arduino"] = ARDUINO
    online_before = len([m for m in probe.on(f"{ROOT}/availability") if m.payload == b"online"])
    cfg = write_config(tmp_path / f"{name}.yaml", broker.port, tmp_path / f"state-{name}", **sections)
    daemon = daemon_factory(cfg)
    wait_until(lambda: len([m for m in probe.on(f"{ROOT}/availability") if m.payload == b"online"]) > online_before,
               timeout=20, what="the daemon online")
    if arduino:
        wait_until(lambda: any(_json(m).get("status") == "connected" for m in probe.on(f"{ROOT}/arduino")[-3:]),
                   timeout=20, what="the simulated Arduino linked")
    return daemon, cfg


def _json(m: Any) -> dict[str, Any]:
    try:
        value = m.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def send(probe: Probe, command: str, body: dict[str, Any], timeout: float = 10.0,
         properties: Properties | None = None) -> dict[str, Any]:
    """Publish `body` exactly (it carries its own transaction) and wait for the next answer with that transaction."""
    txn = body["transaction"]
    topic = f"{ROOT}/response/{command}"
    probe.subscribe(topic)

    def answers() -> list[dict[str, Any]]:
        return [a for a in (_json(m) for m in probe.on(topic)) if a.get("transaction") == txn]

    seen = len(answers())
    probe.client.publish(f"{ROOT}/request/{command}", json.dumps(body).encode(), qos=1, properties=properties)
    return wait_until(lambda: answers()[seen] if len(answers()) > seen else None, timeout,  # type: ignore[no-any-return]
                      what=f"the answer to {command} {txn}")


def signed(command: str, args: dict[str, Any], secret: str = SECRET, **kw: Any) -> dict[str, Any]:
    return {"transaction": uuid.uuid4().hex, "args": args, "auth": sign(secret, DEVICE, command, args, **kw)}


def unsigned(args: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"transaction": uuid.uuid4().hex, "args": args or {}}


def test_signed_privileged_requests_end_to_end(tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
                                               daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    (tmp_path / "hmac-secret").write_text(SECRET + "\n")
    daemon, _ = start_daemon(tmp_path, broker, daemon_factory, probe, hmac_secret_file=str(tmp_path / "hmac-secret"),
                             privileged_rate_limit_per_min=120)

    refused = send(probe, "route", unsigned(ARGS))
    assert refused["status"] == "error" and refused["error"].startswith("unsigned privileged request refused: 'route'")
    wrong = send(probe, "route", signed("route", ARGS, secret="not-the-secret"))
    assert wrong["status"] == "error" and wrong["error"].startswith("auth.sig: signature does not match")

    body = signed("route", ARGS)
    ok = send(probe, "route", body)
    assert ok["status"] == "ok", ok
    assert ok["data"]["acked"] is True

    replay = send(probe, "route", body)  # the exact same payload again
    assert replay["status"] == "error" and replay["error"] == "auth.nonce: already used (replayed request)"

    stale = send(probe, "route", signed("route", ARGS, ts=time.time() - 600))
    assert stale["status"] == "error" and stale["error"].startswith("auth.ts: stale or from the future")

    # unprivileged requests stay open; a signature sent with one is checked all the same
    assert send(probe, "ping", unsigned())["status"] == "ok"
    assert send(probe, "ping", {**unsigned(), "auth": {"junk": True}})["error"].startswith("auth: must be an object")
    # lid: close is open to all, open needs a signature
    assert send(probe, "lid", unsigned({"op": "close"}))["status"] == "ok"
    assert "unsigned privileged request refused" in send(probe, "lid", unsigned({"op": "open"}))["error"]
    assert send(probe, "lid", signed("lid", {"op": "open"}))["status"] == "ok"

    catalogue = send(probe, "help", unsigned())["data"]
    assert catalogue["route"]["privileged"] is True and catalogue["lid"]["privileged"] == "when op is open or unlock"
    mqtt_state = wait_until(lambda: [s for s in map(_json, probe.on(f"{ROOT}/mqtt")) if s.get("requests_unauthorized") == 6],
                            timeout=10, what="6 refusals counted")
    assert mqtt_state[-1]["requests_rate_limited"] == 0
    log = daemon.log()
    assert "refused privileged request route: auth.nonce: already used" in log
    assert body["auth"]["sig"] not in log and SECRET not in log


def test_without_a_secret_privileged_requests_are_refused_with_how_to_configure_one(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    start_daemon(tmp_path, broker, daemon_factory, probe)
    for body in (unsigned(ARGS), signed("route", ARGS)):
        answer = send(probe, "route", body)
        assert answer["status"] == "error"
        assert "no signing secret" in answer["error"] and "security.hmac_secret_file" in answer["error"]
        assert "security.privileged: broker_acl" in answer["error"]
    assert send(probe, "ping", unsigned())["status"] == "ok"
    assert send(probe, "lid", unsigned({"op": "close"}))["status"] == "ok"


def test_broker_acl_mode_accepts_unsigned_privileged_requests_and_hmac_mode_removes_ha_buttons(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    probe.subscribe("homeassistant/#")
    daemon, _ = start_daemon(tmp_path, broker, daemon_factory, probe, "acl", privileged="broker_acl")
    answer = send(probe, "route", unsigned(ARGS))
    assert answer["status"] == "ok" and answer["data"]["acked"] is True
    buttons = {oid: f"homeassistant/button/{DEVICE}/{oid}/config"
               for oid in ("arduino_test_route", "arduino_lid_open", "arduino_lid_close")}
    for topic in buttons.values():
        assert probe.wait_for(topic).json()["command_topic"].startswith(f"{ROOT}/request/")
    daemon.stop()

    removed_before = {oid: len(probe.on(t)) for oid, t in buttons.items()}
    start_daemon(tmp_path, broker, daemon_factory, probe, "hmac", hmac_secret=SECRET)
    for oid in ("arduino_test_route", "arduino_lid_open"):  # an empty retained config: HA deletes the entity
        wait_until(lambda: any(m.payload == b"" for m in probe.on(buttons[oid])[removed_before[oid]:]),  # noqa: B023
                   timeout=10, what=f"{oid} removed")
    late = probe_factory(broker.port)
    late.subscribe("homeassistant/#")
    late.wait_for(buttons["arduino_lid_close"])
    time.sleep(0.5)
    assert late.on(buttons["arduino_test_route"]) == [] and late.on(buttons["arduino_lid_open"]) == [], \
        "HA removes the buttons: no retained config is left"
    assert probe.on(buttons["arduino_test_route"])[-1].payload == b""


def test_rate_limit_refuses_the_request_after_the_burst(tmp_path: Path, broker: Broker,
                                                        probe_factory: Callable[..., Probe],
                                                        daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    daemon, _ = start_daemon(tmp_path, broker, daemon_factory, probe, arduino=False, rate_limit_per_min=12)
    burst = RateLimiter.burst(12)
    answers = [send(probe, "ping", unsigned()) for _ in range(burst + 1)]
    assert [a["status"] for a in answers] == ["ok"] * burst + ["error"]
    assert re.fullmatch(r"rate limited: at most 12 ping requests per minute; retry in \d+\.\ds", answers[-1]["error"])
    assert send(probe, "status", unsigned())["status"] == "ok", "other commands have their own bucket"
    wait_until(lambda: "rate limited ping requests" in daemon.log(), timeout=5, what="the rate-limit warning")


def test_bad_response_topics_from_the_broker_cannot_crash_the_daemon(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    probe.subscribe("client/#")
    daemon, _ = start_daemon(tmp_path, broker, daemon_factory, probe, arduino=False)
    for bad in ("client/#", "client/+/x", f"{ROOT}/availability"):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = bad
        props.CorrelationData = b"c1"
        answer = send(probe, "ping", unsigned(), properties=props)
        assert answer["status"] == "error" and answer["error"].startswith("response_topic: must not")
    assert probe.under("client/") == []
    assert not [m for m in probe.on(f"{ROOT}/availability") if m.payload not in (b"online", b"offline")]
    assert send(probe, "ping", unsigned())["status"] == "ok"
    assert "Traceback" not in daemon.log() and "crashed" not in daemon.log()


def test_the_secret_never_appears_in_answers_logs_or_any_mqtt_message(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    first, second = "canary-" + uuid.uuid4().hex, "canary-" + uuid.uuid4().hex
    everything = probe_factory(broker.port)
    everything.subscribe("#")
    daemon, cfg_path = start_daemon(tmp_path, broker, daemon_factory, everything, hmac_secret=first)
    body = signed("route", ARGS, secret=first)
    assert send(everything, "route", body)["status"] == "ok"
    got = send(everything, "config/get", unsigned())["data"]
    assert got["security"]["hmac_secret"] == REDACTED and got["security"]["privileged"] == "hmac"
    send(everything, "status", unsigned())
    send(everything, "help", unsigned())

    # A new secret applies on SIGHUP by restarting the mqtt worker; the change is reported without the value.
    doc = yaml.safe_load(cfg_path.read_text())
    doc["security"]["hmac_secret"] = second
    cfg_path.write_text(yaml.safe_dump(doc))
    online = len([m for m in everything.on(f"{ROOT}/availability") if m.payload == b"online"])
    daemon.signal(signal.SIGHUP)
    changed = everything.wait_for(f"{ROOT}/event/config_changed").json()["data"]
    assert "security.hmac_secret" in changed["applied"]
    wait_until(lambda: len([m for m in everything.on(f"{ROOT}/availability") if m.payload == b"online"]) > online,
               timeout=20, what="the mqtt worker back online")
    assert "auth.sig" in send(everything, "route", signed("route", ARGS, secret=first))["error"]
    assert send(everything, "route", signed("route", ARGS, secret=second))["status"] == "ok"

    check = subprocess.run([sys.executable, "-m", "smartbin_daemon", "check-config", str(cfg_path)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert check.returncode == 0 and REDACTED in check.stdout
    daemon.stop()
    log = daemon.log_path.read_text(errors="replace")
    assert "config reloaded" in log
    texts = [check.stdout + check.stderr, log]
    with everything.lock:
        texts += [m.topic + "\n" + m.payload.decode("utf-8", "replace") for m in everything.messages]
    for text in texts:
        assert first not in text and second not in text
    assert body["auth"]["sig"] not in log
