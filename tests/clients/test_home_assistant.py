"""The daemon in full simulation against a real Home Assistant core (pinned, its own venv) on the same broker.

Every discovered entity exists in HA with a real state, HA's log stays clean, each button and switch pressed through
HA's REST API reaches the daemon and is answered `ok`, availability follows SIGTERM and kill -9, and a component
disabled across a restart takes its entities out of HA. The tests of this module run in order against one world.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clients import browser
from tests.clients import homeassistant as hass
from tests.conftest import REPO, Broker, DaemonProcess, Probe, free_port, simulation_doc, wait_until

pytestmark = pytest.mark.clients

DEVICE = "sim-bin"
ROOT = f"smartbin/{DEVICE}"
PREFIX = "smartbin_sim_bin_"  # HA's entity ids: <platform>.smartbin_<device id slug>_<object_id>
DASHBOARD = REPO / "config" / "homeassistant" / "smartbin-dashboard.yaml"

MAY_BE_UNKNOWN = {
    r"button\..*": "a button has no state until its first press",
    r"event\..*": "an event entity is unknown until its first event",
    r".*_predicted_full|.*_fill_rate": "a forecast needs forecast_min_span_s (10 min) of fill history",
    r".*_health_cpu_temperature": "the test machine may have no temperature sensor",
    r".*_selftest_result": "no self-test has run yet",
    r".*_detector_last_(class|category|confidence)|.*_workflow_last_item": "before the simulation's first item",
}
"""Entities allowed to read `unknown` (never `unavailable`, never the string `None`), and why."""

OLD_HA_NULLS = re.compile(r"WARNING .*\[homeassistant\.components\.mqtt\.sensor\] Invalid state message .* from '[^']*/fill'")
"""HA before 2024.2 has no unknown for a timestamp sensor: each null `predicted_full_at` logs this (README)."""

LOG_NOISE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b.*(mqtt|template|smartbin|sim.bin)", re.IGNORECASE)


@dataclass
class World:
    """The broker, HA, the probe and the running daemon of this module."""

    tmp: Path
    broker: Broker
    ha: hass.HomeAssistant
    probe: Probe
    config: Path
    python: Path
    pin: hass.Pin
    daemon: DaemonProcess | None = None

    def start_daemon(self, **overrides: Any) -> DaemonProcess:
        """Start the simulation (with config sections overridden) and wait until it says online."""
        doc = simulation_doc(self.tmp, self.broker.port)
        for key, value in overrides.items():
            doc[key] = {**doc.get(key, {}), **value}
        self.config.write_text(yaml.safe_dump(doc))
        log = self.tmp / f"daemon-{len(self.probe.on(f'{ROOT}/availability'))}.log"
        seen = len(self.probe.on(f"{ROOT}/availability"))
        self.daemon = DaemonProcess(self.config, log=log)
        wait_until(lambda: any(m.payload == b"online" for m in self.probe.on(f"{ROOT}/availability")[seen:]), 60,
                   what="the daemon online")
        return self.daemon

    def discovered(self) -> dict[str, str]:
        """object_id → platform of every non-empty retained discovery config of this bin now."""
        latest: dict[str, bytes] = {}
        for m in self.probe.under("homeassistant/"):
            latest[m.topic] = m.payload
        out = {}
        for topic, payload in latest.items():
            parts = topic.split("/")
            if len(parts) == 5 and parts[2] == DEVICE and parts[4] == "config" and payload:
                out[parts[3]] = parts[1]
        return out

    def entity_ids(self) -> dict[str, str]:
        """HA entity id of every discovered object_id."""
        return {oid: f"{platform}.{PREFIX}{oid}" for oid, platform in self.discovered().items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Install (or reuse) the pinned HA, start a broker, HA with the MQTT entry, and the daemon in simulation."""
    try:
        pin = hass.pick_pin()
        t0 = time.monotonic()
        python = hass.install(pin)
        install_s = time.monotonic() - t0
    except hass.Unavailable as exc:
        if hass.ci():
            pytest.fail(f"Home Assistant could not be installed in CI: {exc}")
        pytest.skip(f"Home Assistant could not be installed here: {exc}")
    tmp = tmp_path_factory.mktemp("ha")
    broker = Broker(tmp)
    broker.start()
    ha = hass.HomeAssistant(python, tmp / "ha", broker.port, free_port(),
                            dashboard=DASHBOARD if pin.browser and DASHBOARD.exists() else None)
    probe = Probe(broker.port)
    probe.subscribe("homeassistant/#")
    probe.subscribe(f"{ROOT}/availability")
    probe.subscribe(f"{ROOT}/response/#")
    w = World(tmp, broker, ha, probe, tmp / "daemon.yaml", python, pin)
    try:
        ha.start()
        print(f"Home Assistant {pin.version}: install/check {install_s:.1f} s")
        w.start_daemon()
        yield w
    finally:
        artifacts = os.environ.get("SMARTBIN_TEST_ARTIFACTS")
        if artifacts:
            dest = Path(artifacts) / "home-assistant"
            dest.mkdir(parents=True, exist_ok=True)
            for f in (ha.log_path, *tmp.glob("daemon-*.log")):
                shutil.copy(f, dest / f.name)
        if w.daemon is not None:
            w.daemon.stop()
        ha.stop()
        probe.close()
        broker.stop()


