"""The live view on demand: a real camera worker on an image folder sends small JPEGs at the preview rate, pauses
while an item is being sorted, switches itself off, and reaches a real broker unretained with a retained switch state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from smartbin_daemon.runtime.bus import BinaryPublish, Request, Response
from smartbin_daemon.states.detector import GateState
from smartbin_daemon.states.workflow import SortingState

from ..conftest import Broker, DaemonProcess, Probe, wait_until, write_config
from .conftest import CameraRig, camera_config

ROOT = "smartbin/testbin"
WIDE = (800, 600)


def _image_folder(folder: Path, count: int = 3) -> Path:
    """Noisy 800x600 images (so a JPEG of them is not trivially small)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:02d}.png"), rng.integers(0, 255, (WIDE[1], WIDE[0], 3), dtype=np.uint8))
    return folder


def _rig(tmp_path: Path, **preview: object) -> tuple[CameraRig, object]:
    cfg = camera_config(str(_image_folder(tmp_path / "images")), fps=10.0,
                        preview={"fps": 2.0, "max_width": 320, "jpeg_quality": 60, **preview})
    rig = CameraRig(cfg, tmp_path)
    jpegs = rig.bus.subscribe("preview-probe", (BinaryPublish, Response), 10000)
    rig.start()
    rig.wait_status("connected")
    return rig, jpegs


def _ask(rig: CameraRig, jpegs: object, args: dict[str, object]) -> Response:
    request_id = uuid.uuid4().hex
    rig.bus.publish(Request("camera", "camera/preview", args, request_id))

    def answer() -> Response | None:
        while len(jpegs):  # type: ignore[arg-type]
            msg = jpegs.get(0)  # type: ignore[attr-defined]
            if isinstance(msg, Response) and msg.request_id == request_id:
                return msg
        return None
    result: Response = wait_until(answer, 5, what="camera/preview answer")
    return result


