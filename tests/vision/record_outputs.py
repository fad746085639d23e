"""Record detector outputs for test_decision.py: the shipped model on K jittered views of sample images.

Run from the repo root: `python -m tests.vision.record_outputs` (rewrites tests/vision/data/recorded_decisions.json).
Only the raw per-frame boxes and the sample's labelled category are stored; test_decision.py checks
properties of the vote on them (never a minority category, thresholds honoured, one occluded frame
does not flip a decision), not outcomes copied from a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import yaml

from smartbin_daemon.vision.decision import VotePolicy, decide
from smartbin_daemon.vision.model import load_model

REPO = Path(__file__).resolve().parents[2]
K = 5


def jitter(image: np.ndarray, i: int, rng: np.random.Generator) -> np.ndarray:
    """A slightly different view, as consecutive camera frames are: shift, brightness, and in one frame a 'hand'."""
    h, w = image.shape[:2]
    dx, dy = rng.integers(-8, 9, 2)
    out = cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    out = cv2.convertScaleAbs(out, alpha=float(rng.uniform(0.85, 1.15)), beta=float(rng.uniform(-12, 12)))
    if i == 2:  # a hand partly covering the item in one frame
        cv2.ellipse(out, (w // 2, h), (w // 4, h // 3), 0, 180, 360, (150, 170, 200), -1)
    return out


def main() -> None:
    """Record, print a summary, write the JSON."""
    model = load_model(REPO / "models" / "smartbin-waste-s.onnx", classmap=None, device="cpu", imgsz=None,
                       conf=0.25, iou=0.45, max_det=20)
    samples = yaml.safe_load((REPO / "tests/data/samples/samples.yaml").read_text())["samples"]
    rng = np.random.default_rng(42)
    cases = []
    for entry in samples:
        image = cv2.imread(str(REPO / "tests/data/samples" / entry["file"]))
        frames = []
        for i in range(K):
            boxes, _ = model.predict(jitter(image, i, rng))
            frames.append({"seq": i + 1, "boxes": [
                {"class_id": b.class_id, "class_name": b.class_name, "category": b.category,
                 "confidence": round(b.confidence, 4), "xyxy": [round(v, 1) for v in b.xyxy]} for b in boxes]})
        d = decide(entry["file"], [(f["seq"], [_box(b) for b in f["boxes"]]) for f in frames], VotePolicy(),
                   model.classmap.category_compartments(), 0.0)
        cases.append({"item_id": entry["file"], "labelled_category": entry["expected_category"], "frames": frames,
                      "occluded_frame_seq": 3})
        print(f"{entry['file']:40s} label={entry['expected_category']:16s} -> {d.category:16s} "
              f"conf={d.confidence:.2f} margin={d.margin:.2f} uncertain={d.uncertain}")
    out = REPO / "tests/vision/data/recorded_decisions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cases, indent=1))


def _box(b: dict) -> object:
    from smartbin_daemon.messages import DetectedBox

    return DetectedBox(b["class_id"], b["class_name"], b["category"], b["confidence"], tuple(b["xyxy"]))


if __name__ == "__main__":
    main()
