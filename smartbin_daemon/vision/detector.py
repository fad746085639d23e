"""The detector worker: gated YOLO inference, K-frame decisions, evidence, and hot model swaps.

Idle costs nothing: with the presence gate the worker sleeps on its inbox and touches no frame until
a PresenceChanged(True) arrives; with the motion gate it looks at a 160-px grey frame a few times a
second. Inference runs only while an item is being decided (or in continuous mode, for debugging).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso_utc
from ..config import CameraConfig, DetectorConfig, EvidenceConfig
from ..logs import ev
from ..messages import Decision, DetectedBox, PresenceChanged
from ..runtime.bus import Alert, BinaryPublish, Bus, Discovery, Entity, Request
from ..runtime.commands import ANSWERED_LATER, NoArgs, RequestError, RequestSpec, command
from ..runtime.worker import FatalWorkerError, Worker
from ..states.detector import DetectorState, GateState, LastDecision, Percentiles, Thresholds
from .decision import VotePolicy, decide, effective_policy
from .evidence import EvidenceStore, WaterMarks
from .evidence_writer import EvidenceWriter
from .frames import Frame, LatestFrame, is_fresh
from .model import LoadedModel, ModelError, load_model, percentile
from .motion import MotionGate

logger = logging.getLogger(__name__)

IDLE, SETTLING, COLLECTING = GateState.IDLE, GateState.SETTLING, GateState.COLLECTING
STATS_WINDOW = 200
SNAPSHOT_WAIT_S = 1.0
"""A `snapshot` waits this long for the camera to decode a current frame."""
DEMAND_MARGIN_S = 0.5
"""Decoded frames are wanted from a presence until this long after the settle (then `wait_newer` renews it)."""
# Per-frame stages (capture age, then the backend's three), then per-decision ones: the vote, the
# snapshot/dataset files, and handing the decision on (bus, durable event, log, state).
STAGES = ("capture_age", "preprocess", "inference", "postprocess", "decision", "evidence", "publish")


class ReloadArgs(BaseModel):
    """`model/reload` request."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, description="new model file; default: reload the configured one")


class SnapshotArgs(BaseModel):
    """`snapshot` request."""

    model_config = ConfigDict(extra="forbid")
    dataset: bool = Field(default=False, description="also save the frame, with its predicted boxes, to the training dataset")


