"""The self-test against the whole bin in this process: the simulated Arduino on a pty (lid, flap, sensors, scale),
mock GPIO, the shipped model on an image-folder camera, `security.privileged: hmac` (the `running` fixture of
tests/test_privilege.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from smartbin_daemon.bins.selftest import Probe, SelfTestRun, plan
from smartbin_daemon.config import BinsConfig
from smartbin_daemon.runtime.bus import Response
from smartbin_daemon.states.selftest import PartStatus, SelfTestStatus

from .. import test_privilege
from ..conftest import REPO, SteppedClock, wait_until
from ..test_bin_e2e import COMPARTMENTS
from ..test_privilege import ROOT, RunningBin, ok

running = test_privilege.running
"""The fixture: the whole bin in this process, signed requests required, two items already sorted."""

ALL_CHECKS = {"ultrasonic": 3, "drop": 1, "scale": 1, "lid": 1, "routes": 4, "led": 1, "buzzer": 1, "camera": 1,
              "detector": 1}
"""Checks per part on this bin: three distance sensors, three compartments plus the way home."""


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The checks of a self-test answer by `<part>/<name>`."""
    return {f"{p['part']}/{p['name']}": p for p in result["parts"]}


def retained(port: int, topic: str) -> dict[str, Any]:
    """The retained message on a topic, as a new subscriber gets it."""
    got: list[bytes] = []
    arrived = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="selftest-retained")

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            got.append(msg.payload)
            arrived.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert arrived.wait(5), f"no retained message on {topic}"
    finally:
        client.loop_stop()
        client.disconnect()
    return json.loads(got[-1])  # type: ignore[no-any-return]


