"""A folder of images played as a camera, paced to `fps` (simulation)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from .base import IMAGE_SUFFIXES, Pacer, SourceEnded, SourceError, _paced_wait, to_bgr

logger = logging.getLogger(__name__)

class ImageFolderSource:
    """The images of a folder in name order, paced to `fps`; unreadable files are counted and skipped."""

    kind = "images"

    def __init__(self, folder: Path, *, fps: float, loop: bool) -> None:
        self.folder = folder
        self.loop = loop
        self.pacer = Pacer(fps)
        self.files: list[Path] = []
        self.index = 0
        self.bad: set[Path] = set()
        self.loops = 0

    def describe(self) -> str:
        """E.g. `samples/ (image folder, looped)`."""
        return f"{self.folder} (image folder{', looped' if self.loop else ''})"

    def stats(self) -> dict[str, int]:
        """Unreadable files, images in the folder and passes over it."""
        return {"unreadable": len(self.bad), "images": len(self.files), "loops": self.loops}

    def _scan(self) -> None:
        try:
            entries = sorted(p for p in self.folder.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        except OSError as exc:
            raise SourceError(f"cannot list {self.folder}: {exc}") from exc
        self.files = entries
        self.index = 0

    def open(self) -> None:
        """List the folder."""
        if not self.folder.is_dir():
            raise SourceError(f"no such image folder: {self.folder}")
        self._scan()
        if not self.files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.folder}")

    def read(self) -> np.ndarray | None:
        """The next readable image when it is due."""
        if not _paced_wait(self.pacer):
            return None
        while True:  # ends: each pass returns or marks one more file unreadable, and _next_path gives up
            path = self._next_path()
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.bad.add(path)
                logger.warning("camera: skipping unreadable image %s", path)
                continue
            self.pacer.mark(time.monotonic())
            return to_bgr(image)

    def grab(self) -> bool:
        """Move on to the next image when due, without reading it (unreadable files are found by `read`)."""
        if not _paced_wait(self.pacer):
            return False
        self._next_path()
        self.pacer.mark(time.monotonic())
        return True

    def _next_path(self) -> Path:
        """The next file not known to be unreadable, starting over (rescanned) at the end when looping."""
        tried = 0
        while tried <= len(self.files):
            if self.index >= len(self.files):
                if not self.loop:
                    raise SourceEnded(f"all images of {self.folder} shown")
                self.loops += 1
                self._scan()  # pick up images added meanwhile
                if not self.files:
                    raise SourceError(f"no images left in {self.folder}")
            path = self.files[self.index]
            self.index += 1
            tried += 1
            if path not in self.bad:
                return path
        raise SourceError(f"no readable image in {self.folder}")

    def close(self) -> None:
        """Nothing held open between reads."""


# --------------------------------------------------------------------------- Raspberry Pi camera


