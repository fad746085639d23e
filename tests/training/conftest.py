"""Fixtures for the training pipeline tests: offline ultralytics env and dataset location."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
SAMPLES_DIR = REPO_ROOT / "tests" / "data" / "samples"
CLASSMAP = REPO_ROOT / "config" / "training" / "waste_classmap.yaml"
SHIPPED_NAME = "smartbin-waste-s"


def datasets_dir() -> Path:
    """$SMARTBIN_DATASETS or <repo>/../shared/datasets."""
    return Path(os.environ.get("SMARTBIN_DATASETS") or REPO_ROOT.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def classmap_path() -> Path:
    """The shipped class-map YAML."""
    return CLASSMAP


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """tests/data/samples."""
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def yolo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Offline, no-autoinstall ultralytics with a private config dir (set before ultralytics is imported)."""
    config_dir = tmp_path_factory.mktemp("yolo-config")
    saved = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")}
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    yield config_dir
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared datasets folder, or skip."""
    path = datasets_dir()
    if not all((path / name / "data.yaml").is_file() for name in ("waste-detect", "trashnet-plus")):
        pytest.skip(f"datasets not found under {path} (set SMARTBIN_DATASETS)")
    return path
