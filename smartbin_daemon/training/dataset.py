"""Read YOLO-format source datasets and merge them into one category-labelled dataset."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smartbin_daemon.training.classmap import ClassMap, ClassMapError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val")
SPLIT_KEYS = {"train": ("train",), "val": ("val", "valid")}


@dataclass(frozen=True)
class SourceDataset:
    """A YOLO-format dataset on disk."""

    name: str
    root: Path
    class_names: list[str]
    split_dirs: dict[str, Path]

    def images(self, split: str) -> list[Path]:
        """Sorted image files of a split (empty when the split is absent)."""
        folder = self.split_dirs.get(split)
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def label_path_for(image: Path) -> Path:
    """YOLO convention: .../images/x.jpg -> .../labels/x.txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(image: Path) -> list[tuple[int, list[str]]]:
    """Label rows of an image as (class index, coordinate strings); missing file = no boxes."""
    path = label_path_for(image)
    if not path.is_file():
        return []
    rows: list[tuple[int, list[str]]] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            rows.append((int(float(fields[0])), fields[1:]))
        except ValueError as exc:
            raise ValueError(f"{path}:{line_no}: bad class id {fields[0]!r}") from exc
    return rows


def load_source(path: Path, name: str | None = None) -> SourceDataset:
    """Open a YOLO dataset folder (or its data.yaml)."""
    path = Path(path)
    data_yaml = path if path.is_file() else path / "data.yaml"
    if not data_yaml.is_file():
        raise FileNotFoundError(f"no data.yaml in {path}")
    raw = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    names = raw.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{data_yaml}: 'names' missing or empty")
    base = data_yaml.parent
    root_value = raw.get("path")
    root = base if root_value in (None, "", ".") else (base / str(root_value)).resolve()
    if not root.is_dir():
        root = base
    split_dirs: dict[str, Path] = {}
    for split, keys in SPLIT_KEYS.items():
        for key in keys:
            value = raw.get(key)
            if isinstance(value, str):
                candidate = (root / value).resolve()
                if not candidate.is_dir() and (base / value).is_dir():
                    candidate = (base / value).resolve()
                split_dirs[split] = candidate
                break
    return SourceDataset(
        name=name or base.name, root=root, class_names=[str(n) for n in names], split_dirs=split_dirs
    )


def parse_dataset_arg(value: str) -> tuple[str | None, Path]:
    """Parse a CLI dataset argument 'PATH' or 'NAME=PATH'."""
    if "=" in value and not Path(value).exists():
        name, _, path = value.partition("=")
        return name.strip() or None, Path(path)
    return None, Path(value)


def discover_sources(datasets_dir: Path, classmap: ClassMap) -> list[SourceDataset]:
    """All datasets under a folder that the class map names, in class-map order."""
    found = []
    for name in classmap.datasets:
        folder = datasets_dir / name
        if (folder / "data.yaml").is_file():
            found.append(load_source(folder, name))
        else:
            logger.warning("dataset %s named in the class map not found under %s", name, datasets_dir)
    if not found:
        raise FileNotFoundError(
            f"none of the class map's datasets ({', '.join(classmap.datasets)}) is in {datasets_dir}"
        )
    return found


@dataclass
class SplitStats:
    """Class balance of one split."""

    images: int = 0
    background_images: int = 0
    boxes_per_category: dict[str, int] = field(default_factory=dict)
    images_per_category: dict[str, int] = field(default_factory=dict)
    dropped_boxes: dict[str, int] = field(default_factory=dict)
    images_per_source: dict[str, int] = field(default_factory=dict)


@dataclass
class PrepareReport:
    """Result of merging datasets."""

    data_yaml: Path
    out_dir: Path
    categories: list[str]
    sources: list[str]
    link_mode: str
    splits: dict[str, SplitStats]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "data_yaml": str(self.data_yaml),
            "out_dir": str(self.out_dir),
            "categories": self.categories,
            "sources": self.sources,
            "link_mode": self.link_mode,
            "splits": {k: asdict(v) for k, v in self.splits.items()},
        }


def _link(src: Path, dst: Path, mode: str) -> str:
    """Place src at dst by hardlink, symlink or copy (falling back in that order); return the mode used."""
    modes = {"hardlink": ("hardlink", "symlink", "copy"), "symlink": ("symlink", "copy"), "copy": ("copy",)}[
        mode
    ]
    for m in modes:
        try:
            if m == "hardlink":
                os.link(src, dst)
            elif m == "symlink":
                os.symlink(src.resolve(), dst)
            else:
                shutil.copy2(src, dst)
            return m
        except OSError as exc:
            logger.debug("%s %s -> %s failed: %s", m, src, dst, exc)
    raise OSError(f"cannot place {src} at {dst}")


