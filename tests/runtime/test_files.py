"""Crash-safe file replacement."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pytest

from smartbin_daemon.runtime.files import write_atomic


def test_the_new_content_replaces_the_old_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "bundle.tar.gz"
    target.write_bytes(b"complete old bundle")

    def half(fh: BinaryIO) -> None:
        fh.write(b"half of the new")
        raise OSError(28, os.strerror(28))

    with pytest.raises(OSError):
        write_atomic(target, half, tmp=tmp_path / "bundle.tmp")
    assert target.read_bytes() == b"complete old bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar.gz"]


def test_before_replace_sees_the_old_file_still_in_place(tmp_path: Path) -> None:
    target = tmp_path / "smartbin.yaml"
    target.write_bytes(b"v1")
    seen: list[bytes] = []
    write_atomic(target, b"v2", before_replace=lambda: seen.append(target.read_bytes()))
    assert seen == [b"v1"] and target.read_bytes() == b"v2"
