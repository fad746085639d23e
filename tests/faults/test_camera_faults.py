"""Camera outages with the whole daemon running: the simulated bin (real ONNX model, real camera and detector
workers, simulated items) watches its scene through a real HTTP MJPEG camera that is killed and restarted.
The outage shows in the camera state and as an alert, sorting degrades as documented, and detections resume."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import yaml

from smartbin_daemon.simulation import SCENE_FILE, empty_tray

from ..conftest import Broker, DaemonProcess, Probe, Received, wait_until
from ..test_bin_e2e import SIM_ROOT, fast_simulation_config, outcomes
from ..vision.mjpeg_server import MjpegServer
from .knobs import LONG, scaled

logger = logging.getLogger(__name__)

CYCLES = int(scaled(2, 8))
"""Outages: even ones kill the camera's server (refused connections), odd ones hang it (a silent stream: a stall)."""
DOWN_S = scaled(3.0, 8.0)
"""How long the camera is out at least; it stays out until its alert is raised (a hang: stall after 2 s, alert 2 s later)."""
STALL_TIMEOUT_S = 2.0
VISION_GRACE_S = 1.0
FRAMES_PER_DECISION = 5
RESUME_BOUND_S = 25.0
"""Camera back to a full-frame detection: re-open backoff, the next simulated item (every 3 s), K inferences."""


