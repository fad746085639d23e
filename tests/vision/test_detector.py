"""The detector worker through the production loading code: gating, decisions, reload and rollback."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from smartbin_daemon.config import CameraConfig, DetectorConfig, EvidenceConfig
from smartbin_daemon.messages import Decision, PresenceChanged
from smartbin_daemon.runtime.bus import BinaryPublish, Bus, Event, Request, Response
from smartbin_daemon.vision.detector import DetectorWorker
from smartbin_daemon.vision.frames import Frame, LatestFrame
from smartbin_daemon.vision.model import ModelError, classmap_path_for, load_model

from ..conftest import wait_until
from .conftest import CameraRig
from .tiny_model import IMGSZ, build_tiny_onnx, classes_yaml


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("tiny"))


class FrameFeeder:
    """Stands in for the camera: puts a fresh synthetic frame into the slot at ~20 fps."""

    def __init__(self, frames: LatestFrame) -> None:
        self.frames = frames
        self.stop = threading.Event()
        self.seq = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.wait(0.05):
            self.seq += 1
            image = np.full((120, 160, 3), 90, dtype=np.uint8)
            image[30:90, 50:110] = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)
            self.frames.put(Frame(image, self.seq, time.monotonic(), time.time()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


class Rig:
    """Detector worker in a thread, a frame feeder, and a bus tap."""

    def __init__(self, tmp_path: Path, model: Path, frames: LatestFrame | None = None, bus: Bus | None = None,
                 **overrides: Any) -> None:
        self.bus = bus or Bus()
        self.tap = self.bus.subscribe("tap", [Decision, Event, Response, BinaryPublish], maxsize=10_000)
        self.frames = frames or LatestFrame()
        self.feeder = FrameFeeder(self.frames) if frames is None else None
        cfg = DetectorConfig.model_validate({"enabled": True, "model": str(model), "imgsz": IMGSZ, "conf": 0.01,
                                             "settle_s": 0.05, "frames_per_decision": 3, **overrides})
        self.worker = DetectorWorker(self.bus, cfg, CameraConfig(max_frame_age_s=1.0), EvidenceConfig(), self.frames,
                                     tmp_path / "state")
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        self.seen: list[Any] = []
        wait_until(lambda: self.worker.model is not None and self.worker.evidence is not None, 30, what="model loaded")

    def drain(self) -> list[Any]:
        while len(self.tap):
            msg = self.tap.get(0)
            if msg is not None:
                self.seen.append(msg)
        return self.seen

    def request(self, command: str, args: dict[str, Any], timeout: float = 30) -> Response:
        rid = uuid.uuid4().hex
        self.bus.publish(Request("detector", command, args, rid))
        return wait_until(lambda: next((m for m in self.drain() if isinstance(m, Response) and m.request_id == rid), None),
                          timeout, what=f"answer to {command}")

    def close(self) -> None:
        self.worker.request_stop()
        self.thread.join(10)
        if self.feeder is not None:
            self.feeder.close()
        assert not self.thread.is_alive()


@pytest.fixture
def rig(tmp_path: Path, tiny: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, tiny)
    yield r
    r.close()


def test_the_exported_tiny_model_goes_through_the_production_loader(tiny: Path) -> None:
    model = load_model(tiny, classmap=None, device="cpu", imgsz=IMGSZ, conf=0.01, iou=0.45, max_det=10)
    assert model.classmap.category_compartments()["plastic"] == "recycling"
    boxes, speed = model.predict(np.zeros((120, 160, 3), dtype=np.uint8))
    assert isinstance(boxes, list) and "inference" in speed
    assert all(b.category in {"plastic", "glass", "residual"} for b in boxes)


def test_a_pytorch_checkpoint_loads_through_the_same_code(tiny: Path) -> None:
    pt = tiny.with_suffix(".pt")
    model = load_model(pt, classmap=None, device="cpu", imgsz=IMGSZ, conf=0.01, iou=0.45, max_det=10)
    boxes, speed = model.predict(np.zeros((120, 160, 3), dtype=np.uint8))
    assert model.name == "tiny.pt" and "inference" in speed
    assert model.backend_name == "ultralytics"
    assert model.backend.names == {0: "plastic", 1: "glass", 2: "residual"}


def test_cuda_requested_but_missing_falls_back_to_cpu_with_a_warning(tiny: Path) -> None:
    model = load_model(tiny, classmap=None, device="cuda:0", imgsz=IMGSZ, conf=0.25, iou=0.45, max_det=10)
    assert model.device == "cpu"
    assert model.warnings and "CUDA is not available" in model.warnings[0]


def test_a_class_map_that_disagrees_with_the_model_is_an_error_at_start(tiny: Path, tmp_path: Path) -> None:
    wrong = classes_yaml(tmp_path / "wrong.classes.yaml", tiny.name, ["plastic", "metal", "residual"])
    with pytest.raises(ModelError, match="model classes and class map disagree"):
        load_model(tiny, classmap=wrong, device="cpu", imgsz=IMGSZ, conf=0.25, iou=0.45, max_det=10)
    with pytest.raises(ModelError, match="model not found"):
        load_model(tmp_path / "absent.onnx", classmap=wrong, device="cpu", imgsz=IMGSZ, conf=0.25, iou=0.45, max_det=10)


def test_classmap_is_found_beside_any_export_format() -> None:
    assert classmap_path_for(Path("/m/x.onnx")) == Path("/m/x.classes.yaml")
    assert classmap_path_for(Path("/m/x_ncnn_model")) == Path("/m/x.classes.yaml")
    assert classmap_path_for(Path("/m/x.engine")) == Path("/m/x.classes.yaml")


def test_no_inference_while_idle_then_exactly_k_frames_per_item(rig: Rig) -> None:
    time.sleep(1.5)  # frames flow at 20 fps, nobody is at the bin
    assert rig.worker.inferences == 0, "idle must cost no inference"
    assert rig.worker.own_state().to_json()["gate_state"] == "idle"
    rig.bus.publish(PresenceChanged("gpio", True, time.monotonic()))
    decision = wait_until(lambda: next((m for m in rig.drain() if isinstance(m, Decision)), None), 20, what="a decision")
    assert rig.worker.inferences == 3
    assert decision.frames == 3
    assert decision.category in {"plastic", "glass", "residual"}
    seen: list[Any] = []  # the Decision goes out first (the workflow routes on it), then evidence, then the event

    def detection_event() -> Event | None:
        seen.extend(rig.drain())
        return next((m for m in seen if isinstance(m, Event) and m.type == "detection"), None)

    event = wait_until(detection_event, 10, what="the detection event")
    assert event.data["item_id"] == decision.item_id and event.data["presence_to_decision_ms"] > 0
    assert event.data["snapshot"], "the event names its snapshot"
    # ... which the evidence writer's thread writes at that path, off the detector's thread
    wait_until(lambda: Path(event.data["snapshot"]).is_file(), 10, what="the snapshot file")
    def snapshot_published() -> bool:
        seen.extend(rig.drain())
        return any(isinstance(m, BinaryPublish) and m.subtopic == "detector/snapshot" for m in seen)

    wait_until(snapshot_published, 10, what="the published snapshot")
    time.sleep(1.0)
    assert rig.worker.inferences == 3, "back to idle after the decision"
    state = rig.worker.own_state().to_json()
    assert state["decisions"] == 1 and state["inference_ms"]["p50"] is not None


def test_detection_off_ignores_presence_and_continuous_mode_runs_without_it(rig: Rig) -> None:
    assert rig.request("detection", {"enabled": False}).ok
    rig.bus.publish(PresenceChanged("gpio", True, time.monotonic()))
    time.sleep(1.0)
    assert rig.worker.inferences == 0
    assert rig.request("detection", {"enabled": True, "continuous": True}).ok
    wait_until(lambda: rig.worker.decisions >= 2, 30, what="continuous decisions")
    assert rig.request("detection", {"continuous": False}).ok
    time.sleep(0.5)
    count = rig.worker.inferences
    time.sleep(1.0)
    assert rig.worker.inferences == count, "continuous mode off: idle again"


def test_stale_frames_are_never_analysed(tmp_path: Path, tiny: Path) -> None:
    r = Rig(tmp_path, tiny)
    try:
        assert r.feeder is not None
        r.feeder.close()  # the camera froze: the last frame only gets older
        time.sleep(1.2)
        r.bus.publish(PresenceChanged("gpio", True, time.monotonic()))
        time.sleep(1.0)
        assert r.worker.inferences == 0
    finally:
        r.close()


def test_snapshot_request_publishes_the_current_frame(rig: Rig) -> None:
    resp = rig.request("snapshot", {})
    assert resp.ok, resp.error
    assert Path(resp.data["path"]).is_file() and resp.data["bytes"] > 100


def test_model_reload_swaps_and_rolls_back(rig: Rig, tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    shutil.copy(tiny, other)
    classes_yaml(tmp_path / "other.classes.yaml", other.name)
    ok = rig.request("model/reload", {"path": str(other)})
    assert ok.ok, ok.error
    assert ok.data["model"] == "other.onnx" and ok.data["previous"] == "tiny.onnx"
    assert rig.worker.model is not None and rig.worker.model.name == "other.onnx"

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 1000)
    classes_yaml(tmp_path / "corrupt.classes.yaml", corrupt.name)
    bad = rig.request("model/reload", {"path": str(corrupt)})
    assert not bad.ok and "kept the previous model" in (bad.error or "")
    assert rig.worker.model.name == "other.onnx"

    mismatch = tmp_path / "mismatch.onnx"
    shutil.copy(tiny, mismatch)
    classes_yaml(tmp_path / "mismatch.classes.yaml", mismatch.name, ["metal", "glass", "residual"])
    bad = rig.request("model/reload", {"path": str(mismatch)})
    assert not bad.ok and "disagree" in (bad.error or "")
    assert rig.worker.model.name == "other.onnx"
    # detection still works on the kept model
    rig.bus.publish(PresenceChanged("gpio", True, time.monotonic()))
    wait_until(lambda: any(isinstance(m, Decision) for m in rig.drain()), 20, what="decision after rollbacks")


def test_motion_gate_triggers_without_a_sensor(tmp_path: Path, tiny: Path) -> None:
    r = Rig(tmp_path, tiny, gate="motion", motion={"interval_s": 0.05, "min_area_pct": 1.0})
    try:
        # the feeder's frames change in a 60x60 patch every frame: that is motion
        wait_until(lambda: r.worker.decisions >= 1, 20, what="a motion-gated decision")
    finally:
        r.close()


def test_a_frame_can_be_saved_to_the_training_dataset_on_request(rig: Rig) -> None:
    resp = rig.request("snapshot", {"dataset": True})
    assert resp.ok, resp.error
    image = Path(resp.data["dataset_image"])
    assert image.is_file() and (image.parent.parent / "labels" / (image.stem + ".txt")).is_file()


def test_the_camera_decodes_only_for_an_item_or_a_snapshot(tmp_path: Path, tiny: Path,
                                                          camera_rig: Callable[..., CameraRig]) -> None:
    """The real camera worker on an image folder at 20 fps: idle, it only grabs; an item and a snapshot get frames."""
    scene = tmp_path / "scene"
    scene.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        cv2.imwrite(str(scene / f"{i}.jpg"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    cam = camera_rig(str(scene), kind="images")
    cam.wait_status("connected")
    r = Rig(tmp_path, tiny, frames=cam.frames, bus=cam.bus)
    try:
        time.sleep(0.6)  # past the linger of anything that waited during start-up
        decoded, read = cam.worker.decoded_total, cam.worker.frames_total
        time.sleep(1.0)
        assert cam.worker.frames_total - read >= 10, "the camera keeps reading while idle"
        assert cam.worker.decoded_total == decoded, "... but decodes nothing nobody asked for"
        r.bus.publish(PresenceChanged("gpio", True, time.monotonic()))
        decision = wait_until(lambda: next((m for m in r.drain() if isinstance(m, Decision)), None), 20,
                              what="a decision on camera frames")
        assert decision.frames == 3
        assert cam.worker.decoded_total - decoded >= 3
        time.sleep(1.5)  # the demand lapses about a second after the decision
        decoded = cam.worker.decoded_total
        time.sleep(1.0)
        assert cam.worker.decoded_total == decoded, "idle again: no decoding after the item"
        resp = r.request("snapshot", {})
        assert resp.ok, resp.error
        assert cam.worker.decoded_total > decoded, "the snapshot asked the camera for a current frame"
    finally:
        r.close()


def test_a_hot_swap_can_change_the_backend_and_back(rig: Rig, tiny: Path) -> None:
    assert rig.worker.model is not None and rig.worker.model.backend_name == "onnxruntime"
    to_pt = rig.request("model/reload", {"path": str(tiny.with_suffix(".pt"))})
    assert to_pt.ok, to_pt.error
    assert to_pt.data["backend"] == "ultralytics" and rig.worker.own_state().to_json()["backend"] == "ultralytics"
    rig.bus.publish(PresenceChanged("gpio", True, time.monotonic()))
    wait_until(lambda: any(isinstance(m, Decision) for m in rig.drain()), 20, what="a decision with the .pt model")
    back = rig.request("model/reload", {})
    assert back.ok and back.data["backend"] == "onnxruntime" and back.data["model"] == "tiny.onnx"


def test_the_model_s_own_thresholds_apply_unless_the_config_sets_them(tmp_path: Path, tiny: Path) -> None:
    model = tmp_path / "m" / "tuned.onnx"
    model.parent.mkdir()
    shutil.copyfile(tiny, model)
    cmap = classes_yaml(model.with_name("tuned.classes.yaml"), model.name)
    doc = yaml.safe_load(cmap.read_text())
    cmap.write_text(yaml.safe_dump({**doc, "thresholds": {"min_confidence": 0.77, "min_margin": 0.05,
                                                         "rule": "chosen on the valid split"}}))
    for overrides, expected in (
        ({}, {"min_confidence": 0.77, "min_margin": 0.05, "source": {"min_confidence": "model", "min_margin": "model"}}),
        ({"min_confidence": 0.6}, {"min_confidence": 0.6, "min_margin": 0.05,
                                   "source": {"min_confidence": "config", "min_margin": "model"}}),
    ):
        r = Rig(tmp_path / str(len(overrides)), model, **overrides)
        try:
            assert r.worker.own_state().to_json()["thresholds"] == expected
        finally:
            r.close()
    r = Rig(tmp_path / "plain", tiny)  # a class map without thresholds: the built-in defaults
    try:
        assert r.worker.own_state().to_json()["thresholds"]["source"] == {"min_confidence": "default", "min_margin": "default"}
        assert r.worker.own_state().to_json()["imgsz"] == IMGSZ
    finally:
        r.close()
