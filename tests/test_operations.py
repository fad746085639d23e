"""Remote operations against a real daemon: config/set, config/rollback, restart, logs/bundle, storage/cleanup,
and the crash-safety of the atomic config write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartbin_daemon.config import Config
from smartbin_daemon.control import (
    BUNDLE_FILES,
    CLEANUP_FOLDERS,
    EX_TEMPFAIL,
    build_bundle,
    clean_storage,
    core_requests,
    deep_merge,
    prev_path,
    read_journal,
    write_atomic,
)

from .conftest import REPO, Broker, DaemonProcess, Probe, wait_until, write_config

DEVICE = "testbin"
ROOT = f"smartbin/{DEVICE}"
HMAC_SECRET = "test-secret-123"
SIGNED = "security" in Config.model_fields
"""Privileged requests are signed once the `security` section exists (another change adds it)."""
MQTT_SECRET = "pw-Zq8-never-echo-4711"


def security_section() -> dict[str, Any]:
    """Extra config sections so privileged requests can be signed (empty before signing exists)."""
    return {"security": {"hmac_secret": HMAC_SECRET}} if SIGNED else {}


def body(command: str, args: dict[str, Any]) -> dict[str, Any]:
    """A request payload; signed with the test secret when the daemon checks signatures."""
    if not SIGNED:
        return {"args": args}
    from smartbin_daemon.runtime.auth import sign

    return {"args": args, "auth": sign(HMAC_SECRET, DEVICE, command, args)}


class Running:
    """A daemon online on a test broker, a probe on all its topics, its config file and storage."""

    def __init__(self, daemon: DaemonProcess, probe: Probe, config: Path, storage: Path) -> None:
        self.daemon = daemon
        self.probe = probe
        self.config = config
        self.storage = storage

    def ask(self, command: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """Send a (signed where needed) request and return the response."""
        spec = next((s for s in core_requests() if s.command == command), None)
        payload = body(command, args or {}) if spec is not None and spec.privileged else {"args": args or {}}
        return self.probe.request(ROOT, command, payload, timeout=timeout)

    def workers(self) -> dict[str, Any]:
        """The worker table of the latest retained daemon state."""
        return self.probe.on(f"{ROOT}/daemon")[-1].json()["workers"]  # type: ignore[no-any-return]


@pytest.fixture
def running(tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
            daemon_factory: Callable[..., DaemonProcess]) -> Running:
    probe = probe_factory(broker.port)
    probe.subscribe("smartbin/#")
    (tmp_path / "etc").mkdir()
    cfg = write_config(tmp_path / "etc" / "config.yaml", broker.port, tmp_path / "s", **security_section())
    daemon = daemon_factory(cfg)
    probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    return Running(daemon, probe, cfg, tmp_path / "s")


def ok(resp: dict[str, Any]) -> Any:
    assert resp["status"] == "ok", resp
    return resp["data"]


# --------------------------------------------------------------------------- config/set, config/rollback


def test_config_set_applies_live_and_reports_restart_required(running: Running) -> None:
    before = running.config.read_bytes()
    data = ok(running.ask("config/set", {"config": {"logging": {"level": "INFO"}, "device": {"id": "renamed"},
                                                    "health": {"thresholds": {"cpu_pct": 97}}}}))
    assert sorted(data["applied"]) == ["health.thresholds.cpu_pct", "logging.level"]
    assert data["restart_required"] == ["device.id"]
    assert data["previous"] == str(prev_path(running.config))
    assert prev_path(running.config).read_bytes() == before, ".prev is the file as it was"
    doc = yaml.safe_load(running.config.read_text())
    assert doc["logging"]["level"] == "INFO" and doc["device"]["id"] == "renamed"
    assert doc["health"]["thresholds"]["cpu_pct"] == 97 and doc["health"]["interval_s"] == 1, "merged, not replaced"
    event = running.probe.wait_for(f"{ROOT}/event/config_changed").json()["data"]
    assert event["source"] == "request" and event["restart_required"] == ["device.id"]
    got = ok(running.ask("config/get"))
    assert got["logging"]["level"] == "INFO" and got["health"]["thresholds"]["cpu_pct"] == 97
    assert got["device"]["id"] == DEVICE, "device.id waits for a restart"
    running.probe.wait_for(f"{ROOT}/daemon", lambda m: m.json()["restart_required"] == ["device.id"])


def test_config_set_that_restarts_mqtt_still_answers_and_never_echoes_a_secret(running: Running) -> None:
    resp = running.ask("config/set", {"config": {"mqtt": {"password": MQTT_SECRET, "keepalive_s": 20}}})
    data = ok(resp)
    assert sorted(data["applied"]) == ["mqtt.keepalive_s", "mqtt.password"]
    response_text = json.dumps(resp)
    assert MQTT_SECRET not in response_text
    running.probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online")
    assert ok(running.ask("config/get"))["mqtt"]["password"] == "**********"
    assert MQTT_SECRET not in running.daemon.log()
    for msg in running.probe.messages:
        if "/request/" not in msg.topic:  # only the operator's own request carries it
            assert MQTT_SECRET.encode() not in msg.payload, msg.topic


def test_invalid_config_set_names_every_key_path_and_leaves_the_file_alone(running: Running) -> None:
    before = running.config.read_bytes()
    resp = running.ask("config/set", {"config": {"mqtt": {"port": 70000, "password": 12345},
                                                 "logging": {"level": "LOUD"}, "health": {"nope": 1}}})
    assert resp["status"] == "error"
    for path in ("mqtt.port", "logging.level", "health.nope", "mqtt.password"):
        assert path in resp["error"], (path, resp["error"])
    assert len(resp["data"]["errors"]) == 4, resp["data"]["errors"]
    assert "12345" not in json.dumps([resp["error"], resp["data"]]), "a secret's value is not echoed, even a wrong one"
    assert running.config.read_bytes() == before
    assert not prev_path(running.config).exists()
    assert running.daemon.proc.poll() is None


def test_rollback_restores_the_previous_file_and_applies_it(running: Running) -> None:
    original = running.config.read_bytes()
    ok(running.ask("config/set", {"config": {"health": {"thresholds": {"cpu_pct": 91}}}}))
    after_set = running.config.read_bytes()
    data = ok(running.ask("config/rollback"))
    assert data["applied"] == ["health.thresholds.cpu_pct"] and data["restart_required"] == []
    assert running.config.read_bytes() == original
    assert prev_path(running.config).read_bytes() == after_set, "the replaced file became the new .prev"
    assert ok(running.ask("config/get"))["health"]["thresholds"]["cpu_pct"] == 80
    running.probe.wait_for(f"{ROOT}/event/config_changed", lambda m: m.json()["data"]["source"] == "rollback")
    # rolling back again swaps back
    ok(running.ask("config/rollback"))
    assert running.config.read_bytes() == after_set


def test_rollback_without_a_previous_version_is_an_error(running: Running) -> None:
    resp = running.ask("config/rollback")
    assert resp["status"] == "error" and ".prev" in resp["error"], resp


def test_rollback_to_a_broken_previous_version_is_refused(running: Running) -> None:
    before = running.config.read_bytes()
    prev_path(running.config).write_text("mqtt: {port: -1}\n")
    resp = running.ask("config/rollback")
    assert resp["status"] == "error" and "mqtt.port" in resp["error"], resp
    assert running.config.read_bytes() == before


def test_config_set_without_a_config_file_is_an_error(tmp_path: Path) -> None:
    """An App started from a parsed config (no file) refuses config/set and config/rollback."""
    from smartbin_daemon.app import App
    from smartbin_daemon.config import parse_config
    from smartbin_daemon.control import AppAction
    from smartbin_daemon.runtime.bus import Response

    cfg = parse_config({"storage": {"path": str(tmp_path)}, "health": {"enabled": False},
                        "mqtt": {"host": "127.0.0.1", "port": 1}})
    app = App(cfg)
    answers = app.bus.subscribe("t", (Response,))
    for kind in ("config_set", "config_rollback"):
        app.bus.publish(AppAction(kind, kind.replace("_", "/"), f"r-{kind}", {"config": {}}))
    app.run_actions()
    got = [answers.get(1), answers.get(1)]
    assert all(isinstance(r, Response) and not r.ok and "without a config file" in (r.error or "") for r in got), got


# --------------------------------------------------------------------------- the atomic write under kill -9

WRITER = r"""
import sys
from pathlib import Path
from smartbin_daemon.control import write_atomic
path = Path(sys.argv[1])
docs = [Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()]
i = 1 if path.read_bytes() == docs[0] else 0  # every write changes the file
print("ready", flush=True)
while True:
    write_atomic(path, docs[i % 2])
    i += 1
