"""Offline-safe ultralytics environment: no downloads, no auto-installs, a writable config dir."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def configure_ultralytics_env(config_dir: Path | None = None) -> Path:
    """Set YOLO_OFFLINE/YOLO_AUTOINSTALL/YOLO_CONFIG_DIR (keeping values already set) and return the config dir."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if "YOLO_CONFIG_DIR" not in os.environ:
        target = config_dir or Path(tempfile.gettempdir()) / "smartbin-train-yolo-config"
        os.environ["YOLO_CONFIG_DIR"] = str(target)
    path = Path(os.environ["YOLO_CONFIG_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    logger.debug("ultralytics config dir %s (offline=%s)", path, os.environ["YOLO_OFFLINE"])
    return path


def load_yolo_class() -> type:
    """Import ultralytics.YOLO after making the environment offline-safe."""
    configure_ultralytics_env()
    from ultralytics import YOLO

    use_all_cores()
    return YOLO


def use_all_cores(threads: int | None = None) -> int:
    """Undo ultralytics' OMP_NUM_THREADS=1 / NUM_THREADS=cpu_count-1 default: give torch every core (or `threads`)."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:  # select_device() re-applies this module constant on every predictor/trainer/validator set-up
        from ultralytics.utils import torch_utils

        torch_utils.NUM_THREADS = n
    except ImportError:
        pass
    logger.debug("torch threads set to %d", n)
    return n
