"""Runtime: supervised restarts with backoff, failed workers, sd_notify over a real socket, the watchdog."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smartbin_daemon.app import App
from smartbin_daemon.config import parse_config
from smartbin_daemon.runtime.bus import Bus, Event, Subscription
from smartbin_daemon.runtime.notify import Notifier
from smartbin_daemon.runtime.supervisor import RestartPolicy, Supervisor
from smartbin_daemon.runtime.worker import Worker

from .conftest import Broker, DaemonProcess, wait_until, write_config


class NotifySocket:
    """A real unix datagram socket posing as systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


class Crasher(Worker):
    """Raises after a few steps, as many times as told."""

    def __init__(self, bus: Bus, crashes: int) -> None:
        super().__init__("crasher", bus, tick_s=0.01)
        self.crashes_left = crashes
        self.starts: list[float] = []

    def setup(self) -> None:
        self.starts.append(time.monotonic())

    def step(self) -> None:
        if self.crashes_left > 0:
            self.crashes_left -= 1
            raise RuntimeError("sensor exploded")
        self.sleep(0.01)


class Steady(Worker):
    """Runs quietly."""

    def __init__(self, bus: Bus) -> None:
        super().__init__("steady", bus, tick_s=0.05)


def run_supervisor(sup: Supervisor, until: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        sup.check()
        time.sleep(0.01)


def test_a_crashing_worker_is_restarted_with_exponential_backoff() -> None:
    bus = Bus()
    sup = Supervisor(bus, RestartPolicy(backoff_min_s=0.1, backoff_max_s=0.4, max_restarts=10, window_s=60))
    worker = Crasher(bus, crashes=4)
    sup.add(worker)
    sup.add(Steady(bus))
    sup.start_all()
    run_supervisor(sup, lambda: len(worker.starts) >= 5 and sup.table()["crasher"]["status"] == "running")
    gaps = [b - a for a, b in zip(worker.starts, worker.starts[1:])]
    assert len(gaps) == 4
    # 0.1, 0.2, 0.4, 0.4 (capped), each plus scheduling slack
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.4]):
        assert expected * 0.9 <= gap <= expected + 0.5, gaps
    table = sup.table()
    assert table["crasher"]["restarts"] == 4
    assert table["crasher"]["last_error"] == "RuntimeError: sensor exploded"
    assert table["steady"]["status"] == "running"
    sup.stop_all(2)


def test_a_worker_that_keeps_crashing_is_marked_failed_with_an_alert_and_the_rest_keeps_running() -> None:
    bus = Bus()
    events: Subscription = bus.subscribe("test", [Event])
    sup = Supervisor(bus, RestartPolicy(backoff_min_s=0.01, backoff_max_s=0.02, max_restarts=3, window_s=60))
    crasher = Crasher(bus, crashes=100)
    steady = Steady(bus)
    sup.add(crasher)
    sup.add(steady)
    sup.start_all()
    run_supervisor(sup, lambda: sup.table()["crasher"]["status"] == "failed")
    assert sup.table()["crasher"]["status"] == "failed"
    assert len(crasher.starts) == 4  # first start + 3 restarts
    alert = events.get(2)
    assert isinstance(alert, Event) and alert.type == "alert"
    assert alert.data["code"] == "worker_failed" and alert.data["source"] == "crasher"
    time.sleep(0.2)
    assert sup.table()["steady"]["status"] == "running" and steady.heartbeat_age() < 1
    assert sup.watchdog_ok(), "a failed worker is reported, it does not stop the watchdog"
    sup.restart("crasher")  # operator revive clears the history
    assert sup.table()["crasher"]["status"] in ("starting", "running")
    cleared = events.get(2)
    assert isinstance(cleared, Event) and cleared.data["code"] == "worker_failed" and cleared.data["active"] is False
    assert [e.data["active"] for e in bus.alerts()] == [False], "the alert ledger holds the clear"
    sup.stop_all(2)


