"""Simulated items: the feeder puts a sample image in front of the (file-based) camera and breaks the
mock presence beam, so the real camera, GPIO, detector and MQTT paths run on real frames. A simulated
operator empties a compartment some time after it reads full, by emptying the simulated Arduino's
compartment: the fill tracker then sees it through the real serial telemetry.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import yaml

from .config import BinsConfig, SimulationConfig
from .logs import ev
from .messages import SimulatedPresence
from .runtime import files
from .runtime.bus import Bus
from .runtime.worker import Worker
from .states.fill import BinLevel, FillState
from .states.simulation import SimulationState

logger = logging.getLogger(__name__)

SCENE_FILE = "current.jpg"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def empty_tray(shape: tuple[int, int] = (320, 320)) -> np.ndarray:
    """The view with no item: a plain grey tray with a little sensor noise."""
    rng = np.random.default_rng(0)
    tray = np.full((*shape, 3), 118, dtype=np.uint8)
    noise = rng.integers(-3, 4, tray.shape, dtype=np.int16)
    return np.clip(tray.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def load_samples(folder: Path) -> list[tuple[Path, str | None]]:
    """Sample images with their expected category (from samples.yaml when present)."""
    expected: dict[str, str] = {}
    index = folder / "samples.yaml"
    if index.is_file():
        doc = yaml.safe_load(index.read_text(encoding="utf-8")) or {}
        for entry in doc.get("samples", []):
            expected[str(entry.get("file"))] = str(entry.get("expected_category"))
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [(p, expected.get(p.name)) for p in images]


class EmptiableBin(Protocol):
    """The part of the simulated Arduino the simulated operator uses."""

    def empty(self, compartment: int) -> None:
        """Empty compartment 1..n."""


class ItemFeeder(Worker):
    """Every `item_interval_s`, shows the next sample for `item_dwell_s` and reports presence while it is there;
    empties full compartments of the simulated Arduino after `empty_after_s`."""

    critical = False

    def __init__(self, bus: Bus, cfg: SimulationConfig, storage: Path, *, bins: BinsConfig | None = None,
                 arduino: EmptiableBin | None = None, name: str = "simulation") -> None:
        super().__init__(name, bus, tick_s=0.2)
        self.cfg = cfg
        self.bins = bins
        self.arduino = arduino
        self.emptied = 0
        self._full_since: dict[str, float] = {}
        self.scene_dir = cfg.scene if cfg.scene.is_absolute() else storage / cfg.scene
        self.samples: list[tuple[Path, str | None]] = []
        self.items = 0
        self.current: tuple[Path, str | None] | None = None
        self._order: list[int] = []
        self._rng = random.Random(cfg.seed)
        self._next_item = 0.0
        self._leave_at = 0.0

    def setup(self) -> None:
        self.samples = load_samples(self.cfg.samples)
        if not self.samples:
            raise RuntimeError(f"simulation.samples: no images in {self.cfg.samples}")
        self.scene_dir.mkdir(parents=True, exist_ok=True)
        self._show(empty_tray())
        self.current = None
        self._next_item = time.monotonic() + min(2.0, self.cfg.item_interval_s)
        logger.info("simulated items: %d samples from %s, one every %.1fs into %s", len(self.samples),
                    self.cfg.samples, self.cfg.item_interval_s, self.scene_dir, extra=ev("simulation_started"))
        self._publish()

    def step(self) -> None:
        now = time.monotonic()
        if self.current is not None and now >= self._leave_at:
            self._show(empty_tray())
            self.current = None
            if self.cfg.presence == "gpio":
                self.bus.publish(SimulatedPresence(False))
            self._publish()
        elif self.current is None and now >= self._next_item:
            self._next_item = now + self.cfg.item_interval_s
            self._leave_at = now + self.cfg.item_dwell_s
            self.current = self._pick()
            image = cv2.imread(str(self.current[0]))
            if image is None:
                logger.warning("simulation: cannot read %s; skipping it", self.current[0])
                self.current = None
                return
            self._show(image)
            self.items += 1
            if self.cfg.presence == "gpio":
                self.bus.publish(SimulatedPresence(True))
            logger.info("simulated item %d: %s (expected %s)", self.items, self.current[0].name, self.current[1],
                        extra=ev("simulated_item"))
            self._publish()
        self._simulated_operator(now)
        self.sleep(self.tick_s)

    def _simulated_operator(self, now: float) -> None:
        """Empty a compartment that has read full for `empty_after_s` (the bag is changed)."""
        if self.cfg.empty_after_s is None or self.bins is None or not self.bins.enabled or self.arduino is None:
            return
        compartments = FillState.from_json(self.bus.states().get("fill")).compartments or {}
        for c in self.bins.compartments:
            if c.sensor is None or c.sensor.source != "arduino":
                continue
            fill = compartments.get(c.id)
            if fill is None or fill.level != BinLevel.FULL:
                self._full_since.pop(c.id, None)
                continue
            since = self._full_since.setdefault(c.id, now)
            if now - since >= self.cfg.empty_after_s:
                self.arduino.empty(c.sensor.channel)
                self.emptied += 1
                self._full_since[c.id] = now + 3600.0  # do not empty it again before the tracker notices
                logger.info("simulated operator emptied compartment %s", c.id, extra=ev("simulated_emptying"))
                self._publish()

    def _pick(self) -> tuple[Path, str | None]:
        if not self._order:
            self._order = list(range(len(self.samples)))
            self._rng.shuffle(self._order)
        return self.samples[self._order.pop()]

    def _show(self, image: np.ndarray) -> None:
        """Atomically replace the scene the camera reads (tmp + rename: the camera never sees half a file)."""
        target = self.scene_dir / SCENE_FILE
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError("cannot encode the simulated scene")
        files.write_atomic(target, data.tobytes())  # the temp name has no image suffix: the camera never lists it

    def _publish(self) -> None:
        self.bus.set_state(self.name, SimulationState(
            items=self.items,
            samples=len(self.samples),
            current=None if self.current is None else self.current[0].name,
            expected_category=None if self.current is None else self.current[1],
            interval_s=self.cfg.item_interval_s,
            emptied=self.emptied,
        ))
