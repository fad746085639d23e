"""HealthMonitor on a real Bus, fed the recorded platform trees."""

from __future__ import annotations

import ctypes.util
import json
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.config import HealthConfig, HealthSources, HealthThresholds
from smartbin_daemon.health import HealthMonitor, health_entities
from smartbin_daemon.runtime.bus import Bus, Discovery, Event, StateUpdate

HOST_DEPENDENT = {"cpu_high", "ram_high", "disk_high", "disk_critical"}
"""Conditions that depend on this test machine's real load/disk, not on the recorded platform."""

LENIENT = {"cpu_pct": 100.0, "ram_pct": 100.0, "disk_pct": 100.0, "disk_critical_pct": 100.0}


def sources(data_dir: Path, platform: str, *, vcgencmd: str | None = None, **extra: Any) -> HealthSources:
    """HealthSources pointing at one recorded tree (nothing of this machine's hardware)."""
    root = data_dir / platform
    values: dict[str, Any] = {
        "thermal_glob": str(root / "thermal" / "thermal_zone*"),
        "vcgencmd": vcgencmd,
        "pi_throttled_sysfs": None,
        "jetson_gpu_load": [root / "gpu.0" / "load"],
        "jetson_power_glob": str(root / "ina3221" / "*" / "hwmon" / "hwmon*"),
        "nvml": False,
        "os_release": root / "proc" / "os-release",
        "cpuinfo": root / "proc" / "cpuinfo",
        "wireless": root / "proc" / "wireless",
        "iwgetid": None,
        "adjtimex": False,
        "timesync_flag": None,
    }
    values.update(extra)
    return HealthSources(**values)


def config(src: HealthSources, *, interval_s: float = 1.0, **thresholds: float) -> HealthConfig:
    """A health config with lenient host limits unless overridden."""
    return HealthConfig(
        interval_s=interval_s, sources=src, thresholds=HealthThresholds(**{**LENIENT, **thresholds})
    )


def platform_conditions(state: dict[str, Any]) -> set[str]:
    """Active conditions that come from the recorded platform."""
    return set(state["conditions"]) - HOST_DEPENDENT


def drain(sub: Any) -> list[Any]:
    """Everything queued on a subscription right now."""
    out = []
    while (msg := sub.get(0)) is not None:
        out.append(msg)
    return out