def _states(w: World) -> dict[str, str]:
    return {eid: s["state"] for eid, s in w.ha.states(PREFIX).items()}


def test_every_discovered_entity_is_in_home_assistant_with_a_real_state(world: World) -> None:
    wait_until(lambda: len(world.discovered()) >= 60, 60, what="the daemon's discovery configs")
    time.sleep(3)  # the last components' configs
    ids = world.entity_ids()
    wait_until(lambda: set(ids.values()) <= set(_states(world)), 60, what="HA to create every discovered entity")

    def bad() -> dict[str, str]:
        """Entities without a real state (the first item and the second health sample fill in the rest)."""
        states = _states(world)
        return {eid: states[eid] for eid in ids.values()
                if states[eid] in ("unavailable", "none", "") or states[eid] == "None" and world.pin.none_is_unknown
                or states[eid] == "unknown" and not any(re.fullmatch(p, eid) for p in MAY_BE_UNKNOWN)}

    try:
        wait_until(lambda: not bad(), 120, interval=1.0, what="every entity with a real state")
    except AssertionError:
        pass
    states = _states(world)
    assert not bad(), bad()
    assert not set(states) - set(ids.values()), "HA has entities of this bin the daemon did not discover"
    summary = Counter(states[e] if states[e] in ("unknown", "on", "off") else "a value" for e in ids.values())
    print(f"{len(ids)} entities in HA: {dict(summary)}; unknown: "
          f"{sorted(e.removeprefix(PREFIX) for e in ids.values() if states[e] == 'unknown')}")


REFUSED_AS_EXPECTED = {"workflow/clear_error": "nothing to clear"}
"""Commands the simulation answers with an error by design here (the answer still proves HA reached the owner)."""


def _dashboard_entities() -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "entity" and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                if isinstance(value, str) and "." in value:
                    found.add(value)
                walk(value)

    walk(yaml.safe_load(DASHBOARD.read_text()))
    return found


def test_the_example_dashboard_names_only_entities_home_assistant_has(world: World) -> None:
    named = _dashboard_entities()
    assert len(named) > 40, named
    assert not named - set(world.entity_ids().values()), sorted(named - set(world.entity_ids().values()))


