"""Evidence on disk: annotated snapshots with quota and age limit, the active-learning YOLO dataset, full disks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from smartbin_daemon.config import EvidenceConfig
from smartbin_daemon.messages import Decision, DetectedBox
from smartbin_daemon.training.classmap import load_classmap
from smartbin_daemon.training.dataset import discover_sources, load_source, parse_dataset_arg, prepare_dataset
from smartbin_daemon.vision import evidence as evidence_mod
from smartbin_daemon.vision.annotate import (
    CATEGORY_COLOURS_BGR,
    annotate,
    category_colour,
    encode_jpeg,
    yolo_label_lines,
)
from smartbin_daemon.vision.evidence import EvidenceStore

REPO = Path(__file__).resolve().parents[2]
CLASSMAP = REPO / "config" / "training" / "waste_classmap.yaml"
CATS = ["plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual"]


def cfg(**kw: object) -> EvidenceConfig:
    """An evidence config with overrides."""
    return EvidenceConfig.model_validate(kw)


def noise(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A random BGR image (noise compresses badly, so sizes are predictable enough for quotas)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box(category: str, conf: float, xyxy: tuple[float, float, float, float], cid: int | None = None) -> DetectedBox:
    """A detector box whose class is its category (as with the shipped detector)."""
    return DetectedBox(CATS.index(category) if cid is None else cid, category, category, conf, xyxy)


def decision(item_id: str, category: str = "plastic", boxes: tuple[DetectedBox, ...] = (),
             uncertain: bool = False) -> Decision:
    """A decision as the detector would publish it."""
    return Decision(item_id, category, category, 0.8, None, 0.0, 0.8, uncertain, "margin 0.1 < 0.15" if uncertain else None,
                    "recycling", 5, {category: 4.0}, 1, time.monotonic(), boxes)


def files(folder: Path, pattern: str = "*") -> list[Path]:
    """Plain files below a folder, sorted."""
    return sorted(p for p in folder.rglob(pattern) if p.is_file())


def assert_valid_yolo(dataset: Path, names: list[str]) -> list[Path]:
    """The folder is a YOLO detection dataset ultralytics and smartbin-train can read; returns the images."""
    data = yaml.safe_load((dataset / "data.yaml").read_text(encoding="utf-8"))
    assert data["names"] == names and data["nc"] == len(names)
    assert data["train"] == "images" and data["val"] == "images"
    assert "path" not in data  # the yaml's own folder is the root, wherever the folder is copied
    images = files(dataset / "images")
    labels = files(dataset / "labels")
    assert [p.stem for p in images] == [p.stem for p in labels], "every image needs a label file and vice versa"
    assert all(p.suffix == ".jpg" for p in images) and all(p.suffix == ".txt" for p in labels)
    for image in images:
        assert cv2.imread(str(image)) is not None, image
    for label in labels:
        for line in label.read_text(encoding="ascii").splitlines():
            fields = line.split()
            assert len(fields) == 5, (label, line)
            assert fields[0].isdigit() and int(fields[0]) < len(names), (label, line)
            assert all(0.0 <= float(v) <= 1.0 for v in fields[1:]), (label, line)
    assert not files(dataset, "*.tmp")
    return images


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    """A store with the default config under a fresh storage path."""
    return EvidenceStore(tmp_path / "storage", cfg(), CATS)


# --------------------------------------------------------------------------- drawing


def test_annotate_draws_boxes_labels_and_title_on_a_copy() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    b = box("glass", 0.87, (50, 80, 150, 180))
    out = annotate(image, [b], title="glass 0.87 UNCERTAIN")
    assert not image.any(), "the input must not be modified"
    assert out.shape == image.shape and out.dtype == np.uint8
    colour = CATEGORY_COLOURS_BGR["glass"]
    assert tuple(out[130, 50]) == colour and tuple(out[130, 150]) == colour  # left and right borders
    assert tuple(out[180, 100]) == colour  # bottom border
    assert not out[130, 100].any(), "the inside of the box stays untouched"
    assert out[60:80, 50:150].any(), "the label sits above the box"
    assert out[:12].any(), "the title is drawn at the top"
    assert annotate(image, []).tobytes() == image.tobytes()
    grey = annotate(np.zeros((60, 80), np.uint8), [b])
    assert grey.shape == (60, 80, 3)


def test_categories_have_distinct_stable_colours() -> None:
    colours = [category_colour(c) for c in CATS]
    assert len(set(colours)) == len(CATS)
    assert category_colour("some_new_class") == category_colour("some_new_class")


def test_labels_are_normalised_clipped_and_mapped_by_name() -> None:
    names = ["plastic", "glass"]
    boxes = [
        DetectedBox(0, "plastic", "plastic", 0.9, (-10, -10, 50, 50)),  # clipped to the image
        DetectedBox(7, "glass", "glass", 0.8, (100, 0, 200, 100)),  # id from another class list: looked up by name
        DetectedBox(0, "plastic", "plastic", 0.7, (300, 300, 400, 400)),  # entirely outside: left out
        DetectedBox(3, "paper", "paper_cardboard", 0.6, (0, 0, 10, 10)),  # not a dataset class: left out
    ]
    lines = yolo_label_lines(boxes, names, width=200, height=100)
    assert lines == ["0 0.125000 0.250000 0.250000 0.500000", "1 0.750000 0.500000 0.500000 1.000000"]


# --------------------------------------------------------------------------- snapshots


def test_snapshot_is_saved_annotated_and_kept_as_latest(store: EvidenceStore) -> None:
    d = decision("item-7", "glass", (box("glass", 0.9, (10, 10, 60, 60)),))
    path = store.save_snapshot(noise(1), d)
    assert path is not None and path.is_file()
    assert path.parent.parent == store.snapshot_dir
    assert path.parent.name == time.strftime("%Y-%m-%d", time.gmtime())
    assert path.name.endswith("_item-7_glass.jpg")
    assert store.latest_snapshot_jpeg == path.read_bytes()
    decoded = cv2.imdecode(np.frombuffer(store.latest_snapshot_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (96, 128, 3)
    stats = store.stats()
    assert stats["snapshots"]["count"] == 1 and stats["snapshots"]["bytes"] == path.stat().st_size
    assert stats["snapshots"]["latest"] == str(path) and stats["snapshots"]["latest_at"]
    assert stats["skipped"] == {"snapshot_errors": 0, "dataset_errors": 0} and stats["last_error"] is None
    frame = store.save_frame_snapshot(noise(2))
    assert frame is not None and frame.name.endswith("_request_frame.jpg")
    assert store.latest_snapshot_jpeg == frame.read_bytes()
    assert store.stats()["snapshots"]["count"] == 2
    assert not files(store.root, "*.tmp")


def test_snapshots_off_saves_no_file_but_keeps_the_latest_for_publishing(tmp_path: Path) -> None:
    s = EvidenceStore(tmp_path, cfg(snapshots=False), CATS)
    assert s.save_snapshot(noise(1), decision("a")) is None
    assert s.latest_snapshot_jpeg is not None and not files(s.snapshot_dir)
    quiet = EvidenceStore(tmp_path / "q", cfg(snapshots=False, publish_snapshot=False), CATS)
    assert quiet.save_snapshot(noise(1), decision("a")) is None and quiet.latest_snapshot_jpeg is None
    assert quiet.save_frame_snapshot(noise(2)) is not None, "an explicit snapshot request is still saved"


def test_snapshot_quota_deletes_the_oldest_first_and_keeps_the_newest(tmp_path: Path) -> None:
    s = EvidenceStore(tmp_path, cfg(snapshot_quota_mb=0.1), CATS)
    quota = s.snapshot_quota_bytes
    saved = [s.save_snapshot(noise(i), decision(f"i{i}")) for i in range(25)]
    assert all(p is not None for p in saved)
    on_disk = files(s.snapshot_dir, "*.jpg")
    assert 2 <= len(on_disk) < 25
    assert sum(p.stat().st_size for p in on_disk) <= quota
    assert set(on_disk) == set(saved[-len(on_disk):]), "exactly the newest survive"
    stats = s.stats()["snapshots"]
    assert stats["count"] == len(on_disk) and stats["bytes"] == sum(p.stat().st_size for p in on_disk)
    assert stats["deleted"] == 25 - len(on_disk)
    assert stats["latest"] == str(saved[-1])


def test_snapshot_age_limit_on_start_and_on_rescan(tmp_path: Path) -> None:
    s = EvidenceStore(tmp_path, cfg(snapshot_max_age_days=30), CATS)
    paths = [s.save_snapshot(noise(i), decision(f"i{i}")) for i in range(3)]
    assert all(p is not None for p in paths)
    old = time.time() - 31 * 86400
    os.utime(paths[0], (old, old))
    s2 = EvidenceStore(tmp_path, cfg(snapshot_max_age_days=30), CATS)  # start-up scan
    assert not paths[0].exists() and s2.stats()["snapshots"]["count"] == 2
    os.utime(paths[1], (old, old))
    s2.rescan()
    assert not paths[1].exists() and paths[2].exists()
    assert s2.stats()["snapshots"]["count"] == 1 and s2.stats()["snapshots"]["deleted"] == 2  # at start + rescan


def test_the_index_is_kept_in_memory_not_rebuilt_per_save(store: EvidenceStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = store._scan_snapshots
    monkeypatch.setattr(store, "_scan_snapshots", lambda: calls.append(1) or real())
    for i in range(5):
        store.save_snapshot(noise(i), decision(f"i{i}"))
        store.save_for_training(noise(i), (), "uncertain")
    assert calls == []
    store._next_rescan = 0.0  # the hourly rescan is due
    store.save_snapshot(noise(9), decision("late"))
    assert calls == [1]
    assert store.stats()["snapshots"]["count"] == 6 and store.stats()["dataset"]["images"] == 5


# --------------------------------------------------------------------------- active-learning dataset


def test_the_active_learning_folder_is_a_valid_yolo_dataset(store: EvidenceStore) -> None:
    boxes = (box("plastic", 0.6, (10, 10, 70, 80)), box("metal", 0.4, (60, 20, 140, 100)))  # 2nd sticks out
    assert store.save_for_training(noise(1), boxes, "margin 0.10 over metal < 0.15", item_id="item-1") is not None
    assert store.save_for_training(noise(2), (), "nothing detected") is not None  # a negative / to label
    assert store.save_for_training(noise(3, 240, 320), (box("hazardous", 0.3, (0, 0, 320, 240)),), "request",
                                   force=True) is not None
    images = assert_valid_yolo(store.dataset_dir, CATS)
    assert len(images) == 3
    assert any("_item-1_margin" in p.name for p in images)
    first = (store.labels_dir / f"{images[0].stem}.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in first] == ["0", "1"]
    assert cv2.imread(str(images[0])).shape == (96, 128, 3)
    readme = (store.dataset_dir / "README.txt").read_text(encoding="utf-8")
    assert "smartbin-train" in readme and "YOLO" in readme and "empty" in readme.lower()
    stats = store.stats()["dataset"]
    assert stats["images"] == 3 and stats["labelled"] == 2
    assert stats["bytes"] == sum(p.stat().st_size for p in files(store.dataset_dir / "images") + files(store.labels_dir))


def test_active_learning_off_saves_only_forced_frames(tmp_path: Path) -> None:
    s = EvidenceStore(tmp_path, cfg(active_learning=False), CATS)
    assert s.save_for_training(noise(1), (), "uncertain") is None
    assert s.save_for_training(noise(1), (), "request", force=True) is not None


def test_dataset_caps_on_image_count_and_bytes(tmp_path: Path) -> None:
    s = EvidenceStore(tmp_path / "a", cfg(dataset_max_images=4), CATS)
    saved = [s.save_for_training(noise(i), (box("glass", 0.5, (5, 5, 50, 50)),), "uncertain") for i in range(7)]
    assert files(s.images_dir) == sorted(saved[-4:]), "the 4 newest pairs are kept"
    assert_valid_yolo(s.dataset_dir, CATS)
    assert s.stats()["dataset"]["images"] == 4 and s.stats()["dataset"]["deleted"] == 3

    q = EvidenceStore(tmp_path / "b", cfg(dataset_quota_mb=0.06), CATS)
    saved = [q.save_for_training(noise(i), (), "uncertain") for i in range(6)]
    kept = files(q.images_dir)
    assert kept and kept[-1] == saved[-1] and len(kept) < 6
    assert sum(p.stat().st_size for p in kept + files(q.labels_dir)) <= q.dataset_quota_bytes
    assert_valid_yolo(q.dataset_dir, CATS)


def test_a_dataset_made_for_other_classes_is_moved_aside(tmp_path: Path) -> None:
    old = EvidenceStore(tmp_path, cfg(), ["plastic", "glass"])
    old.save_for_training(noise(1), (), "uncertain")
    new = EvidenceStore(tmp_path, cfg(), CATS)
    archives = list(tmp_path.glob("dataset-previous-*"))
    assert len(archives) == 1 and len(files(archives[0] / "images")) == 1
    assert yaml.safe_load((new.dataset_dir / "data.yaml").read_text())["names"] == CATS
    assert new.stats()["dataset"]["images"] == 0
    assert new.cleanup()["archived_datasets"] == 1 and not list(tmp_path.glob("dataset-previous-*"))


# --------------------------------------------------------------------------- crashes, full disks, cleanup


class _Crash(BaseException):
    """A process death in the middle of a save (not caught by the store, as a power cut would not be)."""


def test_a_crash_mid_save_never_shows_an_image_without_its_label(store: EvidenceStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    good = store.save_for_training(noise(1), (box("plastic", 0.5, (1, 1, 40, 40)),), "uncertain")
    assert good is not None
    real_replace = os.replace

    def dying_replace(src: object, dst: object) -> None:
        if str(dst).endswith(".jpg"):
            raise _Crash
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(evidence_mod.os, "replace", dying_replace)
    with pytest.raises(_Crash):
        store.save_for_training(noise(2), (box("glass", 0.5, (1, 1, 40, 40)),), "uncertain")
    monkeypatch.setattr(evidence_mod.os, "replace", real_replace)
    assert len(files(store.labels_dir)) == 2 and files(store.images_dir) == [good], "only a label is left over"
    # what a power cut can leave besides: half-written temp files; plus a label tool's extra files
    (store.images_dir / "20250101-000000-000000_x_uncertain.jpg.tmp").write_bytes(b"\xff\xd8half")
    day = store.snapshot_dir / "2025-01-01"
    day.mkdir(parents=True)
    (day / "000000-000_x_glass.jpg.tmp").write_bytes(b"\xff\xd8half")
    (store.labels_dir / "classes.txt").write_text("\n".join(CATS) + "\n")
    foreign = store.images_dir / "my-photo.jpg"
    cv2.imwrite(str(foreign), noise(5))

    restarted = EvidenceStore(store.root, cfg(), CATS)
    assert not files(store.root, "*.tmp")
    assert not day.exists(), "the emptied day folder is removed"
    assert {p.name for p in files(store.labels_dir)} == {f"{good.stem}.txt", "classes.txt"}
    assert set(files(store.images_dir)) == {good, foreign}, "images the user added are left alone"
    stats = restarted.stats()["dataset"]
    assert stats["images"] == 2 and stats["labelled"] == 1


def test_a_full_disk_skips_and_counts_evidence_and_recovers(store: EvidenceStore,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    store.save_snapshot(noise(0), decision("before"))
    store.emulated_free_bytes = 0
    with caplog.at_level(logging.WARNING, logger="smartbin_daemon.vision.evidence"):
        assert store.save_snapshot(noise(1), decision("full")) is None
        assert store.save_frame_snapshot(noise(2)) is None
        store.emulated_free_bytes = 100  # the label fits, the image does not: the label is rolled back
        assert store.save_for_training(noise(3), (box("glass", 0.5, (1, 1, 40, 40)),), "uncertain") is None
    assert store.emulated_free_bytes == 100
    stats = store.stats()
    assert stats["skipped"] == {"snapshot_errors": 2, "dataset_errors": 1}
    assert "No space left on device" in (stats["last_error"] or "")
    assert stats["snapshots"]["count"] == 1 and stats["dataset"]["images"] == 0
    assert not files(store.root, "*.tmp") and not files(store.images_dir) and not files(store.labels_dir)
    assert store.latest_snapshot_jpeg is not None, "HA still gets the picture when the card is full"
    skipped = [r for r in caplog.records if getattr(r, "SMARTBIN_EVENT", None) == "evidence_skipped"]
    assert len(skipped) == 3
    assert len({(r.msg, r.args) for r in skipped if r.args[0] == "snapshot"}) == 1, "repeats fold into one line"

    store.emulated_free_bytes = None  # space freed
    assert store.save_snapshot(noise(4), decision("after")) is not None
    assert store.save_for_training(noise(5), (), "uncertain") is not None
    assert_valid_yolo(store.dataset_dir, CATS)


def test_cleanup_clears_snapshots_and_dataset_but_keeps_its_description(store: EvidenceStore) -> None:
    for i in range(3):
        store.save_snapshot(noise(i), decision(f"i{i}"))
        store.save_for_training(noise(i), (box("organic", 0.4, (1, 1, 30, 30)),), "uncertain")
    on_disk = sum(p.stat().st_size for p in files(store.snapshot_dir) + files(store.images_dir) + files(store.labels_dir))
    result = store.cleanup()
    assert result["snapshots"] == 3 and result["dataset_images"] == 3 and result["dataset_labels"] == 3
    assert result["bytes_freed"] == on_disk
    assert not files(store.snapshot_dir) and not files(store.images_dir) and not files(store.labels_dir)
    assert (store.dataset_dir / "data.yaml").is_file() and (store.dataset_dir / "README.txt").is_file()
    stats = store.stats()
    assert stats["snapshots"]["count"] == 0 and stats["snapshots"]["bytes"] == 0 and stats["snapshots"]["latest"] is None
    assert stats["dataset"]["images"] == 0 and stats["dataset"]["bytes"] == 0 and stats["dataset"]["labelled"] == 0
    assert store.latest_snapshot_jpeg is None
    assert store.save_snapshot(noise(9), decision("next")) is not None
    assert store.save_for_training(noise(9), (), "uncertain") is not None


TMPFS_SCRIPT = """
import json, sys
from pathlib import Path
import cv2, numpy as np
from smartbin_daemon.config import EvidenceConfig
from smartbin_daemon.messages import Decision
from smartbin_daemon.vision.evidence import EvidenceStore

