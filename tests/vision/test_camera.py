"""Camera worker and frame sources: real files, a real HTTP MJPEG server that dies and hangs, and the watchdog."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from smartbin_daemon.config import CameraConfig
from smartbin_daemon.vision.camera import camera_entities
from smartbin_daemon.vision.frames import LINGER_S, Frame, LatestFrame, is_fresh, next_fresh_frame
from smartbin_daemon.vision.sources import (
    ImageFolderSource,
    MjpegSource,
    MultipartJpegParser,
    OpenCVSource,
    Picamera2Source,
    SourceEnded,
    SourceError,
    SourceStalled,
    VideoFileSource,
    has_gstreamer,
    make_source,
    redact,
    resolve_kind,
)

from ..conftest import free_port, wait_until
from .conftest import SIZE, CameraRig, camera_config, grey_index, write_video
from .mjpeg_server import MjpegServer, decode_counter

RigFactory = Callable[..., CameraRig]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- simulation sources


def test_video_file_frames_are_paced_numbered_and_loop(tmp_path: Path, camera_rig: RigFactory) -> None:
    write_video(tmp_path / "clip.avi", 24)
    rig = camera_rig("clip.avi", fps=20.0)
    got: list[Frame] = []
    last = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        frame = rig.frames.wait_newer(last, 0.5)
        if frame is not None:
            got.append(frame)
            last = frame.seq
    assert len(got) >= 30, f"only {len(got)} frames in 2 s at 20 fps"
    assert all(b.seq > a.seq for a, b in zip(got, got[1:]))
    assert all(b.mono > a.mono for a, b in zip(got, got[1:]))
    assert all(abs(f.wall - time.time()) < 5 for f in got)
    fps = (len(got) - 1) / (got[-1].mono - got[0].mono)
    assert 14.0 <= fps <= 24.0, f"measured {fps:.1f} fps, configured 20"
    indices = [grey_index(f.image) for f in got]
    restart = indices.index(0, 1)  # the file started over after its 24th frame
    assert indices[restart - 1] == 23
    assert indices[:restart] == list(range(indices[0], 24))
    state = rig.wait_state(lambda s: s["frames"] >= 30)
    assert state["status"] == "connected" and state["kind"] == "video" and state["resolution"] == "160x120"
    assert state["source_stats"]["loops"] >= 1
    assert 12.0 <= state["fps"] <= 24.0


def test_video_file_without_loop_ends(tmp_path: Path, camera_rig: RigFactory) -> None:
    write_video(tmp_path / "short.avi", 5)
    rig = camera_rig("short.avi", fps=50.0, loop=False)
    state = rig.wait_status("ended", timeout=3.0)
    assert state["frames"] == 5
    assert rig.frames.latest() is None  # nothing stale left to analyse
    time.sleep(0.3)
    assert rig.state()["open_attempts_total"] == 1  # a finished file is not re-opened


def test_image_folder_in_name_order_skipping_unreadable(tmp_path: Path, camera_rig: RigFactory) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, shade in (("a.png", 0), ("c.png", 1), ("d.jpg", 2)):
        cv2.imwrite(str(folder / name), np.full((SIZE[1], SIZE[0], 3), shade * 8, np.uint8))
    (folder / "b.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("ignored")
    rig = camera_rig(str(folder), fps=20.0)
    shades: list[int] = []
    last = 0
    while len(shades) < 8:
        frame = rig.frames.wait_newer(last, 2.0)
        assert frame is not None, "no frame from the folder"
        shades.append(grey_index(frame.image))
        last = frame.seq
    start = shades.index(0)
    assert shades[start:start + 6] == [0, 1, 2, 0, 1, 2]
    state = rig.wait_state(lambda s: s["source_stats"].get("unreadable") == 1)
    assert state["kind"] == "images" and state["source_stats"]["images"] == 4


def test_missing_file_at_start_then_appears(tmp_path: Path, camera_rig: RigFactory) -> None:
    rig = camera_rig("later.avi", reconnect_min_s=0.1, reconnect_max_s=0.2)
    state = rig.wait_state(lambda s: s["open_attempts_total"] >= 2)
    assert state["status"] == "disconnected"
    assert "later.avi" in state["last_error"] and rig.thread.is_alive()
    write_video(tmp_path / "later.avi", 10)
    rig.wait_status("connected", timeout=3.0)


# --------------------------------------------------------------------------- latest frame wins


def test_slow_consumer_gets_the_newest_frame_and_does_not_slow_capture(tmp_path: Path,
                                                                        camera_rig: RigFactory) -> None:
    write_video(tmp_path / "clip.avi", 40)
    rig = camera_rig("clip.avi", fps=25.0)
    first = rig.frames.wait_newer(0, 3.0)
    assert first is not None
    last_seq, started = first.seq, time.monotonic()
    jumps: list[int] = []
    for _ in range(5):
        time.sleep(0.3)  # a consumer much slower than the camera
        frame = rig.frames.wait_newer(last_seq, 1.0)
        assert frame is not None
        assert frame.age() < 0.2, "the consumer was handed an old frame, not the newest"
        jumps.append(frame.seq - last_seq)
        last_seq = frame.seq
    assert min(jumps) >= 4, f"older frames were queued for the consumer: seq jumps {jumps}"
    captured = rig.worker.frames_total
    fps = captured / (time.monotonic() - started + 1 / 25)
    assert fps >= 18.0, f"capture slowed to {fps:.1f} fps by a slow consumer"


def test_is_fresh_refuses_old_frames() -> None:
    cfg = CameraConfig(max_frame_age_s=0.5)
    image = np.zeros((2, 2, 3), np.uint8)
    now = time.monotonic()
    assert is_fresh(Frame(image, 1, now - 0.2, time.time()), cfg, now)
    assert not is_fresh(Frame(image, 2, now - 0.6, time.time()), cfg, now)
    assert not is_fresh(None, cfg, now)
    slot = LatestFrame()
    slot.put(Frame(image, 7, time.monotonic() - 2.0, time.time()))
    assert next_fresh_frame(slot, cfg, 0, 0.1) is None  # newer than seq 0, but too old to analyse
    slot.put(Frame(image, 8, time.monotonic(), time.time()))
    fresh = next_fresh_frame(slot, cfg, 7, 0.1)
    assert fresh is not None and fresh.seq == 8


# --------------------------------------------------------------------------- decoding on demand


def _image(shade: int = 0) -> np.ndarray:
    return np.full((4, 4, 3), shade, np.uint8)


def test_demand_lease_extends_and_expires_one_shot_is_consumed_and_clear_keeps_demand() -> None:
    slot = LatestFrame()
    now = time.monotonic()
    assert not slot.wanted(now)
    slot.want(1.0)
    slot.want(0.1)  # a shorter lease does not cut the longer one
    assert slot.wanted(time.monotonic()) and slot.wanted(now + 0.9)
    assert not slot.wanted(now + 1.2)
    slot.want_one()
    assert slot.wanted(now + 100.0)  # a one-shot waits for its frame however long that takes
    slot.clear()  # the camera was lost: the consumer still wants its frame from the next one
    assert slot.wanted(now + 100.0)
    slot.put(Frame(_image(), 1, time.monotonic(), time.time()))
    assert not slot.wanted(now + 100.0) and slot.wanted(now + 0.5)


def test_wait_newer_is_demand_so_a_waiting_consumer_gets_a_frame() -> None:
    slot = LatestFrame()
    assert slot.wait_newer(0, 0.05) is None  # nobody decodes here; the wait still asked for frames
    asked = time.monotonic()
    assert slot.wanted(asked) and not slot.wanted(asked + LINGER_S + 0.1)

    stop = threading.Event()

    def camera() -> None:  # decodes (puts) only what is wanted, as the worker does
        seq = 0
        while not stop.is_set():
            if slot.wanted():
                seq += 1
                slot.put(Frame(_image(), seq, time.monotonic(), time.time()))
            time.sleep(0.01)

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    try:
        time.sleep(LINGER_S + 0.1)  # the earlier wait's demand has lapsed: the camera is idle
        idle = slot.latest()
        time.sleep(0.1)
        assert slot.latest() is idle, "a frame was decoded without demand"
        frame = slot.wait_newer(idle.seq if idle else 0, 1.0)
        assert frame is not None and frame.age() < 0.2
    finally:
        stop.set()
        thread.join(1)


def _newer_than(rig: CameraRig, seq: int) -> Frame | None:
    frame = rig.frames.latest()
    return frame if frame is not None and frame.seq > seq else None


@pytest.mark.parametrize("kind", ["images", "video", "mjpeg"])
def test_camera_decodes_only_what_consumers_want(kind: str, tmp_path: Path, camera_rig: RigFactory,
                                                 request: pytest.FixtureRequest) -> None:
    if kind == "images":
        folder = tmp_path / "images"
        folder.mkdir()
        for i in range(3):
            cv2.imwrite(str(folder / f"{i}.png"), np.full((SIZE[1], SIZE[0], 3), i * 8, np.uint8))
        source = str(folder)
    elif kind == "video":
        source = str(write_video(tmp_path / "clip.avi", 24))
    else:
        source = request.getfixturevalue("mjpeg_server").url
    rig = camera_rig(source, fps=20.0)
    worker = rig.worker

    # Idle: connected at full rate, but only the first frame after the open is decoded (resolution, proof it decodes).
    state = rig.wait_state(lambda s: s["status"] == "connected" and s["frames"] >= 3, what="connected")
    opened = rig.frames.latest()
    assert opened is not None and state["resolution"] == "160x120"
    frames0 = state["frames"]
    state = rig.wait_state(lambda s: s["frames"] >= frames0 + 20, timeout=3.0, what="a second of frames")
    assert state["status"] == "connected" and state["fps"] >= 12.0, state
    assert state["decoded"] == 1 and worker.decoded_total == 1, state
    assert rig.frames.latest() is opened, "an idle camera put a new frame in the slot"
    assert not state["unavailable_alert"] and state["stalls_total"] == 0
    if kind == "mjpeg":
        assert state["source_stats"]["undecoded"] >= 15

    # A one-shot: exactly one more decoded frame.
    rig.frames.want_one()
    one = wait_until(lambda: _newer_than(rig, opened.seq), 1.0, interval=0.005, what="the one-shot frame")
    assert one.age() < 0.2
    frames_at = worker.frames_total
    time.sleep(0.4)
    assert worker.decoded_total == 2 and rig.frames.latest() is one
    assert worker.frames_total >= frames_at + 5  # grabbing went on

    # A lease: fresh frames within about two frame periods, for as long as it lasts.
    rig.frames.want(1.0)
    wanted_at = time.monotonic()
    first = wait_until(lambda: _newer_than(rig, one.seq), 1.0, interval=0.005, what="a frame for the lease")
    onset = time.monotonic() - wanted_at
    assert onset < 0.35, f"first wanted frame after {onset:.2f}s at 20 fps"
    seen = {first.seq}
    while time.monotonic() < wanted_at + 0.9:
        frame = rig.frames.latest()
        assert frame is not None and frame.age() < 0.3
        seen.add(frame.seq)
        time.sleep(0.01)
    assert len(seen) >= 12, f"{len(seen)} frames in a 1 s lease at 20 fps"
    time.sleep(max(0.0, wanted_at + 1.2 - time.monotonic()))  # the lease ran out (a read in progress may finish)
    decoded = worker.decoded_total
    assert decoded >= 2 + 12
    state = rig.wait_state(lambda s: s["decoded"] == decoded, timeout=2.0, what="decoded in the state")
    last = rig.frames.latest()
    time.sleep(0.5)
    assert worker.decoded_total == decoded and rig.frames.latest() is last, "decoding went on after the lease"
    assert worker.frames_total >= state["frames"] + 5

    # A consumer that only waits gets a fresh frame too.
    assert last is not None
    waited = rig.frames.wait_newer(last.seq, 1.0)
    assert waited is not None and is_fresh(waited, rig.cfg)


def test_an_idle_camera_that_goes_silent_still_stalls(mjpeg_server: MjpegServer, camera_rig: RigFactory) -> None:
    rig = camera_rig(mjpeg_server.url)
    rig.wait_state(lambda s: s["status"] == "connected" and s["frames"] >= 10, what="grabbing")
    assert rig.worker.decoded_total == 1  # grabbing, not decoding
    mjpeg_server.hang()
    state = rig.wait_state(lambda s: s["stalls_total"] >= 1, timeout=4.0, what="a stall")
    assert state["status"] == "reconnecting" and rig.frames.latest() is None
    assert rig.worker.decoded_total == 1
    mjpeg_server.resume()
    state = rig.wait_status("connected", timeout=4.0)
    assert state["decoded"] == 2 and state["resolution"] == "160x120"  # the first frame after the re-open
    rig.wait_state(lambda s: not s["unavailable_alert"], timeout=4.0)


def test_image_folder_grab_does_not_read_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, shade in (("a.png", 0), ("c.png", 2)):
        cv2.imwrite(str(tmp_path / name), np.full((SIZE[1], SIZE[0], 3), shade * 8, np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"this is not a JPEG")
    folder = ImageFolderSource(tmp_path, fps=200.0, loop=True)
    folder.open()
    imread = cv2.imread

    def no_imread(*args: Any) -> Any:
        raise AssertionError("grab() read an image file")

    monkeypatch.setattr(cv2, "imread", no_imread)
    assert all(folder.grab() for _ in range(7))  # a, b, c, a, b, c, a: the unreadable b is not noticed
    assert folder.stats() == {"unreadable": 0, "images": 3, "loops": 2}
    monkeypatch.setattr(cv2, "imread", imread)
    image = folder.read()  # b: unreadable, skipped, then c
    assert image is not None and grey_index(image) == 2
    assert folder.stats()["unreadable"] == 1
    assert folder.grab() and folder.grab()  # a, then c: the known-bad b is skipped by grabs too
    image = folder.read()
    assert image is not None and grey_index(image) == 0


def test_video_file_grab_advances_loops_and_ends_like_read(tmp_path: Path) -> None:
    write_video(tmp_path / "five.avi", 5)
    video = VideoFileSource(tmp_path / "five.avi", fps=200.0, loop=False)
    video.open()
    try:
        assert video.grab() and video.grab()
        image = video.read()
        assert image is not None and grey_index(image) == 2
        assert video.grab() and video.grab()
        with pytest.raises(SourceEnded):
            video.grab()
    finally:
        video.close()
    looped = VideoFileSource(tmp_path / "five.avi", fps=200.0, loop=True)
    looped.open()
    try:
        assert all(looped.grab() for _ in range(6))  # 0..4, then 0 again
        image = looped.read()
        assert image is not None and grey_index(image) == 1 and looped.stats()["loops"] == 1
    finally:
        looped.close()


def test_mjpeg_grab_drops_parts_undecoded_at_the_paced_rate() -> None:
    with MjpegServer(fps=20.0) as server:
        source = MjpegSource(server.url, fps=10.0)
        source.open()
        try:
            started = time.monotonic()
            grabbed = 0
            while time.monotonic() - started < 1.0:
                grabbed += source.grab()
            assert 8 <= grabbed <= 12, grabbed
            assert source.stats()["undecoded"] == grabbed and source.stats()["corrupt"] == 0
            image = None
            while image is None:
                image = source.read()
            assert decode_counter(image) >= server.frames_sent - 1  # the newest part, as after a read
        finally:
            source.close()


def test_ffmpeg_grab_takes_frames_and_reports_a_hang_as_a_stall(mjpeg_server: MjpegServer) -> None:
    source = OpenCVSource("url", mjpeg_server.url, cv2.CAP_FFMPEG, cfg=camera_config(mjpeg_server.url))
    source.open()
    try:
        assert all(source.grab() for _ in range(3))
        image = source.read()
        assert image is not None and image.shape == (SIZE[1], SIZE[0], 3)
        mjpeg_server.hang()
        started = time.monotonic()
        with pytest.raises(SourceStalled):
            for _ in range(10):
                source.grab()
        assert time.monotonic() - started < 2.0
        assert source.stats()["failed_reads"] >= 1
    finally:
        source.close()


class _Job:
    """A picamera2 request: done after `polls` waits, each a timeout until then."""

    def __init__(self, result: Any, polls: int = 1) -> None:
        self.result = result
        self.polls = polls

    def get_result(self, timeout: float) -> Any:
        self.polls -= 1
        if self.polls > 0:
            raise concurrent.futures.TimeoutError
        return self.result


class _FakePicamera2:
    """Counts array and metadata requests; the first metadata request times out once."""

    def __init__(self) -> None:
        self.arrays = 0
        self.metadata = 0

    def capture_array(self, name: str, wait: bool) -> _Job:
        assert name == "main" and wait is False
        self.arrays += 1
        return _Job(np.zeros((SIZE[1], SIZE[0], 3), np.uint8))

    def capture_metadata(self, wait: bool) -> _Job:
        assert wait is False
        self.metadata += 1
        return _Job({"SensorTimestamp": self.metadata}, polls=2 if self.metadata == 1 else 1)


def test_picamera2_grab_waits_for_metadata_and_copies_no_image() -> None:
    source = Picamera2Source(camera_config("picamera2"))
    cam = _FakePicamera2()
    source.cam = cam
    assert source.grab() is False and source.stats()["timeouts"] == 1  # the request is still pending
    image = source.read()  # finishes the grab's request first, then captures an image
    assert image is not None and image.shape == (SIZE[1], SIZE[0], 3)
    assert (cam.metadata, cam.arrays) == (1, 1)
    assert source.grab() and source.grab()
    assert (cam.metadata, cam.arrays) == (3, 1)


# --------------------------------------------------------------------------- a real MJPEG server


def test_mjpeg_server_killed_and_restarted_reconnects(mjpeg_server: MjpegServer, camera_rig: RigFactory) -> None:
    rig = camera_rig(mjpeg_server.url)
    rig.wait_status("connected")
    before = rig.frames.wait_newer(0, 2.0)
    assert before is not None
    counter_before = decode_counter(before.image)
    assert counter_before >= 1

    mjpeg_server.stop()  # listener and open connections closed, as when a camera reboots
    state = rig.wait_status("reconnecting", timeout=3.0)
    assert rig.frames.latest() is None, "a frame from the lost camera is still offered"
    assert state["fps"] == 0.0
    time.sleep(0.8)  # a few refused re-opens
    mjpeg_server.start()
    state = rig.wait_status("connected", timeout=4.0)
    assert state["reconnects_total"] >= 1 and state["reconnects_last_hour"] >= 1
    assert state["errors_total"] >= 2  # the broken read plus at least one refused connection
    assert "refused" in (state["last_error"] or "") or "closed" in (state["last_error"] or "")
    after = rig.frames.wait_newer(before.seq, 2.0)
    assert after is not None and decode_counter(after.image) > counter_before
    statuses = rig.statuses()
    assert statuses[:4] == ["disconnected", "connected", "reconnecting", "connected"], statuses
    assert mjpeg_server.connections_total >= 2


def test_mjpeg_server_that_hangs_is_a_stall_and_stop_stays_prompt(mjpeg_server: MjpegServer,
                                                                  camera_rig: RigFactory) -> None:
    cv2.imdecode(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1], cv2.IMREAD_COLOR)  # warm up codecs
    threads_before = set(threading.enumerate())
    fds_before = _fd_count()
    rig = camera_rig(mjpeg_server.url)
    rig.wait_status("connected")

    mjpeg_server.hang()  # connection stays open, nothing more arrives
    beats: list[float] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and rig.worker.stalls_total < 1:
        beats.append(rig.worker.heartbeat_age())
        time.sleep(0.05)
    state = rig.wait_state(lambda s: s["stalls_total"] >= 1, timeout=1.0)
    assert state["status"] == "reconnecting" and state["reconnects_total"] >= 1 and state["stalls_last_hour"] >= 1
    assert max(beats) < 1.2, f"heartbeat went stale while the source hung: {max(beats):.2f}s"
    assert rig.frames.latest() is None

    mjpeg_server.resume()
    rig.wait_status("connected", timeout=4.0)

    mjpeg_server.hang()
    time.sleep(0.3)  # the worker is now inside a read that gets nothing
    took = rig.stop()
    assert not rig.thread.is_alive() and took < 2.0, f"stop took {took:.2f}s"
    assert rig.state()["status"] == "disconnected"
    mjpeg_server.stop()
    wait_until(lambda: set(threading.enumerate()) <= threads_before, 3.0, what="threads to end")
    # fds_before counted the server's listening socket, which is closed now: one fewer unless the worker leaked
    wait_until(lambda: _fd_count() < fds_before, 3.0, what=f"fds below {fds_before} (now {_fd_count()})")


def test_absent_url_at_start_retries_with_backoff_then_connects(camera_rig: RigFactory) -> None:
    port = free_port()
    rig = camera_rig(f"http://127.0.0.1:{port}/stream.mjpg", reconnect_min_s=0.1, reconnect_max_s=0.4,
                     stall_timeout_s=1.0)
    time.sleep(2.0)
    attempts = rig.worker.open_attempts_total
    # attempts at 0, 0.1, 0.3, 0.7, 1.1, 1.5, 1.9 s: capped doubling, not a busy loop and not giving up
    assert 5 <= attempts <= 9, attempts
    state = rig.wait_state(lambda s: s["open_attempts_total"] >= attempts - 1)
    assert state["status"] == "disconnected"
    assert "refused" in state["last_error"] and state["next_retry_s"] <= 0.4
    assert [a["active"] for a in rig.alerts()] == [True]  # unavailable for longer than stall_timeout_s
    assert rig.thread.is_alive()  # an absent camera is no crash
    server = MjpegServer(port, fps=20.0, width=SIZE[0], height=SIZE[1]).start()
    try:
        state = rig.wait_status("connected", timeout=3.0)
        assert state["resolution"] == "160x120"
        rig.wait_state(lambda s: not s["unavailable_alert"])
        assert [a["active"] for a in rig.alerts()] == [True, False]
    finally:
        rig.stop()
        server.stop()


def test_password_is_redacted_in_state_and_errors(camera_rig: RigFactory) -> None:
    assert redact("rtsp://admin:s3cret@cam.local:554/live") == "rtsp://admin:***@cam.local:554/live"
    assert redact("rtspsrc location=rtsp://u:p@h/x ! decodebin") == "rtspsrc location=rtsp://u:***@h/x ! decodebin"
    assert redact("http://cam.local/stream") == "http://cam.local/stream"
    port = free_port()
    rig = camera_rig(f"http://admin:s3cret@127.0.0.1:{port}/stream.mjpg")
    state = rig.wait_state(lambda s: s["last_error"] is not None)
    assert "admin:***@127.0.0.1" in state["source"]
    assert "s3cret" not in json.dumps(rig.history)


def test_discovery_entities(camera_rig: RigFactory, tmp_path: Path) -> None:
    rig = camera_rig("missing.avi")
    wait_until(lambda: "camera" in rig.bus.entities(), 2.0, what="discovery")
    entities = {e.object_id: e for e in rig.bus.entities()["camera"]}
    assert entities == {e.object_id: e for e in camera_entities("camera")}
    fps = entities["camera_fps"]
    assert fps.platform == "sensor" and fps.options["unit_of_measurement"] == "fps"
    assert fps.options["state_class"] == "measurement" and fps.options["entity_category"] == "diagnostic"
    assert fps.options["expire_after"] > 10  # longer than the slowest state cadence
    connected = entities["camera_connected"]
    assert connected.platform == "binary_sensor" and connected.options["device_class"] == "connectivity"


# --------------------------------------------------------------------------- backends directly


def test_mjpeg_client_without_content_length_and_with_basic_auth() -> None:
    with MjpegServer(fps=20.0, content_length=False, auth=("viewer", "pa:ss")) as server:
        bad = MjpegSource(server.url.replace("http://", "http://viewer:wrong@"), fps=20.0)
        with pytest.raises(SourceError, match="HTTP 401"):
            bad.open()
        source = MjpegSource(server.url.replace("http://", "http://viewer:pa%3Ass@"), fps=20.0)
        source.open()
        try:
            counters: list[int] = []
            while len(counters) < 5:
                image = source.read()
                if image is not None:
                    assert image.shape == (SIZE[1], SIZE[0], 3)
                    counters.append(decode_counter(image))
            assert counters == sorted(counters) and len(set(counters)) == 5
            assert source.stats()["corrupt"] == 0
        finally:
            source.close()
        missing = MjpegSource(server.url.replace("stream.mjpg", "nothing"), fps=20.0)
        with pytest.raises(SourceError, match="HTTP 404"):
            missing.open()


def test_mjpeg_client_decodes_only_the_newest_part() -> None:
    with MjpegServer(fps=20.0) as server:
        source = MjpegSource(server.url, fps=5.0)  # the server sends 4x more than asked for
        source.open()
        try:
            got: list[tuple[float, int]] = []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                image = source.read()
                if image is not None:
                    got.append((time.monotonic(), decode_counter(image)))
            assert 5 <= len(got) <= 10, len(got)
            assert source.stats()["skipped"] >= 10
            assert all(b[1] - a[1] >= 2 for a, b in zip(got[1:], got[2:]))
            time.sleep(0.5)  # a backlog of ~10 parts piles up in the socket buffer
            image = None
            while image is None:
                image = source.read()
            assert decode_counter(image) >= server.frames_sent - 1, "a buffered old part was decoded, not the newest"
        finally:
            source.close()


def test_multipart_parser_handles_real_world_variants() -> None:
    bodies = [bytes([0xFF, 0xD8]) + os.urandom(300) + bytes([0xFF, 0xD9]) for _ in range(4)]
    stream = b"junk before the first boundary\r\n"
    stream += b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(bodies[0]) + bodies[0] + b"\r\n"
    stream += b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + bodies[1] + b"\r\n"
    stream += b"--frame\nContent-Type: image/jpeg\n\n" + bodies[2] + b"\n"
    stream += b"--frame\r\n\r\n" + bodies[3] + b"\r\n--frame\r\n"
    for boundary in ("frame", "--frame"):
        for chunking in (1, 7, 4096):
            parser = MultipartJpegParser(boundary)
            parts: list[bytes] = []
            for i in range(0, len(stream), chunking):
                parser.feed(stream[i:i + chunking])
                latest, _ = parser.pop_latest()
                if latest is not None:
                    parts.append(latest)
            if chunking == 1:
                assert parts == bodies, (boundary, chunking)
            else:
                assert parts[-1] == bodies[3]
    parser = MultipartJpegParser("frame")
    parser.feed(b"--frame\r\n\r\nabc\r\n--frame--\r\n")
    assert parser.pop_latest() == (b"abc", 0) and parser.ended


def test_ffmpeg_backend_on_the_mjpeg_server(mjpeg_server: MjpegServer) -> None:
    """The OpenCV FFmpeg path (used for rtsp://) reads a live stream, reports a hang as a stall and a kill as an error."""
    source = OpenCVSource("url", mjpeg_server.url, cv2.CAP_FFMPEG, cfg=camera_config(mjpeg_server.url))
    source.open()
    try:
        images = [source.read() for _ in range(3)]
        assert all(i is not None and i.shape == (SIZE[1], SIZE[0], 3) for i in images)
        mjpeg_server.hang()
        started = time.monotonic()
        with pytest.raises(SourceStalled):
            for _ in range(10):
                source.read()
        assert time.monotonic() - started < 2.0
    finally:
        source.close()


def test_sources_that_cannot_run_here_fail_clearly(tmp_path: Path) -> None:
    v4l2 = make_source(camera_config("/dev/video99"), tmp_path)
    with pytest.raises(SourceError, match="cannot open"):
        v4l2.open()
    if not has_gstreamer():
        gst = make_source(camera_config("videotestsrc ! videoconvert ! appsink"), tmp_path)
        with pytest.raises(SourceError, match="GStreamer"):
            gst.open()
    try:
        import picamera2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="python3-picamera2"):
            make_source(camera_config("picamera2"), tmp_path).open()


