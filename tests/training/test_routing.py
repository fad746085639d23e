"""Choosing the vote thresholds on labelled items, routed the way the daemon routes them."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from smartbin_daemon.messages import DetectedBox
from smartbin_daemon.training.routing import (
    MAX_WRONG_SHARE,
    Item,
    Observed,
    choose_thresholds,
    contamination,
    jitter,
    read_items,
    route,
)
from smartbin_daemon.vision.decision import VotePolicy
from smartbin_daemon.vision.model import ClassMapFile

CLASSMAP = ClassMapFile.model_validate({"classes": [
    {"index": 0, "name": "plastic", "category": "plastic", "compartment": "recycling"},
    {"index": 1, "name": "glass", "category": "glass", "compartment": "glass"},
    {"index": 2, "name": "residual", "category": "residual", "compartment": "residual"},
]})
COMPARTMENTS = CLASSMAP.category_compartments()
NAMES = {"plastic": 0, "glass": 1, "residual": 2}


def box(category: str, confidence: float) -> DetectedBox:
    return DetectedBox(NAMES[category], category, category, confidence, (10.0, 10.0, 100.0, 100.0))


def seen(expected: str, *frames: tuple[str, float] | None) -> Observed:
    """An item whose K frames each show at most one box."""
    item = Item(Path(f"{expected}-{random.random()}.jpg"), expected, COMPARTMENTS[expected])
    return Observed(item, [(k, [] if f is None else [box(*f)]) for k, f in enumerate(frames)])


def test_items_take_the_largest_box_and_skip_background_and_mixed_images(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    specs = {
        "one": "0 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.6 0.6\n",  # two plastic boxes
        "same-compartment": "0 0.5 0.5 0.2 0.2\n",
        "mixed": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.5 0.5\n",  # recycling and glass
        "empty": "",
    }
    for stem, text in specs.items():
        cv2.imwrite(str(images / f"{stem}.jpg"), np.zeros((8, 8, 3), np.uint8))
        (labels / f"{stem}.txt").write_text(text)
    cv2.imwrite(str(images / "unlabelled.jpg"), np.zeros((8, 8, 3), np.uint8))
    items, skipped = read_items(images, labels, CLASSMAP)
    assert [(i.image.stem, i.category, i.compartment) for i in items] == [
        ("one", "plastic", "recycling"), ("same-compartment", "plastic", "recycling")]
    assert skipped == {"background": 2, "mixed": 1}


def test_route_counts_right_wrong_and_fallback_per_compartment() -> None:
    observed = [
        seen("plastic", ("plastic", 0.9), ("plastic", 0.8)),   # right
        seen("plastic", ("glass", 0.9), ("glass", 0.9)),       # wrong: plastic in the bottle bank
        seen("glass", ("glass", 0.3), ("glass", 0.3)),         # too unsure: residual
        seen("residual", None, None),                          # nothing seen: residual, which is right
    ]
    r = route(observed, VotePolicy(0.5, 0.15), COMPARTMENTS)
    assert (r["items"], r["correct"], r["wrong_sorted"], r["to_residual"]) == (4, 2, 1, 1)
    assert r["matrix_expected_by_routed"] == {
        "recycling": {"recycling": 1, "glass": 1}, "glass": {"residual": 1}, "residual": {"residual": 1}}
    dirty = contamination(r["matrix_expected_by_routed"])
    assert dirty["glass"] == {"items": 1, "foreign": 1, "foreign_share": 1.0, "from": {"recycling": 1}}
    assert dirty["recycling"]["foreign"] == 0 and dirty["residual"]["from"] == {"glass": 1}


def test_margin_rule_sends_split_votes_to_residual() -> None:
    split = seen("plastic", ("plastic", 0.9), ("glass", 0.85), ("plastic", 0.9), ("glass", 0.85))
    assert route([split], VotePolicy(0.3, 0.0), COMPARTMENTS)["correct"] == 1
    assert route([split], VotePolicy(0.3, 0.1), COMPARTMENTS)["to_residual"] == 1


def test_thresholds_keep_wrong_sorting_under_the_limit_and_route_the_most_items() -> None:
    # 20 confident right items, 10 right at 0.45, and 4 confidently wrong ones at 0.6: a low threshold sorts all 30
    # right items but also the 4 wrong ones (4/34 > 5 %); only above 0.6 do the wrong ones go to residual.
    observed = [seen("plastic", ("plastic", 0.95), ("plastic", 0.95)) for _ in range(20)]
    observed += [seen("glass", ("glass", 0.45), ("glass", 0.45)) for _ in range(10)]
    observed += [seen("plastic", ("glass", 0.6), ("glass", 0.6)) for _ in range(4)]
    chosen = choose_thresholds(observed, COMPARTMENTS)
    assert chosen["constraint_met"] is True
    # 0.65..0.90 all route the 20 right and none wrong: the middle of that range, then the middle margin
    assert (chosen["min_confidence"], chosen["min_margin"]) == (0.8, 0.25)
    assert chosen["wrong_share"] <= MAX_WRONG_SHARE and chosen["correct_share"] == pytest.approx(20 / 34, abs=1e-4)
    assert "glass" not in chosen["contamination"]
    assert chosen["contamination"]["residual"]["from"] == {"glass": 10, "recycling": 4}
    assert len(chosen["grid"]) == 17 * 11


def test_when_no_pair_meets_the_limit_the_fewest_wrong_sorts_win() -> None:
    observed = [seen("plastic", ("glass", 0.99), ("glass", 0.99)) for _ in range(3)]
    observed += [seen("glass", ("glass", 0.99), ("glass", 0.99))]
    chosen = choose_thresholds(observed, COMPARTMENTS)
    assert chosen["constraint_met"] is False and chosen["wrong_share"] == 0.75


def test_jitter_is_seeded_and_keeps_the_frame_shape() -> None:
    image = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    a = jitter(image, random.Random("s:x.jpg"))
    b = jitter(image, random.Random("s:x.jpg"))
    assert a.shape == image.shape and np.array_equal(a, b) and not np.array_equal(a, image)