root = Path(sys.argv[1])
store = EvidenceStore(root, EvidenceConfig(snapshot_quota_mb=100, dataset_quota_mb=100), ["plastic", "glass"])
rng = np.random.default_rng(0)
img = lambda: rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
d = Decision("item", "plastic", "plastic", 0.9, None, 0.0, 0.9, False, None, "recycling", 5, {}, 1, 0.0)
saved = 0
for _ in range(80):
    if store.save_snapshot(img(), d) is None:
        break
    saved += 1
training = store.save_for_training(img(), [], "uncertain")
files = [p for p in root.rglob("*") if p.is_file()]
out = {
    "saved": saved,
    "training_saved": training is not None,
    "stats": store.stats(),
    "tmp_left": [str(p) for p in files if p.name.endswith(".tmp")],
    "unreadable": [str(p) for p in files if p.suffix == ".jpg" and cv2.imread(str(p)) is None],
    "labels": len(list((root / "dataset" / "labels").iterdir())),
    "images": len(list((root / "dataset" / "images").iterdir())),
}
store.cleanup()
out["after_cleanup_snapshot"] = store.save_snapshot(img(), d) is not None
out["after_cleanup_training"] = store.save_for_training(img(), [], "uncertain") is not None
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs in a private mount namespace is Linux-only")
def test_a_real_full_filesystem(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed: the real-tmpfs variant needs it (the emulated one ran)")
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "--", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(TMPFS_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount -t tmpfs -o size=256k tmpfs "$0" || exit 77; exec "$1" "$2" "$0"', str(mnt), sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    if proc.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < out["saved"] < 80, "the 256 KiB filesystem fills up before the loop ends"
    assert out["stats"]["skipped"]["snapshot_errors"] == 1
    assert not out["training_saved"] and out["stats"]["skipped"]["dataset_errors"] == 1
    assert "No space left on device" in out["stats"]["last_error"]
    assert out["tmp_left"] == [] and out["unreadable"] == []
    assert out["labels"] == 0 and out["images"] == 0, "the label was rolled back with its image"
    assert out["stats"]["snapshots"]["count"] == out["saved"]
    assert out["after_cleanup_snapshot"] and out["after_cleanup_training"]


# --------------------------------------------------------------------------- the training pipeline reads it


def _readme_classmap_entry(readme: str) -> dict:
    """The `smartbin-field:` class-map entry that the dataset's README tells the user to add."""
    lines = readme.splitlines()
    start = lines.index("  smartbin-field:")
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    return yaml.safe_load("\n".join(block))["smartbin-field"]


def test_the_training_pipeline_accepts_the_folder_with_an_identity_class_map_entry(tmp_path: Path) -> None:
    shipped = load_classmap(CLASSMAP)
    cats = shipped.category_names
    s = EvidenceStore(tmp_path / "storage", cfg(), cats)
    s.save_for_training(noise(1), (box("plastic", 0.6, (10, 10, 60, 60)), box("metal", 0.4, (70, 20, 120, 90))),
                        "uncertain")
    s.save_for_training(noise(2), (box("hazardous", 0.3, (0, 0, 128, 96)),), "uncertain")
    s.save_for_training(noise(3), (), "request", force=True)

    name, path = parse_dataset_arg(f"smartbin-field={s.dataset_dir}")
    src = load_source(path, name)
    assert src.class_names == cats and len(src.images("train")) == 3 and len(src.images("val")) == 3
    assert shipped.resolve("smartbin-field", src.class_names) == list(range(len(cats))), "the shipped map names it"

    raw = yaml.safe_load(CLASSMAP.read_text(encoding="utf-8"))
    raw["datasets"]["smartbin-field"] = _readme_classmap_entry((s.dataset_dir / "README.txt").read_text())
    map_path = tmp_path / "classmap.yaml"
    map_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    classmap = load_classmap(map_path)
    assert classmap.resolve("smartbin-field", src.class_names) == list(range(len(cats)))

    report = prepare_dataset([src], classmap, tmp_path / "merged", link_mode="copy")
    train = report.splits["train"]
    assert train.images == 3 and train.background_images == 1
    assert {c: n for c, n in train.boxes_per_category.items() if n} == {"plastic": 1, "metal": 1, "hazardous": 1}
    merged = sorted((tmp_path / "merged" / "labels" / "train").iterdir())
    originals = sorted(s.labels_dir.iterdir())
    assert [p.read_text() for p in merged] == [p.read_text() for p in originals], "identity: labels unchanged"

    datasets_dir = tmp_path / "datasets"  # the README's other route: a link in the datasets folder
    datasets_dir.mkdir()
    (datasets_dir / "smartbin-field").symlink_to(s.dataset_dir, target_is_directory=True)
    found = discover_sources(datasets_dir, classmap)
    assert [d.name for d in found] == ["smartbin-field"] and len(found[0].images("train")) == 3


def test_an_encoded_training_image_is_what_was_captured(store: EvidenceStore) -> None:
    image = noise(4)
    path = store.save_for_training(image, (), "uncertain")
    assert path is not None
    assert path.read_bytes() == encode_jpeg(image, 95), "unannotated, quality 95"


def test_a_long_title_wraps_onto_lines_that_fit_instead_of_running_off_the_edge() -> None:
    from smartbin_daemon.vision.annotate import TITLE_LINES, _width, _wrap

    title = "paper_cardboard 0.41 (cardboard) UNCERTAIN: margin 0.08 below 0.20 over glass 0.33"
    lines = _wrap(title, 314, 0.4, 1)
    assert 1 < len(lines) <= TITLE_LINES
    assert all(_width(line, 0.4, 1) <= 314 for line in lines), lines
    assert " ".join(lines) == title, "every word is shown when it fits in the lines"
    cut = _wrap(title * 4, 314, 0.4, 1)
    assert len(cut) == TITLE_LINES and cut[-1].endswith("~") and _width(cut[-1], 0.4, 1) <= 314

    image = np.zeros((240, 320, 3), np.uint8)
    one = annotate(image, [], title="glass 0.87")
    three = annotate(image, [], title=title)
    band = lambda out: int(np.flatnonzero(out[:, :, :].any(axis=(1, 2)))[-1])  # noqa: E731 - last row with ink
    assert band(three) > band(one) + 10, "the wrapped title takes more lines of the band"
