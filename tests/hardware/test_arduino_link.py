"""The link manager against the pty simulator (real pyserial, real protocol, scripted faults) and, for the
handshake, telemetry, ROUTE idempotency and the lid state machine, against the firmware under simavr too."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.config import ArduinoConfig
from smartbin_daemon.hardware.arduino import link as link_module
from smartbin_daemon.hardware.arduino.link import ArduinoLink
from smartbin_daemon.hardware.arduino.protocol import encode
from smartbin_daemon.hardware.arduino.simulator import LID_OPS, LID_STATES, SimulatedArduino, lid_transition
from smartbin_daemon.messages import DistanceReading, ItemDropped
from smartbin_daemon.runtime.bus import Bus, Event, Request, Response

from ..conftest import SteppedClock, wait_until


class Rig:
    """The link manager on a port in its own thread, as the supervisor runs it."""

    settle_s = 0.0
    """How long the lid takes to come to rest after a LID command (the firmware: LID_MOVE_MS)."""

    def __init__(self, tmp_path: Path, port: str | Path, clock: Any = time.monotonic, **cfg: Any) -> None:
        self.link_path = Path(port)
        self.bus = Bus()
        self.seen = self.bus.subscribe("test", [Response, Event, DistanceReading, ItemDropped], maxsize=100_000)
        options = {"enabled": True, "backend": "serial", "port": str(port), "boot_wait_s": 0.5,
                   "ack_timeout_s": 0.3, "stale_after_s": 1.0, "reconnect_after_s": 2.0, "reconnect_min_s": 0.1,
                   "reconnect_max_s": 0.5, "incompatible_retry_s": 60}
        options.update(cfg)
        self.link = ArduinoLink(self.bus, ArduinoConfig.model_validate(options), tmp_path, clock=clock)
        self.thread = threading.Thread(target=self.link.run, daemon=True)
        self.thread.start()
        self.messages: list[Any] = []

    def drain(self) -> list[Any]:
        while True:
            msg = self.seen.get(0) if len(self.seen) else None
            if msg is None:
                return self.messages
            self.messages.append(msg)

    def request(self, command: str, args: dict[str, Any], timeout: float = 5.0) -> Response:
        rid = uuid.uuid4().hex
        self.bus.publish(Request("arduino", command, args, rid))

        def answered() -> Response | None:
            return next((m for m in self.drain() if isinstance(m, Response) and m.request_id == rid), None)

        return wait_until(answered, timeout, what=f"response to {command}")  # type: ignore[no-any-return]

    def connected(self, timeout: float = 5.0) -> None:
        wait_until(lambda: self.link.status == "connected", timeout, what="link connected")

    def close(self) -> None:
        self.link.request_stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "link thread did not stop"


class SimRig(Rig):
    """The link on the Python simulator's pty, whose faults the tests can script."""

    def __init__(self, tmp_path: Path, clock: Any = time.monotonic, **cfg: Any) -> None:
        link_path = tmp_path / "arduino.tty"
        self.sim = SimulatedArduino(link_path, compartments=3, telemetry_interval_s=0.1, boot_delay_s=0.05)
        self.sim.start()
        super().__init__(tmp_path, link_path, clock, **{"backend": "simulator", "simulator": {"link": str(link_path)},
                                                        **cfg})

    def close(self) -> None:
        super().close()
        self.sim.stop()


class FirmwareRig(Rig):
    """The link on the reference firmware (simavr, or the board of SMARTBIN_FW_PORT)."""

    settle_s = 0.8


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SimRig]:
    r = SimRig(tmp_path)
    yield r
    r.close()


@pytest.fixture(params=["python-sim", "firmware"])
def any_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """The link on each backend: the Python simulator and the firmware (freshly reset)."""
    if request.param == "python-sim":
        r: Rig = SimRig(tmp_path)
    else:
        r = FirmwareRig(tmp_path, request.getfixturevalue("firmware_port"))
    yield r
    r.close()


def test_handshake_reports_firmware_and_capabilities(any_rig: Rig) -> None:
    any_rig.connected()
    state = any_rig.link.own_state().to_json()
    assert state["firmware"] == "smartbin-fw" and state["protocol"] == 1
    assert state["compartments"] == 3
    assert "us" in state["sensors"]
    assert state["port"] == str(any_rig.link_path)


def test_telemetry_becomes_distance_readings_per_compartment(any_rig: Rig) -> None:
    any_rig.connected()
    wait_until(lambda: {m.compartment for m in any_rig.drain() if isinstance(m, DistanceReading)} == {1, 2, 3},
               what="distance readings of all three compartments")
    assert any_rig.link.own_state().to_json()["lid"] in ("closed", "open", "locked")


