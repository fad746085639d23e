"""`smartbinctl` against a real daemon in simulation and a real mosquitto, plus each doctor check on its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from smartbin_daemon import ctl
from smartbin_daemon.config import Config, parse_config
from smartbin_daemon.ctl.render import render_alerts
from smartbin_daemon.runtime.auth import Verifier
from smartbin_daemon.states import AlertsState

from .conftest import REPO, Broker, DaemonProcess, Probe, free_port, simulation_doc, wait_until

SIM_ROOT = "smartbin/sim-bin"
HAS_SECURITY = "security" in Config.model_fields
SECRET = "ctl-test-secret-0123456789abcdef0123456789"


def fast_simulation_config(tmp_path: Path, port: int, **overrides: Any) -> Path:
    """config/simulation.yaml as shipped (real model, real workers), faster items, on the test broker, no health."""
    doc = simulation_doc(tmp_path, port)
    doc["mqtt"]["state_interval_s"] = 2
    doc["logging"] = {"level": "INFO", "journal": "off"}
    doc["simulation"].update({"item_interval_s": 3, "item_dwell_s": 1.5, "seed": 7})
    doc["health"]["enabled"] = False  # keep the CPU for the detector
    if HAS_SECURITY:
        doc["security"] = {"hmac_secret": SECRET}
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / "simulation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_ctl(*args: str, config: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m smartbin_daemon.ctl [--config X] args...` as a subprocess."""
    cmd = [sys.executable, "-m", "smartbin_daemon.ctl"]
    if config is not None:
        cmd += ["--config", str(config)]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, encoding="utf-8", timeout=timeout,
                          cwd=str(REPO), env=env)


