"""A tiny YOLO built from an ultralytics model YAML at test time and exported to ONNX (nothing downloaded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

CATEGORIES = ["plastic", "glass", "residual"]
COMPARTMENTS = {"plastic": "recycling", "glass": "glass", "residual": "residual"}
IMGSZ = 64


def offline_env(state: Path) -> None:
    """The same settings the daemon uses: offline, no auto-install, writable settings dir."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(state / "ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


def classes_yaml(path: Path, model_file: str, names: list[str] = CATEGORIES) -> Path:
    """A class map in the format smartbin-train writes."""
    doc = {"model": model_file, "task": "detect", "imgsz": IMGSZ,
           "classes": [{"index": i, "name": n, "category": n, "compartment": COMPARTMENTS.get(n, "residual")}
                       for i, n in enumerate(names)],
           "compartments": {c: c for c in set(COMPARTMENTS.values())}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def build_tiny_onnx(workdir: Path) -> Path:
    """yolo11n.yaml with 3 classes, untrained, exported to ONNX at 64 px; returns the .onnx path (+ classes.yaml)."""
    offline_env(workdir)
    import ultralytics
    from ultralytics import YOLO

    base = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    spec = yaml.safe_load(base.read_text())
    spec["nc"] = len(CATEGORIES)
    spec_path = workdir / "tiny-yolo11n.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    model = YOLO(str(spec_path), task="detect")
    model.model.names = dict(enumerate(CATEGORIES))
    model.save(str(workdir / "tiny.pt"))  # the PyTorch checkpoint, loadable like a trained one
    classes_yaml(workdir / "tiny.classes.yaml", "tiny.pt")
    exported = Path(model.export(format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False, verbose=False))
    target = workdir / "tiny.onnx"
    shutil.move(str(exported), target)
    classes_yaml(workdir / "tiny.classes.yaml", target.name)
    return target
