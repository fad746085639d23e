"""Training pipeline for the smart bin's waste detector (``smartbin-train``)."""

from __future__ import annotations

DEFAULT_MODEL_NAME = "smartbin-waste-nano"
DEFAULT_ARCH = "yolo11n.yaml"
DEFAULT_IMGSZ = 320
DEFAULT_WORKDIR = "/var/tmp/smartbin-train"

__all__ = ["DEFAULT_ARCH", "DEFAULT_IMGSZ", "DEFAULT_MODEL_NAME", "DEFAULT_WORKDIR"]
