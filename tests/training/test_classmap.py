"""Class-map validation: the shipped map is complete; gaps and unknown categories are rejected clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smartbin_daemon.training.classmap import ClassMapError, load_classmap
from smartbin_daemon.training.dataset import SourceDataset, load_source, prepare_dataset


def _write(tmp_path: Path, data: dict) -> Path:
    """Dump a class map to a file."""
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _base() -> dict:
    """The shipped class map as a dict."""
    return yaml.safe_load(CLASSMAP.read_text(encoding="utf-8"))


CLASSMAP = Path(__file__).resolve().parents[2] / "config" / "training" / "waste_classmap.yaml"


def _fake_dataset(root: Path, names: list[str], labels: dict[str, str]) -> SourceDataset:
    """A tiny YOLO dataset on disk."""
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for stem, text in labels.items():
            (root / split / "images" / f"{stem}.jpg").write_bytes(b"\xff\xd8fake")
            (root / split / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
    (root / "data.yaml").write_text(
        yaml.safe_dump(
            {"path": ".", "train": "train/images", "val": "valid/images", "nc": len(names), "names": names}
        ),
        encoding="utf-8",
    )
    return load_source(root)


def test_shipped_classmap_is_valid() -> None:
    cm = load_classmap(CLASSMAP)
    assert cm.category_names[0] == "plastic"
    assert set(cm.datasets) == {"waste-detect", "trashnet-plus", "smartbin-field"}
    assert cm.datasets["waste-detect"].rule("trashbin").dropped
    for name in ("bottles", "cups", "trash", "other-trash"):
        assert cm.datasets["waste-detect"].rule(name).reason, name
    for name in ("can", "Cable", "Medical Waste"):
        assert cm.datasets["trashnet-plus"].rule(name).reason, name


def test_unknown_category_rejected(tmp_path: Path) -> None:
    data = _base()
    data["datasets"]["trashnet-plus"]["classes"]["can"] = {"category": "aluminium", "reason": "x"}
    with pytest.raises(ClassMapError) as err:
        load_classmap(_write(tmp_path, data))
    msg = str(err.value)
    assert "'trashnet-plus'" in msg and "'can'" in msg and "'aluminium'" in msg


def test_unknown_category_short_form_rejected(tmp_path: Path) -> None:
    data = _base()
    data["datasets"]["waste-detect"]["classes"]["paper"] = "cardboard_and_paper"
    with pytest.raises(ClassMapError, match="unknown category 'cardboard_and_paper'"):
        load_classmap(_write(tmp_path, data))


def test_extra_keys_forbidden(tmp_path: Path) -> None:
    data = _base()
    data["categories"]["plastic"]["colour"] = "yellow"
    with pytest.raises(ClassMapError, match="colour"):
        load_classmap(_write(tmp_path, data))


def test_unknown_compartment_rejected(tmp_path: Path) -> None:
    data = _base()
    data["categories"]["glass"]["compartment"] = "bottle_bank"
    with pytest.raises(ClassMapError, match="unknown compartment 'bottle_bank'"):
        load_classmap(_write(tmp_path, data))


def test_unmapped_source_class_rejected(tmp_path: Path) -> None:
    data = _base()
    del data["datasets"]["trashnet-plus"]["classes"]["Glass"]
    cm = load_classmap(_write(tmp_path, data))
    src = _fake_dataset(
        tmp_path / "trashnet-plus",
        ["Cable", "E-waste", "Glass", "Medical Waste", "Metal", "Plastics", "can"],
        {"a": "2 0.5 0.5 0.2 0.2\n"},
    )
    with pytest.raises(ClassMapError) as err:
        prepare_dataset([src], cm, tmp_path / "out")
    msg = str(err.value)
    assert "'trashnet-plus'" in msg and "'Glass'" in msg and "not covered" in msg


def test_unknown_dataset_rejected(tmp_path: Path) -> None:
    cm = load_classmap(CLASSMAP)
    src = _fake_dataset(tmp_path / "mystery-set", ["thing"], {"a": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(ClassMapError, match="'mystery-set' is not in the class map"):
        prepare_dataset([src], cm, tmp_path / "out")


def test_merge_rewrites_labels_and_drops(tmp_path: Path) -> None:
    cm = load_classmap(CLASSMAP)
    names = [
        "E-waste",
        "Metal-waste",
        "bottles",
        "cardboard",
        "cups",
        "organic-waste",
        "other-trash",
        "paper",
        "plastic-waste",
        "trash",
        "trashbin",
    ]
    src = _fake_dataset(
        tmp_path / "waste-detect",
        names,
        {
            "a": "10 0.5 0.5 0.9 0.9\n2 0.3 0.3 0.1 0.1\n",
            "b": "10 0.5 0.5 0.5 0.5\n",
            "c": "7 0.5 0.5 0.4 0.4\n3 0.2 0.2 0.1 0.1\n",
        },
    )
    report = prepare_dataset([src], cm, tmp_path / "out", link_mode="symlink")
    out = tmp_path / "out"
    glass = cm.category_index("glass")
    paper = cm.category_index("paper_cardboard")
    assert (out / "labels" / "train" / "waste-detect__a.txt").read_text().split() == [
        str(glass),
        "0.3",
        "0.3",
        "0.1",
        "0.1",
    ]
    assert (out / "labels" / "val" / "waste-detect__b.txt").read_text() == ""
    assert (out / "images" / "train" / "waste-detect__c.jpg").is_symlink()
    stats = report.splits["train"]
    assert (
        stats.boxes_per_category["paper_cardboard"] == 2 and stats.images_per_category["paper_cardboard"] == 1
    )
    assert stats.dropped_boxes == {"trashbin": 2}
    assert stats.background_images == 1
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"][paper] == "paper_cardboard" and data["nc"] == len(cm.category_names)
