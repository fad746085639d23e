"""Logging: journald fields for technicians, readable stderr, repeated warnings folded."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from smartbin_daemon.logs import (
    ComponentFilter,
    RepeatFilter,
    component_of,
    ev,
    make_journal_handler,
    under_systemd,
)


class Recorder:
    """Stands in for journald (not runnable here: systemd is not PID 1); records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.sent.append({"MESSAGE": message, **fields})


def make_logger(handler: logging.Handler, name: str = "smartbin_daemon.mqtt.client") -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def test_component_is_taken_from_the_module_path() -> None:
    assert component_of("smartbin_daemon.mqtt.client") == "mqtt"
    assert component_of("smartbin_daemon.health.monitor") == "health"
    assert component_of("smartbin_daemon") == "daemon"
    assert component_of("smartbin_daemon.hardware.arduino.link") == "arduino"
    assert component_of("smartbin_daemon.hardware.gpio") == "gpio"
    assert component_of("smartbin_daemon.vision.sources") == "camera"
    assert component_of("smartbin_daemon.vision.evidence") == "detector"
    assert component_of("paho.mqtt") == "paho"


def test_systemd_is_detected_from_its_environment() -> None:
    assert under_systemd({"JOURNAL_STREAM": "8:1234"})
    assert under_systemd({"INVOCATION_ID": "abc"})
    assert not under_systemd({})


def test_journal_records_carry_uppercase_smartbin_fields_and_priority() -> None:
    rec = Recorder()
    handler = make_journal_handler(sender=rec)
    handler.addFilter(ComponentFilter())
    log = make_logger(handler)
    log.warning("connection lost: %s", "timeout", extra=ev("mqtt_disconnected"))
    log.error("boom", extra=ev("worker_crashed", component="camera"))
    first, second = rec.sent
    assert first["MESSAGE"] == "connection lost: timeout"
    assert first["SMARTBIN_COMPONENT"] == "mqtt"
    assert first["SMARTBIN_EVENT"] == "mqtt_disconnected"
    assert first["PRIORITY"] == "4"
    assert first["SYSLOG_IDENTIFIER"] == "smartbin"
    assert second["SMARTBIN_COMPONENT"] == "camera", "an explicit component wins over the module path"
    assert second["PRIORITY"] == "3"
    assert all(k.isupper() for k in first), "only valid journal field names are sent"


def test_exceptions_reach_the_journal_as_text() -> None:
    rec = Recorder()
    handler = make_journal_handler(sender=rec)
    log = make_logger(handler)
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("parse failed")
    assert "ValueError: bad frame" in rec.sent[0]["MESSAGE"] or "bad frame" in rec.sent[0].get("EXCEPTION_TEXT", "")


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_identical_warnings_are_folded_into_repeated_n_times() -> None:
    out = ListHandler()
    repeats = RepeatFilter(window_s=0.3, emit=out.handle)
    out.addFilter(repeats)
    log = make_logger(out, "smartbin_daemon.arduino.link")
    for _ in range(50):
        log.warning("bad checksum on %s", "/dev/ttyACM0")
    log.warning("a different warning")
    assert [r.getMessage() for r in out.records] == ["bad checksum on /dev/ttyACM0", "a different warning"]
    time.sleep(0.35)
    assert repeats.flush() == 1
    assert out.records[-1].getMessage() == "bad checksum on /dev/ttyACM0 (repeated 49 times in the last 0s)"
    log.warning("bad checksum on %s", "/dev/ttyACM0")
    assert out.records[-1].getMessage() == "bad checksum on /dev/ttyACM0", "a new window starts fresh"


def test_info_lines_are_never_folded() -> None:
    out = ListHandler()
    out.addFilter(RepeatFilter(window_s=60, emit=out.handle))
    log = make_logger(out, "smartbin_daemon.x")
    for _ in range(5):
        log.info("tick")
    assert len(out.records) == 5


@pytest.mark.parametrize("window", [0.0])
def test_folding_can_be_disabled(window: float) -> None:
    out = ListHandler()
    out.addFilter(RepeatFilter(window_s=window, emit=out.handle))
    log = make_logger(out, "smartbin_daemon.y")
    for _ in range(3):
        log.error("same")
    assert len(out.records) == 3
