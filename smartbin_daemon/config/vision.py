"""Vision sections: camera, detector (model, backend, vote thresholds, motion gate) and evidence."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from .base import _Model

# --------------------------------------------------------------------------- vision: camera


class CameraPreviewConfig(_Model):
    """The live view on demand (`camera/preview`): a few small JPEGs a second, switched off on its own."""

    fps: float = Field(default=1.0, gt=0, le=2, description="preview frames per second")
    max_width: int = Field(default=640, ge=64, le=1920, description="wider frames are scaled down to this width")
    jpeg_quality: int = Field(default=70, ge=10, le=95, description="JPEG quality of the preview frames")
    auto_off_min: float = Field(default=5.0, gt=0, le=120, description="minutes until the preview switches itself off")
    max_min: float = Field(default=30.0, gt=0, le=120, description="longest preview a request may ask for (`minutes`)")

    @model_validator(mode="after")
    def _auto_off_within_max(self) -> CameraPreviewConfig:
        if self.auto_off_min > self.max_min:
            raise ValueError("auto_off_min must be <= max_min")
        return self


class CameraConfig(_Model):
    """Frame source and its watchdog."""

    enabled: bool = False
    source: str = Field(default="0", min_length=1, description=(
        "V4L2 index or /dev/videoN; 'picamera2'; a GStreamer pipeline ending in appsink; rtsp:// or http(s):// "
        "(MJPEG) URL; a video file; or a folder of images"))
    kind: Literal["auto", "v4l2", "picamera2", "gstreamer", "url", "video", "images"] = Field(
        default="auto", description="auto: guessed from `source`")
    width: int | None = Field(default=640, ge=16, le=7680,
                              description="asked of V4L2 and picamera2 devices; streams, files and pipelines keep their size")
    height: int | None = Field(default=480, ge=16, le=4320)
    fps: float = Field(default=15.0, gt=0, le=240,
                       description="asked of devices; paces files and folders; caps decoded MJPEG frames (surplus dropped)")
    exposure: float | None = Field(default=None, description="manual exposure (V4L2 units / picamera2 µs); null = auto")
    loop: bool = Field(default=True, description="video files and image folders start over at the end")
    stall_timeout_s: float = Field(default=10.0, gt=0, le=600, description="no frame for this long: release and re-open")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    max_frame_age_s: float = Field(default=1.0, gt=0, le=60, description="older frames are never analysed")
    preview: CameraPreviewConfig = Field(default_factory=CameraPreviewConfig)

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


# --------------------------------------------------------------------------- vision: detector and evidence


class MotionGateConfig(_Model):
    """Frame-difference motion detector, used as the presence gate when no sensor is fitted."""

    width: int = Field(default=160, ge=32, le=640, description="frames are downscaled to this width first")
    pixel_threshold: int = Field(default=25, ge=1, le=255, description="grey-level change that counts as motion")
    min_area_pct: float = Field(default=2.0, gt=0, le=100, description="changed share of the view that means an item")
    interval_s: float = Field(default=0.2, ge=0.02, le=5, description="how often a frame is checked while idle")
    quiet_s: float = Field(default=1.5, gt=0, le=60, description="no motion this long = the item has gone")


def classmap_path_for(model_path: Path) -> Path:
    """`x.onnx` / `x.pt` / `x_ncnn_model/` → `x.classes.yaml` beside it."""
    stem = model_path.name
    for suffix in ("_ncnn_model", "_openvino_model", "_saved_model"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = model_path.stem
    return model_path.with_name(f"{stem}.classes.yaml")


def resolve_backend(model: Path, requested: str) -> str:
    """`auto` picks onnxruntime for an `.onnx` file and ultralytics for every other format."""
    if requested != "auto":
        return requested
    return "onnxruntime" if model.suffix.lower() == ".onnx" else "ultralytics"


def missing_backend(backend: str) -> str | None:
    """Why `backend` cannot run in this install (naming the extra to install), or None when it can."""
    module, extra = {"onnxruntime": ("onnxruntime", "vision"), "ultralytics": ("ultralytics", "ultralytics")}[backend]
    if importlib.util.find_spec(module) is not None:
        return None
    hint = " (or ./install.sh --with-ultralytics)" if extra == "ultralytics" else ""
    return f"the {backend} backend needs the '{extra}' extra, which is not installed: pip install 'smartbin-daemon[{extra}]'{hint}"


class DetectorConfig(_Model):
    """YOLO detector: model, inference settings, gating and the multi-frame vote."""

    enabled: bool = False
    model: Path = Field(default=Path("/opt/smartbin/models/smartbin-waste-s.onnx"),
                        description=".onnx (onnxruntime), or .pt, .engine, NCNN/OpenVINO folder (ultralytics)")
    classmap: Path | None = Field(default=None, description="default: <model stem>.classes.yaml beside the model")
    backend: Literal["auto", "onnxruntime", "ultralytics"] = Field(
        default="auto", description="auto: onnxruntime for .onnx, ultralytics for every other format")
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:[0-9]+)?|[0-9]+)$")
    threads: int = Field(default=0, ge=0, le=64, description="onnxruntime intra-op threads; 0: all cores but one")
    imgsz: int | None = Field(default=None, ge=32, le=1920,
                              description="inference size; unset: the model's own (its classes.yaml, else 320)")
    conf: float = Field(default=0.25, gt=0, lt=1)
    iou: float = Field(default=0.45, gt=0, lt=1)
    max_det: int = Field(default=20, ge=1, le=300)
    gate: Literal["presence", "motion", "continuous"] = Field(
        default="presence", description="presence: GPIO/Arduino sensor; motion: frame difference; continuous: debug")
    settle_s: float = Field(default=0.3, ge=0, le=10, description="wait after presence before the first frame")
    frames_per_decision: int = Field(default=5, ge=1, le=50, description="K frames aggregated into one decision")
    decision_timeout_s: float = Field(default=4.0, gt=0, le=60, description="decide with the frames gathered by then")
    min_confidence: float | None = Field(
        default=None, ge=0, le=1,
        description="below this mean confidence: uncertain → residual; unset: the model's own (its classes.yaml), else 0.5")
    min_margin: float | None = Field(
        default=None, ge=0, le=1,
        description="below this margin over the runner-up: uncertain; unset: the model's own, else 0.15")
    motion: MotionGateConfig = Field(default_factory=MotionGateConfig)

    @model_validator(mode="after")
    def _backend_installed(self) -> DetectorConfig:
        if self.enabled:
            backend = resolve_backend(self.model, self.backend)
            problem = missing_backend(backend)
            if problem is not None:
                key = "backend" if self.backend != "auto" else "model"
                raise ValueError(f"{key}: {problem}\n")
            if backend == "onnxruntime" and self.model.suffix.lower() != ".onnx":
                raise ValueError(f"backend: onnxruntime runs .onnx models only, not {self.model.name!r}\n")
        return self


class EvidenceConfig(_Model):
    """Annotated snapshots per decision and the active-learning dataset, both capped."""

    snapshots: bool = True
    snapshot_quota_mb: float = Field(default=200.0, gt=0, le=100_000)
    snapshot_max_age_days: float = Field(default=30.0, gt=0, le=3650)
    jpeg_quality: int = Field(default=85, ge=30, le=100)
    publish_snapshot: bool = Field(default=True, description="publish the latest snapshot JPEG for HA (image entity)")
    active_learning: bool = Field(default=True, description="save uncertain frames with predicted boxes as a YOLO dataset")
    dataset_quota_mb: float = Field(default=500.0, gt=0, le=100_000)
    dataset_max_images: int = Field(default=2000, ge=1, le=1_000_000)