def drops(rig: Rig, compartment: int) -> int:
    return sum(1 for m in rig.drain() if isinstance(m, ItemDropped) and m.compartment == compartment)


def test_a_repeated_route_id_is_acknowledged_as_a_duplicate_and_not_run_again(any_rig: Rig) -> None:
    any_rig.connected()
    first = any_rig.request("route", {"compartment": 2, "command_id": "c0ffee1"})
    assert first.ok and first.data["duplicate"] is False, first
    wait_until(lambda: drops(any_rig, 2) == 1, 5, what="the drop of the routed item")
    again = any_rig.request("route", {"compartment": 2, "command_id": "0c0ffee1"})  # ids compare as numbers
    assert again.ok and again.data["duplicate"] is True, again
    assert again.data["id"] == "0c0ffee1", "the ACK echoes the id as sent"
    time.sleep(2.5)  # longer than the firmware's drop timeout and the simulator's drop delay
    assert drops(any_rig, 2) == 1, "the duplicate moved nothing"
    if isinstance(any_rig, SimRig):
        assert any_rig.sim.routes == [("c0ffee1", 2)]


def lid(rig: Rig, op: str) -> Response:
    """One LID request; the firmware NAKs `lock` busy while the lid is still closing, so that one is retried."""
    deadline = time.monotonic() + 3.0
    while True:
        resp = rig.request("lid", {"op": op})
        if resp.ok or "err=busy" not in (resp.error or "") or op != "lock" or time.monotonic() > deadline:
            return resp
        time.sleep(0.1)


def bring_lid_to(rig: Rig, state: str) -> None:
    """Drive the lid into `state` (any start) with commands only, and let it come to rest."""
    assert lid(rig, "unlock").ok
    assert lid(rig, "open" if state == "open" else "close").ok
    if state == "locked":
        assert lid(rig, "lock").ok
    wait_until(lambda: rig.link.own_state().to_json()["lid"] == state, 3, what=f"lid {state}")
    time.sleep(rig.settle_s)


def test_the_lid_follows_the_documented_state_machine(any_rig: Rig) -> None:
    any_rig.connected()
    for state in LID_STATES:
        for op in LID_OPS:
            bring_lid_to(any_rig, state)
            expected, err = lid_transition(state, op)
            resp = any_rig.request("lid", {"op": op})
            if err:
                assert not resp.ok and f"err={err}" in (resp.error or ""), (state, op, resp)
                continue
            assert resp.ok and resp.data["lid"] == expected, (state, op, resp)
            wait_until(lambda e=expected: any_rig.link.own_state().to_json()["lid"] == e, 3,
                       what=f"{state} --{op}--> {expected} in the link's state")


def test_route_is_acknowledged_and_moves_the_simulated_flap(rig: SimRig) -> None:
    rig.connected()
    before = rig.sim.fill_mm(2)
    resp = rig.request("route", {"compartment": 2, "command_id": None})
    assert resp.ok, resp.error
    assert resp.data["acked"] is True and resp.data["duplicate"] is False
    assert [b for _, b in rig.sim.routes] == [2]
    wait_until(lambda: any(isinstance(m, ItemDropped) and m.compartment == 2 for m in rig.drain()), what="drop event")
    assert rig.sim.fill_mm(2) > before  # fill height rose by one item


def test_a_lost_ack_is_retried_and_the_route_runs_once(rig: SimRig) -> None:
    rig.connected()
    rig.sim.drop_acks(1)
    resp = rig.request("route", {"compartment": 1, "command_id": None})
    assert resp.ok, resp.error
    assert resp.data["duplicate"] is True, "the retry was answered from the MCU's dedupe memory"
    assert len(rig.sim.routes) == 1
    assert rig.link.counters.retries == 1 and rig.link.counters.timeouts == 1


def test_a_command_without_any_ack_fails_after_the_retries(rig: SimRig) -> None:
    rig.connected()
    rig.sim.drop_acks(10)
    t0 = time.monotonic()
    resp = rig.request("led", {"pattern": "blink"})
    assert not resp.ok and "no ACK" in (resp.error or "")
    assert time.monotonic() - t0 >= 0.3 * 3 * 0.9  # 1 try + 2 retries of 0.3 s


def test_nak_is_reported_with_the_mcu_reason(any_rig: Rig) -> None:
    any_rig.connected()
    assert any_rig.request("lid", {"op": "lock"}).ok
    resp = any_rig.request("lid", {"op": "open"})
    assert not resp.ok and "err=locked" in (resp.error or "")