def alerts(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """Alert payloads by code."""
    return {m.data["code"]: m.data for m in messages if isinstance(m, Event) and m.type == "alert"}


def object_ids(bus: Bus) -> set[str]:
    """Declared HA object ids of the health component."""
    return {e.object_id for e in bus.entities()["health"]}


# --------------------------------------------------------------------------- the worker thread


def test_worker_thread_publishes_state_alert_and_discovery_then_stops(data_dir, fake_command, tmp_path):
    vcgencmd = fake_command(data_dir / "rpi4" / "vcgencmd" / "get_throttled_0x0.txt")
    cfg = config(sources(data_dir, "rpi4", vcgencmd=vcgencmd), interval_s=1, temp_c=55)
    bus = Bus()
    sub = bus.subscribe("t", [StateUpdate, Event])
    worker = HealthMonitor(bus, cfg, tmp_path / "storage")
    thread = threading.Thread(target=worker.run, name="health-test", daemon=True)

    thread.start()
    states: list[dict[str, Any]] = []
    events: list[Event] = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and len(states) < 2:
        msg = sub.get(0.2)
        if isinstance(msg, StateUpdate) and msg.component == "health":
            states.append(msg.state)
        elif isinstance(msg, Event):
            events.append(msg)
    alive_heartbeat = worker.heartbeat_age()
    stop_started = time.monotonic()
    worker.request_stop()
    thread.join(timeout=2)
    stop_took = time.monotonic() - stop_started

    assert not thread.is_alive()
    assert stop_took < 2
    assert alive_heartbeat < 1.5
    assert len(states) == 2, "a state every interval_s"
    first = states[0]
    assert platform_conditions(first) == {"temp_high"}
    assert first["status"] in ("warn", "critical")
    assert first["score"] <= 85
    assert first["temperatures"]["cpu_c"] == pytest.approx(61.835)
    assert first["pi"]["source"] == "vcgencmd" and first["pi"]["raw"] == "0x0"
    assert first["gpu"] == {"present": False}
    assert first["disk"]["storage"]["measured_path"] == str(tmp_path)
    assert states[1]["network"]["recv_bytes_per_s"] is not None  # rate needs the previous sample

    raised = alerts(events)
    assert raised["temp_high"] == {
        "source": "health",
        "code": "temp_high",
        "severity": "warning",
        "message": "temperature 61.8 °C >= 55 °C",
        "active": True,
    }
    assert raised["status"]["active"] is True
    assert all(e.component == "health" for e in events)
    assert [e.data["code"] for e in events].count("temp_high") == 1, "no repeat while the condition holds"

    assert {
        "health_status",
        "health_score",
        "health_cpu_temperature",
        "health_throttled",
        "health_under_voltage",
    } <= (object_ids(bus))
    assert "health_gpu_load" not in object_ids(bus)
    assert worker.state_extra()["status"] == first["status"]


def test_heartbeat_stays_fresh_with_a_long_interval(data_dir, tmp_path):
    cfg = config(sources(data_dir, "x86_laptop"), interval_s=30)
    worker = HealthMonitor(Bus(), cfg, tmp_path)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    ages = []
    for _ in range(12):
        time.sleep(0.2)
        ages.append(worker.heartbeat_age())
    started = time.monotonic()
    worker.request_stop()
    thread.join(timeout=2)

    assert not thread.is_alive()
    assert time.monotonic() - started < 1.5
    assert max(ages) < 1.5


# --------------------------------------------------------------------------- one poll per platform


def test_pi_under_voltage_is_critical_and_clears(data_dir, fake_command, tmp_path):
    replay = tmp_path / "throttled.txt"
    shutil.copyfile(data_dir / "rpi4" / "vcgencmd" / "get_throttled_0x50005.txt", replay)
    cfg = config(sources(data_dir, "rpi4", vcgencmd=fake_command(replay)))
    bus = Bus()
    sub = bus.subscribe("t", [Event])
    monitor = HealthMonitor(bus, cfg, tmp_path)
    monitor.setup()
    try:
        state = monitor.poll()
        raised = alerts(drain(sub))

        assert platform_conditions(state) == {"under_voltage", "throttled"}
        assert state["status"] == "critical"
        assert state["pi"]["now"] == {
            "under_voltage": True,
            "arm_freq_capped": False,
            "throttled": True,
            "soft_temp_limit": False,
        }
        assert state["pi"]["since_boot"]["under_voltage"] is True
        assert raised["under_voltage"]["severity"] == "critical"
        assert raised["throttled"]["severity"] == "warning"
        assert raised["status"]["severity"] == "critical" and raised["status"]["active"] is True

        shutil.copyfile(data_dir / "rpi4" / "vcgencmd" / "get_throttled_0x80000.txt", replay)
        state = monitor.poll()
        cleared = alerts(drain(sub))

        assert platform_conditions(state) == set()
        assert state["pi"]["since_boot"]["soft_temp_limit"] is True
        assert cleared["under_voltage"]["active"] is False
        assert cleared["throttled"]["active"] is False
        assert cleared["under_voltage"]["message"] == "Raspberry Pi under-voltage no longer"
        if not HOST_DEPENDENT & set(state["conditions"]):
            assert state["status"] == "ok"
            assert cleared["status"] == {
                "source": "health",
                "code": "status",
                "severity": "info",
                "message": "health ok (score 100; no conditions)",
                "active": False,
            }
    finally:
        monitor.teardown()


def test_jetson_gpu_temperatures_and_power_rails(data_dir, tmp_path):
    src = sources(
        data_dir,
        "jetson",
        jetson_gpu_load=[tmp_path / "missing" / "load", data_dir / "jetson" / "gpu.0" / "load"],
    )
    bus = Bus()
    monitor = HealthMonitor(bus, config(src), tmp_path)
    monitor.setup()
    try:
        state = monitor.poll()
    finally:
        monitor.teardown()

    assert state["gpu"] == {"present": True, "source": "jetson", "load_pct": 45.2, "temp_c": 46.5, "memory_pct": None}
    assert state["temperatures"]["cpu_c"] == pytest.approx(48.5)
    assert state["temperatures"]["gpu_c"] == pytest.approx(46.5)
    assert platform_conditions(state) == set(), "the 100 °C PMIC-Die dummy must not trip the temperature"
    assert state["pi"] is None
    rails = {r["name"]: r for r in state["power"]["rails"]}
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert rails["VDD_IN"]["power_mw"] == pytest.approx(6573.3, abs=0.05)
    ids = object_ids(bus)
    assert "health_gpu_load" in ids
    assert not ids & {"health_throttled", "health_under_voltage"}


def test_laptop_without_gpu_reports_absent(data_dir, tmp_path):
    bus = Bus()
    monitor = HealthMonitor(bus, config(sources(data_dir, "x86_laptop")), tmp_path)
    monitor.setup()
    try:
        state = monitor.poll()
    finally:
        monitor.teardown()

    assert state["gpu"] == {"present": False}
    assert state["pi"] is None
    assert state["power"] is None
    assert state["temperatures"]["cpu_c"] == pytest.approx(48.0)
    assert state["temperatures"]["gpu_c"] is None
    assert object_ids(bus) == {
        "health_status",
        "health_score",
        "health_cpu",
        "health_ram",
        "health_disk",
        "health_cpu_temperature",
        "health_process_rss",
        "health_network_rx",
        "health_network_tx",
        "health_os",
        "health_kernel",
        "health_cpu_model",
        "health_cpu_clock",
        "health_ip_address",
        "health_boot_time",
        "health_clock",
        "health_storage_used",
        "health_storage_evidence",
    }, "no GPU, Pi or Wi-Fi entities on a laptop without them"


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="an NVIDIA driver is installed here"
)
def test_nvml_enabled_without_driver_is_absent_not_an_error(data_dir, tmp_path):
    pytest.importorskip("pynvml")
    monitor = HealthMonitor(Bus(), config(sources(data_dir, "x86_laptop", nvml=True)), tmp_path)
    monitor.setup()
    try:
        assert monitor.poll()["gpu"] == {"present": False}
    finally:
        monitor.teardown()


