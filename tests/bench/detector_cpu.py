"""Detector CPU idle vs active, and inference p50/p95, with the shipped model on this machine.

Run from the repo root: `python -m tests.bench.detector_cpu [--seconds 20]`.
A feeder thread stands in for the camera (15 fps, 320x320 sample frames, the same in every phase);
its own cost is measured alone first and reported as the baseline, so the detector's share is the
difference. CPU time is process CPU (all threads) over wall time, in % of one core.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import cv2

from smartbin_daemon.config import CameraConfig, DetectorConfig, EvidenceConfig
from smartbin_daemon.runtime.bus import Bus, Request
from smartbin_daemon.vision.frames import Frame, LatestFrame
from smartbin_daemon.vision.model import configure_ultralytics

REPO = Path(__file__).resolve().parents[2]


def feeder(frames: LatestFrame, stop: threading.Event, fps: float = 15.0) -> None:
    """Cycle the sample images into the frame slot at `fps`."""
    images = [cv2.imread(str(p)) for p in sorted((REPO / "tests/data/samples").glob("*.jpg"))]
    seq, period, nxt = 0, 1.0 / fps, time.monotonic()
    while not stop.is_set():
        seq += 1
        frames.put(Frame(images[seq % len(images)], seq, time.monotonic(), time.time()))
        nxt += period
        stop.wait(max(0.0, nxt - time.monotonic()))


def cpu_pct(seconds: float) -> float:
    """Process CPU over `seconds` of wall time, in % of one core."""
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (time.process_time() - c0) / (time.monotonic() - t0)


def main() -> None:
    """Baseline (feeder only), idle detector, continuous detector."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="smartbin-bench-"))
    configure_ultralytics(state)
    from smartbin_daemon.vision.detector import DetectorWorker

    frames, stop = LatestFrame(), threading.Event()
    threading.Thread(target=feeder, args=(frames, stop), daemon=True).start()
    time.sleep(1.0)
    baseline = cpu_pct(args.seconds)
    bus = Bus()
    cfg = DetectorConfig(enabled=True, model=REPO / "models/smartbin-waste-nano.onnx", imgsz=320)
    worker = DetectorWorker(bus, cfg, CameraConfig(), EvidenceConfig(snapshots=False, active_learning=False),
                            frames, state)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while worker.model is None or worker.evidence is None:
        time.sleep(0.1)
    time.sleep(2.0)
    idle = cpu_pct(args.seconds)
    idle_inferences = worker.inferences
    bus.publish(Request("detector", "detection", {"continuous": True}, "bench"))
    time.sleep(2.0)
    active = cpu_pct(args.seconds)
    st = worker.own_state()
    worker.request_stop()
    thread.join(10)
    stop.set()
    print(f"feeder only (15 fps camera stand-in): {baseline:5.1f} % of one core")
    print(f"detector idle (presence gate):        {idle:5.1f} %  -> detector share {idle - baseline:+.1f} %, "
          f"{idle_inferences} inferences")
    print(f"detector active (continuous):         {active:5.1f} %  -> detector share {active - baseline:+.1f} %")
    print(f"inference ms p50 {st['inference_ms']['p50']}, p95 {st['inference_ms']['p95']} "
          f"over {st['inferences']} inferences; stages {st['stages_ms']}")


if __name__ == "__main__":
    main()
