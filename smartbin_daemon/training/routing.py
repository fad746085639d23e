"""Items routed by the daemon's own path (onnxruntime backend, K-frame vote, compartments) on a labelled split.

This is what the bin does with a model, so the vote thresholds are chosen here and the card's compartment
confusion comes from here, not from mAP. Each labelled image is one item; its expected category is that of
its largest box, and images whose boxes belong to different compartments are left out (the bin sees one
item at a time).

Why varied frames: the bin sees an item over K frames while it settles. K copies of one image would always
vote unanimously, so the margin rule would never act; frames 2..K are mild seeded jitters of the image
(scale, shift, brightness, mirror), the first is the image itself.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from smartbin_daemon.config import DetectorConfig
from smartbin_daemon.messages import DetectedBox
from smartbin_daemon.vision.decision import RESIDUAL, VotePolicy, decide
from smartbin_daemon.vision.model import ClassMapFile, LoadedModel, load_model

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CONFIDENCE_GRID = tuple(round(0.10 + 0.05 * i, 2) for i in range(17))  # 0.10 .. 0.90
MARGIN_GRID = tuple(round(0.05 * i, 2) for i in range(11))  # 0.00 .. 0.50
MAX_WRONG_SHARE = 0.05
RULE = (f"on the valid split, through the daemon's ONNX path and K-frame vote: among min_confidence "
        f"{CONFIDENCE_GRID[0]:.2f}..{CONFIDENCE_GRID[-1]:.2f} and min_margin {MARGIN_GRID[0]:.2f}.."
        f"{MARGIN_GRID[-1]:.2f} (steps of 0.05), the pair that routes the most items to their expected compartment "
        f"while items sorted into a wrong compartment (anything but the residual fallback) stay at most "
        f"{MAX_WRONG_SHARE:.0%} of all items; among equal pairs the middle one (min_confidence first), the least "
        "tuned to this split")


@dataclass(frozen=True)
class Item:
    """One labelled image as an item put into the bin."""

    image: Path
    category: str
    compartment: str


@dataclass
class Observed:
    """What the model saw of an item: K frames of boxes, ready to be voted under any thresholds."""

    item: Item
    frames: list[tuple[int, list[DetectedBox]]]


def read_items(images_dir: Path, labels_dir: Path, classmap: ClassMapFile) -> tuple[list[Item], dict[str, int]]:
    """Items of a YOLO split; also counts of images left out (`background`, `mixed` compartments)."""
    entries = classmap.by_index()
    items: list[Item] = []
    skipped = {"background": 0, "mixed": 0}
    for image in sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = Path(labels_dir) / f"{image.stem}.txt"
        boxes: list[tuple[float, int]] = []
        if label.is_file():
            for line in label.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) >= 5 and int(parts[0]) in entries:
                    boxes.append((float(parts[3]) * float(parts[4]), int(parts[0])))
        if not boxes:
            skipped["background"] += 1
            continue
        if len({entries[c].compartment for _, c in boxes}) > 1:
            skipped["mixed"] += 1
            continue
        largest = entries[max(boxes)[1]]
        items.append(Item(image, largest.category, largest.compartment))
    return items, skipped


def jitter(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """One plausible other view of the item: scale ±8 %, shift ±4 %, brightness ±12 %, mirrored half the time."""
    h, w = image.shape[:2]
    scale = rng.uniform(0.92, 1.08)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    matrix[0, 2] += rng.uniform(-0.04, 0.04) * w
    matrix[1, 2] += rng.uniform(-0.04, 0.04) * h
    out = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    out = cv2.convertScaleAbs(out, alpha=rng.uniform(0.88, 1.12))
    return cv2.flip(out, 1) if rng.random() < 0.5 else out


def daemon_model(onnx_path: Path, classmap_path: Path | None = None, threads: int = 0) -> LoadedModel:
    """Load a model exactly as the detector does, with the detector's default conf/iou/max_det."""
    defaults = {name: field.default for name, field in DetectorConfig.model_fields.items()}
    return load_model(Path(onnx_path), classmap=classmap_path, device="cpu", imgsz=defaults["imgsz"],
                      conf=defaults["conf"], iou=defaults["iou"], max_det=defaults["max_det"],
                      backend="onnxruntime", threads=threads)


def observe(model: LoadedModel, items: Sequence[Item], frames: int = 5, seed: int = 0,
            vary: bool = True) -> list[Observed]:
    """Run the model on K frames per item (the image, then K-1 jitters unless `vary` is off)."""
    observed: list[Observed] = []
    t0 = time.monotonic()
    for n, item in enumerate(items):
        image = cv2.imread(str(item.image))
        if image is None:
            raise ValueError(f"cannot read {item.image}")
        rng = random.Random(f"{seed}:{item.image.name}")
        seen: list[tuple[int, list[DetectedBox]]] = []
        for k in range(frames):
            view = jitter(image, rng) if vary and k > 0 else image
            boxes, _ = model.predict(view)
            seen.append((k, boxes))
        observed.append(Observed(item, seen))
        if (n + 1) % 100 == 0:
            logger.info("routing: %d/%d items observed (%.0f s)", n + 1, len(items), time.monotonic() - t0)
    return observed


