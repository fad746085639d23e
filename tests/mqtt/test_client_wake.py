"""The MQTT worker's network loop wakes at once when another thread hands it something to send."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smartbin_daemon.mqtt import client as mqtt_client

from ..conftest import Broker, Probe, wait_until
from ..test_outbox import ROOT, Harness


def test_an_event_goes_out_without_waiting_for_the_loop_timeout(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_client, "LOOP_TIMEOUT_S", 3.0)  # a loop that only woke on its timeout would wait this
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/event/#")
    h = Harness(tmp_path, broker.port)
    try:
        wait_until(lambda: h.worker.status == "connected", what="connected")
        time.sleep(0.5)  # the loop is now parked in select() on an idle connection
        latencies = []
        for i in range(3):
            t0 = time.monotonic()
            h.emit(1, start=i)
            wait_until(lambda i=i: any(m.json()["data"]["i"] == i for m in probe.on(f"{ROOT}/event/test")), 5,
                       what=f"event {i}")
            latencies.append(time.monotonic() - t0)
            time.sleep(0.3)
        assert max(latencies) < 1.0, latencies
    finally:
        h.close()
