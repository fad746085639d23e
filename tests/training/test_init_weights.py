"""Transfer learning (`--init`): which checkpoints may seed training, what carries over, and what the card says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartbin_daemon.training.cli import main
from smartbin_daemon.training.init_weights import InitError, card_line, inspect_init


def _checkpoint(tmp_path: Path, yaml_name: str, names: list[str]) -> Path:
    """An untrained ultralytics model built from a packaged YAML (nothing downloaded), saved as a .pt."""
    import ultralytics
    import yaml
    from ultralytics import YOLO

    family = {"cls": "classify", "seg": "segment", "pose": "pose"}
    stem = Path(yaml_name).stem
    base = stem.replace("yolov8n", "yolov8")  # yolov8n-seg -> yolov8-seg.yaml, scale n
    spec = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / f"{base}.yaml").read_text())
    spec["nc"], spec["scale"] = len(names), "n"
    spec_path = tmp_path / f"{stem}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    task = next((t for k, t in family.items() if stem.endswith(f"-{k}")), "detect")
    model = YOLO(str(spec_path), task=task)
    model.model.names = dict(enumerate(names))
    out = tmp_path / f"{stem}.pt"
    model.save(str(out))
    return out


@pytest.fixture(scope="module")
def two_class_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shaped like the fall-detection checkpoint: a YOLOv8 detector for two classes."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    return _checkpoint(tmp_path_factory.mktemp("init"), "yolov8n.yaml", ["Normal", "Fall"])


def test_a_detection_checkpoint_keeps_all_but_the_class_head(two_class_detector: Path) -> None:
    info = inspect_init(two_class_detector, categories=8, source="test package 1.0 (Apache-2.0)")
    assert info.task == "detect" and info.classes == {0: "Normal", 1: "Fall"}
    assert info.architecture.startswith("yolov8n.yaml")
    # 3 scales x (weight + bias) of the last class convolution change shape from 2 to 8 outputs
    assert info.tensors_total - info.tensors_transferred == 6
    line = card_line(json.loads(json.dumps(info.as_dict())))  # as read back from train_info.json
    assert "transfer learning from `yolov8n.pt`" in line and "test package 1.0 (Apache-2.0)" in line
    assert f"{info.tensors_transferred}/{info.tensors_total} tensors carried over" in line


@pytest.mark.parametrize(("yaml_name", "task"), [("yolov8n-cls.yaml", "classify"), ("yolov8n-seg.yaml", "segment"),
                                                 ("yolov8n-pose.yaml", "pose")])
def test_checkpoints_of_other_tasks_are_refused(tmp_path: Path, yolo_env: Path, yaml_name: str, task: str) -> None:
    pt = _checkpoint(tmp_path, yaml_name, ["a", "b"])
    with pytest.raises(InitError, match=rf"a '{task}' model .*needs a YOLO detection checkpoint"):
        inspect_init(pt, categories=8)


def test_files_that_are_not_checkpoints_are_refused(tmp_path: Path, yolo_env: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a zip archive")
    with pytest.raises(InitError, match="not a readable PyTorch checkpoint"):
        inspect_init(junk, categories=8)
    with pytest.raises(InitError, match="expected an ultralytics .pt checkpoint"):
        inspect_init(Path(__file__), categories=8)
    with pytest.raises(InitError, match="no such file"):
        inspect_init(tmp_path / "absent.pt", categories=8)


def test_the_cli_refuses_a_bad_init_before_training(tmp_path: Path, yolo_env: Path, classmap_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    seg = _checkpoint(tmp_path, "yolov8n-seg.yaml", ["a"])
    rc = main(["train", "--classmap", str(classmap_path), "--workdir", str(tmp_path / "w"), "--init", str(seg)])
    assert rc == 2 and "a 'segment' model" in caplog.text
    rc = main(["train", "--classmap", str(classmap_path), "--workdir", str(tmp_path / "w"), "--init", str(seg),
               "--resume"])
    assert rc == 2 and "cannot be combined with --resume" in caplog.text


@pytest.mark.slow
def test_all_tiny_from_a_pretrained_detector(tmp_path: Path, datasets: Path, yolo_env: Path, classmap_path: Path,
                                             two_class_detector: Path) -> None:
    models = tmp_path / "models"
    rc = main(["all", "--classmap", str(classmap_path), "--datasets-dir", str(datasets),
               "--workdir", str(tmp_path / "work"), "--models-dir", str(models), "--name", "tiny",
               "--max-images", "4", "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0",
               "--bench-frames", "2", "--eval-batch", "4", "--samples-dir", str(tmp_path / "no-samples"),
               "--init", str(two_class_detector), "--init-source", "a two-class test detector"])
    assert rc == 0
    info = json.loads((tmp_path / "work" / "tiny" / "runs" / "train" / "train_info.json").read_text())
    assert info["settings"]["init"]["classes"] == {"0": "Normal", "1": "Fall"}
    assert info["ultralytics_args"]["pretrained"] is True
    card = (models / "tiny.md").read_text()
    assert "transfer learning from `yolov8n.pt`" in card and "a two-class test detector" in card
    classes = (models / "tiny.classes.yaml").read_text()
    assert "Fall" not in classes and "plastic" in classes  # the head was rebuilt for our categories
