"""Drawing and encoding evidence: category colours, annotated snapshots, JPEG, YOLO label lines (pure)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from ..messages import Decision, DetectedBox

logger = logging.getLogger(__name__)

CATEGORY_COLOURS_BGR: dict[str, tuple[int, int, int]] = {
    "plastic": (0, 215, 255),  # yellow, as the packaging bag
    "metal": (230, 220, 0),  # cyan
    "glass": (60, 180, 60),  # green, as the bottle bank
    "paper_cardboard": (220, 120, 30),  # blue, as the paper bin
    "organic": (40, 100, 160),  # brown, as the bio bin
    "e_waste": (200, 60, 180),  # purple
    "hazardous": (40, 40, 235),  # red
    "residual": (170, 170, 170),  # grey
}
"""Fixed colours of the product categories, chosen after the usual bin colours; others get a hue from their name."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------- drawing


TITLE_LINES = 3
"""At most this many title lines on a snapshot (a long uncertainty reason wraps rather than running off the edge)."""


def category_colour(category: str) -> tuple[int, int, int]:
    """The BGR colour of a category: fixed for the product categories, a stable hue for any other name."""
    known = CATEGORY_COLOURS_BGR.get(category)
    if known is not None:
        return known
    hue = zlib.crc32(category.encode("utf-8")) % 180
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on the BGR background."""
    b, g, r = bg
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 140 else (255, 255, 255)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A BGR uint8 copy of a BGR, BGRA or grey image; ValueError for anything else."""
    if not isinstance(image, np.ndarray) or image.size == 0 or image.ndim not in (2, 3):
        raise ValueError(f"not an image: {type(image).__name__} {getattr(image, 'shape', '')}")
    img = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.shape[2] != 3:
        raise ValueError(f"not an image: shape {image.shape}")
    return img.copy()


def _width(text: str, scale: float, thick: int) -> int:
    return int(cv2.getTextSize(text, _FONT, scale, thick)[0][0])


def _wrap(text: str, width: int, scale: float, thick: int, max_lines: int = TITLE_LINES) -> list[str]:
    """The title broken at spaces into lines that fit `width` px; only a last line that still overflows is cut (~)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _width(f"{lines[-1]} {word}", scale, thick) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[:max_lines - 1], " ".join(lines[max_lines - 1:])]
    last = lines[-1] if lines else ""
    while last and _width(last, scale, thick) > width and len(last) > 4:
        last = last[:-2] + "~"
    return [*lines[:-1], last] if lines else []


def annotate(image: np.ndarray, boxes: Sequence[DetectedBox], title: str | None = None) -> np.ndarray:
    """A copy of the image with each box, a `<category> <conf>` label in the category's colour, and a title line."""
    out = as_bgr(image)
    h, w = out.shape[:2]
    scale = max(0.35, min(1.0, w / 800.0))
    text_thick = 1 if scale < 0.7 else 2
    line = max(2, round(min(h, w) / 240))
    title_h = 0
    if title:
        lines = _wrap(title, w - 6, scale, text_thick)
        (_, th), base = cv2.getTextSize("Ag", _FONT, scale, text_thick)
        step = th + base + 3
        title_h = min(h, step * len(lines) + 3)
        out[:title_h] = (out[:title_h].astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken the band
        for i, text in enumerate(lines):
            cv2.putText(out, text, (3, th + 3 + i * step), _FONT, scale, (255, 255, 255), text_thick, cv2.LINE_AA)
    for box in boxes:
        colour = category_colour(box.category)
        x1, y1, x2, y2 = (float(v) for v in box.xyxy)
        ix1, ix2 = (int(round(min(max(v, 0.0), w - 1))) for v in (min(x1, x2), max(x1, x2)))
        iy1, iy2 = (int(round(min(max(v, 0.0), h - 1))) for v in (min(y1, y2), max(y1, y2)))
        cv2.rectangle(out, (ix1, iy1), (ix2, iy2), colour, line, cv2.LINE_AA)
        label = f"{box.category} {box.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(label, _FONT, scale, text_thick)
        lh = th + base + 4
        top = iy1 - lh if iy1 - lh >= title_h else min(max(iy1, title_h), max(0, h - lh))  # above, else inside
        left = min(max(ix1, 0), max(0, w - tw - 4))
        cv2.rectangle(out, (left, top), (left + tw + 4, top + lh), colour, cv2.FILLED)
        cv2.putText(out, label, (left + 2, top + th + 2), _FONT, scale, _text_colour(colour), text_thick,
                    cv2.LINE_AA)
    return out


def decision_title(decision: Decision) -> str:
    """The snapshot's title line: category, confidence and, for doubtful items, why."""
    text = f"{decision.category} {decision.confidence:.2f}"
    if decision.class_name and decision.class_name != decision.category:
        text += f" ({decision.class_name})"
    if decision.uncertain:
        text += f" UNCERTAIN: {decision.reason}" if decision.reason else " UNCERTAIN"
    return text


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR image; ValueError when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def yolo_label_lines(boxes: Iterable[DetectedBox], class_names: Sequence[str], width: int, height: int) -> list[str]:
    """YOLO label lines `class cx cy w h` (normalised, clipped to the image) for the boxes the class list knows."""
    lines: list[str] = []
    for box in boxes:
        cid = class_index(box, class_names)
        if cid is None:
            logger.debug("box of %s/%s not in the dataset's classes: left out of the label", box.class_name,
                         box.category)
            continue
        x1, y1, x2, y2 = (float(v) for v in box.xyxy)
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        bw, bh = (x2 - x1) / width, (y2 - y1) / height
        vals = [min(max(v, 0.0), 1.0) for v in (cx, cy, bw, bh)]
        lines.append(f"{cid} " + " ".join(f"{v:.6f}" for v in vals))
    return lines


def class_index(box: DetectedBox, class_names: Sequence[str]) -> int | None:
    """The dataset class index of a box: its class id when the names agree, else looked up by name."""
    if 0 <= box.class_id < len(class_names) and class_names[box.class_id] in (box.class_name, box.category):
        return box.class_id
    for name in (box.class_name, box.category):
        if name in class_names:
            return list(class_names).index(name)
    return None
