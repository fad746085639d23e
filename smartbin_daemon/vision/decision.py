"""Turning K frames of detections into one decision per item (pure functions, no I/O).

Why a vote: a single frame can be blurred, half-occluded by a hand or caught mid-fall; a wrong sort
is permanent. Each frame contributes its dominant object's confidence to that object's category;
the decision is the category with the largest total, and it is `uncertain` (→ residual) unless its
mean confidence over all K frames and its margin over the runner-up are both high enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..messages import Decision, DetectedBox

RESIDUAL = "residual"


@dataclass(frozen=True)
class VotePolicy:
    """Thresholds of the vote."""

    min_confidence: float = 0.5
    min_margin: float = 0.15
    fallback_category: str = RESIDUAL


def effective_policy(min_confidence: float | None, min_margin: float | None,
                     model: tuple[float, float] | None) -> tuple[VotePolicy, dict[str, str]]:
    """The vote thresholds in force: each one from the config when set, else the model's own, else the default.

    Why the model's own: a threshold only means something for the model it was chosen on (smartbin-train picks
    them on the valid split and writes them into the model's classes.yaml), so swapping the model swaps them.
    """
    default = VotePolicy()
    chosen: dict[str, float] = {}
    source: dict[str, str] = {}
    for i, (key, configured) in enumerate((("min_confidence", min_confidence), ("min_margin", min_margin))):
        if configured is not None:
            chosen[key], source[key] = configured, "config"
        elif model is not None:
            chosen[key], source[key] = model[i], "model"
        else:
            chosen[key], source[key] = getattr(default, key), "default"
    return VotePolicy(chosen["min_confidence"], chosen["min_margin"]), source


def dominant(boxes: Sequence[DetectedBox], frame_area: float | None = None) -> DetectedBox | None:
    """The frame's main object: highest confidence, with size as a mild tie-breaker (an item in the
    intake fills more of the view than clutter at its edge)."""
    if not boxes:
        return None
    total = frame_area or max((b.area for b in boxes), default=1.0) or 1.0
    return max(boxes, key=lambda b: b.confidence * (0.8 + 0.2 * min(1.0, (b.area / total) ** 0.5)))


def decide(
    item_id: str,
    frames: Sequence[tuple[int, Sequence[DetectedBox]]],
    policy: VotePolicy,
    compartments: dict[str, str],
    mono: float,
    frame_area: float | None = None,
) -> Decision:
    """Aggregate (frame_seq, boxes) pairs into a Decision; `compartments` maps category → default compartment."""
    votes: dict[str, float] = {}
    best: tuple[float, int, Sequence[DetectedBox], DetectedBox] | None = None
    for seq, boxes in frames:
        top = dominant(boxes, frame_area)
        if top is None:
            continue
        votes[top.category] = votes.get(top.category, 0.0) + top.confidence
        if best is None or top.confidence > best[0]:
            best = (top.confidence, seq, boxes, top)
    k = max(1, len(frames))
    ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked:
        return Decision(item_id, policy.fallback_category, None, 0.0, None, 0.0, 0.0, True,
                        f"nothing detected in {len(frames)} frame(s)", compartments.get(policy.fallback_category),
                        len(frames), {}, None, mono)
    winner, weight = ranked[0]
    runner_up, runner_weight = ranked[1] if len(ranked) > 1 else (None, 0.0)
    confidence = weight / k
    runner_conf = runner_weight / k
    margin = confidence - runner_conf
    reason = None
    if confidence < policy.min_confidence:
        reason = f"confidence {confidence:.2f} < {policy.min_confidence:.2f}"
    elif margin < policy.min_margin:
        reason = f"margin {margin:.2f} over {runner_up} < {policy.min_margin:.2f}"
    uncertain = reason is not None
    category = policy.fallback_category if uncertain else winner
    class_name = None
    best_boxes: tuple[DetectedBox, ...] = ()
    best_seq: int | None = None
    if best is not None:
        best_seq, best_boxes = best[1], tuple(best[2])
        winners = [b for b in best_boxes if b.category == winner]
        class_name = max(winners, key=lambda b: b.confidence).class_name if winners else best[3].class_name
    return Decision(
        item_id=item_id,
        category=category,
        class_name=class_name,
        confidence=round(confidence, 4),
        runner_up=runner_up,
        runner_up_confidence=round(runner_conf, 4),
        margin=round(margin, 4),
        uncertain=uncertain,
        reason=reason,
        compartment=compartments.get(category),
        frames=len(frames),
        votes={c: round(w, 4) for c, w in ranked},
        frame_seq=best_seq,
        mono=mono,
        boxes=best_boxes,
    )
