"""Storage cleanup (`storage/cleanup`): empty the evidence snapshots and/or the active-learning dataset below
`storage.path`, never following a link out of it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from ..runtime.commands import RequestError

logger = logging.getLogger(__name__)

# Same folders as vision.evidence.SNAPSHOT_DIR / DATASET_DIR (not imported from there: that module loads OpenCV).
CLEANUP_FOLDERS: dict[str, Path] = {"evidence": Path("evidence") / "snapshots", "dataset": Path("dataset")}
CLEANUP_KEEP: dict[str, frozenset[str]] = {"evidence": frozenset(),
                                            "dataset": frozenset({"data.yaml", "README.txt", "images", "labels"})}
"""Top-level entries a cleanup keeps (folders are emptied): the dataset's description and folders, which the
detector writes only when it starts."""

CleanupTarget = Literal["evidence", "dataset"]


def _all_cleanup_targets() -> list[CleanupTarget]:
    """The default of storage/cleanup: both folders."""
    return ["evidence", "dataset"]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def empty_folder(root: Path, storage: Path, keep_top: frozenset[str] = frozenset()) -> dict[str, int]:
    """Delete every file and emptied folder below `root` (symlinks are removed, never followed); keep `root`
    and the top-level entries named in `keep_top` (a kept folder is emptied). Refuses a `root` that leads
    outside `storage`."""
    counts = {"files": 0, "bytes": 0, "errors": 0}
    if root.is_symlink() or not root.is_dir():
        return counts
    real_storage = Path(os.path.realpath(storage))
    if not _inside(Path(os.path.realpath(root)), real_storage):
        raise RequestError(f"{root} leads outside {storage} (a symlinked folder); not touched")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
        here = Path(dirpath)
        # os.walk(followlinks=False) lists a symlink to a folder in dirnames without entering it: unlink the link.
        for name in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
            if here == root and name in keep_top:
                continue
            victim = here / name
            try:
                st = victim.lstat()
                victim.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                counts["errors"] += 1
                logger.warning("storage cleanup: cannot delete %s: %s", victim, exc)
                continue
            counts["files"] += 1
            counts["bytes"] += st.st_size if stat.S_ISREG(st.st_mode) else 0
        if here != root and not (here.parent == root and here.name in keep_top):
            try:
                here.rmdir()  # an emptied folder (a snapshot date); only when empty
            except OSError:
                pass
    return counts


def clean_storage(storage: Path, what: Iterable[str]) -> dict[str, Any]:
    """Empty the chosen folders below storage.path; per folder and total counts of files and bytes."""
    out: dict[str, Any] = {}
    files = freed = 0
    for name in what:
        folder = Path(storage) / CLEANUP_FOLDERS[name]
        counts = empty_folder(folder, Path(storage), CLEANUP_KEEP[name])
        out[name] = {"path": str(folder), **counts}
        files += counts["files"]
        freed += counts["bytes"]
    return {"folders": out, "files": files, "bytes_freed": freed}
