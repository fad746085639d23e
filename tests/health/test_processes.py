"""`health/processes`: real processes, a real hidepid=invisible /proc (as systemd's ProtectProc=invisible mounts it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from smartbin_daemon.health import HealthMonitor
from smartbin_daemon.health.processes import ProcessSampler, proc_hidepid, visibility
from smartbin_daemon.runtime.bus import Bus, Request, Response
from tests.health.test_health_monitor import config, sources

REPO = Path(__file__).resolve().parents[2]
MOUNTINFO = Path("/proc/self/mountinfo")
PROC_LINE = "66 48 0:40 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw{extra}\n"


@pytest.fixture
def busy_child():
    """A child process spinning on a CPU."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_top_lists_a_busy_process_first_by_cpu_and_sorts_by_memory(busy_child):
    time.sleep(0.2)
    answer = ProcessSampler(MOUNTINFO).top(50, time.sleep)

    by_pid = {p["pid"]: p for p in answer["by_cpu"]}
    assert busy_child.pid in by_pid and by_pid[busy_child.pid]["cpu_percent"] > 10
    cpu = [p["cpu_percent"] for p in answer["by_cpu"]]
    rss = [p["rss_bytes"] for p in answer["by_memory"]]
    assert cpu == sorted(cpu, reverse=True) and rss == sorted(rss, reverse=True)
    assert len(answer["by_cpu"]) <= 50 and len(answer["by_memory"]) <= 50
    assert answer["window_s"] >= 0.45 and answer["processes_seen"] >= len(answer["by_memory"])
    assert set(answer["by_cpu"][0]) == {"pid", "name", "user", "status", "cpu_percent", "rss_bytes", "memory_percent"}


def test_a_following_request_answers_at_once_measured_since_the_previous(busy_child):
    sampler = ProcessSampler(MOUNTINFO)
    waits: list[float] = []
    sampler.top(5, lambda s: waits.append(s) or time.sleep(s))
    time.sleep(0.3)
    started = time.monotonic()
    second = sampler.top(5, lambda s: waits.append(s) or time.sleep(s))

    assert waits == [0.5], "only the first request waits for a measuring window"
    assert time.monotonic() - started < 0.4
    assert second["window_s"] >= 0.25
    assert len(second["by_cpu"]) == 5


def test_visibility_follows_the_hidepid_option_of_proc(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(PROC_LINE.format(extra=",hidepid=invisible"))

    assert proc_hidepid(mountinfo) == "invisible"
    scope, reason = visibility(mountinfo, euid=998)
    assert scope == "own" and "ProtectProc=invisible" in reason and "--process-visibility=all" in reason
    assert visibility(mountinfo, euid=0) == ("all", None), "root sees every process anyway"
    mountinfo.write_text(PROC_LINE.format(extra=",hidepid=invisible") + PROC_LINE.format(extra=""))
    assert visibility(mountinfo, euid=998) == ("all", None), "the last /proc mount is the one in effect"
    mountinfo.write_text(PROC_LINE.format(extra=",hidepid=2"))
    assert visibility(mountinfo, euid=998)[0] == "own"
    assert visibility(tmp_path / "missing", euid=998) == ("all", None)


def _can_mount_private_proc() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t proc -o hidepid=invisible proc /proc"], capture_output=True, timeout=20)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_private_proc(), reason="needs root and mount namespaces (unshare, setpriv)")
def test_under_a_hidden_proc_only_own_processes_are_listed_and_the_answer_says_so():
    script = textwrap.dedent("""
        import json, time
        from pathlib import Path
        from smartbin_daemon.health.processes import ProcessSampler
        print(json.dumps(ProcessSampler(Path("/proc/self/mountinfo")).top(50, time.sleep)))
    """)
    inner = f"mount -t proc -o hidepid=invisible proc /proc && exec setpriv --reuid=65534 --regid=65534 " \
            f"--clear-groups {sys.executable} -c '{script}'"
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["visibility"] == "own"
    assert "hidepid=invisible" in answer["reason"]
    assert answer["by_memory"] and {p["user"] for p in answer["by_memory"]} == {"nobody"}
    assert 1 not in {p["pid"] for p in answer["by_memory"]}


def test_the_request_is_served_by_the_health_worker(data_dir, tmp_path):
    bus = Bus()
    responses = bus.subscribe("t", [Response])
    worker = HealthMonitor(bus, config(sources(data_dir, "x86_laptop"), interval_s=30), tmp_path)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        bus.publish(Request("health", "health/processes", {"limit": 3}, "r1"))
        bus.publish(Request("health", "health/processes", {"limit": 51}, "r2"))
        answers = {}
        deadline = time.monotonic() + 10
        while len(answers) < 2 and time.monotonic() < deadline:
            msg = responses.get(0.2)
            if isinstance(msg, Response):
                answers[msg.request_id] = msg
    finally:
        worker.request_stop()
        thread.join(timeout=3)

    assert answers["r1"].ok and len(answers["r1"].data["by_cpu"]) == 3
    assert answers["r1"].data["visibility"] in ("all", "own")
    assert not answers["r2"].ok and "limit" in answers["r2"].error