def test_state_layout_is_stable_json_with_snake_case_keys(data_dir, fake_command, tmp_path):
    vcgencmd = fake_command(data_dir / "rpi4" / "vcgencmd" / "get_throttled_0x50005.txt")
    monitor = HealthMonitor(Bus(), config(sources(data_dir, "rpi4", vcgencmd=vcgencmd)), tmp_path / "storage")
    monitor.setup()
    try:
        state = json.loads(json.dumps(monitor.poll()))
    finally:
        monitor.teardown()

    assert list(state) == [
        "status", "score", "conditions", "cpu", "memory", "swap", "disk", "temperatures",
        "uptime_s", "network", "process", "pi", "gpu", "power", "system", "clock", "storage", "ts",
    ]  # fmt: skip

    def keys(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [k for k, v in node.items() for k in [k, *keys(v)]]
        if isinstance(node, list):
            return [k for item in node for k in keys(item)]
        return []

    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in keys(state))
    ts = datetime.fromisoformat(state["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and abs((datetime.now(timezone.utc) - ts).total_seconds()) < 60
    assert 0 <= state["score"] <= 100
    assert state["uptime_s"] > 0
    assert state["process"]["threads"] >= 1 and state["process"]["rss_mb"] > 0
    assert len(state["cpu"]["per_core"]) == state["cpu"]["count"]
    assert 0 <= state["memory"]["percent"] <= 100


# --------------------------------------------------------------------------- entities and robustness


def test_entity_templates_render_against_the_state(data_dir, fake_command, tmp_path):
    jinja2 = pytest.importorskip("jinja2")
    vcgencmd = fake_command(data_dir / "rpi4" / "vcgencmd" / "get_throttled_0x50005.txt")
    bus = Bus()
    monitor = HealthMonitor(bus, config(sources(data_dir, "rpi4", vcgencmd=vcgencmd)), tmp_path)
    monitor.setup()
    try:
        state = json.loads(json.dumps(monitor.poll()))
    finally:
        monitor.teardown()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    rendered = {
        e.object_id: env.from_string(e.value_template).render(value_json=state)
        for e in bus.entities()["health"]
    }

    assert rendered["health_status"] == "critical"
    assert rendered["health_score"] == str(state["score"])
    assert rendered["health_cpu_temperature"] == "61.835"
    assert rendered["health_throttled"] == "ON"
    assert rendered["health_under_voltage"] == "ON"
    assert float(rendered["health_cpu"]) == state["cpu"]["percent"]
    assert float(rendered["health_disk"]) == state["disk"]["storage"]["percent"]
    assert float(rendered["health_process_rss"]) == state["process"]["rss_mb"]
    assert rendered["health_os"] == "Debian GNU/Linux 12 (bookworm)"
    assert rendered["health_cpu_model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert rendered["health_wifi_signal"] == "-52.0"
    assert rendered["health_wifi_ssid"] == "None", "no iwgetid here: HA shows unknown"
    assert rendered["health_clock"] == "OFF", "NTP state unknown (no source configured) is no problem"
    assert rendered["health_boot_time"] == state["system"]["boot_time"]
    assert rendered["health_storage_used"] == str(state["storage"]["total_bytes"])


def test_entity_options_for_home_assistant():
    entities = {e.object_id: e for e in health_entities(10, pi_present=True, gpu_present=True)}

    assert len(entities) == 25
    assert all(e.component == "health" and e.value_template for e in entities.values())
    assert all(e.options["expire_after"] == 30 for e in entities.values())
    assert entities["health_status"].options["device_class"] == "enum"
    assert entities["health_status"].options["options"] == ["ok", "warn", "critical"]
    assert entities["health_score"].options["unit_of_measurement"] == "%"
    assert entities["health_score"].options["state_class"] == "measurement"
    assert entities["health_cpu_temperature"].options["device_class"] == "temperature"
    assert entities["health_cpu_temperature"].options["unit_of_measurement"] == "°C"
    assert entities["health_throttled"].platform == "binary_sensor"
    assert entities["health_under_voltage"].options["device_class"] == "problem"
    assert entities["health_process_rss"].options["unit_of_measurement"] == "MB"
    assert entities["health_cpu"].options["entity_category"] == "diagnostic"
    assert all(entities[k].options["entity_category"] == "diagnostic" for k in (
        "health_gpu_temperature", "health_gpu_memory", "health_network_rx", "health_os", "health_kernel",
        "health_cpu_clock", "health_ip_address", "health_boot_time", "health_clock", "health_wifi_signal"))
    assert entities["health_gpu_temperature"].options["device_class"] == "temperature"
    assert entities["health_network_rx"].options["unit_of_measurement"] == "B/s"
    assert entities["health_wifi_signal"].options["device_class"] == "signal_strength"
    assert entities["health_boot_time"].options["device_class"] == "timestamp"
    assert entities["health_clock"].platform == "binary_sensor"
    assert health_entities(1.5, pi_present=False, gpu_present=False)[0].options["expire_after"] == 5


def test_discovery_is_republished_when_a_gpu_appears(data_dir, tmp_path):
    load = tmp_path / "gpu.0" / "load"
    bus = Bus()
    sub = bus.subscribe("t", [Discovery])
    monitor = HealthMonitor(bus, config(sources(data_dir, "x86_laptop", jetson_gpu_load=[load])), tmp_path)
    monitor.setup()
    try:
        monitor.poll()
        assert len(drain(sub)) == 1  # setup only: unchanged entities are not re-sent
        load.parent.mkdir()
        load.write_text("120\n")
        state = monitor.poll()
    finally:
        monitor.teardown()

    republished = drain(sub)
    assert len(republished) == 1
    assert {"health_gpu_load", "health_gpu_temperature", "health_gpu_memory"} <= {
        e.object_id for e in republished[0].entities}
    assert state["gpu"]["load_pct"] == 12.0


def test_discovery_is_republished_when_a_wifi_interface_appears(data_dir, tmp_path):
    wireless = tmp_path / "wireless"
    shutil.copyfile(data_dir / "x86_laptop" / "proc" / "wireless", wireless)
    bus = Bus()
    sub = bus.subscribe("t", [Discovery])
    monitor = HealthMonitor(bus, config(sources(data_dir, "x86_laptop", wireless=wireless)), tmp_path)
    monitor.setup()
    try:
        monitor.poll()
        assert "health_wifi_signal" not in {e.object_id for e in drain(sub)[-1].entities}
        shutil.copyfile(data_dir / "rpi4" / "proc" / "wireless", wireless)
        state = monitor.poll()
    finally:
        monitor.teardown()

    republished = drain(sub)
    assert len(republished) == 1 and "health_wifi_signal" in {e.object_id for e in republished[0].entities}
    assert state["system"]["wifi"][0]["signal_dbm"] == -52.0


class _BrokenSink:
    """An event store that fails like a full disk, until repaired."""

    def __init__(self) -> None:
        self.broken = True
        self.events: list[Event] = []

    def append(self, event: Event) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        self.events.append(event)


def test_alerts_that_cannot_be_stored_are_retried_and_do_not_crash(data_dir, tmp_path):
    sink = _BrokenSink()
    bus = Bus(sink)
    monitor = HealthMonitor(bus, config(sources(data_dir, "rpi4"), temp_c=55), tmp_path)
    monitor.setup()
    try:
        state = monitor.poll()
        assert "temp_high" in state["conditions"]
        assert bus.states()["health"] is state, "the state is still published"
        sink.broken = False
        monitor.poll()
        monitor.poll()
    finally:
        monitor.teardown()

    codes = [e.data["code"] for e in sink.events]
    assert codes.count("temp_high") == 1
    assert codes.count("status") == 1
