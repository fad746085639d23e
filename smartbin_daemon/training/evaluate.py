"""Evaluate a detector on the merged valid split: mAP overall/per category and top confusions."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from smartbin_daemon.training.env import load_yolo_class

logger = logging.getLogger(__name__)

BACKGROUND = "background"
CONFUSION_CONF = 0.25
CONFUSION_IOU = 0.45


def top_confusions(
    matrix: np.ndarray, names: list[str], top: int = 10, include_background: bool = True
) -> list[dict[str, Any]]:
    """Largest off-diagonal cells of an ultralytics [predicted, true] matrix with a background last row/col."""
    labels = [*names, BACKGROUND]
    cells: list[dict[str, Any]] = []
    n = matrix.shape[0]
    true_totals = matrix.sum(axis=0)
    for pred in range(n):
        for true in range(n):
            if pred == true or (pred == n - 1 and true == n - 1):
                continue
            if not include_background and n - 1 in (pred, true):
                continue
            count = int(round(float(matrix[pred, true])))
            if count <= 0:
                continue
            total = float(true_totals[true])
            cells.append(
                {
                    "true": labels[true],
                    "predicted": labels[pred],
                    "count": count,
                    "share_of_true": round(count / total, 4) if total and true != n - 1 else None,
                }
            )
    cells.sort(key=lambda c: c["count"], reverse=True)
    return cells[:top]


def _class_table(metrics: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-category precision/recall/mAP50/mAP50-95 and instance counts."""
    nt = getattr(metrics, "nt_per_class", None)
    table: dict[str, dict[str, Any]] = {}
    index = list(metrics.box.ap_class_index)
    for i, name in enumerate(names):
        row: dict[str, Any] = {"instances": int(nt[i]) if nt is not None and i < len(nt) else None}
        if i in index:
            p, r, ap50, ap = metrics.box.class_result(index.index(i))
            row.update(
                precision=round(float(p), 4),
                recall=round(float(r), 4),
                map50=round(float(ap50), 4),
                map50_95=round(float(ap), 4),
            )
        else:
            row.update(precision=None, recall=None, map50=None, map50_95=None)
        table[name] = row
    return table


def evaluate(
    weights: Path,
    data_yaml: Path,
    imgsz: int,
    batch: int = 16,
    device: str = "cpu",
    workers: int = 0,
    out_json: Path | None = None,
) -> dict[str, Any]:
    """Validate weights (.pt or .onnx) on the data's val split and return (and optionally write) metrics."""
    yolo_cls = load_yolo_class()
    weights = Path(weights)
    is_onnx = weights.suffix == ".onnx"
    common = {
        "data": str(data_yaml),
        "split": "val",
        "imgsz": imgsz,
        "batch": 1 if is_onnx else batch,
        "device": device,
        "workers": workers,
        "plots": False,
        "verbose": False,
    }
    with tempfile.TemporaryDirectory(prefix="smartbin-eval-") as tmp:
        model = yolo_cls(str(weights), task="detect")
        t0 = time.monotonic()
        metrics = model.val(project=tmp, name="map", **common)
        names = [metrics.names[i] for i in sorted(metrics.names)]
        result: dict[str, Any] = {
            "weights": str(weights),
            "format": "onnx" if is_onnx else "pytorch",
            "imgsz": imgsz,
            "split": "val",
            "overall": {
                "precision": round(float(metrics.box.mp), 4),
                "recall": round(float(metrics.box.mr), 4),
                "map50": round(float(metrics.box.map50), 4),
                "map50_95": round(float(metrics.box.map), 4),
            },
            "per_category": _class_table(metrics, names),
            "speed_ms_per_image": {k: round(float(v), 2) for k, v in metrics.speed.items()},
        }
        # The confusion matrix at the validator's mAP threshold (conf 0.001) is flooded by low-score boxes;
        # count it at a deployment-like confidence instead.
        # ultralytics only fills the confusion matrix when plots=True (the plots land in the temp dir).
        cm_args = {**common, "plots": True}
        cm_metrics = model.val(
            project=tmp, name="confusion", conf=CONFUSION_CONF, iou=CONFUSION_IOU, **cm_args
        )
        matrix = np.asarray(cm_metrics.confusion_matrix.matrix)
        result["confusion"] = {
            "conf": CONFUSION_CONF,
            "iou": CONFUSION_IOU,
            "labels": [*names, BACKGROUND],
            "matrix_predicted_by_true": matrix.round().astype(int).tolist(),
            "top": top_confusions(matrix, names),
        }
        result["seconds"] = round(time.monotonic() - t0, 1)
    logger.info(
        "%s: mAP50 %.3f mAP50-95 %.3f on val (%s)",
        weights.name,
        result["overall"]["map50"],
        result["overall"]["map50_95"],
        data_yaml,
    )
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def format_metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: overall + per category mAP50 / mAP50-95 / P / R."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    rows = [
        "| category | instances | precision | recall | mAP50 | mAP50-95 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    o = result["overall"]
    total = sum((r["instances"] or 0) for r in result["per_category"].values())
    rows.append(
        f"| **all** | {total} | {fmt(o['precision'])} | {fmt(o['recall'])} | {fmt(o['map50'])} | {fmt(o['map50_95'])} |"
    )
    for name, r in result["per_category"].items():
        rows.append(
            f"| {name} | {r['instances']} | {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['map50'])} | {fmt(r['map50_95'])} |"
        )
    return "\n".join(rows)


def format_confusions(result: dict[str, Any], top: int = 8) -> str:
    """Markdown lists of the top confusions, overall and between categories only."""
    conf = result["confusion"]
    matrix = np.asarray(conf["matrix_predicted_by_true"], dtype=float)
    names = list(conf["labels"][:-1])
    sections = (
        ("All cells, background included:", top_confusions(matrix, names, top)),
        (
            "Between categories only (background excluded):",
            top_confusions(matrix, names, top, include_background=False),
        ),
    )
    lines: list[str] = []
    for title, cells in sections:
        lines.append(f"{title}\n")
        for c in cells:
            share = (
                f" ({c['share_of_true']:.0%} of true {c['true']})" if c["share_of_true"] is not None else ""
            )
            lines.append(f"- true **{c['true']}** -> predicted **{c['predicted']}**: {c['count']}{share}")
        if not cells:
            lines.append("- (none)")
        lines.append("")
    return "\n".join(lines).rstrip()
