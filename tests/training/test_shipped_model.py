"""The shipped model in models/ loads through ultralytics and sorts the sample images as its card claims."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
SAMPLES_DIR = REPO_ROOT / "tests" / "data" / "samples"
SHIPPED_NAME = "smartbin-waste-nano"
ONNX = MODELS_DIR / f"{SHIPPED_NAME}.onnx"


@pytest.fixture(scope="module")
def shipped() -> Path:
    """The shipped ONNX model, or skip when none is there yet."""
    if not ONNX.is_file():
        pytest.skip(f"no shipped model at {ONNX} yet (run 'smartbin-train all')")
    return ONNX


def test_shipped_artefacts(shipped: Path) -> None:
    assert shipped.stat().st_size <= 12 * 1024 * 1024
    classes = yaml.safe_load((MODELS_DIR / f"{SHIPPED_NAME}.classes.yaml").read_text())
    assert classes["model"] == shipped.name and classes["imgsz"] == 320
    assert [c["index"] for c in classes["classes"]] == list(range(len(classes["classes"])))
    card = (MODELS_DIR / f"{SHIPPED_NAME}.md").read_text()
    assert "CC BY 4.0" in card and "format=ncnn" in card and "format=engine" in card


def test_shipped_model_sorts_samples(shipped: Path, yolo_env: Path) -> None:
    from smartbin_daemon.training.samples import load_samples, score_samples

    samples = load_samples(SAMPLES_DIR)
    assert 1 <= len(samples) <= 20
    metrics = json.loads((MODELS_DIR / f"{SHIPPED_NAME}.metrics.json").read_text())
    claimed = metrics["samples"]
    card = (MODELS_DIR / f"{SHIPPED_NAME}.md").read_text()
    assert re.search(rf"\b{claimed['correct']}/{claimed['total']}\b", card), "card and metrics.json disagree"
    result = score_samples(shipped, SAMPLES_DIR, imgsz=320)
    names = yaml.safe_load((MODELS_DIR / f"{SHIPPED_NAME}.classes.yaml").read_text())
    assert {r["expected"] for r in result["rows"]} <= {c["category"] for c in names["classes"]}
    assert result["total"] == claimed["total"]
    assert result["share"] >= claimed["share"], result["rows"]