def test_unplug_turns_the_link_disconnected_and_replug_recovers_it(rig: SimRig) -> None:
    rig.connected()
    rig.sim.unplug()
    wait_until(lambda: rig.link.status == "disconnected", 3, what="disconnected after unplug")
    resp = rig.request("route", {"compartment": 1, "command_id": None})
    assert not resp.ok and "disconnected" in (resp.error or ""), "commands fail fast while unplugged"
    t0 = time.monotonic()
    rig.sim.replug()
    rig.connected(timeout=5)
    assert time.monotonic() - t0 < 5
    assert rig.link.counters.reconnects >= 1
    assert rig.request("route", {"compartment": 3, "command_id": None}).ok


def alerts(rig: Rig, code: str) -> list[dict[str, Any]]:
    return [m.data for m in rig.drain() if isinstance(m, Event) and m.type == "alert" and m.data["code"] == code]


def test_a_link_down_longer_than_alert_after_s_raises_a_critical_alert_cleared_on_reconnect(tmp_path: Path) -> None:
    clock = SteppedClock()
    rig = SimRig(tmp_path, clock=clock, alert_after_s=120)
    try:
        rig.connected()
        rig.sim.unplug()
        wait_until(lambda: rig.link.status == "disconnected", 3, what="disconnected after unplug")
        clock.advance(119)
        time.sleep(0.3)
        assert alerts(rig, "link_down") == [], "not before alert_after_s"
        clock.advance(2)
        wait_until(lambda: alerts(rig, "link_down"), 3, what="the link_down alert")
        (raised,) = alerts(rig, "link_down")
        assert raised["severity"] == "critical" and raised["active"] and raised["source"] == "arduino"
        assert raised["message"].startswith("Arduino link down for 12")
        rig.sim.replug()
        rig.connected(timeout=5)
        wait_until(lambda: len(alerts(rig, "link_down")) == 2, 3, what="the alert cleared")
        cleared = alerts(rig, "link_down")[1]
        assert cleared["active"] is False
        time.sleep(0.3)
        assert len(alerts(rig, "link_down")) == 2, "raised and cleared once each"
    finally:
        rig.close()


def test_repeated_unplugs_leak_no_threads(rig: SimRig) -> None:
    rig.connected()
    threads_before = threading.active_count()
    for _ in range(5):
        rig.sim.unplug()
        wait_until(lambda: rig.link.status == "disconnected", 3, what="disconnected")
        rig.sim.replug()
        rig.connected()
    assert threading.active_count() <= threads_before


def test_a_garbage_flood_is_counted_and_skipped(rig: SimRig) -> None:
    rig.connected()
    rng = random.Random(7)
    for _ in range(40):  # ~330 KB of noise, paced like a serial line so the pty buffer never overflows
        junk = bytearray()
        for _ in range(50):
            kind = rng.randrange(4)
            if kind == 0:
                junk += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) + b"\n"
            elif kind == 1:
                junk += encode(5, "TEL", {"d": "1,2,3"})[:-4] + b"00\n"  # bad checksum
            elif kind == 2:
                junk += b"x" * 300 + b"\n"  # oversize
            else:
                junk += b"$7 WHAT x=1*" + f"{0:02X}".encode() + b"\n"
        rig.sim.inject_garbage(bytes(junk))
        time.sleep(0.03)
    wait_until(lambda: rig.link.own_state().to_json()["counters"]["bad_frames"] > 1000, 10, what="bad frames counted")
    errors = rig.link.own_state().to_json()["counters"]["errors"]
    assert errors["bad_checksum"] > 0 and errors["oversize"] > 0
    assert rig.thread.is_alive()
    rig.connected()
    assert rig.request("route", {"compartment": 2, "command_id": None}).ok


def test_a_protocol_version_mismatch_sends_no_commands(tmp_path: Path) -> None:
    r = SimRig(tmp_path)
    try:
        r.sim.set_protocol_version(2)
        r.sim.reboot()
        wait_until(lambda: r.link.status == "incompatible", 5, what="incompatible")
        alerts = [m for m in r.drain() if isinstance(m, Event) and m.type == "alert"]
        assert alerts and alerts[-1].data["code"] == "protocol_mismatch"
        assert "speaks protocol 2" in (r.link.last_error or "")
        frames_in_before = r.sim.frames_in
        resp = r.request("route", {"compartment": 1, "command_id": None})
        assert not resp.ok and "incompatible" in (resp.error or "")
        time.sleep(0.5)
        assert r.sim.frames_in == frames_in_before, "nothing was sent to an incompatible MCU"
        assert r.sim.routes == []
    finally:
        r.close()


def test_an_mcu_reboot_mid_session_is_handshaken_again(rig: SimRig) -> None:
    rig.connected()
    rig.sim.reboot()
    time.sleep(0.3)
    rig.connected()
    assert rig.request("route", {"compartment": 1, "command_id": None}).ok


