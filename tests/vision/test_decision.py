"""K-frame decisions on recorded detector outputs: the vote, the margin, and doubtful items to residual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartbin_daemon.messages import DetectedBox
from smartbin_daemon.vision.decision import VotePolicy, decide, dominant, effective_policy

COMPARTMENTS = {"plastic": "recycling", "metal": "recycling", "glass": "glass", "residual": "residual",
                "paper_cardboard": "paper"}
POLICY = VotePolicy(min_confidence=0.5, min_margin=0.15)


def box(category: str, conf: float, size: float = 100.0, x: float = 0.0) -> DetectedBox:
    return DetectedBox(0, category, category, conf, (x, 0.0, x + size, size))


def test_a_clear_item_is_decided_with_its_runner_up_and_margin() -> None:
    frames = [(1, [box("plastic", 0.9)]), (2, [box("plastic", 0.8), box("metal", 0.3, 20)]),
              (3, [box("metal", 0.6)]), (4, [box("plastic", 0.85)]), (5, [box("plastic", 0.9)])]
    d = decide("item-1", frames, POLICY, COMPARTMENTS, mono=10.0)
    assert d.category == "plastic" and not d.uncertain
    assert d.confidence == pytest.approx((0.9 + 0.8 + 0.85 + 0.9) / 5)
    assert d.runner_up == "metal" and d.runner_up_confidence == pytest.approx(0.6 / 5)
    assert d.margin == pytest.approx(d.confidence - d.runner_up_confidence)
    assert d.compartment == "recycling"
    assert d.frame_seq in (1, 5) and d.class_name == "plastic"
    assert d.frames == 5


def test_a_close_race_is_uncertain_and_goes_to_residual() -> None:
    frames = [(i, [box("plastic" if i % 2 else "glass", 0.9)]) for i in range(7)]  # 3 plastic, 4 glass
    d = decide("item-2", frames, POLICY, COMPARTMENTS, mono=0.0)
    assert d.confidence == pytest.approx(3.6 / 7, abs=1e-3) and d.confidence >= POLICY.min_confidence
    assert d.uncertain and d.category == "residual" and d.compartment == "residual"
    assert "margin 0.13 over plastic" in (d.reason or "")
    assert d.votes == {"glass": pytest.approx(3.6), "plastic": pytest.approx(2.7)}


def test_low_confidence_is_uncertain() -> None:
    frames = [(i, [box("paper_cardboard", 0.35)]) for i in range(5)]
    d = decide("item-3", frames, POLICY, COMPARTMENTS, mono=0.0)
    assert d.uncertain and d.category == "residual"
    assert "confidence 0.35" in (d.reason or "")


def test_frames_without_detections_lower_the_confidence() -> None:
    seen_twice = [(1, [box("glass", 0.9)]), (2, []), (3, []), (4, [box("glass", 0.9)]), (5, [])]
    d = decide("item-4", seen_twice, POLICY, COMPARTMENTS, mono=0.0)
    assert d.confidence == pytest.approx(0.36) and d.uncertain


def test_nothing_detected_is_uncertain_residual() -> None:
    d = decide("item-5", [(1, []), (2, [])], POLICY, COMPARTMENTS, mono=0.0)
    assert d.uncertain and d.category == "residual" and d.class_name is None and d.votes == {}
    assert "nothing detected" in (d.reason or "")


def test_dominant_prefers_confidence_and_breaks_ties_by_size() -> None:
    small, big = box("metal", 0.7, 10), box("plastic", 0.7, 200, x=50)
    assert dominant([small, big]) is big
    assert dominant([box("glass", 0.95, 10), big]).category == "glass"
    assert dominant([]) is None


def _recorded() -> list[dict]:
    return json.loads((Path(__file__).parent / "data" / "recorded_decisions.json").read_text())


def _frames(case: dict, skip_seq: int | None = None) -> list[tuple[int, list[DetectedBox]]]:
    return [(f["seq"], [DetectedBox(b["class_id"], b["class_name"], b["category"], b["confidence"], tuple(b["xyxy"]))
                        for b in f["boxes"]]) for f in case["frames"] if f["seq"] != skip_seq]


def test_recorded_outputs_never_decide_a_minority_category_and_honour_the_thresholds() -> None:
    """Real outputs of the shipped model on 5 jittered views of each sample (tests/vision/record_outputs.py)."""
    cases = _recorded()
    assert len(cases) >= 10
    for case in cases:
        frames = _frames(case)
        d = decide(case["item_id"], frames, POLICY, COMPARTMENTS, mono=0.0)
        tops = [dominant(boxes) for _, boxes in frames]
        counts: dict[str, float] = {}
        for top in tops:
            if top is not None:
                counts[top.category] = counts.get(top.category, 0.0) + top.confidence
        if d.uncertain:
            assert d.category == "residual" and d.reason, case["item_id"]
        else:
            assert d.category == max(counts, key=counts.__getitem__), case["item_id"]
            assert d.confidence >= POLICY.min_confidence and d.margin >= POLICY.min_margin, case["item_id"]


def test_effective_thresholds_come_from_config_then_model_then_default() -> None:
    policy, source = effective_policy(None, None, (0.42, 0.07))
    assert (policy.min_confidence, policy.min_margin) == (0.42, 0.07) and set(source.values()) == {"model"}
    policy, source = effective_policy(0.0, None, (0.42, 0.07))  # 0 is a setting, not "unset"
    assert (policy.min_confidence, policy.min_margin) == (0.0, 0.07) and source["min_confidence"] == "config"
    policy, source = effective_policy(None, None, None)
    assert (policy.min_confidence, policy.min_margin) == (0.5, 0.15) and set(source.values()) == {"default"}