class SceneCamera(MjpegServer):
    """An MJPEG camera that films the simulated scene: each part is the feeder's current view of the intake."""

    def __init__(self, scene_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scene_dir = scene_dir
        ok, tray = cv2.imencode(".jpg", empty_tray())
        assert ok
        self._tray = tray.tobytes()

    def _part(self) -> bytes:
        try:
            body = (self.scene_dir / SCENE_FILE).read_bytes()  # replaced atomically by the feeder
        except OSError:
            body = self._tray
        with self._lock:
            self.frames_sent += 1
        head = f"--{self.boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body + b"\r\n"


def camera_is(statuses: tuple[str, ...], reconnects_above: int) -> Callable[[Received], bool]:
    """Matches a `camera` state in one of `statuses` that counted more reconnects than before."""
    return lambda m: m.json()["status"] in statuses and m.json()["reconnects_total"] > reconnects_above


def camera_config(tmp_path: Path, port: int, url: str) -> Path:
    """The fast simulation, with the camera on the MJPEG URL and short outage thresholds."""
    path = fast_simulation_config(tmp_path, port)
    doc = yaml.safe_load(path.read_text())
    doc["camera"].update({"source": url, "kind": "url", "stall_timeout_s": STALL_TIMEOUT_S,
                          "reconnect_min_s": 0.2, "reconnect_max_s": 1.0})
    doc["detector"]["frames_per_decision"] = FRAMES_PER_DECISION
    doc["arduino"]["simulator"]["item_mm"] = 12  # no compartment fills up (and refuses items) during the run
    doc["bins"]["workflow"]["vision_grace_s"] = VISION_GRACE_S
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_camera_that_dies_and_comes_back_is_reported_degrades_sorting_and_detections_resume(
        tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    t_start = time.monotonic()
    camera = SceneCamera(tmp_path / "state" / "sim-scene", fps=10.0)
    camera.start()
    try:
        probe = probe_factory(broker.port)
        probe.subscribe(f"{SIM_ROOT}/#")
        daemon = daemon_factory(camera_config(tmp_path, broker.port, camera.url))

        def cam() -> dict[str, Any]:
            states = probe.on(f"{SIM_ROOT}/camera")
            return states[-1].json() if states else {}

        def detections() -> list[dict[str, Any]]:
            return [m.json()["data"] for m in probe.on(f"{SIM_ROOT}/event/detection")]

        def alerts(active: bool) -> list[dict[str, Any]]:
            return [d for d in (m.json()["data"] for m in probe.on(f"{SIM_ROOT}/event/alert"))
                    if d["code"] == "camera_unavailable" and d["active"] is active]

        def full_detection_after(n: int) -> bool:
            return any(d["frames"] == FRAMES_PER_DECISION for d in detections()[n:])

        wait_until(lambda: full_detection_after(0), timeout=90, what="a first full-frame detection")
        startup_s = time.monotonic() - t_start
        outages: list[dict[str, Any]] = []
        for cycle in range(CYCLES):
            mode = ("killed", "hung")[cycle % 2]
            before = cam()
            seen = len(probe.messages)
            if mode == "killed":
                camera.stop()  # listener and open connections closed, as when the camera reboots
            else:
                camera.hang()  # connections stay open, nothing more arrives (a frozen encoder)
            t_down = time.monotonic()
            state = probe.wait_for(f"{SIM_ROOT}/camera", camera_is(("reconnecting", "disconnected"),
                                                                   before["reconnects_total"]), timeout=10).json()
            noticed_s = time.monotonic() - t_down
            assert state["fps"] == 0.0 and state["last_error"], state
            if mode == "hung":
                assert state["stalls_total"] > before["stalls_total"], state
            else:
                assert state["errors_total"] > before["errors_total"], state
            wait_until(lambda: len(alerts(True)) > cycle, timeout=DOWN_S + 5,  # noqa: B023 - called at once
                       what=f"the camera_unavailable alert of outage {cycle + 1}")
            probe.wait_for(f"{SIM_ROOT}/workflow", lambda m: m.json()["vision"].startswith("camera "), timeout=5)
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - t_down)))
            if mode == "killed":
                camera.start()
            else:
                camera.resume()
            t_up = time.monotonic()
            down_s = t_up - t_down
            probe.wait_for(f"{SIM_ROOT}/camera", camera_is(("connected",), before["reconnects_total"]), timeout=10)
            reconnect_s = time.monotonic() - t_up
            n = len(detections())
            wait_until(lambda: len(alerts(False)) > cycle, timeout=10,  # noqa: B023 - called at once
                       what=f"the camera_unavailable alert cleared after outage {cycle + 1}")
            wait_until(lambda: full_detection_after(n), timeout=RESUME_BOUND_S,  # noqa: B023 - called at once
                       what=f"a full-frame detection after outage {cycle + 1}")
            resumed_s = time.monotonic() - t_up
            during = [m.json()["data"] for m in probe.messages[seen:] if m.topic == f"{SIM_ROOT}/event/item_sorted"]
            outages.append({"mode": mode, "down_s": round(down_s, 1), "noticed_s": round(noticed_s, 2),
                            "reconnect_s": round(reconnect_s, 2), "detection_resumed_s": round(resumed_s, 1),
                            "items_sorted_meanwhile": len(during),
                            "vision_down_items": sum(1 for d in during if d["reason"] == "vision_down")})
        final = cam()
        assert final["status"] == "connected" and final["reconnects_total"] >= CYCLES, final
        assert final["stalls_total"] >= CYCLES // 2 and final["errors_total"] >= (CYCLES + 1) // 2, final
        # No item was lost or doubled while the camera was out: each presence has exactly one outcome.
        presences = len(probe.on(f"{SIM_ROOT}/event/item_present"))
        wait_until(lambda: len(outcomes(probe)) >= presences, timeout=20, what=f"outcomes of all {presences} items")
        ended = outcomes(probe)
        assert len({e["data"]["item_id"] for e in ended}) == len(ended), "an item ended twice"
        assert len(ended) <= len(probe.on(f"{SIM_ROOT}/event/item_present")), "an outcome without an item"
        workflow = probe.on(f"{SIM_ROOT}/workflow")[-1].json()
        assert workflow["counts"]["failed"] == 0 and workflow["counts"]["refused"] == 0, workflow["counts"]
        wait_until(lambda: probe.on(f"{SIM_ROOT}/workflow")[-1].json()["vision"] == "ok", timeout=10,
                   what="vision ok again")
        assert daemon.proc.poll() is None, "the daemon died"
        log = daemon.log()
        assert "Traceback" not in log
        daemon_state = probe.on(f"{SIM_ROOT}/daemon")[-1].json()
        assert all(w["restarts"] == 0 for name, w in daemon_state["workers"].items()
                   if name in ("camera", "detector", "workflow")), daemon_state["workers"]
    finally:
        camera.stop()

    figures = {
        "long": LONG, "cycles": CYCLES, "duration_s": round(time.monotonic() - t_start, 1),
        "startup_to_first_detection_s": round(startup_s, 1), "outages": outages,
        "camera": {k: final[k] for k in ("reconnects_total", "stalls_total", "errors_total", "open_attempts_total")},
        "items": presences, "detections": len(detections()),
        "decided": dict(collections.Counter(f"{d['category']}/{d['reason'] or 'ok'}/{d['frames']}f" for d in detections())), "alerts_raised": len(alerts(True)), "alerts_cleared": len(alerts(False)),
        "server_connections": camera.connections_total,
    }
    logger.info("camera fault figures: %s", figures)
    print(f"\nFAULT-FIGURES camera {figures}")