def test_a_silent_mcu_turns_the_link_stale_then_reconnects(rig: SimRig) -> None:
    rig.connected()
    reconnects = rig.link.counters.reconnects
    rig.sim.hang()
    wait_until(lambda: rig.link.status == "stale", 3, what="stale after stale_after_s of silence")
    wait_until(lambda: rig.link.counters.reconnects > reconnects, 5, what="reconnect after reconnect_after_s")
    rig.sim.hang(False)
    rig.connected(timeout=5)
    assert rig.request("route", {"compartment": 1, "command_id": None}).ok


def test_a_busy_flap_is_retried_with_the_same_id(rig: SimRig) -> None:
    rig.connected()
    first = rig.request("route", {"compartment": 1, "command_id": "a1"})
    second = rig.request("route", {"compartment": 2, "command_id": "b2"})  # arrives while the flap still moves
    assert first.ok and second.ok, second.error
    assert rig.sim.routes == [("a1", 1), ("b2", 2)]
    assert rig.link.counters.naks >= 1, "the second ROUTE met NAK busy and was resent"


def test_port_selection_prefers_the_configured_path_then_the_usb_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serial.tools.list_ports_common import ListPortInfo

    from smartbin_daemon.hardware.arduino.link import find_port

    explicit = ArduinoConfig.model_validate({"enabled": True, "port": "/dev/smartbin-arduino"})
    assert find_port(explicit, tmp_path) == "/dev/smartbin-arduino"
    sim = ArduinoConfig.model_validate({"enabled": True, "backend": "simulator"})
    assert find_port(sim, tmp_path) == str(tmp_path / "arduino-sim.tty")

    def port(device: str, vid: int, pid: int) -> ListPortInfo:
        info = ListPortInfo(device, skip_link_detection=True)
        info.vid, info.pid = vid, pid
        return info

    # serial.tools.list_ports reads sysfs USB devices, which this machine has none of: feed it a listing.
    monkeypatch.setattr("serial.tools.list_ports.comports",
                        lambda: [port("/dev/ttyUSB0", 0x1A86, 0x7523), port("/dev/ttyACM1", 0x2341, 0x0043)])
    by_id = ArduinoConfig.model_validate({"enabled": True, "vid_pid": "2341:0043"})
    assert find_port(by_id, tmp_path) == "/dev/ttyACM1"
    missing = ArduinoConfig.model_validate({"enabled": True, "vid_pid": "2341:0069"})
    assert find_port(missing, tmp_path) is None


def test_lid_buttons_follow_ownership(tmp_path: Path) -> None:
    cfg = ArduinoConfig.model_validate({"enabled": True, "backend": "simulator"})
    owns = ArduinoLink(Bus(), cfg, tmp_path)
    assert {"arduino_lid_open", "arduino_lid_close"} <= {e.object_id for e in owns.entities()}
    assert "lid" in {s.command for s in owns.requests()}
    gpio_has_lid = ArduinoLink(Bus(), cfg, tmp_path, exclude=frozenset({"lid"}))
    assert not {"arduino_lid_open"} & {e.object_id for e in gpio_has_lid.entities()}
    assert "lid" not in {s.command for s in gpio_has_lid.requests()}


def test_weight_and_mcu_temperature_have_sensors(tmp_path: Path) -> None:
    cfg = ArduinoConfig.model_validate({"enabled": True, "backend": "simulator"})
    entities = {e.object_id: e for e in ArduinoLink(Bus(), cfg, tmp_path).entities()}
    weight, mcu = entities["arduino_weight"], entities["arduino_temperature"]
    assert weight.value_template == "{{ value_json.weight_g }}" and weight.options["unit_of_measurement"] == "g"
    assert weight.options["device_class"] == "weight" and "entity_category" not in weight.options
    assert mcu.value_template == "{{ value_json.temperature_c }}" and mcu.options["device_class"] == "temperature"
    assert mcu.options["entity_category"] == "diagnostic"


def test_a_request_is_served_at_once_while_the_port_is_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "READ_TIMEOUT_S", 3.0)  # a read that only the port could end would wait this
    rig = SimRig(tmp_path, stale_after_s=60, reconnect_after_s=120)
    try:
        rig.connected(10)
        rig.sim.spec.telemetry_interval_s = rig.sim.spec.heartbeat_interval_s = 60.0
        time.sleep(1.5)  # the last telemetry is read; the link now waits on a silent port
        latencies = []
        for _ in range(3):
            t0 = time.monotonic()
            assert rig.request("route", {"compartment": 1, "command_id": None}).ok
            latencies.append(time.monotonic() - t0)
            time.sleep(0.5)
        assert max(latencies) < 1.0, latencies
    finally:
        rig.close()