"""


def big_doc(level: str, tag: str) -> bytes:
    """A valid config with a large comment block, so a write takes long enough to be interrupted."""
    comment = "".join(f"# {tag} padding line {i:06d} " + "x" * 100 + "\n" for i in range(60000))
    return (comment + yaml.safe_dump({"device": {"id": tag}, "logging": {"level": level}})).encode()


def test_a_killed_writer_leaves_the_old_or_the_new_file_never_a_broken_one(tmp_path: Path) -> None:
    a, b = big_doc("INFO", "doc-a"), big_doc("DEBUG", "doc-b")
    (tmp_path / "a.yaml").write_bytes(a)
    (tmp_path / "b.yaml").write_bytes(b)
    target = tmp_path / "etc" / "config.yaml"
    target.parent.mkdir()
    target.write_bytes(a)
    rng = random.Random(1234)
    scratch = tmp_path / "scratch" / "config.yaml"
    scratch.parent.mkdir()
    t0 = time.monotonic()
    for doc in (a, b, a, b):
        write_atomic(scratch, doc)
    write_s = (time.monotonic() - t0) / 4  # kills land within the first few writes, also on a slow machine
    seen: set[bytes] = set()
    interrupted = 0
    for _ in range(30):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")],
                                cwd=str(REPO), stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 3 * write_s))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        interrupted += any(p.name.startswith(".") for p in target.parent.iterdir())  # a temp file: killed mid-write
        for path in (target, prev_path(target)):
            if path.exists():
                assert path.read_bytes() in (a, b), f"{path.name} is not one of the complete documents"
        seen.add(target.read_bytes())
        write_atomic(target, target.read_bytes())  # the next writer (here: us) cleans up what the killed one left
        left = sorted(p.name for p in target.parent.iterdir())
        assert left == ["config.yaml", "config.yaml.prev"], left
    assert seen == {a, b}, f"no write completed before a kill (one write takes {write_s:.3f}s)"
    assert interrupted >= 3, f"only {interrupted} of 30 kill(s) landed inside a write ({write_s:.3f}s each)"
    for content in seen:  # and they are valid YAML configs
        assert yaml.safe_load(content[-200:].split(b"\n", 1)[1])["device"]["id"] in ("doc-a", "doc-b")


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert deep_merge(base, {"a": {"c": [3], "e": None}, "f": 2}) == {"a": {"b": 1, "c": [3], "e": None}, "d": "x", "f": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}, "the base is not modified"


# --------------------------------------------------------------------------- restart


def test_restart_of_one_component_restarts_it(running: Running) -> None:
    data = ok(running.ask("restart", {"component": "health"}))
    assert data == {"component": "health", "restarted": True, "status": data["status"]}
    assert data["status"] in ("running", "starting")
    wait_until(lambda: "restarting worker health on request" in running.daemon.log(), what="the restart in the log")
    running.probe.wait_for(f"{ROOT}/daemon", lambda m: m.json()["workers"]["health"]["status"] == "running")
    assert running.daemon.proc.poll() is None


def test_restart_of_mqtt_answers_after_reconnecting(running: Running) -> None:
    ok(running.ask("restart", {"component": "mqtt"}, timeout=20))

    def pong() -> bool:
        # The session is clean: a request sent while the new worker is not yet subscribed is not queued for it,
        # so ask again as a client would (a busy machine can take seconds to reconnect).
        try:
            return ok(running.ask("ping", timeout=3))["pong"] is True
        except AssertionError:
            return False

    wait_until(pong, timeout=30, interval=0.2, what="a ping answered by the restarted MQTT worker")


def test_restart_of_an_unknown_component_lists_the_known_ones(running: Running) -> None:
    resp = running.ask("restart", {"component": "flux-capacitor"})
    assert resp["status"] == "error"
    assert "flux-capacitor" in resp["error"] and "mqtt" in resp["error"] and "health" in resp["error"]


def test_restart_of_the_daemon_answers_then_exits_with_the_documented_code(running: Running) -> None:
    data = ok(running.ask("restart", {"component": None}))
    assert data["exiting"] is True and data["exit_code"] == EX_TEMPFAIL == 75
    code = running.daemon.wait(20)
    assert code == EX_TEMPFAIL, running.daemon.log()
    running.probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"offline", timeout=5)
    log = running.daemon.log()
    assert "daemon restart requested" in log and "stopped" in log


# --------------------------------------------------------------------------- logs/bundle


def test_logs_bundle_writes_a_tarball_with_the_five_files_and_no_secrets(running: Running, tmp_path: Path) -> None:
    ok(running.ask("config/set", {"config": {"mqtt": {"password": MQTT_SECRET}}}))
    running.probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online")
    data = ok(running.ask("logs/bundle"))
    path = Path(data["path"])
    assert path.parent == running.storage / "bundles" and path.name.startswith("smartbin-bundle-")
    assert path.name.endswith(".tar.gz") and path.stat().st_size == data["bytes"]
    assert sorted(data["files"]) == sorted(BUNDLE_FILES)
    out = tmp_path / "extracted"
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == sorted(BUNDLE_FILES)
        tar.extractall(out, filter="data")
    for name in BUNDLE_FILES:
        text = (out / name).read_text()
        assert MQTT_SECRET not in text and HMAC_SECRET not in text, name
    assert (out / "journal.txt").read_text(), "journal output or a note saying why there is none"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["mqtt"]["password"] == "**********" and config["device"]["id"] == DEVICE
    assert "daemon" in json.loads((out / "state.json").read_text())
    versions = json.loads((out / "versions.json").read_text())
    assert versions["daemon"] and versions["python"] and versions["packages"]["paho-mqtt"]
    assert versions["packages"]["pydantic"]
    assert "mqtt" in json.loads((out / "workers.json").read_text())


def test_bundle_scrubs_secrets_from_the_journal_text(tmp_path: Path) -> None:
    from smartbin_daemon.config import parse_config

    doc: dict[str, Any] = {"storage": {"path": str(tmp_path)}, "mqtt": {"username": "u", "password": MQTT_SECRET}}
    if SIGNED:
        doc["security"] = {"hmac_secret": HMAC_SECRET}
    cfg = parse_config(doc)
    journal = f"line with {MQTT_SECRET} and {HMAC_SECRET} and json {json.dumps({'pw': MQTT_SECRET})}\n"
    result = build_bundle(tmp_path, cfg, {"daemon": {"note": MQTT_SECRET}}, {}, journal=lambda: journal)
    with tarfile.open(result["path"]) as tar:
        texts = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert sorted(texts) == sorted(BUNDLE_FILES)
    for name, text in texts.items():
        assert MQTT_SECRET not in text, name
        assert HMAC_SECRET not in text or not SIGNED, name
    assert texts["journal.txt"].count("**********") >= 2


def test_journal_note_when_journalctl_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "journalctl is not available" in read_journal()


def test_logs_bundle_keeps_the_newest_five(running: Running) -> None:
    paths = [ok(running.ask("logs/bundle"))["path"] for _ in range(7)]
    left = sorted(p.name for p in (running.storage / "bundles").iterdir())
    assert len(left) == 5
    assert left == sorted(Path(p).name for p in paths[-5:])


# --------------------------------------------------------------------------- storage/cleanup


def fill_storage(storage: Path, outside: Path) -> tuple[int, int]:
    """Snapshots and dataset files below storage (plus symlinks pointing outside); returns (files, bytes)."""
    snaps = storage / CLEANUP_FOLDERS["evidence"]
    dataset = storage / CLEANUP_FOLDERS["dataset"]
    files = total = 0
    for day in ("2024-01-01", "2024-01-02"):
        (snaps / day).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (snaps / day / f"snap{i}.jpg").write_bytes(b"j" * (100 + i))
            files, total = files + 1, total + 100 + i
    for sub in ("images", "labels"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            (dataset / sub / f"f{i}.{'jpg' if sub == 'images' else 'txt'}").write_bytes(b"d" * 50)
            files, total = files + 1, total + 50
    (dataset / "data.yaml").write_text("names: [a]\n")
    (dataset / "README.txt").write_text("readme\n")
    outside.mkdir(exist_ok=True)
    (outside / "precious.txt").write_text("keep me")
    (snaps / "link-to-outside").symlink_to(outside)
    (dataset / "images" / "link.jpg").symlink_to(outside / "precious.txt")
    return files + 2, total


def test_storage_cleanup_empties_the_folders_and_reports_counts(running: Running, tmp_path: Path) -> None:
    files, total = fill_storage(running.storage, tmp_path / "outside")
    data = ok(running.ask("storage/cleanup", {"what": ["evidence", "dataset"]}))
    assert data["files"] == files and data["bytes_freed"] == total, data
    assert data["folders"]["evidence"]["files"] == 7 and data["folders"]["dataset"]["files"] == 9
    snaps = running.storage / CLEANUP_FOLDERS["evidence"]
    dataset = running.storage / CLEANUP_FOLDERS["dataset"]
    assert snaps.is_dir() and not list(snaps.iterdir())
    assert not list((dataset / "images").iterdir()) and not list((dataset / "labels").iterdir())
    assert (dataset / "data.yaml").is_file() and (dataset / "README.txt").is_file()
    assert (tmp_path / "outside" / "precious.txt").read_text() == "keep me", "symlinks are never followed"
    event = running.probe.wait_for(f"{ROOT}/event/storage_cleaned").json()["data"]
    assert event["files"] == files and event["what"] == ["evidence", "dataset"]


def test_storage_cleanup_of_one_folder_only(running: Running, tmp_path: Path) -> None:
    fill_storage(running.storage, tmp_path / "outside")
    data = ok(running.ask("storage/cleanup", {"what": ["dataset"]}))
    assert list(data["folders"]) == ["dataset"]
    assert len(list((running.storage / CLEANUP_FOLDERS["evidence"]).rglob("*.jpg"))) == 6


def test_storage_cleanup_refuses_a_folder_that_leads_outside(tmp_path: Path) -> None:
    storage = tmp_path / "s"
    outside = tmp_path / "elsewhere"
    (outside / "snapshots").mkdir(parents=True)
    (outside / "snapshots" / "x.jpg").write_bytes(b"x")
    storage.mkdir()
    (storage / "evidence").symlink_to(outside)
    with pytest.raises(Exception, match="outside"):
        clean_storage(storage, ["evidence"])
    assert (outside / "snapshots" / "x.jpg").exists()


def test_cleanup_folders_match_the_evidence_store() -> None:
    from smartbin_daemon.vision.evidence import DATASET_DIR, SNAPSHOT_DIR

    assert CLEANUP_FOLDERS == {"evidence": SNAPSHOT_DIR, "dataset": DATASET_DIR}
