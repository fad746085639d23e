"""Pick sample images from the valid splits by a fixed rule, and score a model on them."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smartbin_daemon.training.classmap import ClassMap
from smartbin_daemon.training.dataset import SourceDataset, read_labels

logger = logging.getLogger(__name__)

SAMPLES_YAML = "samples.yaml"
ATTRIBUTION_MD = "ATTRIBUTION.md"
SELECTION_RULE = (
    "valid-split images whose boxes all map to one category (no dropped classes present) and whose "
    "largest box covers >= 5% of the image; ordered by sha1(dataset/filename); taken round-robin over "
    "categories (at most {per_category} per category, {count} in all); chosen before any prediction was looked at"
)


@dataclass(frozen=True)
class Sample:
    """One sample image and its expected category."""

    file: str
    dataset: str
    original_file: str
    expected_category: str
    boxes: int


def _candidates(
    sources: Sequence[SourceDataset], classmap: ClassMap, min_area: float
) -> dict[str, list[tuple[str, SourceDataset, Path, int]]]:
    """Single-category valid images per category, in hash order."""
    names = classmap.category_names
    by_cat: dict[str, list[tuple[str, SourceDataset, Path, int]]] = defaultdict(list)
    for src in sources:
        mapping = classmap.resolve(src.name, src.class_names)
        for image in src.images("val"):
            rows = read_labels(image)
            if not rows:
                continue
            targets = [mapping[c] if 0 <= c < len(mapping) else None for c, _ in rows]
            if any(t is None for t in targets) or len(set(targets)) != 1:
                continue
            largest = max(float(coords[2]) * float(coords[3]) for _, coords in rows if len(coords) >= 4)
            if largest < min_area:
                continue
            key = hashlib.sha1(f"{src.name}/{image.name}".encode()).hexdigest()
            by_cat[names[targets[0]]].append((key, src, image, len(rows)))  # type: ignore[index]
    for items in by_cat.values():
        items.sort(key=lambda item: item[0])
    return by_cat


def select_samples(
    sources: Sequence[SourceDataset],
    classmap: ClassMap,
    out_dir: Path,
    count: int = 20,
    per_category: int = 3,
    min_area: float = 0.05,
) -> list[Sample]:
    """Copy up to `count` rule-selected valid images into out_dir with samples.yaml and ATTRIBUTION.md."""
    by_cat = _candidates(sources, classmap, min_area)
    chosen: list[tuple[str, SourceDataset, Path, int]] = []
    chosen_cats: list[str] = []
    for round_no in range(per_category):
        for cat in classmap.category_names:
            items = by_cat.get(cat, [])
            if round_no < len(items) and len(chosen) < count:
                chosen.append(items[round_no])
                chosen_cats.append(cat)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.jpg"):
        old.unlink()
    samples: list[Sample] = []
    for (key, src, image, nboxes), cat in zip(chosen, chosen_cats, strict=True):
        file = f"{src.name}__{key[:10]}{image.suffix.lower()}"
        shutil.copyfile(image, out_dir / file)
        samples.append(
            Sample(file=file, dataset=src.name, original_file=image.name, expected_category=cat, boxes=nboxes)
        )
    rule = SELECTION_RULE.format(per_category=per_category, count=count)
    doc = {
        "rule": rule,
        "expected_category": "category of the image's largest labelled box (all boxes share it by the rule)",
        "samples": [s.__dict__ for s in samples],
    }
    (out_dir / SAMPLES_YAML).write_text(yaml.safe_dump(doc, sort_keys=False, width=110), encoding="utf-8")
    lines = [
        "# Sample images: attribution",
        "",
        "Images from the VALID splits of the datasets below, as kept in the project's dataset folder: the "
        "authors' Roboflow exports resized from 640x640 to 320x320 (stretch) and re-encoded as JPEG quality 65; "
        "no other changes. Renamed to `<dataset>__<sha1 prefix>.jpg`; the original file names are listed below.",
        "",
    ]
    for name, spec in classmap.datasets.items():
        if any(s.dataset == name for s in samples):
            lines.append(f"- `{name}`: {spec.attribution()} (https://creativecommons.org/licenses/by/4.0/).")
    lines += [
        "",
        f"Selection rule: {rule}.",
        "",
        "| file | source dataset | license | original filename | expected category |",
        "|---|---|---|---|---|",
    ]
    for s in samples:
        lines.append(
            f"| {s.file} | {s.dataset} | {classmap.datasets[s.dataset].license} | {s.original_file} | {s.expected_category} |"
        )
    (out_dir / ATTRIBUTION_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("selected %d sample images into %s", len(samples), out_dir)
    return samples


def load_samples(samples_dir: Path) -> list[Sample]:
    """Read samples.yaml."""
    doc = yaml.safe_load((Path(samples_dir) / SAMPLES_YAML).read_text(encoding="utf-8"))
    return [Sample(**item) for item in doc["samples"]]


def score_samples(model_path: Path, samples_dir: Path, classmap_path: Path | None = None) -> dict[str, Any]:
    """Route the samples as the simulation does (the daemon's ONNX path, K identical frames, the thresholds the
    daemon would use with this model) and count how many reach their expected compartment."""
    from smartbin_daemon.config import DetectorConfig
    from smartbin_daemon.training.routing import Item, daemon_model, observe, route
    from smartbin_daemon.vision.decision import effective_policy

    model = daemon_model(model_path, classmap_path)
    compartments = model.classmap.category_compartments()
    own = model.classmap.thresholds
    policy, source = effective_policy(None, None, (own.min_confidence, own.min_margin) if own else None)
    samples = load_samples(samples_dir)
    items = [Item(Path(samples_dir) / s.file, s.expected_category, compartments[s.expected_category])
             for s in samples]
    frames = int(DetectorConfig.model_fields["frames_per_decision"].default)
    routed = route(observe(model, items, frames=frames, vary=False), policy, compartments)
    rows = [{"file": r["image"], "expected": r["expected_category"], "expected_compartment": r["expected_compartment"],
             "predicted": r["category"], "compartment": r["compartment"], "confidence": r["confidence"],
             "uncertain": r["uncertain"], "correct": r["compartment"] == r["expected_compartment"]}
            for r in routed["rows"]]
    correct = sum(1 for r in rows if r["correct"])
    out = {
        "model": str(model_path),
        "imgsz": model.imgsz,
        "min_confidence": policy.min_confidence,
        "min_margin": policy.min_margin,
        "thresholds_from": source["min_confidence"],
        "rule": (f"the daemon's onnxruntime path and {frames}-frame vote on a still image (as the simulation shows it), "
                 f"min_confidence {policy.min_confidence:.2f}, min_margin {policy.min_margin:.2f}; correct = routed "
                 "to the expected category's compartment"),
        "correct": correct,
        "category_correct": sum(1 for r in rows if r["predicted"] == r["expected"]),
        "total": len(rows),
        "share": round(correct / len(rows), 4) if rows else 0.0,
        "rows": rows,
    }
    logger.info("samples: %d/%d routed to the expected compartment by %s", correct, len(rows), model_path)
    return out