def test_the_dashboard_renders_live_values_in_a_browser(world: World) -> None:
    """Headless Chromium logs in, loads the YAML dashboard, and its text holds the bin's card names and values."""
    if not world.pin.browser:
        pytest.skip("this Home Assistant pin is installed without its frontend")
    if browser.chromium() is None and hass.ci():
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, check=False, capture_output=True, timeout=600)
    if browser.chromium() is None:
        (pytest.fail if hass.ci() else pytest.skip)("chromium is not installed (apt-get install -y chromium)")
    png = world.tmp / "ha-dashboard.png"
    script = [str(world.python), str(Path(browser.__file__)), world.ha.logged_in_url("/smartbin-yaml/overview"),
              str(png), "Recycling", "Paper", "Residual", "Sorting", "Maintenance mode", "Open lid"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.loads(done.stdout)
    text = str(page["text"])
    (world.tmp / "ha-dashboard.txt").write_text(text)
    artifacts = os.environ.get("SMARTBIN_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(artifacts) / png.name)
        shutil.copy(world.tmp / "ha-dashboard.txt", Path(artifacts) / "ha-dashboard.txt")
    assert png.stat().st_size > 10_000, "an empty screenshot"
    assert len(page["found"]) == 6, (page["found"], text[:2000])
    assert re.search(r"Confidence\s+\d+(\.\d+)?\s?%", text), text[:3000]  # the last item's live value
    assert re.search(r"\d+\s?%\s+Recycling", text), text[:3000]  # a fill gauge's live value
    assert re.search(r"Sorting\n[a-z_]+\nHealth\n(ok|warn|critical)\n", text), text[:3000]  # enum values, not None
    print(f"dashboard screenshot {png} ({png.stat().st_size} B); page text {len(text)} chars")


def _answered_ok(world: World, command: str, since: int, timeout: float = 30.0) -> dict[str, Any]:
    topic = f"{ROOT}/response/{command}"

    def answer() -> dict[str, Any] | None:
        seen = world.probe.on(topic)[since:]
        return json.loads(seen[0].payload) if seen else None

    body = wait_until(answer, timeout, interval=0.1, what=f"a response on {topic}")
    if command in REFUSED_AS_EXPECTED:
        assert REFUSED_AS_EXPECTED[command] in (body["error"] or ""), (command, body)
    else:
        assert body["status"] == "ok", (command, body)
    return body  # type: ignore[no-any-return]


def _command_of(world: World, object_id: str, platform: str) -> tuple[str, Any]:
    """(command, payloads) an HA control of this bin sends, from its retained discovery config."""
    topic = f"homeassistant/{platform}/{DEVICE}/{object_id}/config"
    config = json.loads(world.probe.on(topic)[-1].payload)
    assert config.get("qos") == 1, (object_id, "a command must go at QoS 1")
    return config["command_topic"].removeprefix(f"{ROOT}/request/"), config


def test_every_button_press_through_home_assistant_reaches_the_daemon(world: World) -> None:
    buttons = {oid: eid for oid, eid in world.entity_ids().items() if eid.startswith("button.")}
    assert len(buttons) >= 5, buttons
    for oid in sorted(buttons, key=lambda o: (o.endswith("_close"), o)):  # the lid ends closed
        command, _ = _command_of(world, oid, "button")
        since = len(world.probe.on(f"{ROOT}/response/{command}"))
        world.ha.service("button", "press", buttons[oid])
        _answered_ok(world, command, since, timeout=150.0 if command == "selftest" else 30.0)


def test_every_switch_toggled_through_home_assistant_reaches_the_daemon(world: World) -> None:
    switches = {oid: eid for oid, eid in world.entity_ids().items() if eid.startswith("switch.")}
    assert len(switches) >= 3, switches
    for oid, eid in sorted(switches.items()):
        command, _ = _command_of(world, oid, "switch")
        was = _states(world)[eid]
        for service in (("turn_off", "turn_on") if was == "on" else ("turn_on", "turn_off")):
            since = len(world.probe.on(f"{ROOT}/response/{command}"))
            world.ha.service("switch", service, eid)
            _answered_ok(world, command, since)
            want = "on" if service == "turn_on" else "off"
            wait_until(lambda e=eid, w=want: _states(world)[e] == w, 20, what=f"{eid} {want} in HA")


def _all_unavailable(world: World) -> bool:
    states = _states(world)
    return bool(states) and all(v == "unavailable" for v in states.values())


def test_availability_follows_sigterm_and_kill_9(world: World) -> None:
    assert world.daemon is not None
    world.daemon.signal(signal.SIGTERM)
    assert world.daemon.wait(30) == 0
    wait_until(lambda: _all_unavailable(world), 20, interval=0.5, what="every entity unavailable after SIGTERM")
    world.start_daemon()
    wait_until(lambda: not _all_unavailable(world), 60, interval=0.5, what="entities available again")
    world.daemon.signal(signal.SIGKILL)
    world.daemon.wait(10)
    wait_until(lambda: _all_unavailable(world), 30, interval=0.5, what="every entity unavailable after kill -9")


def test_a_disabled_component_leaves_home_assistant_after_a_restart(world: World) -> None:
    gpio = {eid for oid, eid in world.entity_ids().items() if oid.startswith("gpio_")}
    assert gpio and gpio <= set(_states(world)), "the simulation's GPIO entities are in HA"
    world.start_daemon(gpio={"enabled": False})
    wait_until(lambda: not gpio & set(_states(world)), 60, interval=1.0,
               what="the disabled component's entities removed from HA")
    assert not any(oid.startswith("gpio_") for oid in world.discovered())
    assert world.daemon is not None and "discovery config(s) of entities" in world.daemon.log()


def test_home_assistant_logged_no_warning_or_error_about_mqtt_templates_or_the_bin(world: World) -> None:
    lines = world.ha.log_path.read_text(errors="replace").splitlines()
    noise = [line for line in lines if LOG_NOISE.search(line)]
    if not world.pin.none_is_unknown:
        known = [line for line in noise if OLD_HA_NULLS.search(line)]
        noise = [line for line in noise if not OLD_HA_NULLS.search(line)]
        print(f"HA {world.pin.version}: {len(known)} known 'Invalid state message' warnings for null timestamps")
    print(f"home-assistant.log: {len(lines)} lines, {sum(' WARNING ' in x for x in lines)} WARNING, "
          f"{sum(' ERROR ' in x for x in lines)} ERROR, {len(noise)} about mqtt/templates/the bin")
    assert not noise, "\n".join(noise[:20])

