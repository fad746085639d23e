"""The config file as `config/set` and `config/rollback` change it: deep merge, validation, an atomic write that
keeps the previous file as `<file>.prev`, and the swap back."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import yaml

from ..clock import iso_utc
from ..config import ConfigError, load_config, parse_config
from ..runtime import files
from ..runtime.commands import RequestError

PREV_SUFFIX = ".prev"


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`: mappings merge key by key, anything else (lists, scalars, null) replaces."""
    out = dict(base)
    for key, value in patch.items():
        current = out.get(key)
        out[key] = deep_merge(current, value) if isinstance(value, dict) and isinstance(current, dict) else value
    return out


def prev_path(path: Path) -> Path:
    """Where the previous version of a config file is kept: `<file>.prev`."""
    return path.with_name(path.name + PREV_SUFFIX)


def config_target(path: Path) -> Path:
    """The file behind a (possibly symlinked) config path: writes replace it, not the link."""
    return Path(os.path.realpath(path))


def read_config_document(path: Path) -> dict[str, Any]:
    """The config file's YAML document as written (not the effective config); ConfigError if unusable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, [f"<file>: cannot read {str(path)!r}: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"<yaml>: the current file does not parse: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, [f"<root>: the current file holds a {type(data).__name__}, not a mapping"])
    return data


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Temp files an interrupted write (power loss, kill -9) left behind."""
    for stale in [*folder.glob(f".{name}.tmp-*"), *folder.glob(f".{name}{PREV_SUFFIX}.tmp-*")]:
        try:
            stale.unlink()
        except OSError:
            pass


def _keep_previous(target: Path) -> Path:
    """Make `<file>.prev` a copy of the current file, atomically (hard link, else a synced copy)."""
    prev = prev_path(target)
    if prev.exists() and os.path.samefile(prev, target):
        return prev  # already a link to the current file (a write died after this step): rename() would be a no-op
    staged = target.with_name(f".{prev.name}.tmp-{os.getpid()}")
    try:
        staged.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(target, staged)
    except OSError:  # no hard links here (some file systems, fs.protected_hardlinks): copy
        shutil.copy2(target, staged)
        with open(staged, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(staged, prev)
    return prev


def write_atomic(path: Path, data: bytes) -> Path | None:
    """Replace the config file `path` with `data` so that a crash at any point leaves the old or the new file,
    complete, and the current one kept as `<file>.prev` (before the replace). Returns the `.prev` path (None: no
    old file)."""
    target = config_target(path)
    _remove_stale_temps(target.parent, target.name)
    existed = target.exists()
    mode = stat.S_IMODE(target.stat().st_mode) if existed else 0o640
    kept: list[Path] = []
    files.write_atomic(target, data, mode=mode,
                       before_replace=(lambda: kept.append(_keep_previous(target))) if existed else None)
    return kept[0] if kept else None


def dump_config_document(doc: dict[str, Any], note: str) -> bytes:
    """YAML text of a config document with a one-line comment saying who wrote it."""
    return (f"# {note}\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)).encode("utf-8")


def set_config_file(path: Path, partial: dict[str, Any]) -> Path | None:
    """Merge `partial` into the file's document, validate the result, write it atomically; returns `.prev`.

    Raises ConfigError (every problem by key path; secrets never echoed) and leaves the file alone."""
    target = config_target(path)
    merged = deep_merge(read_config_document(target), partial)
    parse_config(merged, str(path), target.parent)
    note = f"written by smartbin-daemon config/set at {iso_utc(time.time())}; the previous version is {target.name}{PREV_SUFFIX}"
    return write_atomic(target, dump_config_document(merged, note))


def rollback_config_file(path: Path) -> Path:
    """Swap the config file with `<file>.prev` (the current one becomes the new `.prev`); returns `.prev`."""
    target = config_target(path)
    prev = prev_path(target)
    if not prev.is_file():
        raise RequestError(f"nothing to roll back to: {prev} does not exist (it is written by config/set)")
    data = prev.read_bytes()
    load_config(prev)  # a broken .prev (edited by hand) is refused: ConfigError
    written = write_atomic(target, data)
    assert written is not None
    return written
