"""systemd/smartbin.service: `systemd-analyze verify` accepts it (with its drop-ins) and it keeps the
directives the daemon relies on (notify + watchdog, restart policy, user, sandboxing).

What `systemd-analyze verify` does and does not check (systemd 252, checked by hand): it fails when
ExecStart= names a missing or non-executable file, and it only *warns* (exit status 0) about unknown
keys or unparsable values -- so the tests below treat any warning about our files as a failure. It
does not resolve User=/Group=/SupplementaryGroups= (a missing user or group passes; on a real system
the start would fail with 217/USER or 216/GROUP), which is why install.sh creates them and
tests/test_install.py checks that it says so.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "smartbin.service"
DROPINS = {"10-jetson.conf": SYSTEMD_DIR / "jetson.conf", "mqtt-credential.conf": SYSTEMD_DIR / "mqtt-credential.conf",
           "20-process-visibility.conf": SYSTEMD_DIR / "process-visibility.conf"}
EXEC_PATH = "/opt/smartbin/venv/bin/smartbin-daemon"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or next(
    (p for p in ("/usr/bin/systemd-analyze", "/bin/systemd-analyze") if os.access(p, os.X_OK)), None
)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value)] in file order; comments and blank lines dropped, continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def one(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(sections, section, key)
    assert len(found) == 1, f"[{section}] {key}= must be set exactly once, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def all_keys(sections: dict[str, list[tuple[str, str]]]) -> set[str]:
    return {k for entries in sections.values() for k, _ in entries}


# --------------------------------------------------------------------------- systemd-analyze verify


def run_verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); install.sh --test installs it")
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_path)],
                          capture_output=True, text=True, timeout=60)


def assert_verified(result: subprocess.CompletedProcess[str], *markers: str) -> None:
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if any(m in line for m in markers)]
    assert result.returncode == 0 and not ours, f"systemd-analyze verify (exit {result.returncode}):\n{output}"


def verifiable_copy(tmp_path: Path, with_dropins: bool) -> Path:
    """The unit in tmp_path; ExecStart= pointed at a stand-in executable when the real one is not installed."""
    text = UNIT.read_text()
    if not os.access(EXEC_PATH, os.X_OK):
        stand_in = tmp_path / "bin" / "smartbin-daemon"
        stand_in.parent.mkdir()
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        assert text.count(f"ExecStart={EXEC_PATH} ") == 1
        text = text.replace(f"ExecStart={EXEC_PATH} ", f"ExecStart={stand_in} ")
    path = tmp_path / "smartbin.service"
    path.write_text(text)
    if with_dropins:
        dropin_dir = tmp_path / "smartbin.service.d"
        dropin_dir.mkdir()
        for name, src in DROPINS.items():
            shutil.copy(src, dropin_dir / name)
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    path = verifiable_copy(tmp_path, with_dropins=False)
    assert_verified(run_verify(path), str(tmp_path), "smartbin")


def test_systemd_analyze_verify_accepts_the_dropins(tmp_path: Path) -> None:
    # verify loads <unit>.d/*.conf next to the unit file, so unknown keys in them would show up here.
    path = verifiable_copy(tmp_path, with_dropins=True)
    assert_verified(run_verify(path), str(tmp_path), "smartbin")


def test_verify_really_catches_mistakes(tmp_path: Path) -> None:
    """Guards the test above: a typo and a missing ExecStart binary must be reported."""
    path = verifiable_copy(tmp_path, with_dropins=False)
    path.write_text(path.read_text().replace("Type=notify", "Type=notifyy"))
    result = run_verify(path)
    assert "notifyy" in result.stdout + result.stderr
    path.write_text(UNIT.read_text().replace(EXEC_PATH, str(tmp_path / "missing" / "smartbin-daemon")))
    assert run_verify(path).returncode != 0


# --------------------------------------------------------------------------- required directives


def test_notify_and_watchdog(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "WatchdogSec") == "30"


def test_restart_policy_never_loops_on_a_bad_config(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartSec") == "5"
    assert "78" in one(unit, "Service", "RestartPreventExitStatus").split()
    # RestartPreventExitStatus= only looks at the main process: a check-config ExecStartPre=
    # failing with 78 would still be restarted until the start limit.
    assert not values(unit, "Service", "ExecStartPre")
    # Start limits live in [Unit] (in [Service] they are a deprecated alias, or ignored).
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert one(unit, "Unit", "StartLimitIntervalSec")
    assert one(unit, "Service", "TimeoutStopSec") == "15"


def test_exec_lines(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "ExecStart") == f"{EXEC_PATH} run --config /etc/smartbin/config.yaml"
    # The daemon re-reads its config on SIGHUP (systemctl reload).
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_environment(unit: dict[str, list[tuple[str, str]]]) -> None:
    env = " ".join(values(unit, "Service", "Environment")).split()
    assert "PYTHONUNBUFFERED=1" in env
    assert "YOLO_OFFLINE=1" in env
    assert "YOLO_AUTOINSTALL=false" in env
    yolo_dir = next(e for e in env if e.startswith("YOLO_CONFIG_DIR="))
    assert yolo_dir.split("=", 1)[1].startswith("/var/lib/smartbin/"), "must be inside the writable StateDirectory"


def test_user_groups_and_directories(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "User") == "smartbin"
    assert one(unit, "Service", "Group") == "smartbin"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"dialout", "video", "gpio"}
    assert one(unit, "Service", "StateDirectory") == "smartbin"
    assert one(unit, "Service", "ConfigurationDirectory") == "smartbin"
    assert "LoadCredential" not in all_keys(unit), "a missing credential file would fail the unit: drop-in only"


def test_hardening(unit: dict[str, list[tuple[str, str]]]) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0027",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "/var/lib/smartbin" in one(unit, "Service", "ReadWritePaths").split()


def test_device_access_is_not_cut_off(unit: dict[str, list[tuple[str, str]]]) -> None:
    keys = all_keys(unit)
    # PrivateDevices= would hide /dev/ttyACM*, /dev/video*, /dev/gpiochip*.
    assert "PrivateDevices" not in keys
    # ProtectClock= implies DeviceAllow=char-rtc, which systemd < 253 (JetPack 6: 249) turns into
    # "deny every other device" even with DevicePolicy=auto.
    assert "ProtectClock" not in keys
    assert one(unit, "Service", "DevicePolicy") == "auto"
    assert "DeviceAllow" not in keys


def test_jetson_dropin_only_relaxes_private_tmp_and_the_sysfs_pwm_files() -> None:
    dropin = parse_unit(DROPINS["10-jetson.conf"].read_text())
    assert dropin.get("Service") == [("PrivateTmp", "no"), ("ReadWritePaths", "-/sys/devices")]
    assert values(dropin, "Unit", "After") == ["nvargus-daemon.service"]


def test_process_visibility_dropin_only_lifts_protect_proc(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "ProtectProc") == "invisible"
    dropin = parse_unit(DROPINS["20-process-visibility.conf"].read_text())
    assert dropin == {"Service": [("ProtectProc", "default")]}


def test_credential_example_matches_the_config_convention() -> None:
    dropin = parse_unit(DROPINS["mqtt-credential.conf"].read_text())
    assert values(dropin, "Service", "LoadCredential") == ["mqtt-password:/etc/smartbin/mqtt-password"]


def test_install_section(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert one(unit, "Unit", "Documentation").startswith("file:/opt/smartbin/README")
