"""Pure helpers: confusion summary, sample scoring rule, dataset argument parsing, balance table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smartbin_daemon.training.dataset import label_path_for, parse_dataset_arg
from smartbin_daemon.training.evaluate import top_confusions


def test_top_confusions_orders_off_diagonal_and_background() -> None:
    names = ["plastic", "glass"]
    # [predicted, true] with background last: 3 glass called plastic, 5 plastic missed, 2 false glass boxes.
    matrix = np.array([[10, 3, 0], [0, 7, 2], [5, 0, 0]], dtype=float)
    top = top_confusions(matrix, names)
    assert [(c["true"], c["predicted"], c["count"]) for c in top] == [
        ("plastic", "background", 5),
        ("glass", "plastic", 3),
        ("background", "glass", 2),
    ]
    assert top[0]["share_of_true"] == round(5 / 15, 4)
    assert top[2]["share_of_true"] is None
    only_classes = top_confusions(matrix, names, include_background=False)
    assert [(c["true"], c["predicted"]) for c in only_classes] == [("glass", "plastic")]


def test_parse_dataset_arg_and_label_path(tmp_path: Path) -> None:
    assert parse_dataset_arg("waste-detect=/data/wd") == ("waste-detect", Path("/data/wd"))
    assert parse_dataset_arg(str(tmp_path)) == (None, tmp_path)
    assert label_path_for(Path("/d/train/images/a.b.jpg")) == Path("/d/train/labels/a.b.txt")


def test_a_pt_start_point_keeps_its_weights_and_a_yaml_fetches_none(tmp_path: Path) -> None:
    from smartbin_daemon.training.train import TrainSettings

    scratch = TrainSettings(data_yaml=tmp_path / "data.yaml", project=tmp_path, model="yolo11n.yaml")
    assert scratch.ultralytics_args()["pretrained"] is False
    finetune = TrainSettings(data_yaml=tmp_path / "data.yaml", project=tmp_path, model=str(tmp_path / "best.pt"))
    assert finetune.ultralytics_args()["pretrained"] is True


def test_class_weighting_is_passed_only_when_asked(tmp_path: Path) -> None:
    from smartbin_daemon.training.train import TrainSettings

    plain = TrainSettings(data_yaml=tmp_path / "data.yaml", project=tmp_path)
    assert "cls_pw" not in plain.ultralytics_args()
    weighted = TrainSettings(data_yaml=tmp_path / "data.yaml", project=tmp_path, cls_pw=0.5)
    assert weighted.ultralytics_args()["cls_pw"] == 0.5


def test_cls_pw_outside_zero_to_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from smartbin_daemon.training.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--cls-pw", "1.5"])
    assert exc.value.code == 2
    assert "--cls-pw: 1.5 is outside 0..1" in capsys.readouterr().err


def test_card_names_a_checkpoint_start_point_as_continued_training() -> None:
    from smartbin_daemon.training.card import _start_point

    assert "continued from the checkpoint `/w/best.pt`" in _start_point("/w/best.pt")
    assert "random init" not in _start_point("/w/best.pt")
    assert "`yolo11n.yaml` built from its YAML (random init" in _start_point("yolo11n.yaml")


def test_training_without_the_ultralytics_extra_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import sys

    from smartbin_daemon.training.cli import main

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # find_spec() then reports it as not installed
    assert main(["train", "--workdir", str(tmp_path)]) == 2
    assert "training needs the 'ultralytics' extra" in caplog.text
    assert "pip install 'smartbin-daemon[ultralytics]'" in caplog.text
