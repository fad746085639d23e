"""The evidence writer: jobs run on its own thread, a full queue drops instead of blocking, stop drains."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smartbin_daemon.config import EvidenceConfig
from smartbin_daemon.messages import Decision, DetectedBox
from smartbin_daemon.vision.evidence import EvidenceStore
from smartbin_daemon.vision.evidence_writer import EvidenceWriter

from ..conftest import wait_until

CATS = ["plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual"]
Make = Callable[..., tuple[EvidenceStore, EvidenceWriter, "Recorder"]]
NON_BLOCKING_S = 0.05
"""A submit must return at once; generous enough for a loaded CI machine, far below a blocked write."""


def cfg(**kw: object) -> EvidenceConfig:
    """An evidence config with overrides."""
    return EvidenceConfig.model_validate(kw)


def noise(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A small random BGR image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def decision(item_id: str, category: str = "plastic", uncertain: bool = False) -> Decision:
    """A decision with one box, as the detector would publish it."""
    boxes = (DetectedBox(CATS.index(category), category, category, 0.8, (5.0, 5.0, 40.0, 30.0)),)
    reason = "margin 0.1 < 0.15" if uncertain else None
    return Decision(item_id, category, category, 0.8, None, 0.0, 0.8, uncertain, reason, "recycling", 5, {category: 4.0},
                    1, time.monotonic(), boxes)


class Recorder:
    """Collects callback calls together with the name of the thread they ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.threads: list[str] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        self.threads.append(threading.current_thread().name)


class Gate:
    """Holds every store write until opened; `entered` is set once the writer thread is inside one."""

    def __init__(self, store: EvidenceStore) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        original = store._write_atomic

        def gated(path: Path, data: bytes) -> None:
            self.entered.set()
            assert self.opened.wait(10), "the test never opened the gate"
            original(path, data)

        store._write_atomic = gated  # type: ignore[method-assign]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Builds a store in tmp_path and a writer on it; every writer is stopped after the test."""
    writers: list[EvidenceWriter] = []

    def build(start: bool = True, **kw: Any) -> tuple[EvidenceStore, EvidenceWriter, Recorder]:
        store = EvidenceStore(tmp_path / f"storage{len(writers)}", cfg(**kw.pop("cfg", {})), CATS)
        published = Recorder()
        writer = EvidenceWriter(store, published, **kw)
        writers.append(writer)
        if start:
            writer.start()
        return store, writer, published

    yield build
    for writer in writers:
        writer.stop(timeout=5.0)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """fn()'s result and how long it took."""
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


# --------------------------------------------------------------------------- writing


def test_decision_is_written_at_the_returned_path_published_and_saved_for_training(make: Make) -> None:
    store, writer, published = make()
    path = writer.submit_decision(noise(1), decision("item-1", "glass", uncertain=True), training=True)
    assert path is not None and path.name.endswith("_item-1_glass.jpg") and path.parent.parent == store.snapshot_dir
    wait_until(lambda: writer.stats()["written"] == 1, 5.0, what="the decision job")
    assert path.is_file()
    assert published.calls == [(path.read_bytes(),)] and published.threads == ["smartbin-evidence"]
    images = sorted(store.images_dir.glob("*.jpg"))
    labels = sorted(store.labels_dir.glob("*.txt"))
    assert len(images) == 1 and [p.stem for p in labels] == [images[0].stem] and "_item-1_" in images[0].name
    assert labels[0].read_text().startswith(f"{CATS.index('glass')} ")
    stats = writer.evidence_stats()
    assert stats["snapshots"]["count"] == 1 and stats["snapshots"]["latest"] == str(path)
    assert stats["dataset"]["images"] == 1
    assert stats["writer"]["written"] == 1 and stats["writer"]["errors"] == 0
    assert stats["writer"]["dropped"] == {"decision": 0, "frame": 0, "training": 0}


