"""Crash-safe file replacement: a power cut at any moment leaves the old file or the new one, complete."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the directory entry, not only the file's data)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """The default temp file of a write: hidden, in the same folder (rename is atomic only within one file system)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None], *, mode: int | None = None,
                 tmp: Path | None = None, before_replace: Callable[[], None] | None = None) -> None:
    """Replace `path` with `data` (bytes, or a function that writes the file object): the temp file is written,
    fsynced, given `mode`, renamed over `path` and the folder fsynced; on any failure the temp file is removed.

    `before_replace` runs after the new content is safe on disk and before the rename (e.g. keeping a `.prev`)."""
    tmp = tmp or temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, mode if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # the umask may have narrowed it
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