class DetectionArgs(BaseModel):
    """`detection` request: switch detection and the continuous (debug) mode."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    continuous: bool | None = None


@dataclass(frozen=True)
class _Loaded:
    """Result of a background model load (posted into the worker's inbox)."""

    request_id: str | None
    model: LoadedModel | None
    error: str | None


@dataclass
class _Item:
    item_id: str
    presence_mono: float
    start_after: float
    deadline: float
    frames: list[tuple[int, list[DetectedBox]]]
    best_image: Any = None
    best_conf: float = -1.0
    last_seq: int = 0


class DetectorWorker(Worker):
    """Owns the model; answers `model/reload`, `snapshot`, `detection`; publishes Decision and event/detection."""

    critical = True
    state_min_interval_s = 5.0  # the stage timings change with every inference; decisions force a publish

    def __init__(self, bus: Bus, cfg: DetectorConfig, camera: CameraConfig, evidence_cfg: EvidenceConfig,
                 frames: LatestFrame, storage: Path, *, name: str = "detector",
                 water_marks: WaterMarks | None = None) -> None:
        super().__init__(name, bus, tick_s=0.5, inbox=(PresenceChanged, Request, _Loaded))
        self.cfg = cfg
        self.camera = camera
        self.evidence_cfg = evidence_cfg
        self.frames = frames
        self.storage = storage
        self.water_marks = water_marks
        self.model: LoadedModel | None = None
        self.evidence: EvidenceStore | None = None
        self.evidence_writer: EvidenceWriter | None = None
        self.enabled = True
        self.continuous = cfg.gate == "continuous"
        self.gate_state = IDLE
        self.item: _Item | None = None
        self.motion = MotionGate(cfg.motion)
        self._last_motion_seq = 0
        self._next_motion_check = 0.0
        self._loader: threading.Thread | None = None
        self._pending_reload: Request | None = None
        self.inferences = 0
        self.decisions = 0
        self.stale_frames = 0
        self._inference_ms: collections.deque[float] = collections.deque(maxlen=STATS_WINDOW)
        self._stage_ms: dict[str, collections.deque[float]] = {
            k: collections.deque(maxlen=STATS_WINDOW) for k in STAGES
        }
        self._decision_times: collections.deque[float] = collections.deque(maxlen=1000)
        self.last_decision: Decision | None = None
        self.warnings: list[str] = []

    def entities(self) -> tuple[Entity, ...]:
        """HA entities of the detector."""
        diag = {"entity_category": "diagnostic"}
        return (
            Entity("image", "detector_snapshot", "Last snapshot", self.name, None,
                   {"image_topic": f"{self.name}/snapshot", "content_type": "image/jpeg"}),
            Entity("sensor", "detector_last_class", "Last class", self.name, "{{ value_json.last.class_name if value_json.last else none }}",
                   {"icon": "mdi:tag-outline"}),
            Entity("sensor", "detector_last_category", "Last category", self.name, "{{ value_json.last.category if value_json.last else none }}",
                   {"icon": "mdi:recycle"}),
            Entity("sensor", "detector_last_confidence", "Last confidence", self.name,
                   "{{ (value_json.last.confidence * 100) | round(1) if value_json.last else none }}",
                   {"unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:percent"}),
            Entity("sensor", "detector_inference_ms", "Inference time p50", self.name, "{{ value_json.inference_ms.p50 }}",
                   {"unit_of_measurement": "ms", "state_class": "measurement", "icon": "mdi:timer-outline", **diag}),
            Entity("switch", "detector_enabled", "Detection", self.name,
                   "{{ 'ON' if value_json.enabled else 'OFF' }}",
                   {"command_topic": "detection", "payload_on": '{"args": {"enabled": true}}',
                    "payload_off": '{"args": {"enabled": false}}', "state_on": "ON", "state_off": "OFF",
                    "entity_category": "config", "icon": "mdi:eye"}),
            Entity("switch", "detector_continuous", "Continuous detection (debug)", self.name,
                   "{{ 'ON' if value_json.continuous else 'OFF' }}",
                   {"command_topic": "detection", "payload_on": '{"args": {"continuous": true}}',
                    "payload_off": '{"args": {"continuous": false}}', "state_on": "ON", "state_off": "OFF",
                    "entity_category": "config", "icon": "mdi:bug-outline"}),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        self.bus.publish(Discovery(self.name, self.entities()))
        if self.model is None:
            try:
                self.model = self._load(self.cfg.model)
                self.warnings = list(self.model.warnings)
            except ModelError as exc:
                self.bus.raise_alert(Alert(self.name, "model_invalid", "critical", str(exc)))
                raise FatalWorkerError(f"detector.model: {exc}") from None
        # Above the high-water mark the store prunes itself on the writer's thread and alerts over the bus.
        self.evidence = EvidenceStore(self.storage, self.evidence_cfg,
                                      [c.name for c in sorted(self.model.classmap.classes, key=lambda c: c.index)],
                                      water_marks=self.water_marks, alert=self.bus.raise_alert)
        self.evidence_writer = EvidenceWriter(
            self.evidence, lambda jpeg: self.bus.publish(BinaryPublish(f"{self.name}/snapshot", jpeg)))
        self.evidence_writer.start()
        self.gate_state = IDLE
        self.item = None
        self._publish_state(force=True)

    def teardown(self) -> None:
        if self.evidence_writer is not None:
            self.evidence_writer.stop(timeout=5.0)
        loader = self._loader
        if loader is not None and loader.is_alive():
            loader.join(5)

    def _load(self, path: Path) -> LoadedModel:
        cfg = self.cfg
        model = load_model(path, classmap=cfg.classmap if path == cfg.model else None, device=cfg.device,
                           imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det, backend=cfg.backend,
                           threads=cfg.threads, state_dir=self.storage)
        for warning in model.warnings:
            logger.warning("%s", warning, extra=ev("detector_device_fallback"))
        logger.info("model %s loaded with %s on %s in %.1fs (%d classes)", model.name, model.backend_name, model.device,
                    model.load_s, len(model.classmap.classes), extra=ev("model_loaded"))
        return model

    # -- main loop ----------------------------------------------------------------------------------

    def step(self) -> None:
        now = time.monotonic()
        if self.gate_state == IDLE and not self.continuous:
            wait = self.tick_s
            if self.enabled and self.cfg.gate == "motion":
                wait = max(0.0, min(wait, self._next_motion_check - now))
            msg = self.next_message(wait)
            if msg is not None:
                self.handle(msg)
            if self.enabled and self.cfg.gate == "motion" and self.gate_state == IDLE:
                self._check_motion(time.monotonic())
        else:
            self.drain(limit=50)
            if self.continuous and self.gate_state == IDLE and self.enabled:
                self._start_item(time.monotonic(), settle=False)
            self._collect()
        self._publish_state()

    def handle(self, msg: Any) -> None:
        if isinstance(msg, PresenceChanged):
            if msg.present and self.enabled and self.cfg.gate == "presence" and self.gate_state == IDLE:
                self._start_item(msg.mono, settle=True)
        elif isinstance(msg, Request):
            self.answer(msg)
        elif isinstance(msg, _Loaded):
            self._on_loaded(msg)

    def _check_motion(self, now: float) -> None:
        if now < self._next_motion_check:
            return
        self._next_motion_check = now + self.cfg.motion.interval_s
        frame = self.frames.latest()
        self.frames.want_one()  # the camera decodes one frame for the next check, not every frame
        if frame is None or frame.seq == self._last_motion_seq or not self._fresh(frame):
            return
        self._last_motion_seq = frame.seq
        if self.motion.update(frame.image, now) is True:
            logger.debug("motion %.1f%%: item assumed present", self.motion.changed_pct)
            self._start_item(now, settle=True)

    def _start_item(self, presence_mono: float, settle: bool) -> None:
        now = time.monotonic()
        start = max(now, presence_mono + (self.cfg.settle_s if settle else 0.0))
        # The camera decodes from now (during the settle too, so the first frame after it is current); while collecting,
        # each wait for a frame renews the demand, and it lapses about a second after the decision.
        self.frames.want(start - now + DEMAND_MARGIN_S)
        latest = self.frames.latest()
        self.item = _Item(uuid.uuid4().hex[:12], presence_mono, start, start + self.cfg.decision_timeout_s, [],
                          last_seq=latest.seq if latest is not None and settle else 0)
        self.gate_state = SETTLING if start > now else COLLECTING

    def _collect(self) -> None:
        item = self.item
        if item is None or self.model is None:
            self.gate_state = IDLE
            return
        now = time.monotonic()
        if now < item.start_after:
            self.drain(min(self.tick_s, item.start_after - now), limit=50)  # the settle wait
            return
        self.gate_state = COLLECTING
        if len(item.frames) < self.cfg.frames_per_decision and now < item.deadline:
            frame = self.frames.wait_newer(item.last_seq, min(self.tick_s, item.deadline - now))
            if frame is None:
                return
            item.last_seq = frame.seq
            if not self._fresh(frame):
                self.stale_frames += 1
                return
            self._infer(item, frame)
            if len(item.frames) < self.cfg.frames_per_decision:
                return
        self._decide(item)

    def _fresh(self, frame: Frame) -> bool:
        return is_fresh(frame, self.camera)

    def _infer(self, item: _Item, frame: Frame) -> None:
        assert self.model is not None
        capture_age = frame.age() * 1000.0
        t0 = time.monotonic()
        boxes, speed = self.model.predict(frame.image)
        total = (time.monotonic() - t0) * 1000.0
        self.inferences += 1
        self._inference_ms.append(speed.get("inference", total))
        self._stage_ms["capture_age"].append(capture_age)
        for stage in ("preprocess", "inference", "postprocess"):
            if stage in speed:
                self._stage_ms[stage].append(speed[stage])
        item.frames.append((frame.seq, boxes))
        top = max((b.confidence for b in boxes), default=0.0)
        if top > item.best_conf or item.best_image is None:
            item.best_conf, item.best_image = top, frame.image

    def _decide(self, item: _Item) -> None:
        assert self.model is not None
        t0 = time.monotonic()
        policy, _ = self._policy()
        decision = decide(item.item_id, item.frames, policy, self.model.classmap.category_compartments(), t0)
        t1 = time.monotonic()
        self._stage_ms["decision"].append((t1 - t0) * 1000.0)
        self.item = None
        self.gate_state = IDLE
        self.decisions += 1
        self._decision_times.append(time.monotonic())
        latency_ms = (time.monotonic() - item.presence_mono) * 1000.0
        # The snapshot and training files are encoded and written by the evidence writer's thread (~15-20 ms with fsync
        # on an SD card); queueing them only reserves the path, so the bus Decision the workflow routes on (and records
        # with the item) and the event name the reserved path.
        t2 = time.monotonic()
        snapshot_path = None
        if self.evidence_writer is not None and item.best_image is not None:
            saved = self.evidence_writer.submit_decision(
                item.best_image, decision, training=decision.uncertain and self.evidence_cfg.active_learning)
            snapshot_path = str(saved) if saved is not None else None
        decision = replace(decision, snapshot=snapshot_path)
        t3 = time.monotonic()
        self.bus.publish(decision)
        self._stage_ms["evidence"].append((t3 - t2) * 1000.0)
        self.last_decision = decision
        if not self.continuous:
            self.bus.emit_event("detection", self._event_data(decision, latency_ms), self.name)
        logger.info("item %s: %s (%s %.2f, runner-up %s, margin %.2f)%s", decision.item_id, decision.category,
                    decision.class_name, decision.confidence, decision.runner_up, decision.margin,
                    f" uncertain: {decision.reason}" if decision.uncertain else "", extra=ev("detection"))
        self._publish_state(force=True)
        self._stage_ms["publish"].append((t2 - t1) * 1000.0 + (time.monotonic() - t3) * 1000.0)

    def _event_data(self, d: Decision, latency_ms: float) -> dict[str, Any]:
        assert self.model is not None
        return {
            "item_id": d.item_id, "category": d.category, "class_name": d.class_name,
            "confidence": d.confidence, "runner_up": d.runner_up, "runner_up_confidence": d.runner_up_confidence,
            "margin": d.margin, "uncertain": d.uncertain, "reason": d.reason, "compartment": d.compartment,
            "frames": d.frames, "votes": d.votes, "snapshot": d.snapshot, "model": self.model.name,
            "presence_to_decision_ms": round(latency_ms, 1),
            "boxes": [{"category": b.category, "confidence": round(b.confidence, 3),
                       "xyxy": [round(v, 1) for v in b.xyxy]} for b in d.boxes],
        }

    # -- requests -------------------------------------------------------------------------------------

    @command("model/reload", ReloadArgs, privileged=True,
             example={"path": "/opt/smartbin/models/smartbin-waste-s.onnx"},
             summary="Load (optionally another) model off the hot path, validate it with a test inference and the "
                     "class-map check, swap atomically; roll back on any failure.")
    def _model_reload(self, req: Request, args: ReloadArgs) -> object:
        if self._loader is not None and self._loader.is_alive():
            raise RequestError("a model reload is already in progress")
        path = Path(args.path) if args.path else self.cfg.model
        self._pending_reload = req
        self._loader = threading.Thread(target=self._load_in_background, args=(path, req), daemon=True,
                                        name="smartbin-model-loader")
        self._loader.start()
        return ANSWERED_LATER

    @command("snapshot", SnapshotArgs, example={"dataset": False},
             summary="Capture the current frame, save it and publish it as the latest snapshot (optionally also "
                     "into the active-learning dataset with its predicted boxes).")
    def _snapshot(self, req: Request, args: SnapshotArgs) -> object:
        """Save and publish the current frame; the evidence writer answers once the file is written."""
        latest = self.frames.latest()
        frame = self.frames.wait_newer(latest.seq if latest is not None else 0, SNAPSHOT_WAIT_S)  # asks for a decode
        if frame is None or not self._fresh(frame):
            raise RequestError("no fresh camera frame (camera disconnected?)")
        boxes = None
        if args.dataset and self.model is not None:
            boxes, _ = self.model.predict(frame.image)  # inference stays on the detector's thread
            self.inferences += 1
        store, image, seq = self.evidence, frame.image, frame.seq
        assert store is not None and self.evidence_writer is not None

        def done(path: Path | None, jpeg: bytes | None) -> None:  # on the writer's thread
            if path is None or jpeg is None:
                self.refuse(req, "snapshot could not be saved (see evidence.skipped in the detector state)")
                return
            self.bus.publish(BinaryPublish(f"{self.name}/snapshot", jpeg))
            data: dict[str, Any] = {"path": str(path), "frame_seq": seq, "bytes": len(jpeg)}
            if boxes is not None:
                saved = store.save_for_training(image, boxes, "request", force=True)
                data["dataset_image"] = str(saved) if saved is not None else None
            self.reply(req, data)

        if not self.evidence_writer.submit_frame_snapshot(image, done):
            raise RequestError("the evidence writer is busy (queue full); try again")
        return ANSWERED_LATER

    @command("detector/test",
             summary="Time one inference on the current camera frame (the self-test's detector check): no decision, "
                     "no evidence, nothing routed.")
    def _test(self, req: Request, args: NoArgs) -> dict[str, Any]:
        if self.model is None:
            raise RequestError("no model loaded")
        latest = self.frames.latest()
        frame = self.frames.wait_newer(latest.seq if latest is not None else 0, SNAPSHOT_WAIT_S)  # asks for a decode
        if frame is None or not self._fresh(frame):
            raise RequestError("no fresh camera frame (camera disconnected?)")
        t0 = time.monotonic()
        boxes, speed = self.model.predict(frame.image)
        total_ms = (time.monotonic() - t0) * 1000.0
        self.inferences += 1
        top = max(boxes, key=lambda b: b.confidence, default=None)
        return {"inference_ms": _r(speed.get("inference", total_ms)), "total_ms": _r(total_ms), "frame_seq": frame.seq,
                "boxes": len(boxes), "top_class": top.class_name if top else None,
                "top_category": top.category if top else None, "top_confidence": _r(top.confidence) if top else None,
                "model": self.model.name}

    @command("detection", DetectionArgs, example={"enabled": True, "continuous": False},
             privileged_when=RequestSpec.arg_in("continuous", True),
             summary="Switch detection on/off and the continuous (debug) mode; off pauses sorting safely (items go "
                     "to the fallback), continuous decisions can route items.")
    def _detection(self, req: Request, args: DetectionArgs) -> dict[str, Any]:
        if args.enabled is not None:
            self.enabled = args.enabled
            if not self.enabled:
                self.item, self.gate_state = None, IDLE
        if args.continuous is not None:
            self.continuous = args.continuous
            if not self.continuous and self.item is not None and self.gate_state == COLLECTING:
                self.item, self.gate_state = None, IDLE
        self._publish_state(force=True)
        return {"enabled": self.enabled, "continuous": self.continuous}

    def _load_in_background(self, path: Path, req: Request) -> None:
        """Runs in a short-lived thread: load + warm-up + checks, then hand the result to the worker."""
        try:
            model = self._load(path)
        except ModelError as exc:
            result = _Loaded(req.request_id, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else is a failed reload too
            result = _Loaded(req.request_id, None, f"{type(exc).__name__}: {exc}")
        else:
            result = _Loaded(req.request_id, model, None)
        assert self.inbox is not None
        self.inbox.put(result)

    def _on_loaded(self, msg: _Loaded) -> None:
        req, self._pending_reload = self._pending_reload, None
        old = self.model
        if msg.model is None:
            logger.error("model reload failed, keeping %s: %s", old.name if old else None, msg.error,
                         extra=ev("model_reload_failed"))
            if req is not None:
                self.refuse(req, f"reload failed, kept the previous model: {msg.error}",
                            {"model": old.name if old else None, "rolled_back": True})
            return
        self.model = msg.model  # atomic swap: the next inference uses the new model
        self.warnings = list(msg.model.warnings)
        self.item, self.gate_state = None, IDLE
        logger.info("model swapped: %s -> %s", old.name if old else None, msg.model.name, extra=ev("model_swapped"))
        if req is not None:
            self.reply(req, {"model": msg.model.name, "previous": old.name if old else None,
                             "backend": msg.model.backend_name, "device": msg.model.device,
                             "load_s": round(msg.model.load_s, 2)})
        self._publish_state(force=True)

    def _policy(self) -> tuple[VotePolicy, dict[str, str]]:
        """Thresholds for the loaded model: the config's where set, else the model's own (see effective_policy)."""
        own = self.model.classmap.thresholds if self.model is not None else None
        return effective_policy(self.cfg.min_confidence, self.cfg.min_margin,
                                (own.min_confidence, own.min_margin) if own is not None else None)

    # -- state ----------------------------------------------------------------------------------------------

    def own_state(self) -> DetectorState:
        """The `detector` state."""
        now = time.monotonic()
        per_min = sum(1 for t in self._decision_times if now - t <= 60.0)
        last = self.last_decision
        policy, source = self._policy()
        return DetectorState(
            enabled=self.enabled,
            continuous=self.continuous,
            gate=self.cfg.gate,
            gate_state=self.gate_state,
            model=self.model.name if self.model else None,
            backend=self.model.backend_name if self.model else None,
            device=self.model.device if self.model else None,
            imgsz=self.model.imgsz if self.model else self.cfg.imgsz,
            thresholds=Thresholds(min_confidence=policy.min_confidence, min_margin=policy.min_margin, source=source),
            warnings=self.warnings,
            inferences=self.inferences,
            decisions=self.decisions,
            decisions_per_minute=per_min,
            stale_frames=self.stale_frames,
            inference_ms=_percentiles(self._inference_ms),
            stages_ms={k: _percentiles(v) for k, v in self._stage_ms.items()},
            last=None if last is None else LastDecision(
                item_id=last.item_id, category=last.category, class_name=last.class_name,
                confidence=last.confidence, uncertain=last.uncertain, snapshot=last.snapshot,
                at=iso_utc(time.time() - (now - last.mono)),
            ),
            evidence=self.evidence_writer.evidence_stats() if self.evidence_writer is not None else None,
        )

    def _publish_state(self, force: bool = False) -> None:
        self.publish_state(self.own_state, force)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _percentiles(samples: collections.deque[float]) -> Percentiles:
    """p50 and p95 of the samples, rounded to 0.1 ms."""
    return Percentiles(p50=_r(percentile(samples, 50)), p95=_r(percentile(samples, 95)))
