"""The ultralytics backend: `.pt`, TensorRT `.engine`, NCNN and OpenVINO models (imports torch; only when chosen)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .model import ModelError

logger = logging.getLogger(__name__)


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


def resolve_device(requested: str) -> tuple[str, str | None]:
    """The device to use and a warning when CUDA was asked for but is missing (we fall back to CPU)."""
    if requested == "cpu":
        return "cpu", None
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch means no CUDA
        cuda = False
    if requested == "auto":
        return ("cuda:0" if cuda else "cpu"), None
    if not cuda:
        return "cpu", f"device {requested!r} requested but CUDA is not available; running on CPU"
    return requested, None


class UltralyticsBackend:
    """`YOLO(path).predict` with the detector's settings; warmed up by one inference at load."""

    def __init__(self, path: Path, *, device: str, imgsz: int, conf: float, iou: float, max_det: int) -> None:
        dev, warning = resolve_device(device)
        self.device = dev
        self.imgsz = imgsz
        self.warnings = [warning] if warning else []
        self._args = {"imgsz": imgsz, "conf": conf, "iou": iou, "max_det": max_det, "device": dev, "verbose": False}
        try:
            from ultralytics import YOLO

            self.yolo = YOLO(str(path), task="detect")
            self.yolo.predict(np.zeros((imgsz, imgsz, 3), dtype=np.uint8), imgsz=imgsz, device=dev, verbose=False)
            self.names = {int(k): str(v) for k, v in dict(self.yolo.names).items()}
            self.has_names = True
            self.class_count = len(self.names)
        except Exception as exc:  # noqa: BLE001 - ultralytics/torch raise anything on a corrupt file
            raise ModelError(f"cannot load {path.name}: {type(exc).__name__}: {str(exc)[:300]}") from None

    def infer(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Rows (x1, y1, x2, y2, conf, class) in frame pixels and ultralytics' own stage times."""
        result = self.yolo.predict(image, **self._args)[0]
        data = result.boxes
        rows = data.data[:, :6].cpu().numpy() if data is not None and len(data) else np.zeros((0, 6), np.float32)
        speed = {k: float(v) for k, v in (result.speed or {}).items() if v is not None}
        return rows, speed