@dataclass
class Sim:
    """The simulated bin shared by the tests of this module."""

    broker: Broker
    daemon: DaemonProcess
    config: Path
    probe: Probe


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One broker and one simulated daemon for the module, ready once the first item was sorted."""
    tmp = tmp_path_factory.mktemp("ctl-sim")
    broker = Broker(tmp)
    broker.start()
    config = fast_simulation_config(tmp, broker.port)
    probe = Probe(broker.port)
    probe.subscribe(f"{SIM_ROOT}/#")
    daemon = DaemonProcess(config)
    try:
        wait_until(lambda: probe.on(f"{SIM_ROOT}/event/item_sorted"), timeout=60, what="a first sorted item")
        yield Sim(broker, daemon, config, probe)
    finally:
        probe.close()
        daemon.stop()
        broker.stop()


# --------------------------------------------------------------------------- against the simulated bin


def test_status_shows_daemon_links_workflow_and_every_compartment_with_a_fill_bar(sim: Sim) -> None:
    result = run_ctl("status", config=sim.config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "live from broker 127.0.0.1:" in out
    assert re.search(r"^availability\s+online", out, re.M), out
    assert re.search(r"^daemon\s+v\S+ · up .* failed: none", out, re.M), out
    assert re.search(r"^arduino\s+connected · port \S+arduino-sim\.tty · firmware smartbin-fw", out, re.M), out
    assert re.search(r"^camera\s+connected · [\d.]+ fps", out, re.M), out
    assert re.search(r"^detector\s+smartbin-waste-s\.onnx on cpu .* inference p50 [\d.]+ ms", out, re.M), out
    assert re.search(r"^sorting\s+(idle|item_present|classifying|routing|confirming|blocked|error) · \d+ sorted", out, re.M), out
    for cid in ("recycling", "paper", "residual"):
        assert re.search(rf"^  {cid}\s+\[[#.]{{20}}\]\s+\d+\.\d%  \S+\s+\d+ items  ", out, re.M), out
    assert re.search(r"^mqtt\s+connected to .* outbox \d+ pending", out, re.M), out
    assert "errors/alerts" in out
    raw = run_ctl("status", "--json", config=sim.config)
    assert raw.returncode == 0, raw.stderr
    doc = json.loads(raw.stdout)
    assert doc["source"] == "broker" and doc["availability"] == "online"
    assert set(doc["components"]["fill"]["compartments"]) == {"recycling", "paper", "residual"}
    assert doc["components"]["arduino"]["status"] == "connected"


def test_alerts_lists_the_active_alerts_and_the_status_screen_counts_them(sim: Sim) -> None:
    raw = run_ctl("alerts", "--json", config=sim.config)
    assert raw.returncode == 0, raw.stderr
    state = json.loads(raw.stdout)
    assert set(state) >= {"active", "counts", "webhook"} and state["webhook"]["enabled"] is False
    shown = run_ctl("alerts", config=sim.config)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == max(1, state["counts"]["total"]) + 1, shown.stdout
    assert re.search(r"^\(\d+ active \(\d+ critical, \d+ warning\)\)$", shown.stdout, re.M), shown.stdout
    status = run_ctl("status", config=sim.config)
    assert re.search(r"^alerts\s+\d+ active \(\d+ critical, \d+ warning\)", status.stdout, re.M), status.stdout
    unknown = run_ctl("alerts", "--ack", "nosuchalert", config=sim.config)
    assert unknown.returncode == 1 and "no active alert 'nosuchalert'" in unknown.stderr, unknown.stderr


def test_request_ping_exits_0_and_prints_pong(sim: Sim) -> None:
    result = run_ctl("request", "ping", config=sim.config)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["status"] == "ok" and response["data"]["pong"] is True
    assert response["data"]["device"] == "sim-bin"


def test_request_with_bad_args_exits_1_and_names_the_field(sim: Sim) -> None:
    result = run_ctl("request", "route", '{"compartment": "first"}', config=sim.config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "error"
    assert "args.compartment" in result.stderr
    unknown = run_ctl("request", "route", '{"compartment": 1, "speed": 3}', config=sim.config)
    assert unknown.returncode == 1 and "args.speed: unknown field" in unknown.stderr


def test_request_usage_errors_exit_2_without_touching_the_broker(sim: Sim) -> None:
    assert run_ctl("request", "ping", "[1, 2]", config=sim.config).returncode == 2
    assert run_ctl("request", "ping", "{not json", config=sim.config).returncode == 2
    bad = run_ctl("request", "No Such/Command!", config=sim.config)
    assert bad.returncode == 2 and "not a command name" in bad.stderr


def test_request_route_is_acked_and_signed_when_a_secret_is_configured(sim: Sim) -> None:
    result = run_ctl("request", "route", '{"compartment": 1}', config=sim.config)
    assert result.returncode == 0, result.stdout + result.stderr
    response = json.loads(result.stdout)
    assert response["data"]["acked"] is True and response["data"]["bin"] == "1"
    sent = [m.json() for m in sim.probe.on(f"{SIM_ROOT}/request/route")]
    mine = [s for s in sent if s["transaction"] == response["transaction"]]
    assert len(mine) == 1 and mine[0]["args"] == {"compartment": 1}
    assert ("auth" in mine[0]) == HAS_SECURITY
    if HAS_SECURITY:
        Verifier(SECRET, "sim-bin").verify("route", mine[0]["args"], mine[0]["auth"])


def test_calibrate_prints_the_result_in_words(sim: Sim) -> None:
    result = run_ctl("calibrate", "recycling", "empty", config=sim.config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("recycling: empty point set from the current sensor reading.")
    assert re.search(r"empty = [\d.]+ mm, full = 100\.0 mm", result.stdout), result.stdout
    given = run_ctl("calibrate", "paper", "full", "--distance-mm", "110", config=sim.config)
    assert given.returncode == 0 and "full = 110.0 mm" in given.stdout, given.stdout + given.stderr
    wrong = run_ctl("calibrate", "kitchen", "empty", config=sim.config)
    assert wrong.returncode == 1 and "unknown compartment 'kitchen'" in wrong.stderr


def test_watch_prints_one_line_per_item_sorted_and_exits_0_on_ctrl_c(sim: Sim, tmp_path: Path) -> None:
    out_path = tmp_path / "watch.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "smartbin_daemon.ctl", "--config", str(sim.config), "watch"],
                                stdout=out, stderr=subprocess.PIPE, cwd=str(REPO),
                                env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        try:
            wait_until(lambda: "item_sorted" in out_path.read_text(encoding="utf-8"), timeout=30, interval=0.2,
                       what="an item_sorted line from watch")
        finally:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(10)
    assert rc == 0
    lines = out_path.read_text(encoding="utf-8").splitlines()
    sorted_lines = [line for line in lines if "item_sorted" in line]
    assert sorted_lines
    assert re.match(r"^\d\d:\d\d:\d\d  item_sorted\s+\w+ → \w+ \(flap \d\)\s+\d+ ms \(decision \d+ ms\)", sorted_lines[0]), \
        sorted_lines[0]
    assert proc.stderr is not None and "watching smartbin/sim-bin/event/#" in proc.stderr.read().decode()


def test_doctor_against_the_simulation_config(sim: Sim) -> None:
    unit = "smartbin-ctl-test-no-such-unit"
    result = run_ctl("doctor", "--unit", unit, config=sim.config)
    lines = result.stdout.splitlines()
    by_check = {re.split(r"\s+", line, maxsplit=1)[1].split(":", 1)[0]: line for line in lines}
    for check in ("config", "broker", "model", "serial port", "camera", "gpio", "daemon"):
        assert by_check[check].startswith("OK    "), by_check[check]
    storage_fs = shutil.disk_usage(sim.config.parent)
    if storage_fs.used / (storage_fs.used + storage_fs.free) < 0.9:
        assert by_check["disk"].startswith("OK    "), by_check["disk"]
    systemd = [line for line in lines if "systemd unit:" in line]
    assert len(systemd) == 1 and systemd[0].startswith("WARN  ") and " — " in systemd[0], systemd
    assert "smartbin-waste-s.onnx" in by_check["model"] and "8 classes" in by_check["model"]
    assert all(re.match(r"^(OK  |WARN|FAIL)  [a-z ]+: ", line) for line in lines), lines
    assert result.returncode == (1 if any(line.startswith("FAIL") for line in lines) else 0)
    assert result.returncode == 0, result.stdout


def test_status_falls_back_to_the_state_file_when_the_broker_is_down(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    # Fast to start: no camera, detector or simulated items; the pty Arduino and the fill tracker are enough.
    config = fast_simulation_config(tmp_path, broker.port, detector={"enabled": False}, camera={"enabled": False},
                                    simulation={"enabled": False})
    probe = probe_factory(broker.port)
    probe.subscribe(f"{SIM_ROOT}/#")
    daemon = daemon_factory(config)
    probe.wait_for(f"{SIM_ROOT}/fill", lambda m: m.json()["compartments"]["paper"]["level"] is not None, timeout=30)
    broker.stop()
    daemon.stop()  # a graceful stop writes the state file with every component's last state
    state_file = tmp_path / "state" / "state.json"
    assert state_file.exists()
    result = run_ctl("status", "--timeout", "2", config=config)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert re.match(rf"^broker unreachable \(connection refused by 127\.0\.0\.1:{broker.port}\): showing the local "
                    r"state file written at \S+ \(\d+ s ago\)$", first), first
    assert "availability  unknown (broker unreachable)" in result.stdout
    assert re.search(r"^  paper\s+\[[#.]{20}\]", result.stdout, re.M), result.stdout
    assert re.search(r"^arduino\s+\w+ · port ", result.stdout, re.M)
    raw = json.loads(run_ctl("status", "--json", "--timeout", "2", config=config).stdout)
    assert raw["source"] == "state_file" and raw["state_file"] == str(state_file)
    assert "fill" in raw["components"]


def test_status_without_broker_or_state_file_says_why_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"device": {"id": "nobin"}, "mqtt": {"host": "127.0.0.1", "port": free_port()},
                                      "storage": {"path": str(tmp_path / "nothing")}}))
    result = run_ctl("status", "--timeout", "2", config=config)
    assert result.returncode == 2
    assert "state file is unusable" in result.stderr and "state.json" in result.stderr


# --------------------------------------------------------------------------- logs


def test_logs_dry_run_prints_the_journalctl_command() -> None:
    result = run_ctl("logs", "arduino", "-n", "5", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "journalctl -u smartbin -n 5 SMARTBIN_COMPONENT=arduino\n"
    more = run_ctl("logs", "-f", "--item", "ab12", "--event", "workflow_transition", "--since", "1 hour ago",
                   "--unit", "smartbin-dev", "--dry-run")
    assert more.stdout == ("journalctl -u smartbin-dev -f --since '1 hour ago' SMARTBIN_EVENT=workflow_transition "
                           "SMARTBIN_ITEM=ab12\n")


def test_journalctl_command_filters() -> None:
    assert ctl.journalctl_command(component="mqtt", priority="warning", output="verbose") == [
        "journalctl", "-u", "smartbin", "-p", "warning", "-o", "verbose", "SMARTBIN_COMPONENT=mqtt"]


# --------------------------------------------------------------------------- doctor checks, one by one


def sim_cfg(tmp_path: Path, **overrides: Any) -> Config:
    """The simulation config (parsed) with section overrides."""
    doc = yaml.safe_load((REPO / "config" / "simulation.yaml").read_text())
    doc["storage"]["path"] = str(tmp_path / "state")
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value}
    return parse_config(doc, "test", REPO / "config")


TECH = ctl.Identity("tech", frozenset({"tech"}), frozenset({"tech"}))


def test_check_serial_port_missing_port_fails_with_port_and_dialout_advice(tmp_path: Path) -> None:
    cfg = sim_cfg(tmp_path, arduino={"backend": "serial", "port": str(tmp_path / "ttyACM7")})
    r = ctl.check_serial_port(cfg, identity=TECH)
    assert r.status == "FAIL" and "ttyACM7 does not exist" in r.finding
    assert "arduino.port" in r.advice and "sudo usermod -aG dialout tech" in r.advice
    assert r.line().startswith("FAIL  serial port: ")


def test_check_serial_port_without_permission_says_usermod_dialout(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    port.write_text("")
    cfg = sim_cfg(tmp_path, arduino={"backend": "serial", "port": str(port)})
    r = ctl.check_serial_port(cfg, identity=TECH, access=lambda p, m: False)
    assert r.status == "FAIL" and "tech is not in it" in r.finding and "sudo usermod -aG dialout tech" in r.advice
    pending = ctl.Identity("tech", frozenset({"tech"}), frozenset({"tech", "dialout"}))
    r = ctl.check_serial_port(cfg, identity=pending, access=lambda p, m: False)
    assert r.status == "FAIL" and "log out and back in" in r.advice
    assert ctl.check_serial_port(cfg, identity=TECH, access=lambda p, m: True).status == "OK"


def test_check_serial_port_by_vid_pid(tmp_path: Path) -> None:
    cfg = sim_cfg(tmp_path, arduino={"backend": "serial", "vid_pid": "2341:0043"})
    other = SimpleNamespace(device="/dev/ttyUSB3", vid=0x1A86, pid=0x7523)
    r = ctl.check_serial_port(cfg, comports=lambda: [other], identity=TECH)
    assert r.status == "FAIL" and "2341:0043" in r.finding and "/dev/ttyUSB3 1a86:7523" in r.finding
    assert "dialout" in r.advice
    port = tmp_path / "ttyACM0"
    port.write_text("")
    uno = SimpleNamespace(device=str(port), vid=0x2341, pid=0x0043)
    r = ctl.check_serial_port(cfg, comports=lambda: [other, uno], identity=TECH, access=lambda p, m: True)
    assert r.status == "OK" and str(port) in r.finding


def test_check_serial_port_simulator_and_disabled(tmp_path: Path) -> None:
    assert ctl.check_serial_port(sim_cfg(tmp_path)).status == "OK"
    assert "disabled" in ctl.check_serial_port(Config()).finding


def test_check_config_bad_file_lists_every_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"mqtt": {"port": "eighteen", "hots": "x"}, "arduino": {"enabled": True}}))
    r, loaded = ctl.check_config(bad)
    assert loaded is None and r.status == "FAIL"
    assert "mqtt.port" in r.finding and "mqtt.hots: unknown key" in r.finding and "arduino" in r.finding
    assert "check-config" in r.advice
    r, loaded = ctl.check_config(tmp_path / "missing.yaml")
    assert r.status == "FAIL" and "cannot read" in r.finding
    cli = run_ctl("doctor", "--unit", "smartbin-ctl-test-no-such-unit", config=bad)
    lines = cli.stdout.splitlines()
    assert cli.returncode == 1 and lines[0].startswith("FAIL  config: ") and "mqtt.port" in lines[0], cli.stdout
    assert len(lines) == 2 and "systemd unit:" in lines[1]


def test_check_config_with_an_unreadable_password_file_warns_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"mqtt": {"username": "bin", "password_file": "no-such-secret"}}))
    r, loaded = ctl.check_config(path)
    assert r.status == "WARN" and "mqtt.password_file" in r.finding and loaded is not None
    assert loaded.cfg.mqtt.username == "bin" and loaded.cfg.mqtt.password is None


def test_check_broker_unreachable_fails_with_advice() -> None:
    cfg = Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": free_port()}})
    r = ctl.check_broker(cfg, timeout=2)
    assert r.status == "FAIL" and "connection refused" in r.finding and "broker running" in r.advice


def test_check_broker_reports_bad_credentials_and_not_authorized(tmp_path: Path) -> None:
    b = Broker(tmp_path, password=("tech", "right-password"))
    b.start()
    try:
        def cfg(**mqtt: Any) -> Config:
            return Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": b.port, **mqtt}})
        for protocol in ("5", "3.1.1"):
            wrong = ctl.check_broker(cfg(username="tech", password="wrong", protocol=protocol), timeout=3)
            assert wrong.status == "FAIL" and wrong.finding.startswith("bad credentials"), wrong
            assert "user 'tech'" in wrong.finding and "mqtt.password" in wrong.advice
            anonymous = ctl.check_broker(cfg(protocol=protocol), timeout=3)
            assert anonymous.status == "FAIL" and anonymous.finding.startswith("not authorized"), anonymous
            assert "anonymous" in anonymous.finding and "mqtt.username" in anonymous.advice
        good = ctl.check_broker(cfg(username="tech", password="right-password"), timeout=3)
        assert good.status == "OK" and "user tech" in good.finding, good
    finally:
        b.stop()


def test_request_as_another_user_that_the_acl_forbids_to_publish_says_so(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user tech\ntopic read smartbin/#\n")
    b = Broker(tmp_path, password=("tech", "pw"), extra_conf=f"acl_file {acl}\n")
    b.start()
    try:
        config = tmp_path / "c.yaml"  # the bin's own config: no login, which this broker refuses
        config.write_text(yaml.safe_dump({"device": {"id": "aclbin"}, "mqtt": {"host": "127.0.0.1", "port": b.port},
                                          "storage": {"path": str(tmp_path / "state")}}))
        (tmp_path / "pw").write_text("pw\n")
        anonymous = run_ctl("request", "ping", "--timeout", "3", config=config)
        assert anonymous.returncode == 2 and "not authorized" in anonymous.stderr, anonymous.stderr
        denied = run_ctl("request", "ping", "--timeout", "3", "--username", "tech", "--password-file",
                         str(tmp_path / "pw"), config=config)
        assert denied.returncode == 2, denied.stderr
        assert "refused the publish to smartbin/aclbin/request/ping: Not authorized" in denied.stderr
        assert "user 'tech'" in denied.stderr
    finally:
        b.stop()


def test_check_daemon_without_retained_state_warns(broker: Broker) -> None:
    cfg = Config.model_validate({"device": {"id": "ghost"}, "mqtt": {"host": "127.0.0.1", "port": broker.port}})
    r = ctl.check_daemon(cfg, timeout=3, wait_s=0.5)
    assert r.status == "WARN" and "nothing retained under smartbin/ghost/" in r.finding


def test_check_disk_thresholds(tmp_path: Path) -> None:
    def usage(pct: float) -> Callable[[Path], Any]:
        return lambda p: SimpleNamespace(total=1000, used=pct * 10, free=1000 - pct * 10)
    assert ctl.check_disk(tmp_path, usage=usage(50)).status == "OK"
    warn = ctl.check_disk(tmp_path, usage=usage(95))
    assert warn.status == "WARN" and "95.0% used" in warn.finding and "evidence" in warn.advice
    assert ctl.check_disk(tmp_path, usage=usage(99)).status == "FAIL"
    later = ctl.check_disk(tmp_path / "not" / "yet", usage=usage(10))
    assert later.status == "OK" and "does not exist yet" in later.finding
    assert ctl.check_disk(tmp_path).status in ("OK", "WARN", "FAIL")  # the real disk_usage works


def _model(tmp_path: Path, classes: list[dict[str, Any]] | None) -> Path:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\0" * 2048)
    if classes is not None:
        (tmp_path / "m.classes.yaml").write_text(yaml.safe_dump({"classes": classes}))
    return model


def test_check_model_and_class_map(tmp_path: Path) -> None:
    every = [{"index": i, "name": c, "category": c, "compartment": "x"}
             for i, c in enumerate(["plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste",
                                    "hazardous", "residual"])]
    model = _model(tmp_path, every)
    ok = ctl.check_model(sim_cfg(tmp_path, detector={"model": str(model)}))
    assert ok.status == "OK" and "8 classes → 8 categories" in ok.finding
    _model(tmp_path, every[:3] + [{"index": 3, "name": "sock", "category": "textiles", "compartment": "x"}])
    bad = ctl.check_model(sim_cfg(tmp_path, detector={"model": str(model)}))
    assert bad.status == "FAIL" and "unknown category 'textiles'" in bad.finding
    _model(tmp_path, every[:2] + every[-1:])
    partial = ctl.check_model(sim_cfg(tmp_path, detector={"model": str(model)}))
    assert partial.status == "WARN" and "no class for glass" in partial.finding
    (tmp_path / "m.classes.yaml").unlink()
    missing_map = ctl.check_model(sim_cfg(tmp_path, detector={"model": str(model)}))
    assert missing_map.status == "FAIL" and "m.classes.yaml" in missing_map.finding and "smartbin-train" in missing_map.advice
    gone = ctl.check_model(sim_cfg(tmp_path, detector={"model": str(tmp_path / "nope.onnx")}))
    assert gone.status == "FAIL" and "does not exist" in gone.finding
    assert ctl.check_model(sim_cfg(tmp_path, detector={"enabled": False})).status == "OK"
    shipped = ctl.check_model(sim_cfg(tmp_path))
    assert shipped.status == "OK", shipped


def test_check_camera_sources(tmp_path: Path) -> None:
    missing = ctl.check_camera(sim_cfg(tmp_path, camera={"source": "/dev/video97", "kind": "auto"}), tmp_path)
    assert missing.status == "FAIL" and "/dev/video97 does not exist" in missing.finding and "v4l2-ctl" in missing.advice
    folder = tmp_path / "frames"
    folder.mkdir()
    empty = ctl.check_camera(sim_cfg(tmp_path, camera={"source": "frames"}), tmp_path)
    assert empty.status == "WARN"
    (folder / "a.jpg").write_bytes(b"jpeg")
    assert ctl.check_camera(sim_cfg(tmp_path, camera={"source": "frames"}), tmp_path).status == "OK"
    url = ctl.check_camera(sim_cfg(tmp_path, camera={"source": "rtsp://admin:hunter2@cam.local/s1", "kind": "auto"}), tmp_path)
    assert url.status == "OK" and "hunter2" not in url.finding and "***@cam.local" in url.finding
    nofile = ctl.check_camera(sim_cfg(tmp_path, camera={"source": "clip.mp4"}), tmp_path)
    assert nofile.status == "FAIL" and "clip.mp4" in nofile.finding
    scene = ctl.check_camera(sim_cfg(tmp_path, camera={"source": str(tmp_path / "state" / "sim-scene")}), tmp_path)
    assert scene.status == "OK" and "simulated scene folder" in scene.finding


def test_check_camera_device_permission(tmp_path: Path) -> None:
    dev = tmp_path / "video0"
    dev.write_text("")
    r = ctl.check_camera(sim_cfg(tmp_path, camera={"source": str(dev), "kind": "v4l2"}), tmp_path, identity=TECH,
                         access=lambda p, m: False)
    assert r.status == "FAIL" and "sudo usermod -aG video tech" in r.advice


def test_check_gpio(tmp_path: Path) -> None:
    assert ctl.check_gpio(sim_cfg(tmp_path)).status == "OK"  # mock factory
    real = sim_cfg(tmp_path, gpio={"pin_factory": "lgpio"})
    none = ctl.check_gpio(real, chips=[])
    assert none.status == "FAIL" and "gpiochip" in none.finding and "pin_factory: mock" in none.advice
    chip = tmp_path / "gpiochip0"
    chip.write_text("")
    denied = ctl.check_gpio(real, chips=[chip], identity=TECH, access=lambda p, m: False)
    assert denied.status == "FAIL" and "sudo usermod -aG gpio tech" in denied.advice
    assert ctl.check_gpio(real, chips=[chip], identity=TECH, access=lambda p, m: True).status == "OK"


def _fake_systemctl(active: tuple[str, str], enabled: tuple[str, str]) -> Callable[[list[str]], Any]:
    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        out, err = active if cmd[1] == "is-active" else enabled
        return subprocess.CompletedProcess(cmd, 0 if out in ("active", "enabled") else 3, out + "\n", err)
    return run


def test_check_systemd_unit_states() -> None:
    ok = ctl.check_systemd_unit(run=_fake_systemctl(("active", ""), ("enabled", "")))
    assert ok.status == "OK" and ok.finding == "smartbin.service active, enabled"
    failed = ctl.check_systemd_unit(run=_fake_systemctl(("failed", ""), ("enabled", "")))
    assert failed.status == "FAIL" and "journalctl -u smartbin" in failed.advice
    stopped = ctl.check_systemd_unit(run=_fake_systemctl(("inactive", ""), ("disabled", "")))
    assert stopped.status == "FAIL" and "systemctl start" in stopped.advice and "enable" in stopped.advice
    boot = ctl.check_systemd_unit(run=_fake_systemctl(("active", ""), ("disabled", "")))
    assert boot.status == "WARN" and "systemctl enable" in boot.advice
    absent = ctl.check_systemd_unit(run=_fake_systemctl(
        ("inactive", ""), ("", "Failed to get unit file state for smartbin.service: No such file or directory")))
    assert absent.status == "WARN" and "not installed" in absent.finding and "install.sh" in absent.advice
    nosd = ctl.check_systemd_unit(run=_fake_systemctl(
        ("", "System has not been booted with systemd as init system (PID 1). Can't operate."), ("enabled", "")))
    assert nosd.status == "WARN" and "systemd is not running" in nosd.finding

    def no_systemctl(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("systemctl")
    missing = ctl.check_systemd_unit(run=no_systemctl)
    assert missing.status == "WARN" and "systemctl not found" in missing.finding
    assert ctl.check_systemd_unit("smartbin-ctl-test-no-such-unit").status == "WARN"  # the real systemctl, if any


# --------------------------------------------------------------------------- signing and rendering


def test_signing_secret_inline_file_and_unreadable(tmp_path: Path) -> None:
    inline = SimpleNamespace(security=SimpleNamespace(hmac_secret=SecretStr("s3cret"), hmac_secret_file=None))
    assert ctl.signing_secret(inline) == ("s3cret", None)  # type: ignore[arg-type]
    (tmp_path / "hmac").write_text("from-file\n")
    from_file = SimpleNamespace(security=SimpleNamespace(hmac_secret=None, hmac_secret_file=Path("hmac")))
    assert ctl.signing_secret(from_file, tmp_path) == ("from-file", None)  # type: ignore[arg-type]
    gone = SimpleNamespace(security=SimpleNamespace(hmac_secret=None, hmac_secret_file=tmp_path / "nope"))
    secret, note = ctl.signing_secret(gone)  # type: ignore[arg-type]
    assert secret is None and note is not None and "unsigned" in note
    assert ctl.signing_secret(Config()) == (None, None)


def test_check_signing(tmp_path: Path) -> None:
    def cfg(**security: Any) -> Any:
        return SimpleNamespace(security=SimpleNamespace(**{"hmac_secret": None, "hmac_secret_file": None,
                                                           "privileged": "hmac", **security}))
    assert ctl.check_signing(cfg(hmac_secret=SecretStr("k"))) == ctl.CheckResult(
        "OK", "signing", "request secret readable: requests are signed (HMAC-SHA256)")
    none = ctl.check_signing(cfg())
    assert none is not None and none.status == "WARN" and "hmac_secret_file" in none.advice
    unreadable = ctl.check_signing(cfg(hmac_secret_file=tmp_path / "nope"))
    assert unreadable is not None and unreadable.status == "WARN" and "sudo" in unreadable.advice
    acl = ctl.check_signing(cfg(privileged="broker_acl"))
    assert acl is not None and acl.status == "OK" and "broker's ACL" in acl.finding
    assert ctl.check_signing(SimpleNamespace()) is None  # type: ignore[arg-type]  # a daemon without `security`


def test_build_request_signs_what_the_daemon_verifies() -> None:
    cfg = Config.model_validate({"device": {"id": "kitchen-bin"}})
    body = ctl.build_request(cfg, "route", {"compartment": 2}, "k3y", transaction="t1")
    assert body["transaction"] == "t1" and body["args"] == {"compartment": 2}
    Verifier("k3y", "kitchen-bin").verify("route", body["args"], body["auth"])
    assert "auth" not in ctl.build_request(cfg, "ping", {}, None)


def test_compartment_line_format() -> None:
    line = ctl.compartment_line("recycling", {"fill_pct": 35.2, "level": "ok", "items": 12, "seconds_to_full": 3 * 3600,
                                              "predicted_full_at": "2026-11-22T14:05:00Z"})
    assert line == "recycling  [#######.............]  35.2%  ok  12 items  full in ~3h (2026-11-22 14:05 UTC)"
    full = ctl.compartment_line("paper", {"fill_pct": 97.0, "level": "full", "items": 30}, width=9)
    assert full == "paper      [###################.]  97.0%  full  30 items  FULL: empty it"
    assert ctl.compartment_line("x", {"fill_pct": None, "level": None}).endswith("no forecast yet")


def test_derive_problems_from_states() -> None:
    states: dict[str, dict[str, Any]] = {
        "daemon": {"failed_workers": ["camera"], "workers": {"camera": {"status": "failed", "last_error": "boom"}}},
        "workflow": {"error": {"code": "route_failed", "message": "no ACK", "at": "t"}, "vision": "ok"},
        "fill": {"compartments": {"paper": {"name": "Paper", "level": "full", "fill_pct": 96.0}}},
        "arduino": {"status": "stale", "last_error": "silent for 3s"},
        "health": {"status": "warn", "conditions": ["disk_high"]},
    }
    problems = ctl.derive_problems(states, "offline")
    assert problems[0].startswith("critical daemon: availability is offline")
    text = "\n".join(problems)
    assert "worker camera failed: boom" in text and "route_failed: no ACK" in text
    assert "compartment_full_paper: Paper is full (96.0%)" in text and "link stale: silent for 3s" in text
    assert "warning  health: disk_high" in text
    assert ctl.derive_problems({}, "online") == []


def test_active_alerts_lead_the_problems_and_replace_what_their_sources_states_repeat() -> None:
    alerts = {"active": [{"id": "e1", "source": "fill", "code": "compartment_full_paper", "severity": "warning",
                          "since": "2026-12-03T06:00:00.000Z", "message": "compartment Paper is full (96.0%); empty it"},
                         {"id": "e2", "source": "arduino", "code": "link_down", "severity": "critical",
                          "since": "2026-12-03T06:01:00.000Z", "message": "Arduino link down for 120s: unplugged"}],
              "counts": {"warning": 1, "critical": 1, "total": 2},
              "webhook": {"enabled": True, "min_severity": "critical", "sent": 1, "failed": 0, "suppressed": 2,
                          "dropped": 0}}
    states = {"alerts": alerts, "fill": {"compartments": {"paper": {"name": "Paper", "level": "full", "fill_pct": 96.0}}}}
    problems = ctl.derive_problems(states, "online")
    assert problems[0].startswith("critical arduino: link_down: Arduino link down for 120s: unplugged (active since ")
    (full,) = [p for p in problems if "compartment_full_paper" in p]  # once: the alert, not also the fill state's line
    assert full.startswith("warning  fill: compartment_full_paper: compartment Paper is full (96.0%); empty it (active")
    text = render_alerts(AlertsState.from_json(alerts))
    lines = text.splitlines()
    assert lines[0].startswith("CRITICAL") and "arduino/link_down: Arduino link down" in lines[0]
    assert lines[1].startswith("WARNING") and "fill/compartment_full_paper" in lines[1]
    assert lines[2] == "(2 active (1 critical, 1 warning) · webhook ≥ critical: 1 sent, 0 failed, 2 suppressed, 0 dropped)"
    assert render_alerts(AlertsState()).splitlines()[0] == "no active alerts"


def test_clock_problems_come_from_the_health_state() -> None:
    def problems(clock: dict[str, Any]) -> list[str]:
        return ctl.derive_problems({"health": {"status": "ok", "conditions": [], "clock": clock}}, "online")

    assert problems({"valid": False, "wall_time": "1970-01-04T00:00:00Z", "ntp_synchronized": False}) == [
        "critical health: wall clock unset (1970-01-04T00:00:00Z); timestamps are wrong"]
    assert problems({"valid": True, "ntp_synchronized": False, "unsynchronized_for_s": 950.2}) == [
        "warning  health: NTP not synchronised (for 950 s)"]
    assert problems({"valid": True, "ntp_synchronized": None}) == []


def test_status_shows_the_system_row_from_the_health_state() -> None:
    from smartbin_daemon.ctl.session import Snapshot

    health = {"status": "ok", "score": 100, "conditions": [], "clock": {"valid": True, "ntp_synchronized": True},
              "system": {"os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.6.31", "ip": "192.168.1.20",
                         "wifi": [{"interface": "wlan0", "ssid": "kitchen-iot", "signal_dbm": -52.0}]}}
    cfg = parse_config({})
    text = ctl.render_status(Snapshot("broker", {"health": health}, "online"), cfg)
    older = ctl.render_status(Snapshot("broker", {"health": {"status": "ok", "conditions": []}}, "online"), cfg)

    assert ("system        Debian GNU/Linux 12 (bookworm) · kernel 6.6.31 · ip 192.168.1.20 · kitchen-iot -52 dBm"
            " · NTP synchronised") in text.splitlines()
    assert "system        not reported (a daemon without system identity)" in older.splitlines()


def test_a_state_of_another_shape_is_reported_not_a_crash() -> None:
    """States are read through the typed models; one that does not fit them (another daemon version) is named."""
    problems = ctl.derive_problems({"health": {"status": "warn", "conditions": True},
                                    "arduino": {"status": "connected", "fault": "servo_stall"}}, "online")
    assert problems == ["warning  arduino: MCU reports fault servo_stall",
                        "warning  health: state not readable here: TypeError: 'bool' object is not iterable"]


def test_format_event_lines() -> None:
    sorted_line = ctl.format_event({"type": "item_sorted", "ts": "2026-11-21T10:13:54.171Z", "data": {
        "category": "plastic", "compartment": "recycling", "flap": 1, "class_name": "plastic", "confidence": 0.91,
        "confirmation": "drop", "item_id": "abc", "latency": {"total_ms": 900.1, "presence_to_decision_ms": 695.7}}})
    assert sorted_line.startswith("10:13:54  item_sorted      plastic → recycling (flap 1)  900 ms (decision 696 ms)")
    alert = ctl.format_event({"type": "alert", "ts": "2026-11-21T10:00:00Z", "data": {
        "severity": "warning", "code": "compartment_full_paper", "message": "Paper is full", "active": True, "source": "fill"}})
    assert "WARNING compartment_full_paper Paper is full ACTIVE" in alert
    level = ctl.format_event({"type": "bin_level", "ts": "x", "data": {
        "compartment": "paper", "name": "Paper", "previous": "ok", "level": "almost_full", "fill_pct": 81.0}})
    assert level.startswith("--:--:--  bin_level") and "ok → almost_full at 81.0%" in level
    emptied = ctl.format_event({"type": "bin_emptied", "ts": "x", "data": {
        "compartment": "paper", "name": "Paper", "items": 9, "peak_fill_pct": 96.0, "fill_pct": 2.0,
        "source": "sensor", "maintenance": True}})
    assert "emptied: 9 items" in emptied and emptied.endswith("[maintenance]")
    assert "foo=1" in ctl.format_event({"type": "new_thing", "data": {"foo": 1}})


def test_parser_accepts_global_options_after_the_command() -> None:
    args = ctl.build_parser().parse_args(["status", "--config", "/x.yaml", "--port", "1884", "--json"])
    assert args.config == "/x.yaml" and args.port == 1884 and args.json
    args = ctl.build_parser().parse_args(["--config", "/y.yaml", "request", "ping"])
    assert args.config == "/y.yaml" and args.timeout is None and args.args is None


def test_console_script_is_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert 'smartbinctl = "smartbin_daemon.ctl:main"' in text
    started = time.monotonic()
    assert run_ctl("--version").stdout.startswith("smartbinctl ")
    assert time.monotonic() - started < 10