def smartbinctl(running: RunningBin, *args: str) -> subprocess.CompletedProcess[str]:
    """`smartbinctl <args> --config <the bin's config>` from this tree (it signs with the config's secret)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "smartbin_daemon.ctl", *args, "--config", str(running.config)],
                          capture_output=True, text=True, timeout=150, cwd=REPO, env=env)


def test_every_part_passes_moves_under_maintenance_and_is_retained(running: RunningBin) -> None:
    mark = len(running.frames())
    seen_states: set[str] = set()
    done_watching = threading.Event()

    def watch() -> None:
        while not done_watching.wait(0.02):
            seen_states.add(running.workflow_state())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = ok(running.signed("selftest", timeout=60))
    done_watching.set()
    watcher.join(1)
    assert result["status"] == "pass", result
    counts = {part: sum(p["part"] == part for p in result["parts"]) for part in ALL_CHECKS}
    assert counts == ALL_CHECKS
    assert all(p["status"] == "pass" for p in result["parts"]), [p for p in result["parts"] if p["status"] != "pass"]
    checks = by_name(result)
    assert checks["ultrasonic/recycling"]["unit"] == "mm" and 30 <= checks["ultrasonic/recycling"]["value"] <= 2000
    assert checks["camera/camera"]["unit"] == "fps" and checks["camera/camera"]["value"] > 0
    assert checks["detector/detector"]["unit"] == "ms" and checks["detector/detector"]["value"] > 0
    assert all(p["duration_ms"] is not None and p["at"] for p in result["parts"])
    frames = running.frames(mark)
    assert [f.args["op"] for f in frames if f.type == "LID"][:2] == ["lock", "unlock"]
    assert [f.args["bin"] for f in frames if f.type == "ROUTE"] == ["1", "2", "3", "3"]
    assert "maintenance" in seen_states, "the workflow was held while the lid and flap moved"
    wait_until(lambda: running.workflow_state() == "idle", 5, what="idle again after the self-test")
    assert retained(running.app.cfg.mqtt.port, f"{ROOT}/selftest") == result

    # unsigned: with movement refused at the edge; without, served and nothing moves
    refused = running.ask("selftest", {"parts": ["lid"]})
    assert refused["status"] == "error" and "unsigned privileged request refused" in refused["error"]
    mark = len(running.frames())
    still = ok(running.ask("selftest", {"move": False}))
    assert still["status"] == "pass" and not still["move"]
    moving = [p for p in still["parts"] if p["part"] in ("lid", "routes", "led", "buzzer")]
    assert moving and all(p["status"] == "skipped" and p["detail"] == "move is false" for p in moving)
    assert not [f for f in running.frames(mark) if f.type in ("LID", "ROUTE", "LED", "BUZ")]

    # smartbinctl: signed with the config's key, a table, exit 0; --parts without moving parts needs no flag
    done = smartbinctl(running, "selftest")
    print(f"\nSELFTEST smartbinctl selftest:\n{done.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 1 + sum(ALL_CHECKS.values()) + 1
    assert "self-test PASS: 14 passed, 0 failed, 0 skipped" in done.stdout
    done = smartbinctl(running, "selftest", "--parts", "camera", "detector", "scale")
    assert done.returncode == 0, done.stderr
    assert "self-test PASS: 3 passed, 0 failed, 0 skipped" in done.stdout
    assert done.stdout.splitlines()[0].split()[:3] == ["PART", "CHECK", "RESULT"]


def test_a_fault_fails_its_part_and_moving_parts_wait_for_the_item(running: RunningBin) -> None:
    running.sim.stick_echo(2, 4500)  # the paper compartment's sensor reads beyond max_mm
    running.sim.set_ack_delay(30.0)  # the MCU executes, but no ACK arrives in time: the flap never answers
    result = ok(running.signed("selftest", {"parts": ["ultrasonic", "routes"]}, timeout=60))
    running.sim.set_ack_delay(0.0)
    checks = by_name(result)
    assert result["status"] == "fail" and result["failed"] == 1 + 4, result
    assert checks["ultrasonic/paper"]["status"] == "fail" and checks["ultrasonic/paper"]["value"] == 4500
    assert "outside [30, 2000] mm" in checks["ultrasonic/paper"]["detail"]
    assert checks["ultrasonic/recycling"]["status"] == "pass"
    assert checks["routes/recycling"]["status"] == "fail", checks["routes/recycling"]
    assert "no ACK" in checks["routes/recycling"]["detail"], checks["routes/recycling"]
    wait_until(lambda: retained(running.app.cfg.mqtt.port, f"{ROOT}/selftest")["status"] == "fail", 5,
               what="the failed run retained")
    done = smartbinctl(running, "selftest", "--parts", "ultrasonic")
    assert done.returncode == 1 and "ultrasonic  paper" in done.stdout and "FAIL" in done.stdout, done.stdout
    status = smartbinctl(running, "status")
    assert "selftest: the last self-test" in status.stdout and "ultrasonic paper: 4500 mm is outside" in status.stdout, \
        status.stdout
    running.sim.stick_echo(2, None)

    # while it runs: a second one is refused, and nobody takes the workflow out of maintenance under it
    running.sim.set_ack_delay(0.3)  # a slower flap: the run takes a few seconds
    answers: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: answers.append(running.signed("selftest", {"parts": ["lid", "routes"]},
                                                                           timeout=60)))
    runner.start()
    wait_until(lambda: running.workflow_state() == "maintenance", 10, what="the workflow held")
    second = running.signed("selftest", {"move": False})
    assert second["status"] == "error" and second["error"] == "a self-test is already running", second
    resumed = running.signed("maintenance", {"on": False})
    assert resumed["status"] == "error" and "a self-test holds the workflow" in resumed["error"], resumed
    runner.join(60)
    running.sim.set_ack_delay(0.0)
    assert ok(answers[0])["status"] == "pass", answers

    # an item in flight: the lid and flap are skipped with the reason, the rest runs
    wait_until(lambda: running.workflow_state() == "idle", 10, what="idle")
    running.sim.set_ack_delay(2.0)
    running.present(True)
    wait_until(lambda: running.workflow_state() == "routing", 20, what="an item routing")
    result = ok(running.signed("selftest", {"parts": ["lid", "routes", "scale"]}, timeout=60))
    checks = by_name(result)
    assert checks["lid/lid"]["status"] == "skipped" and "the workflow is routing" in checks["lid/lid"]["detail"]
    assert checks["routes/routes"]["status"] == "skipped"
    assert checks["scale/scale"]["status"] == "pass" and result["status"] == "pass"
    running.sim.set_ack_delay(0.0)
    running.present(False)
    wait_until(lambda: running.state("workflow")["counts"]["sorted"] >= 3, 20, what="the item sorted, undisturbed")


# --------------------------------------------------------------------------- the run on its own, on a stepped clock


def _probe(clock: SteppedClock, states: dict[str, Any] | None = None) -> Probe:
    cfg = BinsConfig.model_validate({"enabled": True, "compartments": COMPARTMENTS})
    return Probe(clock, lambda: states or {}, cfg, {"route": "arduino", "lid": "arduino", "led": None, "buzzer": None})


def _run(probe: Probe, clock: SteppedClock, parts: list[str], sent: list[tuple[str, str]]) -> SelfTestRun:
    checks = plan(probe, parts, move_refused=None, timeout_s=5.0, vision={"camera": True, "detector": False})
    run = SelfTestRun(checks, clock, lambda: 1_700_000_000.0, lambda c, a, rid: sent.append((c, rid)), True, "signed")
    run.start()
    return run


def test_a_check_without_an_answer_fails_after_its_time_and_the_run_goes_on() -> None:
    clock, sent = SteppedClock(), []
    probe = _probe(clock)
    run = _run(probe, clock, ["lid", "led", "detector"], sent)
    assert [c for c, _ in sent] == ["lid"] and not run.finished
    clock.advance(4.9)
    run.tick()
    assert run.results == []  # still waiting
    clock.advance(0.2)
    run.tick()
    assert run.finished
    lid_result, led, detector = run.results
    assert (lid_result.status, lid_result.detail) == (PartStatus.FAIL, "lock: no answer in 5 s")
    assert lid_result.duration_ms is not None and lid_result.duration_ms >= 5000
    assert (led.status, led.detail) == (PartStatus.SKIPPED, "no led configured")
    assert (detector.status, detector.detail) == (PartStatus.SKIPPED, "detector disabled in the config")
    assert run.state().status == SelfTestStatus.FAIL and run.state().failed == 1


def test_readings_and_answers_drive_the_checks_and_a_late_answer_is_ignored() -> None:
    clock, sent = SteppedClock(), []
    probe = _probe(clock)
    run = _run(probe, clock, ["routes", "ultrasonic"], sent)
    assert sent == [] and not run.results  # the distance sensors come first: waiting for readings
    probe.readings.update({("arduino", 1): 420.0, ("arduino", 2): None})  # the third channel never reports
    clock.advance(0.3)
    run.tick()
    clock.advance(3.1)
    run.tick()
    ultrasonic = {r.name: r for r in run.results if r.part == "ultrasonic"}
    assert ultrasonic["recycling"].status == PartStatus.PASS and ultrasonic["recycling"].value == 420.0
    assert ultrasonic["paper"].detail == "no echo on arduino channel 2"
    assert ultrasonic["residual"].detail == "no reading from arduino channel 3 in 3 s"

    command, first = sent[-1]
    assert command == "route"
    clock.advance(6.0)
    run.tick()  # the first route timed out: the second is sent
    assert run.results[3].detail == "no answer in 5 s" and len(sent) == 2
    run.on_response(Response(first, "route", True, {"acked": True}))  # too late: not the check it waits for
    assert len(run.results) == 4
    run.on_response(Response(sent[-1][1], "route", True, {"acked": True}))
    run.on_drop(2)
    assert run.results[4].status == PartStatus.PASS and "drop reported" in str(run.results[4].detail)
    for _ in range(2):  # the third compartment and home: ACKed, no drop reported in time
        run.on_response(Response(sent[-1][1], "route", True, {"acked": True}))
        clock.advance(3.1)
        run.tick()
    assert [r.status for r in run.results[5:]] == [PartStatus.PASS, PartStatus.PASS]
    assert "no drop reported" in str(run.results[6].detail) and run.results[6].name == "home (residual)"
    assert run.finished and run.state().status == SelfTestStatus.FAIL and run.state().failed == 3