def test_certain_decision_is_not_saved_for_training(make: Make) -> None:
    store, writer, published = make()
    path = writer.submit_decision(noise(2), decision("item-2"), training=False)
    wait_until(lambda: writer.stats()["written"] == 1, 5.0, what="the decision job")
    assert path is not None and path.is_file() and len(published.calls) == 1
    assert not list(store.images_dir.iterdir())


def test_snapshots_off_still_publishes_but_names_no_file(make: Make) -> None:
    store, writer, published = make(cfg={"snapshots": False})
    assert writer.submit_decision(noise(3), decision("item-3"), training=False) is None
    wait_until(lambda: writer.stats()["written"] == 1, 5.0, what="the decision job")
    assert len(published.calls) == 1 and published.calls[0][0][:2] == b"\xff\xd8"  # a JPEG
    assert not store.snapshot_dir.exists() or not any(store.snapshot_dir.rglob("*.jpg"))
    _, quiet, quiet_published = make(cfg={"snapshots": False, "publish_snapshot": False})
    assert quiet.submit_decision(noise(3), decision("item-4"), training=False) is None
    assert quiet.stats()["queued"] == 0 and not quiet_published.calls


def test_frame_snapshot_callback_gets_path_and_bytes_on_the_writer_thread(make: Make) -> None:
    store, writer, published = make()
    done = Recorder()
    assert writer.submit_frame_snapshot(noise(4), done)
    wait_until(lambda: done.calls, 5.0, what="the frame callback")
    (path, data), = done.calls
    assert path is not None and path.name.endswith("_request_frame.jpg") and path.read_bytes() == data
    assert done.threads == ["smartbin-evidence"]
    assert not published.calls, "the snapshot request's caller publishes the frame itself"
    trained = Recorder()
    assert writer.submit_training(noise(5), (), "request", force=True, on_done=trained)
    wait_until(lambda: trained.calls, 5.0, what="the training callback")
    saved = trained.calls[0][0]
    assert saved is not None and saved.is_file() and saved.parent == store.images_dir


# --------------------------------------------------------------------------- never blocking


def test_full_queue_drops_and_counts_without_blocking(make: Make) -> None:
    store, writer, _ = make(maxsize=2)
    gate = Gate(store)
    first = writer.submit_decision(noise(10), decision("item-10"), training=False)
    assert gate.entered.wait(5), "the writer never started the first job"  # it holds the store's lock now
    queued = [writer.submit_decision(noise(11 + i), decision(f"item-{11 + i}"), training=False) for i in range(2)]
    assert all(queued) and writer.stats()["queued"] == 2
    late, took = timed(lambda: writer.submit_decision(noise(20), decision("item-20"), training=False))
    assert late is None and took < NON_BLOCKING_S
    frame_done = Recorder()
    accepted, took = timed(lambda: writer.submit_frame_snapshot(noise(21), frame_done))
    assert accepted is False and took < NON_BLOCKING_S
    accepted, took = timed(lambda: writer.submit_training(noise(22), (), "request", force=True))
    assert accepted is False and took < NON_BLOCKING_S
    stats, took = timed(writer.evidence_stats)
    assert took < NON_BLOCKING_S, "the stats must not wait for the store's lock"
    assert stats["writer"]["dropped"] == {"decision": 1, "frame": 1, "training": 1}
    assert stats["writer"]["max_queued"] == 2
    gate.opened.set()
    writer.stop(timeout=5.0)
    assert first is not None and first.is_file() and all(p is not None and p.is_file() for p in queued)
    assert writer.stats()["written"] == 3 and not frame_done.calls
    assert store.stats()["snapshots"]["count"] == 3