def test_source_kind_resolution(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    (tmp_path / "clip.avi").write_bytes(b"")
    cases = {
        "0": ("v4l2", OpenCVSource), "/dev/video2": ("v4l2", OpenCVSource),
        "/dev/v4l/by-id/usb-cam-video-index0": ("v4l2", OpenCVSource),
        "picamera2": ("picamera2", Picamera2Source), "picamera2:1": ("picamera2", Picamera2Source),
        "nvarguscamerasrc ! nvvidconv ! appsink": ("gstreamer", OpenCVSource),
        "rtsp://u:p@cam/live": ("url", OpenCVSource), "http://cam/video.mjpg": ("url", MjpegSource),
        "https://cam/video.mjpg": ("url", MjpegSource),
        "frames": ("images", ImageFolderSource), "clip.avi": ("video", VideoFileSource),
        str(tmp_path / "clip.avi"): ("video", VideoFileSource),
    }
    for source, (kind, cls) in cases.items():
        cfg = camera_config(source)
        assert resolve_kind(cfg, tmp_path) == kind, source
        made = make_source(cfg, tmp_path)
        assert isinstance(made, cls) and made.kind == kind, source
    assert "p@" not in make_source(camera_config("rtsp://u:p@cam/live"), tmp_path).describe()
    assert resolve_kind(camera_config("clip.avi", kind="images"), tmp_path) == "images"
    with pytest.raises(SourceError, match="no such file"):
        make_source(camera_config("nowhere.avi"), tmp_path)


def test_finite_sources_end_and_empty_ones_fail(tmp_path: Path) -> None:
    write_video(tmp_path / "two.avi", 2)
    video = VideoFileSource(tmp_path / "two.avi", fps=200.0, loop=False)
    video.open()
    try:
        assert video.read() is not None and video.read() is not None
        with pytest.raises(SourceEnded):
            video.read()
    finally:
        video.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(empty, fps=10.0, loop=True).open()
    (empty / "bad.png").write_bytes(b"not a png")
    folder = ImageFolderSource(empty, fps=200.0, loop=True)
    folder.open()
    with pytest.raises(SourceError, match="no readable image"):
        folder.read()
    assert folder.stats()["unreadable"] == 1


def test_random_chunking_never_loses_a_part() -> None:
    rng = random.Random(7)
    bodies = [rng.randbytes(rng.randint(50, 400)) for _ in range(30)]
    stream = b"".join(b"--b\r\nContent-Length: %d\r\n\r\n" % len(b) + b + b"\r\n" for b in bodies)
    parser = MultipartJpegParser("b")
    parts: list[bytes] = []
    at = 0
    while at < len(stream):
        size = rng.randint(1, 64)
        parser.feed(stream[at:at + size])
        at += size
        while parser.parts:
            parts.append(parser.parts.pop(0))
    assert parts == bodies