def _collect(jpegs: object, seconds: float) -> list[tuple[float, BinaryPublish]]:
    out: list[tuple[float, BinaryPublish]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        msg = jpegs.get(0.05)  # type: ignore[attr-defined]
        if isinstance(msg, BinaryPublish):
            out.append((time.monotonic(), msg))
    return out


def test_preview_sends_small_jpegs_at_the_configured_rate(tmp_path: Path) -> None:
    rig, jpegs = _rig(tmp_path)
    try:
        assert not _collect(jpegs, 1.0), "no preview before it is asked for"
        answer = _ask(rig, jpegs, {"on": True})
        assert answer.ok and answer.data["on"] is True and answer.data["minutes"] == 5.0
        got = _collect(jpegs, 4.0)
        assert 6 <= len(got) <= 10, f"{len(got)} frames in 4 s at 2 fps"
        for _, blob in got:
            assert blob.subtopic == "camera/preview" and blob.retain is False
            image = cv2.imdecode(np.frombuffer(blob.payload, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape[1] == 320 and image.shape[0] == 240
            assert len(blob.payload) < 100_000
        state = rig.wait_state(lambda s: s["preview"]["frames"] >= 6)
        assert state["preview"]["on"] is True and state["preview"]["fps"] == 2.0
        assert 0 < state["preview"]["last_bytes"] < 100_000
        off = _ask(rig, jpegs, {"on": False})
        assert off.ok and off.data == {"on": False, "was_on": True}
        _collect(jpegs, 0.3)
        assert not _collect(jpegs, 1.5), "frames after switching off"
        assert rig.wait_state(lambda s: s["preview"]["on"] is False)["preview"]["remaining_s"] is None
    finally:
        rig.stop()


def test_preview_pauses_while_an_item_is_sorted(tmp_path: Path) -> None:
    rig, jpegs = _rig(tmp_path)
    try:
        assert _ask(rig, jpegs, {"on": True}).ok
        assert _collect(jpegs, 1.5), "frames while idle"
        rig.bus.set_state("workflow", {"state": SortingState.CLASSIFYING.value})
        _collect(jpegs, 0.6)  # a frame encoded just before the state arrived may still come
        assert not _collect(jpegs, 2.0), "frames while the workflow classifies an item"
        assert rig.wait_state(lambda s: s["preview"]["paused"])["preview"]["skipped_busy"] >= 2
        rig.bus.set_state("workflow", {"state": SortingState.IDLE.value})
        rig.bus.set_state("detector", {"gate_state": GateState.COLLECTING.value})
        _collect(jpegs, 0.6)
        assert not _collect(jpegs, 1.5), "frames while the detector collects frames for a decision"
        rig.bus.set_state("detector", {"gate_state": GateState.IDLE.value})
        assert _collect(jpegs, 1.5), "frames again once the item is gone"
        assert not rig.state()["preview"]["paused"]
    finally:
        rig.stop()


def test_preview_switches_itself_off(tmp_path: Path) -> None:
    rig, jpegs = _rig(tmp_path, auto_off_min=0.04, max_min=0.05)  # 2.4 s
    try:
        too_long = _ask(rig, jpegs, {"on": True, "minutes": 1})
        assert not too_long.ok and "args.minutes" in (too_long.error or "") and "max_min" in (too_long.error or "")
        started = time.monotonic()
        assert _ask(rig, jpegs, {"on": True}).ok
        got = _collect(jpegs, 4.0)
        assert got, "no frame before the auto-off"
        assert got[-1][0] - started < 3.2, "frames kept coming after the auto-off"
        assert rig.wait_state(lambda s: not s["preview"]["on"])["preview"]["frames"] == len(got)
    finally:
        rig.stop()


@pytest.mark.parametrize("args", [{"on": "maybe"}, {"on": True, "minutes": 0}, {"on": True, "minutes": 121}, {}])
def test_bad_preview_args_are_refused(tmp_path: Path, args: dict[str, object]) -> None:
    rig, jpegs = _rig(tmp_path)
    try:
        answer = _ask(rig, jpegs, args)
        assert not answer.ok and "args." in (answer.error or "")
    finally:
        rig.stop()


def test_preview_over_mqtt(tmp_path: Path, broker: Broker, probe_factory: Callable[..., Probe],
                           daemon_factory: Callable[..., DaemonProcess]) -> None:
    folder = _image_folder(tmp_path / "images")
    cfg = write_config(tmp_path / "c.yaml", broker.port, tmp_path / "s",
                       camera={"enabled": True, "source": str(folder), "kind": "images", "fps": 5,
                               "preview": {"fps": 2, "max_width": 320, "auto_off_min": 0.1}})
    probe = probe_factory(broker.port)
    probe.subscribe(f"{ROOT}/#")
    probe.subscribe("homeassistant/+/testbin/+/config")
    daemon_factory(cfg)
    camera_cfg = probe.wait_for("homeassistant/camera/testbin/camera_live/config", timeout=20).json()
    assert camera_cfg["topic"] == f"{ROOT}/camera/preview" and "state_topic" not in camera_cfg
    switch = probe.wait_for("homeassistant/switch/testbin/camera_preview/config").json()
    assert switch["command_topic"] == f"{ROOT}/request/camera/preview" and switch["state_topic"] == f"{ROOT}/camera"
    probe.wait_for(f"{ROOT}/camera", lambda m: m.json()["status"] == "connected", timeout=20)
    probe.publish(switch["command_topic"], switch["payload_on"])  # exactly what HA sends
    probe.wait_for(f"{ROOT}/camera", lambda m: m.json()["preview"]["on"])
    wait_until(lambda: len(probe.on(f"{ROOT}/camera/preview")) >= 6, timeout=10, what="six preview frames")
    frames = probe.on(f"{ROOT}/camera/preview")
    assert all(not m.retain for m in frames)
    assert all(cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR).shape[1] == 320 for m in frames)
    late = probe_factory(broker.port)  # a dashboard that starts now sees the switch state, never an old frame
    late.subscribe(f"{ROOT}/camera")
    late.subscribe(f"{ROOT}/camera/preview")
    retained = late.wait_for(f"{ROOT}/camera", lambda m: m.retain)
    assert retained.json()["preview"]["on"] is True
    assert not [m for m in late.on(f"{ROOT}/camera/preview") if m.retain]
    probe.wait_for(f"{ROOT}/camera", lambda m: m.json()["preview"]["on"] is False and m.json()["preview"]["frames"] > 0,
                   timeout=15)
    count = len(probe.on(f"{ROOT}/camera/preview"))
    time.sleep(1.5)
    assert len(probe.on(f"{ROOT}/camera/preview")) <= count + 1, "frames after the auto-off"
    answer = probe.request(ROOT, "camera/preview", {"args": {"on": True, "minutes": 999}})
    assert answer["status"] == "error" and "minutes" in answer["error"]