def test_reserving_a_path_never_waits_for_a_write_and_never_repeats(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, cfg(), CATS)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(5)
        paths, took = timed(lambda: [store.reserve_snapshot_path("item-1", "glass") for _ in range(5)])
        assert took < NON_BLOCKING_S and len(set(paths)) == 5
        assert not store.snapshot_dir.exists(), "reserving touches no disk"
    finally:
        release.set()
        holder.join(5)
    first = store.save_snapshot(noise(1), decision("item-1", "glass"), paths[0])
    assert first == paths[0] and first.is_file()
    again = store.save_snapshot(noise(2), decision("item-1", "glass"), paths[0])  # as if the clock went back
    assert again == paths[0]
    stats = store.stats()["snapshots"]
    assert stats["count"] == 1 and stats["bytes"] == paths[0].stat().st_size, "one file, indexed once"


# --------------------------------------------------------------------------- stop, errors, housekeeping


def test_stop_drains_what_is_queued(make: Make) -> None:
    store, writer, published = make(start=False)
    paths = [writer.submit_decision(noise(30 + i), decision(f"item-{30 + i}"), training=False) for i in range(3)]
    frame_done = Recorder()
    assert writer.submit_frame_snapshot(noise(40), frame_done)
    writer.start()
    writer.stop(timeout=5.0)
    assert not writer.running
    assert all(p is not None and p.is_file() for p in paths)
    assert len(frame_done.calls) == 1 and frame_done.calls[0][0] is not None
    assert len(published.calls) == 3 and writer.stats()["written"] == 4
    assert writer.submit_decision(noise(41), decision("item-41"), training=False) is None, "stopped: dropped"
    assert writer.stats()["dropped"]["decision"] == 1


def test_stop_past_its_timeout_drops_the_rest_and_tells_the_callers(make: Make,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store, writer, _ = make(maxsize=4)
    gate = Gate(store)
    writer.submit_decision(noise(50), decision("item-50"), training=False)
    assert gate.entered.wait(5)
    frame_done = Recorder()
    assert writer.submit_frame_snapshot(noise(51), frame_done)
    with caplog.at_level(logging.WARNING, logger="smartbin_daemon.vision.evidence_writer"):
        writer.stop(timeout=0.2)
    timeouts = [r for r in caplog.records if getattr(r, "SMARTBIN_EVENT", None) == "worker_stop_timeout"]
    assert len(timeouts) == 1 and "did not stop" in timeouts[0].getMessage()
    gate.opened.set()
    wait_until(lambda: frame_done.calls, 5.0, what="the dropped frame's callback")
    assert frame_done.calls == [(None, None)]
    assert writer.stats()["dropped"]["frame"] == 1 and writer.stats()["written"] == 1


def test_a_failing_job_is_counted_and_the_next_one_still_runs(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    store, writer, _ = make()
    original = store.save_for_training
    calls = {"n": 0}

    def flaky(*args: Any, **kw: Any) -> Path | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return original(*args, **kw)

    monkeypatch.setattr(store, "save_for_training", flaky)
    done = Recorder()
    assert writer.submit_training(noise(60), (), "request", force=True, on_done=done)
    assert writer.submit_training(noise(61), (), "request", force=True, on_done=done)
    wait_until(lambda: len(done.calls) == 2, 5.0, what="both training callbacks")
    assert done.calls[0] == (None,) and done.calls[1][0] is not None and done.calls[1][0].is_file()
    stats = writer.stats()
    assert stats["errors"] == 1 and "boom" in stats["last_error"] and stats["written"] == 1 and writer.running


def test_housekeeping_runs_on_the_writer_thread_when_idle(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    store, writer, _ = make(start=False, housekeeping_interval_s=0.05)
    ran = Recorder()
    original = store.housekeeping

    def housekeeping() -> None:
        ran()
        original()

    monkeypatch.setattr(store, "housekeeping", housekeeping)
    writer.start()
    wait_until(lambda: len(ran.calls) >= 2, 5.0, what="idle housekeeping")
    assert set(ran.threads) == {"smartbin-evidence"}
    assert writer.stats()["written"] == 0 and writer.stats()["errors"] == 0
