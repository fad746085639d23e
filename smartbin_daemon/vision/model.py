"""Loading a YOLO model through ultralytics, offline, with its class map; inference to DetectedBox lists."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..messages import DetectedBox

logger = logging.getLogger(__name__)


class ModelError(Exception):
    """A model that cannot be used: missing, unreadable, or disagreeing with its class map."""


def configure_ultralytics(state_dir: Path) -> None:
    """Offline, no auto-install, and a writable settings dir; must run before `import ultralytics`.

    Why: under systemd with ProtectHome the default ~/.config/Ultralytics is not writable, and an
    unattended bin must never try to download weights or pip-install packages at run time.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    config_dir = os.environ.setdefault("YOLO_CONFIG_DIR", str(state_dir / "ultralytics"))
    try:
        Path(config_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("cannot create YOLO_CONFIG_DIR %s: %s", config_dir, exc)


class ClassEntry(BaseModel):
    """One detector class: its index and name, its waste category and default compartment."""

    model_config = ConfigDict(extra="allow")

    index: int = Field(ge=0)
    name: str
    category: str
    compartment: str


class ClassMapFile(BaseModel):
    """`models/<name>.classes.yaml`, written by smartbin-train."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    task: str = "detect"
    imgsz: int | None = None
    classes: list[ClassEntry]
    compartments: dict[str, str] = Field(default_factory=dict)

    def by_index(self) -> dict[int, ClassEntry]:
        """Entries keyed by class index."""
        return {c.index: c for c in self.classes}

    def category_compartments(self) -> dict[str, str]:
        """Category → default compartment."""
        return {c.category: c.compartment for c in self.classes}

    def check_names(self, names: dict[int, str]) -> None:
        """Raise ModelError unless the model's class names are exactly those of the map, in order."""
        mine = {c.index: c.name for c in self.classes}
        if mine != dict(names):
            only_model = sorted(set(names.items()) - set(mine.items()))
            only_map = sorted(set(mine.items()) - set(names.items()))
            raise ModelError(
                "model classes and class map disagree: "
                f"model has {only_model or 'nothing else'}, class map has {only_map or 'nothing else'}"
            )


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


def load_classmap(path: Path) -> ClassMapFile:
    """Read and validate a class map file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read class map {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"class map {path} is not valid YAML: {exc}") from None
    try:
        return ClassMapFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"class map {path} is invalid: {problems}") from None


def resolve_device(requested: str) -> tuple[str, str | None]:
    """The device to use and a warning when CUDA was asked for but is missing (we fall back to CPU)."""
    if requested == "cpu":
        return "cpu", None
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch (e.g. ONNX-only install) means no CUDA
        cuda = False
    if requested == "auto":
        return ("cuda:0" if cuda else "cpu"), None
    if not cuda:
        return "cpu", f"device {requested!r} requested but CUDA is not available; running on CPU"
    return requested, None


@dataclass
class LoadedModel:
    """A warmed-up model with its class map, ready for `predict`."""

    path: Path
    yolo: Any
    classmap: ClassMapFile
    device: str
    imgsz: int
    conf: float
    iou: float
    max_det: int
    warnings: list[str] = field(default_factory=list)
    load_s: float = 0.0

    @property
    def name(self) -> str:
        """File name of the model."""
        return self.path.name

    def predict(self, image: np.ndarray) -> tuple[list[DetectedBox], dict[str, float]]:
        """Detect on one BGR image; returns boxes and ultralytics' per-stage times (ms)."""
        results = self.yolo.predict(image, imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det,
                                    device=self.device, verbose=False)
        result = results[0]
        entries = self.classmap.by_index()
        boxes: list[DetectedBox] = []
        data = result.boxes
        if data is not None and len(data):
            xyxy = data.xyxy.cpu().numpy().tolist()
            confs = data.conf.cpu().numpy().tolist()
            classes = data.cls.cpu().numpy().astype(int).tolist()
            for coords, conf, cls in zip(xyxy, confs, classes):
                entry = entries.get(cls)
                if entry is None:
                    continue
                boxes.append(DetectedBox(cls, entry.name, entry.category, float(conf),
                                         (float(coords[0]), float(coords[1]), float(coords[2]), float(coords[3]))))
        speed = {k: float(v) for k, v in (result.speed or {}).items() if v is not None}
        return boxes, speed


def load_model(path: Path, *, classmap: Path | None, device: str, imgsz: int, conf: float, iou: float,
               max_det: int) -> LoadedModel:
    """Load, warm up with a test inference and check the class map; raise ModelError with the reason."""
    t0 = time.monotonic()
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    cmap = load_classmap(classmap or classmap_path_for(path))
    dev, warning = resolve_device(device)
    try:
        from ultralytics import YOLO

        yolo = YOLO(str(path), task="detect")
        yolo.predict(np.zeros((imgsz, imgsz, 3), dtype=np.uint8), imgsz=imgsz, device=dev, verbose=False)
        names = dict(yolo.names)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - ultralytics/onnxruntime raise anything on a corrupt file
        raise ModelError(f"cannot load {path.name}: {type(exc).__name__}: {str(exc)[:300]}") from None
    cmap.check_names(names)
    loaded = LoadedModel(path, yolo, cmap, dev, imgsz, conf, iou, max_det, [warning] if warning else [])
    loaded.load_s = time.monotonic() - t0
    return loaded


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