def route(observed: Iterable[Observed], policy: VotePolicy, compartments: dict[str, str]) -> dict[str, Any]:
    """Vote each item as the detector does; count where items went per expected compartment."""
    matrix: dict[str, dict[str, int]] = {}
    correct = wrong = fallback = total = 0
    rows: list[dict[str, Any]] = []
    for seen in observed:
        d = decide(seen.item.image.name, seen.frames, policy, compartments, 0.0)
        routed = d.compartment or compartments.get(RESIDUAL, RESIDUAL)
        expected = seen.item.compartment
        matrix.setdefault(expected, {}).setdefault(routed, 0)
        matrix[expected][routed] += 1
        total += 1
        if routed == expected:
            correct += 1
        elif d.uncertain or d.category == RESIDUAL:
            fallback += 1
        else:
            wrong += 1
        rows.append({"image": seen.item.image.name, "expected_category": seen.item.category,
                     "expected_compartment": expected, "category": d.category, "compartment": routed,
                     "uncertain": d.uncertain, "confidence": d.confidence, "margin": d.margin})
    return {"items": total, "correct": correct, "wrong_sorted": wrong, "to_residual": fallback,
            "correct_share": _share(correct, total), "wrong_share": _share(wrong, total),
            "matrix_expected_by_routed": matrix, "rows": rows}


def contamination(matrix: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per compartment the items routed into it and the share of them that belong elsewhere."""
    into: dict[str, dict[str, int]] = {}
    for expected, routed_counts in matrix.items():
        for routed, count in routed_counts.items():
            into.setdefault(routed, {}).setdefault(expected, 0)
            into[routed][expected] += count
    out: dict[str, dict[str, Any]] = {}
    for routed, by_expected in sorted(into.items()):
        total = sum(by_expected.values())
        foreign = {k: v for k, v in by_expected.items() if k != routed}
        out[routed] = {"items": total, "foreign": sum(foreign.values()),
                       "foreign_share": _share(sum(foreign.values()), total), "from": dict(sorted(foreign.items()))}
    return out


def choose_thresholds(observed: Sequence[Observed], compartments: dict[str, str],
                      max_wrong_share: float = MAX_WRONG_SHARE) -> dict[str, Any]:
    """Pick (min_confidence, min_margin) by RULE; if no pair keeps the wrong share low enough, among the pairs with
    the fewest wrong sorts (and say so)."""
    grid: list[dict[str, Any]] = []
    for conf in CONFIDENCE_GRID:
        for margin in MARGIN_GRID:
            r = route(observed, VotePolicy(conf, margin), compartments)
            grid.append({"min_confidence": conf, "min_margin": margin, "correct": r["correct"],
                         "wrong_sorted": r["wrong_sorted"], "to_residual": r["to_residual"],
                         "wrong_share": r["wrong_share"]})
    items = len(observed)
    allowed = [g for g in grid if g["wrong_sorted"] <= max_wrong_share * items]
    met = bool(allowed)
    pool = allowed or [g for g in grid if g["wrong_sorted"] == min(x["wrong_sorted"] for x in grid)]
    top = max(g["correct"] for g in pool)
    tied = [g for g in pool if g["correct"] == top]
    confs = sorted({g["min_confidence"] for g in tied})
    conf = confs[len(confs) // 2]
    margins = sorted(g["min_margin"] for g in tied if g["min_confidence"] == conf)
    best = next(g for g in tied if g["min_confidence"] == conf and g["min_margin"] == margins[len(margins) // 2])
    policy = VotePolicy(best["min_confidence"], best["min_margin"])
    chosen = route(observed, policy, compartments)
    return {
        "min_confidence": best["min_confidence"], "min_margin": best["min_margin"],
        "rule": RULE, "max_wrong_share": max_wrong_share, "constraint_met": met,
        "items": items, "correct_share": chosen["correct_share"], "wrong_share": chosen["wrong_share"],
        "to_residual_share": _share(chosen["to_residual"], items),
        "matrix_expected_by_routed": chosen["matrix_expected_by_routed"],
        "contamination": contamination(chosen["matrix_expected_by_routed"]),
        "grid": grid,
    }


def speed_side_by_side(models: dict[str, Path], images: Sequence[Path], threads: int = 1,
                       repeats: int = 3, baseline: str | None = None) -> dict[str, Any]:
    """ms per frame of each ONNX model through the daemon's backend, interleaved frame by frame (noise hits all)."""
    loaded = {name: daemon_model(path, threads=threads) for name, path in models.items()}
    frames = [f for f in (cv2.imread(str(p)) for p in images) if f is not None]
    if not frames:
        raise ValueError("no readable frames for the speed comparison")
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for model in loaded.values():
        model.predict(frames[0])  # warm-up
    for _ in range(repeats):
        for frame in frames:
            for name, model in loaded.items():
                t0 = time.perf_counter()
                model.predict(frame)
                times[name].append((time.perf_counter() - t0) * 1000.0)
    base = baseline or next(iter(loaded))
    medians = {name: statistics.median(v) for name, v in times.items()}
    return {
        "method": (f"daemon onnxruntime backend, {threads} intra-op thread(s), {len(frames)} frames x {repeats} "
                   "passes, models interleaved per frame; median wall ms of predict (pre + inference + post)"),
        "threads": threads,
        "baseline": base,
        "models": {name: {"path": str(models[name]), "imgsz": loaded[name].imgsz,
                          "onnx_bytes": Path(models[name]).stat().st_size,
                          "ms_median": round(medians[name], 2),
                          "ratio": round(medians[name] / medians[base], 2)} for name in loaded},
    }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
