"""ONNX export of the trained detector and an ONNX-vs-PyTorch CPU speed comparison."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartbin_daemon.training.env import load_yolo_class, use_all_cores

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MAX_ONNX_BYTES = 64 * 1024 * 1024


def export_onnx(
    weights: Path, imgsz: int, dest: Path, opset: int = DEFAULT_OPSET, max_bytes: int = MAX_ONNX_BYTES
) -> Path:
    """Export weights to a static-shape ONNX file at dest (simplified when onnxslim is installed)."""
    yolo_cls = load_yolo_class()
    simplify = importlib.util.find_spec("onnxslim") is not None
    if not simplify:
        logger.warning("onnxslim not installed: exporting without simplification")
    model = yolo_cls(str(weights))
    produced = Path(
        model.export(
            format="onnx",
            imgsz=imgsz,
            opset=opset,
            simplify=simplify,
            dynamic=False,
            half=False,
            device="cpu",
        )
    )
    size = produced.stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"exported ONNX {produced} is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit"
        )
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if produced.resolve() != dest.resolve():
        shutil.copyfile(produced, dest)
    logger.info(
        "exported %s -> %s (%.2f MiB, opset %d, simplify=%s)", weights, dest, size / 2**20, opset, simplify
    )
    return dest


def _time_model(model: Any, frames: Sequence[Any], imgsz: int, repeats: int, warmup: int) -> dict[str, float]:
    """Median/mean wall ms per predict() call and median ultralytics inference ms over frames x repeats."""
    for frame in frames[:warmup]:
        model.predict(frame, imgsz=imgsz, verbose=False, device="cpu")
    walls: list[float] = []
    infer: list[float] = []
    for _ in range(repeats):
        for frame in frames:
            t0 = time.monotonic()
            results = model.predict(frame, imgsz=imgsz, verbose=False, device="cpu")
            walls.append((time.monotonic() - t0) * 1000.0)
            infer.append(float(results[0].speed.get("inference", 0.0)))
    return {
        "calls": len(walls),
        "wall_ms_median": round(statistics.median(walls), 2),
        "wall_ms_mean": round(statistics.fmean(walls), 2),
        "inference_ms_median": round(statistics.median(infer), 2),
    }


def benchmark(
    pt_path: Path, onnx_path: Path, images: Sequence[Path], imgsz: int, repeats: int = 2, warmup: int = 3
) -> dict[str, Any]:
    """Compare PyTorch and ONNX predict() on the same decoded frames at the same imgsz on CPU."""
    import cv2
    import torch

    yolo_cls = load_yolo_class()
    use_all_cores()
    decoded = [cv2.imread(str(p)) for p in images]
    frames: list[Any] = [f for f in decoded if f is not None]
    if not frames:
        raise ValueError("no readable frames for the benchmark")
    pt = _time_model(yolo_cls(str(pt_path), task="detect"), frames, imgsz, repeats, warmup)
    onnx = _time_model(yolo_cls(str(onnx_path), task="detect"), frames, imgsz, repeats, warmup)
    result = {
        "imgsz": imgsz,
        "frames": len(frames),
        "frame_shape": list(frames[0].shape),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "pytorch": pt,
        "onnx": onnx,
        "speedup_wall": round(pt["wall_ms_median"] / onnx["wall_ms_median"], 2),
        "speedup_inference": round(pt["inference_ms_median"] / max(onnx["inference_ms_median"], 1e-6), 2),
        "method": (
            "ultralytics YOLO.predict() on CPU, one frame per call, same decoded frames for both; "
            f"{warmup} warm-up calls, then {repeats} passes; ratio = PyTorch median / ONNX median"
        ),
    }
    logger.info(
        "speed at imgsz %d: pt %.1f ms, onnx %.1f ms per frame (x%.2f)",
        imgsz,
        pt["wall_ms_median"],
        onnx["wall_ms_median"],
        result["speedup_wall"],
    )
    return result


def save_json(data: dict[str, Any], path: Path) -> None:
    """Write a dict as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
