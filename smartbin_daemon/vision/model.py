"""A detection model with its class map, run by onnxruntime or ultralytics (imported only when chosen)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import classmap_path_for, missing_backend, resolve_backend
from ..messages import DetectedBox

logger = logging.getLogger(__name__)


class ModelError(Exception):
    """A model that cannot be used: missing, unreadable, or disagreeing with its class map."""


class ClassEntry(BaseModel):
    """One detector class: its index and name, its waste category and default compartment."""

    model_config = ConfigDict(extra="allow")

    index: int = Field(ge=0)
    name: str
    category: str
    compartment: str


class ModelThresholds(BaseModel):
    """The vote thresholds chosen for this model on its valid split (smartbin-train writes how)."""

    model_config = ConfigDict(extra="allow")

    min_confidence: float = Field(ge=0, le=1)
    min_margin: float = Field(ge=0, le=1)


class ClassMapFile(BaseModel):
    """`models/<name>.classes.yaml`, written by smartbin-train."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    task: str = "detect"
    imgsz: int | None = None
    classes: list[ClassEntry]
    compartments: dict[str, str] = Field(default_factory=dict)
    thresholds: ModelThresholds | None = None

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


def auto_threads() -> int:
    """All cores but one, at least one: inference must leave a core to the other workers on a small board."""
    return max(1, (os.cpu_count() or 1) - 1)


class DetectorBackend(Protocol):
    """What a loaded model offers the detector, whichever library runs it."""

    names: dict[int, str]
    has_names: bool
    class_count: int
    device: str
    imgsz: int
    warnings: list[str]

    def infer(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Detect on one BGR image: rows (x1, y1, x2, y2, confidence, class) in frame pixels, and stage times (ms)."""


@dataclass
class LoadedModel:
    """A warmed-up model with its class map, ready for `predict`."""

    path: Path
    backend_name: str
    backend: DetectorBackend
    classmap: ClassMapFile
    load_s: float = 0.0

    @property
    def name(self) -> str:
        """File name of the model."""
        return self.path.name

    @property
    def device(self) -> str:
        """Where inference runs (`cpu`, `cuda:0`, or the onnxruntime provider in use)."""
        return self.backend.device

    @property
    def imgsz(self) -> int:
        """The network input size actually used."""
        return self.backend.imgsz

    @property
    def warnings(self) -> list[str]:
        """Load-time warnings (device fallback, input size)."""
        return self.backend.warnings

    def predict(self, image: np.ndarray) -> tuple[list[DetectedBox], dict[str, float]]:
        """Detect on one BGR image; returns boxes and per-stage times (preprocess, inference, postprocess, ms)."""
        rows, speed = self.backend.infer(image)
        entries = self.classmap.by_index()
        boxes: list[DetectedBox] = []
        for x1, y1, x2, y2, conf, cls in rows.tolist():
            entry = entries.get(int(cls))
            if entry is not None:
                boxes.append(DetectedBox(int(cls), entry.name, entry.category, float(conf),
                                         (float(x1), float(y1), float(x2), float(y2))))
        return boxes, speed


DEFAULT_IMGSZ = 320


def load_model(path: Path, *, classmap: Path | None, device: str, imgsz: int | None, conf: float, iou: float,
               max_det: int, backend: str = "auto", threads: int = 0, state_dir: Path | None = None) -> LoadedModel:
    """Load with the chosen backend, warm up, check the class map; raise ModelError naming the file and the reason.

    `imgsz` None means the size the model was exported at (its class map's), else 320. `state_dir` (the daemon's
    storage) holds ultralytics' settings, onnxruntime's TensorRT engine cache and the CPU-optimised graphs.
    """
    t0 = time.monotonic()
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    cmap_path = classmap or classmap_path_for(path)
    cmap = load_classmap(cmap_path)
    imgsz = imgsz or cmap.imgsz or DEFAULT_IMGSZ
    chosen = resolve_backend(path, backend)
    problem = missing_backend(chosen)
    if problem is not None:
        raise ModelError(f"cannot load {path.name}: {problem}")
    settings = {"device": device, "imgsz": imgsz, "conf": conf, "iou": iou, "max_det": max_det}
    if chosen == "onnxruntime":
        from .onnx_backend import OnnxRuntimeBackend

        cache = state_dir / "onnxruntime-trt" if state_dir is not None else None
        optimized = state_dir / "onnxruntime-optimized" if state_dir is not None else None
        runner: DetectorBackend = OnnxRuntimeBackend(path, threads=threads or auto_threads(), cache_dir=cache,
                                                     optimized_dir=optimized, **settings)
        if not runner.has_names and runner.class_count == len(cmap.classes):
            runner.names = {c.index: c.name for c in cmap.classes}  # an export without metadata: trust the count
    else:
        from .ultralytics_backend import UltralyticsBackend, configure_ultralytics

        if state_dir is not None:
            configure_ultralytics(state_dir)
        runner = UltralyticsBackend(path, **settings)
    count = runner.class_count if runner.class_count >= 0 else len(runner.names)
    if count != len(cmap.classes):
        raise ModelError(f"{path.name} predicts {count} classes but its class map {cmap_path.name} lists "
                         f"{len(cmap.classes)}: use the class map written with this model")
    cmap.check_names(runner.names)
    return LoadedModel(path, chosen, runner, cmap, time.monotonic() - t0)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
