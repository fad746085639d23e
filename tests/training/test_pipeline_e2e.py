"""End to end on a tiny subset: prepare -> 1 epoch -> ONNX export -> evaluation -> class map -> card."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from smartbin_daemon.training.cli import main

from .conftest import MODELS_DIR, SHIPPED_NAME

SHIPPED = MODELS_DIR / f"{SHIPPED_NAME}.onnx"


@pytest.mark.slow
def test_all_tiny(
    tmp_path: Path, datasets: Path, yolo_env: Path, classmap_path: Path, samples_dir: Path
) -> None:
    t0 = time.monotonic()
    models = tmp_path / "models"
    rc = main(
        [
            "all",
            "--classmap",
            str(classmap_path),
            "--datasets-dir",
            str(datasets),
            "--workdir",
            str(tmp_path / "work"),
            "--models-dir",
            str(models),
            "--name",
            "tiny",
            "--max-images",
            "4",
            "--epochs",
            "1",
            "--imgsz",
            "64",
            "--batch",
            "4",
            "--workers",
            "0",
            "--bench-frames",
            "2",
            "--eval-batch",
            "4",
            "--samples-dir",
            str(samples_dir),
            "--compare",
            str(SHIPPED),
        ]
    )
    assert rc == 0
    onnx = models / "tiny.onnx"
    assert onnx.is_file() and onnx.stat().st_size < 12 * 1024 * 1024
    balance = json.loads((tmp_path / "work" / "tiny" / "dataset" / "balance.json").read_text())
    assert balance["splits"]["train"]["images_per_source"] == {"waste-detect": 4, "trashnet-plus": 4}

    classes = yaml.safe_load((models / "tiny.classes.yaml").read_text())
    cm = yaml.safe_load(classmap_path.read_text())
    assert [c["name"] for c in classes["classes"]] == list(cm["categories"])
    assert all(c["compartment"] in classes["compartments"] for c in classes["classes"])

    metrics = json.loads((models / "tiny.metrics.json").read_text())
    assert set(metrics["eval_onnx"]["per_category"]) == set(cm["categories"])
    assert 0.0 <= metrics["eval_onnx"]["overall"]["map50"] <= 1.0
    assert metrics["benchmark"]["speedup_wall"] > 0
    confusion = metrics["eval_onnx"]["confusion"]
    assert confusion["labels"][-1] == "background"
    # every ground-truth box lands in exactly one cell of its true-class column (matched, confused or missed)
    gt_boxes = sum(r["instances"] for r in metrics["eval_onnx"]["per_category"].values())
    assert sum(sum(row[:-1]) for row in confusion["matrix_predicted_by_true"]) == gt_boxes > 0

    # the vote thresholds were chosen on the valid items through the daemon's path and travel with the model
    routing = metrics["routing"]
    valid = len(list((tmp_path / "work" / "tiny" / "dataset" / "images" / "val").iterdir()))
    assert routing["items"] + sum(routing["skipped"].values()) == valid
    assert sum(sum(row.values()) for row in routing["matrix_expected_by_routed"].values()) == routing["items"]
    assert classes["thresholds"]["min_confidence"] == routing["min_confidence"]
    assert classes["thresholds"]["min_margin"] == routing["min_margin"] and "valid split" in classes["thresholds"]["rule"]
    assert metrics["samples"]["total"] == 20 and metrics["samples"]["min_confidence"] == routing["min_confidence"]
    assert {r["expected_compartment"] for r in metrics["samples"]["rows"]} <= set(classes["compartments"])
    speed = metrics["comparison"]["models"]
    assert set(speed) == {"tiny", SHIPPED.stem} and speed[SHIPPED.stem]["ratio"] == 1.0
    assert speed["tiny"]["imgsz"] == 64 and speed[SHIPPED.stem]["map50"] is not None

    card = (models / "tiny.md").read_text()
    assert f"min_confidence {routing['min_confidence']:.2f}, min_margin {routing['min_margin']:.2f}" in card
    assert "## Model size: measured side by side" in card and f"| {SHIPPED.stem} |" in card
    for needle in (
        "CC BY 4.0",
        "ashish-patel-ids8b",
        "code2gether",
        "smartbin-train all",
        "format=ncnn",
        "format=engine",
        "mAP50-95",
        "bottles",
        "Medical Waste",
    ):
        assert needle in card, needle

    from ultralytics import YOLO

    model = YOLO(str(onnx), task="detect")
    image = (
        sorted(samples_dir.glob("*.jpg"))[:1]
        or sorted((tmp_path / "work" / "tiny" / "dataset" / "images" / "val").iterdir())[:1]
    )
    result = model.predict(str(image[0]), imgsz=64, verbose=False)[0]
    assert set(result.names.values()) == set(cm["categories"])
    assert time.monotonic() - t0 < 120


def test_cli_reports_mapping_error(
    tmp_path: Path, datasets: Path, yolo_env: Path, classmap_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = yaml.safe_load(classmap_path.read_text())
    del data["datasets"]["waste-detect"]["classes"]["cups"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    rc = main(
        [
            "prepare",
            "--classmap",
            str(bad),
            "--datasets-dir",
            str(datasets),
            "--workdir",
            str(tmp_path / "w"),
            "--max-images",
            "1",
        ]
    )
    assert rc == 2
    assert "'waste-detect'" in caplog.text and "'cups'" in caplog.text
