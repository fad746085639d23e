"""A cheap frame-difference motion detector: the presence gate when no sensor is fitted."""

from __future__ import annotations

import cv2
import numpy as np

from ..config import MotionGateConfig


class MotionGate:
    """Compares each sampled frame with the previous one on a small grey image.

    `update()` returns True when motion starts (an item arrives), False when the view has been still
    for `quiet_s` after motion, and None otherwise. Costs well under a millisecond per 160-px frame.
    """

    def __init__(self, cfg: MotionGateConfig) -> None:
        self.cfg = cfg
        self._previous: np.ndarray | None = None
        self._moving = False
        self._last_motion = 0.0
        self.changed_pct = 0.0

    def _small(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        width = min(self.cfg.width, w)
        small = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return cv2.GaussianBlur(grey, (5, 5), 0)

    def update(self, image: np.ndarray, now: float) -> bool | None:
        """Feed one frame (monotonic `now`); see the class docstring for the return value."""
        grey = self._small(image)
        previous, self._previous = self._previous, grey
        if previous is None or previous.shape != grey.shape:
            return None
        changed = cv2.absdiff(grey, previous) > self.cfg.pixel_threshold
        self.changed_pct = 100.0 * float(np.count_nonzero(changed)) / changed.size
        if self.changed_pct >= self.cfg.min_area_pct:
            self._last_motion = now
            if not self._moving:
                self._moving = True
                return True
        elif self._moving and now - self._last_motion >= self.cfg.quiet_s:
            self._moving = False
            return False
        return None

    @property
    def moving(self) -> bool:
        """Whether motion is ongoing."""
        return self._moving