def test_stop_all_joins_every_thread_quickly() -> None:
    bus = Bus()
    sup = Supervisor(bus)
    workers = [Steady(bus)]
    for w in workers:
        sup.add(w)
    sup.start_all()
    t0 = time.monotonic()
    assert sup.stop_all(2)
    assert time.monotonic() - t0 < 1
    assert not any(t.name.startswith("smartbin-") for t in threading.enumerate())


def test_notifier_is_a_no_op_without_systemd() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert n.send("READY=1") is False
    assert n.watchdog_interval_s is None


def test_watchdog_interval_is_half_of_watchdog_usec(tmp_path: Path) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval_s == 15.0
    other = Notifier(env={"NOTIFY_SOCKET": "x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None, "the watchdog belongs to another process"


def test_daemon_sends_ready_status_and_periodic_watchdog(tmp_path: Path, broker: Broker, notify_socket: NotifySocket,
                                                         daemon_factory: Callable[..., DaemonProcess]) -> None:
    cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "s")
    daemon = daemon_factory(cfg, env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    wait_until(lambda: notify_socket.lines("READY=1"), timeout=20, what="READY=1")
    wait_until(lambda: any("mqtt connected" in m for _, m in notify_socket.lines("STATUS=")), timeout=20,
               what="STATUS line with mqtt connected")
    wait_until(lambda: len(notify_socket.lines("WATCHDOG=1")) >= 4, timeout=10, what="periodic WATCHDOG=1")
    stamps = [t for t, _ in notify_socket.lines("WATCHDOG=1")]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(0.3 <= g <= 1.5 for g in gaps), gaps
    status = [m for _, m in notify_socket.lines("STATUS=")][-1]
    assert "health" in status and "0 failed" in status
    daemon.stop()
    assert notify_socket.lines("STOPPING=1")


def test_ready_does_not_wait_for_the_broker(tmp_path: Path, notify_socket: NotifySocket,
                                            daemon_factory: Callable[..., DaemonProcess]) -> None:
    nobody = Broker(tmp_path)  # never started
    cfg = write_config(tmp_path / "c.yaml", nobody.port, tmp_path / "s")
    daemon_factory(cfg, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    wait_until(lambda: notify_socket.lines("READY=1"), timeout=20, what="READY=1 while offline")


class Hanger(Worker):
    """Stops beating when told to hang (a deadlock stand-in)."""

    def __init__(self, bus: Bus) -> None:
        super().__init__("hanger", bus, tick_s=0.05)
        self.hang = threading.Event()
        self.release = threading.Event()

    def step(self) -> None:
        if self.hang.is_set():
            self.release.wait(30)
        self.sleep(0.05)


def test_watchdog_stops_while_a_critical_worker_hangs(tmp_path: Path, notify_socket: NotifySocket) -> None:
    cfg = parse_config({"device": {"id": "wd"}, "storage": {"path": str(tmp_path)}, "health": {"enabled": False},
                        "mqtt": {"host": "127.0.0.1", "port": 1}, "runtime": {"heartbeat_timeout_s": 1}})
    app = App(cfg, notifier=Notifier(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}))
    app.start()
    hanger = Hanger(app.bus)
    app.supervisor.add(hanger)
    app.supervisor.start("hanger")
    try:
        def ticks(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                app.tick()
                time.sleep(0.02)

        ticks(1.0)
        before = len(notify_socket.lines("WATCHDOG=1"))
        assert before >= 5
        hanger.hang.set()
        ticks(1.5)  # heartbeat goes stale after 1 s
        stalled_at = len(notify_socket.lines("WATCHDOG=1"))
        ticks(1.0)
        assert len(notify_socket.lines("WATCHDOG=1")) == stalled_at, "no WATCHDOG=1 while a worker hangs"
        assert any("hung: hanger" in m for _, m in notify_socket.lines("STATUS="))
        hanger.release.set()
        hanger.hang.clear()
        ticks(0.6)
        assert len(notify_socket.lines("WATCHDOG=1")) > stalled_at, "WATCHDOG resumes once the worker beats again"
    finally:
        hanger.release.set()
        app.stop()
