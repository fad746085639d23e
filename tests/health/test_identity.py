"""System identity and the clock: recorded /etc and /proc files, a replayed iwgetid, the kernel's NTP state."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.config import HealthClock, HealthConfig, HealthThresholds
from smartbin_daemon.health import HealthMonitor
from smartbin_daemon.health.identity import (
    cpu_model,
    kernel_ntp_synchronized,
    ntp_synchronized,
    os_release,
    read_wireless,
)
from smartbin_daemon.runtime.bus import Bus, Event
from tests.conftest import SteppedClock
from tests.health.test_health_monitor import LENIENT, alerts, drain, sources

Y2026 = 1_780_000_000.0  # 2026-05-28
Y1970 = 86_400.0 * 3


def _iwgetid(tmp_path: Path, ssid: str) -> str:
    script = tmp_path / "iwgetid"
    script.write_text(f'#!/bin/sh\n[ "$1" = -r ] && [ "$2" = wlan0 ] && echo "{ssid}" && exit 0\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_pi_os_release_and_board_model(data_dir):
    release = os_release(data_dir / "rpi4" / "proc" / "os-release")

    assert release["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert release["VERSION_CODENAME"] == "bookworm"
    assert cpu_model(data_dir / "rpi4" / "proc" / "cpuinfo") == "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_model(data_dir / "x86_laptop" / "proc" / "cpuinfo") == "Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz"


def test_missing_files_are_unknown_not_errors(tmp_path):
    assert os_release(tmp_path / "absent") == {}
    assert cpu_model(tmp_path / "absent")  # the machine type (uname) still names something
    assert read_wireless(tmp_path / "absent", None) == []


def test_wifi_signal_and_ssid(data_dir, tmp_path):
    wireless = data_dir / "rpi4" / "proc" / "wireless"

    with_ssid = read_wireless(wireless, _iwgetid(tmp_path, "kitchen-iot"))
    without = read_wireless(wireless, str(tmp_path / "not-installed"))

    assert [w.as_dict() for w in with_ssid] == [
        {"interface": "wlan0", "link_quality": 58.0, "signal_dbm": -52.0, "ssid": "kitchen-iot"}]
    assert without[0].ssid is None and without[0].signal_dbm == -52.0
    assert read_wireless(data_dir / "x86_laptop" / "proc" / "wireless", None) == []


def test_ntp_state_prefers_the_kernel_then_timesyncd_then_unknown(tmp_path):
    flag = tmp_path / "synchronized"

    assert ntp_synchronized(True, flag, lambda: False) == (False, "adjtimex")
    assert ntp_synchronized(True, flag, lambda: None) == (None, "unknown")
    flag.touch()
    assert ntp_synchronized(True, flag, lambda: None) == (True, "timesyncd")
    assert ntp_synchronized(False, flag, lambda: False) == (True, "timesyncd")
    assert ntp_synchronized(False, None) == (None, "unknown")


def test_the_kernel_answers_adjtimex_on_linux():
    assert kernel_ntp_synchronized() in (True, False)


def _monitor(data_dir: Path, bus: Bus, *, clock: Any = None, wall: list[float], ntp: list[bool | None],
             **src: Any) -> HealthMonitor:
    cfg = HealthConfig(interval_s=1, sources=sources(data_dir, "rpi4", adjtimex=True, **src),
                       thresholds=HealthThresholds(**LENIENT), identity_interval_s=60,
                       clock=HealthClock(min_year=2024, ntp_alert_after_s=600))
    return HealthMonitor(bus, cfg, data_dir, clock=clock or SteppedClock(), wall_clock=lambda: wall[0],
                         kernel_ntp=lambda: ntp[0])


def test_state_carries_the_system_identity(data_dir, tmp_path):
    monitor = _monitor(data_dir, Bus(), wall=[Y2026], ntp=[True], iwgetid=_iwgetid(tmp_path, "kitchen-iot"))
    system = monitor.poll()["system"]

    assert system["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert system["cpu_model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert system["kernel"] and system["architecture"]
    assert system["cpu_threads"] >= 1
    assert set(system["cpu_clock_mhz"]) == {"current", "min", "max"}
    assert system["boot_time"].endswith("Z")
    assert "lo" not in system["addresses"]
    assert all(not ip.startswith("127.") for ips in system["addresses"].values() for ip in ips)
    assert system["wifi"] == [{"interface": "wlan0", "link_quality": 58.0, "signal_dbm": -52.0, "ssid": "kitchen-iot"}]


def test_slow_facts_are_reread_only_on_the_identity_interval(data_dir, tmp_path):
    release = tmp_path / "os-release"
    shutil.copyfile(data_dir / "rpi4" / "proc" / "os-release", release)
    clock = SteppedClock()
    monitor = _monitor(data_dir, Bus(), clock=clock, wall=[Y2026], ntp=[True], os_release=release)

    assert monitor.poll()["system"]["os"] == "Debian GNU/Linux 12 (bookworm)"
    release.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n')
    clock.advance(59)
    assert monitor.poll()["system"]["os"] == "Debian GNU/Linux 12 (bookworm)"
    clock.advance(2)
    assert monitor.poll()["system"]["os"] == "Debian GNU/Linux 13 (trixie)"


def test_unset_wall_clock_raises_a_critical_alert_and_clears(data_dir):
    bus = Bus()
    sub = bus.subscribe("t", [Event])
    wall = [Y1970]
    monitor = _monitor(data_dir, bus, wall=wall, ntp=[False])

    state = monitor.poll()
    raised = alerts(drain(sub))
    monitor.poll()
    repeated = alerts(drain(sub))
    wall[0] = Y2026
    state_after = monitor.poll()
    cleared = alerts(drain(sub))

    assert state["clock"]["valid"] is False and state["clock"]["wall_time"].startswith("1970-01-04")
    assert raised["clock_unset"]["severity"] == "critical" and raised["clock_unset"]["active"] is True
    assert "before 2024" in raised["clock_unset"]["message"]
    assert "clock_unset" not in repeated, "raised once while it holds"
    assert state_after["clock"]["valid"] is True
    assert cleared["clock_unset"]["active"] is False


def test_ntp_unsynchronised_longer_than_configured_raises_then_clears(data_dir):
    bus = Bus()
    sub = bus.subscribe("t", [Event])
    clock = SteppedClock()
    ntp: list[bool | None] = [False]
    monitor = _monitor(data_dir, bus, clock=clock, wall=[Y2026], ntp=ntp)

    first = monitor.poll()
    clock.advance(599)
    before = monitor.poll()
    early = alerts(drain(sub))
    clock.advance(2)
    late = monitor.poll()
    raised = alerts(drain(sub))
    ntp[0] = True
    synced = monitor.poll()
    cleared = alerts(drain(sub))

    assert first["clock"]["ntp_synchronized"] is False and first["clock"]["ntp_source"] == "adjtimex"
    assert before["clock"]["unsynchronized_for_s"] == pytest.approx(599, abs=1)
    assert "ntp_unsynchronized" not in early
    assert late["clock"]["unsynchronized_for_s"] >= 600
    assert raised["ntp_unsynchronized"]["severity"] == "warning"
    assert synced["clock"]["unsynchronized_for_s"] is None
    assert cleared["ntp_unsynchronized"] == {"source": "health", "code": "ntp_unsynchronized", "severity": "info",
                                             "message": "NTP synchronised again", "active": False}


def test_unknown_ntp_state_never_alerts(data_dir):
    bus = Bus()
    sub = bus.subscribe("t", [Event])
    clock = SteppedClock()
    monitor = _monitor(data_dir, bus, clock=clock, wall=[Y2026], ntp=[None])

    monitor.poll()
    clock.advance(10_000)
    state = monitor.poll()

    assert state["clock"]["ntp_synchronized"] is None and state["clock"]["ntp_source"] == "unknown"
    assert not {"ntp_unsynchronized", "clock_unset"} & set(alerts(drain(sub)))
