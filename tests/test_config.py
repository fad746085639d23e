"""Config: every error names its key path, all errors at once, exit 78, secrets redacted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smartbin_daemon.config import (
    EX_CONFIG,
    REDACTED,
    ConfigError,
    config_diff,
    default_device_id,
    load_config,
    parse_config,
    redacted_dict,
)

REPO = Path(__file__).resolve().parents[1]


def errors_of(doc: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.errors


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"mqtt": {"port": 70000}}, "mqtt.port: Input should be less than or equal to 65535 (got 70000)"),
        ({"mqtt": {"port": "abc"}}, "mqtt.port:"),
        ({"mqtt": {"port": True}}, "mqtt.port:"),
        ({"device": {"id": "Kitchen Bin"}}, "device.id: must be lower-case letters, digits, '-' or '_'"),
        ({"device": {"id": "a/b"}}, "device.id:"),
        ({"device": {"id": "bin+"}}, "device.id:"),
        ({"mqtt": {"base_topic": "smart#bin"}}, "mqtt.base_topic:"),
        ({"mqtt": {"protocol": "4"}}, "mqtt.protocol:"),
        ({"mqtt": {"colour": "red"}}, "mqtt.colour: unknown key; allowed keys here: base_topic"),
        ({"mqtt": {"reconnect": {"min_s": 5, "max_s": 1}}}, "mqtt.reconnect: max_s (1.0) must be >= min_s (5.0)"),
        ({"mqtt": {"tls": {"enabled": True, "cert": "/nonexistent/c.pem"}}}, "mqtt.tls: tls.cert and tls.key must be given together"),
        ({"mqtt": {"tls": {"enabled": True, "ca": "/nonexistent/ca.pem"}}}, "mqtt.tls: file(s) not found: ca='/nonexistent/ca.pem'"),
        ({"mqtt": {"password": "x", "password_file": "/etc/x"}}, "give mqtt.password or mqtt.password_file, not both"),
        ({"health": {"thresholds": {"cpu_pct": 150}}}, "health.thresholds.cpu_pct:"),
        ({"logging": {"level": "LOUD"}}, "logging.level:"),
        ({"storage": []}, "storage:"),
        ({"sorting": {}}, "sorting: unknown key; allowed keys here: alerts, arduino, bins, camera, detector, device, evidence, gpio, health"),
        (["not", "a", "mapping"], "<root>: the file must hold a mapping of sections, got list"),
    ],
)
def test_each_error_names_its_key_path(doc: object, expected: str) -> None:
    errors = errors_of(doc)
    assert any(expected in e for e in errors), errors


def test_all_errors_are_reported_at_once() -> None:
    errors = errors_of({"mqtt": {"port": 0, "keepalive_s": 1}, "device": {"id": "UPPER"}, "health": {"interval_s": 0}})
    paths = sorted(e.split(":")[0] for e in errors)
    assert paths == ["device.id", "health.interval_s", "mqtt.keepalive_s", "mqtt.port"]


def test_secrets_are_never_echoed_in_errors() -> None:
    errors = errors_of({"mqtt": {"password": ["hunter2-secret"]}})
    assert errors and all("hunter2-secret" not in e for e in errors)


HOOK = "https://hooks.example.com/services/T0/B0/hook-secret-77"


def test_the_webhook_url_is_a_secret_checked_without_being_quoted(tmp_path: Path) -> None:
    cfg = parse_config({"alerts": {"webhook": {"url": HOOK}}})
    assert cfg.alerts.webhook.target() == HOOK and cfg.alerts.webhook.min_severity == "critical"
    assert redacted_dict(cfg)["alerts"]["webhook"]["url"] == REDACTED and HOOK not in str(redacted_dict(cfg))
    errors = errors_of({"alerts": {"webhook": {"url": "ftp://hooks.example.com/hook-secret-77"}}})
    assert errors == ["alerts.webhook.url: must be an http:// or https:// URL with a host"]
    errors = errors_of({"alerts": {"webhook": {"url": ["hook-secret-77"]}}})
    assert errors and all("hook-secret-77" not in e for e in errors)
    (tmp_path / "hook").write_text(HOOK + "\n")
    from_file = parse_config({"alerts": {"webhook": {"url_file": "hook"}}}, base_dir=tmp_path)
    assert from_file.alerts.webhook.target() == HOOK
    (tmp_path / "bad").write_text("not a url hook-secret-77")
    errors = errors_of_file({"alerts": {"webhook": {"url_file": "bad"}}}, tmp_path)
    assert errors == ["alerts.webhook.url_file: 'bad': must be an http:// or https:// URL with a host"]
    assert errors_of({"alerts": {"webhook": {"url": HOOK, "url_file": "x"}}}) == [
        "alerts.webhook.url_file: give url or url_file, not both"]
    changed = config_diff(cfg, parse_config({"alerts": {"webhook": {"url": HOOK + "8"}}}))
    assert changed == ["alerts.webhook.url"], "a changed URL is a change (its value never leaves config_diff)"


def errors_of_file(doc: object, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base_dir=base_dir)
    return info.value.errors


def test_defaults_match_the_documented_contract() -> None:
    cfg = parse_config({})
    assert cfg.mqtt.base_topic == "smartbin"
    assert cfg.mqtt.discovery_prefix == "homeassistant"
    assert cfg.storage.path == Path("/var/lib/smartbin")
    assert cfg.mqtt.protocol == "5"
    assert cfg.root_topic == f"smartbin/{cfg.device.id}"


def test_device_id_defaults_to_a_topic_safe_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "Pi-Kitchen 2.local")
    assert default_device_id() == "pi-kitchen-2"
    monkeypatch.setattr("socket.gethostname", lambda: "___")
    assert default_device_id() == "___"
    monkeypatch.setattr("socket.gethostname", lambda: "!!!")
    assert default_device_id() == "smartbin"


def test_password_file_is_read_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret-from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = parse_config({"mqtt": {"username": "bin", "password_file": "mqtt-password"}})
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "s3cret-from-systemd"
    dumped = redacted_dict(cfg)
    assert dumped["mqtt"]["password"] == REDACTED
    assert "s3cret" not in yaml.safe_dump(dumped)


def test_unreadable_or_empty_password_file_is_an_error(tmp_path: Path) -> None:
    errors = errors_of({"mqtt": {"password_file": str(tmp_path / "missing")}})
    assert errors[0].startswith("mqtt.password_file: cannot read")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert errors_of({"mqtt": {"password_file": str(empty)}}) == [f"mqtt.password_file: {str(empty)!r} is empty"]


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text("storage: {path: ../state}\n")
    assert load_config(path).storage.path == (tmp_path / "state").resolve()


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  host: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith("<yaml>: syntax error at line")


def test_diff_lists_changed_leaves_including_secrets() -> None:
    a = parse_config({"mqtt": {"password": "a"}})
    b = parse_config({"mqtt": {"password": "b", "port": 1884}, "health": {"interval_s": 3}})
    assert sorted(config_diff(a, b)) == ["health.interval_s", "mqtt.password", "mqtt.port"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartbin_daemon", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_check_config_exits_78_listing_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: {port: 70000, password: topsecret, nope: 1}\ndevice: {id: 'A B'}\n")
    result = _cli("check-config", str(bad))
    assert result.returncode == EX_CONFIG
    assert "mqtt.port" in result.stderr and "mqtt.nope" in result.stderr and "device.id" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_check_config_prints_the_effective_config_redacted(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("mqtt: {username: bin, password: topsecret}\ndevice: {id: kitchen}\n")
    result = _cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert doc["device"]["id"] == "kitchen"
    assert doc["mqtt"]["password"] == REDACTED
    assert "topsecret" not in result.stdout


def test_run_with_a_bad_config_exits_78_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"storage: {{path: {tmp_path / 'state'}}}\nhealth: {{interval_s: -1}}\n")
    result = _cli("run", "--config", str(bad))
    assert result.returncode == EX_CONFIG
    assert "health.interval_s" in result.stderr
    assert not (tmp_path / "state").exists(), "nothing may be created before the config is valid"


def test_simulation_config_is_valid() -> None:
    result = _cli("check-config", str(REPO / "config" / "simulation.yaml"))
    assert result.returncode == 0, result.stderr


def test_production_example_is_valid_once_its_files_exist(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "config" / "smartbin.yaml").read_text())
    # On a dev machine the referenced CA and credential do not exist: exactly those are reported.
    errors = errors_of(doc)
    assert len(errors) == 1 and errors[0].startswith("mqtt.tls: file(s) not found: ca="), errors
    (tmp_path / "ca.crt").write_text("dummy")
    (tmp_path / "mqtt-password").write_text("pw")
    doc["mqtt"]["tls"]["ca"] = str(tmp_path / "ca.crt")
    doc["mqtt"]["password_file"] = str(tmp_path / "mqtt-password")
    cfg = parse_config(doc)
    assert cfg.mqtt.tls.enabled and cfg.mqtt.password is not None


def test_version_command() -> None:
    result = _cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("smartbin-daemon ")