def _pick(images: Sequence[Path], limit: int | None) -> list[Path]:
    """First `limit` labelled images (sorted), or all."""
    if limit is None:
        return list(images)
    labelled = [p for p in images if read_labels(p)]
    return labelled[:limit]


def prepare_dataset(
    sources: Iterable[SourceDataset],
    classmap: ClassMap,
    out_dir: Path,
    link_mode: str = "hardlink",
    max_images_per_split: int | None = None,
) -> PrepareReport:
    """Merge sources into out_dir with category labels, write data.yaml and balance.json."""
    sources = list(sources)
    out_dir = Path(out_dir).resolve()
    categories = classmap.category_names
    mappings = {src.name: classmap.resolve(src.name, src.class_names) for src in sources}
    for sub in ("images", "labels"):
        if (out_dir / sub).exists():
            shutil.rmtree(out_dir / sub)
    used_modes: set[str] = set()
    splits: dict[str, SplitStats] = {}
    for split in SPLITS:
        stats = SplitStats(
            boxes_per_category={c: 0 for c in categories}, images_per_category={c: 0 for c in categories}
        )
        img_dir = out_dir / "images" / split
        lbl_dir = out_dir / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for src in sources:
            mapping = mappings[src.name]
            picked = _pick(src.images(split), max_images_per_split)
            stats.images_per_source[src.name] = len(picked)
            for image in picked:
                lines: list[str] = []
                present: set[str] = set()
                for cls, coords in read_labels(image):
                    if not 0 <= cls < len(mapping):
                        raise ClassMapError(
                            f"dataset {src.name!r}: {label_path_for(image)} uses class id {cls}, "
                            f"but data.yaml lists {len(mapping)} classes"
                        )
                    target = mapping[cls]
                    if target is None:
                        key = src.class_names[cls]
                        stats.dropped_boxes[key] = stats.dropped_boxes.get(key, 0) + 1
                        continue
                    lines.append(" ".join([str(target), *coords]))
                    stats.boxes_per_category[categories[target]] += 1
                    present.add(categories[target])
                stem = f"{src.name}__{image.stem}"
                used_modes.add(_link(image, img_dir / f"{stem}{image.suffix.lower()}", link_mode))
                (lbl_dir / f"{stem}.txt").write_text(
                    "\n".join(lines) + ("\n" if lines else ""), encoding="utf-8"
                )
                stats.images += 1
                if not present:
                    stats.background_images += 1
                for cat in present:
                    stats.images_per_category[cat] += 1
        splits[split] = stats
    data_yaml = out_dir / "data.yaml"
    data = {
        "path": str(out_dir),
        "train": "images/train",
        "val": "images/val",
        "nc": len(categories),
        "names": dict(enumerate(categories)),
    }
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    report = PrepareReport(
        data_yaml=data_yaml,
        out_dir=out_dir,
        categories=categories,
        sources=[s.name for s in sources],
        link_mode="+".join(sorted(used_modes)) or link_mode,
        splits=splits,
    )
    (out_dir / "balance.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    logger.info("merged %s into %s\n%s", report.sources, out_dir, format_balance(report))
    return report


def format_balance(report: PrepareReport | dict[str, Any]) -> str:
    """Markdown table of boxes/images per category and split."""
    data: dict[str, Any] = report.to_dict() if isinstance(report, PrepareReport) else report
    categories: list[str] = list(data["categories"])
    splits: dict[str, dict[str, Any]] = data["splits"]
    header = "| category | " + " | ".join(f"{s} boxes | {s} images" for s in splits) + " |"
    sep = "|---|" + "---:|---:|" * len(splits)
    rows = [header, sep]
    for cat in categories:
        cells = []
        for stats in splits.values():
            cells.append(str(stats["boxes_per_category"][cat]))
            cells.append(str(stats["images_per_category"][cat]))
        rows.append(f"| {cat} | " + " | ".join(cells) + " |")
    totals = []
    for stats in splits.values():
        totals.append(str(sum(stats["boxes_per_category"].values())))
        totals.append(f"{stats['images']} ({stats['background_images']} background)")
    rows.append("| **all** | " + " | ".join(totals) + " |")
    dropped = {s: st["dropped_boxes"] for s, st in splits.items() if st["dropped_boxes"]}
    if dropped:
        rows.append("")
        rows.append("Dropped boxes: " + "; ".join(f"{s}: {d}" for s, d in dropped.items()))
    return "\n".join(rows)
