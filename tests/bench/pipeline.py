"""Detector pipeline throughput against a bare onnxruntime `session.run` loop on the same frames, model and settings.

Run from the repo root: `python -m tests.bench.pipeline [--rounds 60 --frames 10] [--model models/x.onnx]`.

The anchor (`bare`): the model's own cost. An `onnxruntime.InferenceSession` made by the backend's own code
(`OnnxRuntimeBackend`, a separate instance from the pipelines', so the session options cannot drift from what
the daemon uses: intra-op threads = the pipeline's resolved `detector.threads`, inter-op 1, sequential,
`session.intra_op.allow_spinning=0`; read back from the session and reported), called as
`session.run([output], {input: blob})` in a loop. The input blobs (the backend's `letterbox`, then its
HWC-BGR uint8 -> 1x3xHxW RGB float /255 layout) are prepared once per sample image before any timing, and
checked to give the same output as the backend's own `_run` on the same image. Its frames/s is the most
this model gives on this machine with these threads; the pipeline can only lose to it.

The pipeline: the real `DetectorWorker` (its own model load, default `DetectorConfig`: backend auto, so
onnxruntime for an .onnx) in its own thread, in continuous mode (switched on and off with the real `detection`
request), fed through its real frame slot (`LatestFrame`) by a feeder thread standing in for the camera. The
feeder is not paced at a camera rate: it puts the next frame the moment the detector has taken one, so a
frame is always waiting when the detector asks (the time the detector spent waiting for a frame is reported
and should be ~0). Pipeline frames/s = N / (time from the detector taking frame 0 to taking frame N): in that
window it completed exactly N inferences (its own counter is checked) and everything due with them: a
decision every K=5 frames, its evidence handed to the evidence writer thread, and its state. After each
pipeline round the bench waits for the evidence writer to finish that round's jobs (so its tail is never
charged to the next contender). A pipeline round's CPU time is the process CPU time over the same window
(all threads) plus the evidence writer thread's CPU time from the window's end until it finished the
round's jobs (its own thread clock), so the CPU figures include all the round's evidence work but not the
inference the detector still runs on the frame that closes the window. Two pipelines run: `pipeline` with
the shipped evidence settings (an annotated snapshot per decision, uncertain frames saved for active
learning, each file fsync'd) and `pipeline_no_evidence` with evidence off, which isolates the worker's own
overhead from the cost of writing evidence.

Two more contenders compare the backends on the same frames (whole detection: pre-process, inference,
NMS): `onnxruntime` = `load_model(..., backend="onnxruntime").predict(frame)` (the daemon's backend, called
directly, same threads) and `ultralytics` = `YOLO(model).predict(frame, imgsz=, conf=, iou=, max_det=,
device=, verbose=False)` (ultralytics runs the .onnx on its own onnxruntime session with onnxruntime's
default threads and spinning, as ultralytics ships it). Their per-frame time ratio onnxruntime / ultralytics
is reported (lower is better; ~0.5 expected), with the same ratio in process CPU time. The per-round
differences in ms/frame split the pipeline's cost beyond the anchor into the backend's own pre/post-processing
(onnxruntime contender - bare), the worker (no-evidence pipeline - onnxruntime contender) and the evidence
(shipped - no-evidence pipeline): `overhead_ms_per_frame`, wall and CPU.

All contenders run the same N frames in the same order, in interleaved rounds. The order of the contenders
changes from round to round by a Williams design (`balanced_orders`: each contender runs in each position
equally often and right after each other contender equally often, over 10 rounds for 5 contenders; a plain
rotation would always run the anchor right after ultralytics), with a 0.25 s pause before each contender: after
ultralytics' predict its threads keep spinning for up to ~0.2 s (ultralytics' own onnxruntime session spins,
and torch's pool), which measurably charged the next contender's CPU (+5 ms per frame) before this pause. So
drift, carry-over and background load hit each alike. The ratio pipeline/bare frames/s is taken per round;
its median is the figure (target >= 0.95, on the shipped pipeline), with min/max to show the noise. The same
ratio in process CPU time per frame is reported too: it is far less sensitive to other processes on a shared
machine. Python logging stays at WARNING, so the per-decision INFO line is not formatted. The per-stage breakdown is the shipped pipeline's own
`stages_ms` (its last 200 frames and decisions).

Threads: the daemon's `detector.threads: 0` means all cores but one, so on a 2-core machine the anchor, the
pipelines and the `onnxruntime` contender run 1 intra-op thread, while ultralytics' session uses onnxruntime's
default (one per physical core, spinning). `--backend-threads N` sets the `onnxruntime` contender's threads
(only it: anchor and pipelines stay at the daemon's), to compare the backends at equal threads.

A model that is not an .onnx (`--model x.pt`, with <stem>.classes.yaml beside it) has no onnxruntime
session to be the anchor: then the anchor falls back to a bare `YOLO(model).predict` loop (as this bench
measured before the onnxruntime backend), the two backend contenders are left out, and `anchor` in the
result says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from smartbin_daemon.config import CameraConfig, DetectorConfig, EvidenceConfig, resolve_backend
from smartbin_daemon.runtime.bus import Bus, Request
from smartbin_daemon.vision.frames import Frame, LatestFrame
from smartbin_daemon.vision.ultralytics_backend import configure_ultralytics

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "smartbin-waste-s.onnx"
SAMPLES = REPO / "tests" / "data" / "samples"
TARGET_RATIO = 0.95
EXPECTED_ORT_VS_ULTRALYTICS = 0.5
"""Per-frame time of the onnxruntime backend over ultralytics' predict on the same .onnx: expected, not judged."""
GAP_S = 0.25
"""Pause before each contender of a round: longer than the ~0.2 s other threads spin after ultralytics' predict."""
ANCHOR_ORT = "onnxruntime InferenceSession.run on prepared blobs"
ANCHOR_ULTRALYTICS = "ultralytics YOLO.predict (not an .onnx model)"
ULTRALYTICS_STATE = Path(tempfile.gettempdir()) / "smartbin-bench"  # ultralytics' settings dir, reused


def load_frames(folder: Path = SAMPLES) -> list[np.ndarray]:
    """The sample images, decoded once (BGR)."""
    images = [cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))]
    frames = [im for im in images if im is not None]
    if not frames:
        raise RuntimeError(f"no readable .jpg in {folder}")
    return frames


def session_options(session: Any) -> dict[str, Any]:
    """The settings that matter of an onnxruntime session, read back from it."""
    opts = session.get_session_options()
    try:
        spinning: str | None = opts.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime's default (spinning on)
        spinning = None
    return {"intra_op_threads": opts.intra_op_num_threads, "inter_op_threads": opts.inter_op_num_threads,
            "execution_mode": str(opts.execution_mode).rsplit(".", 1)[-1], "allow_spinning": spinning,
            "providers": list(session.get_providers())}


def to_blob(letterboxed: np.ndarray, dtype: Any) -> np.ndarray:
    """The backend's input layout: HWC BGR uint8 -> 1x3xHxW RGB, /255, in the model's float type.

    The same steps as `OnnxRuntimeBackend._run` (which does them inside its timed call); `BareSession` checks
    that both give the same model output.
    """
    blob = np.ascontiguousarray(letterboxed[..., ::-1].transpose(2, 0, 1)[None])
    blob = blob.astype(np.float32) / 255
    return blob.astype(np.float16) if dtype is np.float16 else blob


class BareSession:
    """The anchor: an onnxruntime session made by the backend's own code, run bare on blobs prepared in advance."""

    def __init__(self, model: Path, cfg: DetectorConfig, threads: int, images: list[np.ndarray]) -> None:
        from smartbin_daemon.vision.onnx_backend import OnnxRuntimeBackend, letterbox

        # A separate instance of the daemon's backend: its session is built by the same code as the pipeline's.
        self.backend = OnnxRuntimeBackend(model, device=cfg.device, imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou,
                                          max_det=cfg.max_det, threads=threads)
        b = self.backend
        self.session, self.output_name, self.input_name = b.session, b.output_name, b.input_name
        letterboxed = [letterbox(im, b.input_hw) for im in images]
        self.blobs = [to_blob(lb, b.input_dtype) for lb in letterboxed]
        # The prepared blob must be what the backend feeds its session: same output as its own `_run`.
        diffs = [float(np.max(np.abs(self.run(i) - b._run(lb)))) for i, lb in enumerate(letterboxed)]
        self.max_abs_diff = max(diffs)
        if self.max_abs_diff > 1e-3:
            raise RuntimeError(f"prepared blobs disagree with the backend's own input (max |diff| {self.max_abs_diff})")

    def run(self, i: int) -> np.ndarray:
        """`session.run` on prepared blob i (nothing else)."""
        return self.session.run([self.output_name], {self.input_name: self.blobs[i % len(self.blobs)]})[0]  # type: ignore[no-any-return]


class OnDemandFrames(LatestFrame):
    """The real frame slot, plus a note of each frame the detector takes (so the feeder can replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = threading.Event()
        self.taken_at: list[float] = []
        self.taken_cpu: list[float] = []
        self.taken_writer_cpu: list[float] = []
        self.writer_clock: int | None = None
        """CPU clock of the evidence writer's thread (`time.pthread_getcpuclockid`), read as each frame is taken."""
        self.waited_s = 0.0

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """`LatestFrame.wait_newer`, timed; a returned frame is recorded as taken."""
        t0 = time.monotonic()
        frame = super().wait_newer(seq, timeout)
        now = time.monotonic()
        if frame is not None:
            self.waited_s += now - t0
            self.taken_at.append(now)
            self.taken_cpu.append(time.process_time())
            self.taken_writer_cpu.append(time.clock_gettime(self.writer_clock) if self.writer_clock is not None else 0.0)
            self.taken.set()
        return frame


class Feeder:
    """Camera stand-in: puts the next frame as soon as the detector took the previous one, up to a budget."""

    def __init__(self, slot: OnDemandFrames, images: list[np.ndarray], on_done: Callable[[], None]) -> None:
        self.slot = slot
        self.on_done = on_done
        self.images = images
        self.seq = 0
        self.budget = 0
        self.start = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)
        self._thread.start()

    def arm(self, frames: int, start: int) -> None:
        """Serve `frames` frames, images[start], images[start+1], ...; `done` is set when all were taken."""
        self.slot.taken_at.clear()
        self.slot.taken_cpu.clear()
        self.slot.taken_writer_cpu.clear()
        self.slot.waited_s = 0.0
        self.slot.taken.clear()
        self.done.clear()
        self.budget, self.start = frames, start
        self._put(0)

    def _put(self, i: int) -> None:
        self.seq += 1
        self.slot.put(Frame(self.images[(self.start + i) % len(self.images)], self.seq, time.monotonic(), time.time()))

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.slot.taken.wait(0.2):
                continue
            self.slot.taken.clear()
            n = len(self.slot.taken_at)
            if self.budget and n >= self.budget:
                self.budget = 0
                self.on_done()
                self.done.set()
            elif self.budget:
                self._put(n)

    def stop(self) -> None:
        """End the thread."""
        self._stop.set()
        self._thread.join(2)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Pipeline:
    """A real DetectorWorker in its own thread, with its own frame slot, feeder and bus."""

    def __init__(self, cfg: DetectorConfig, evidence: EvidenceConfig, images: list[np.ndarray], state: Path) -> None:
        from smartbin_daemon.vision.detector import DetectorWorker

        self.slot = OnDemandFrames()
        self.bus = Bus()
        state.mkdir(parents=True, exist_ok=True)
        self.worker = DetectorWorker(self.bus, cfg, CameraConfig(), evidence, self.slot, state)
        self.thread = threading.Thread(target=self.worker.run, name="smartbin-detector", daemon=True)
        self.thread.start()
        self.feeder = Feeder(self.slot, images, on_done=self._switch_off)
        self._rounds = 0

    def ready(self) -> None:
        """Wait for the model load and warm-up and for the evidence writer's thread (whose CPU clock the bench reads)."""
        def writer_thread() -> int | None:
            writer = self.worker.evidence_writer
            return writer.thread_id if self.worker.model is not None and writer is not None else None

        _wait(lambda: writer_thread() is not None, 120, "the detector's model and evidence writer")
        thread_id = writer_thread()
        assert thread_id is not None
        self.slot.writer_clock = time.pthread_getcpuclockid(thread_id)

    def evidence_pending(self) -> int:
        """Evidence jobs queued or being written (submitted minus written or failed)."""
        writer = self.worker.evidence_writer
        assert writer is not None
        s = writer.stats()
        return int(s["submitted"]) - int(s["written"]) - int(s["errors"])

    def _request(self, continuous: bool) -> None:
        self._rounds += 1
        self.bus.publish(Request("detector", "detection", {"continuous": continuous}, f"bench-{self._rounds}"))

    def _switch_off(self) -> None:
        """Called by the feeder as the last frame is taken, so the detector goes idle right after it."""
        self._request(False)

    def run(self, start: int, count: int) -> tuple[float, float, float]:
        """Serve `count`+1 frames in continuous mode; wall seconds for `count` full cycles (frame 0 taken to frame
        `count` taken), CPU seconds of the same window plus the writer's until the round's evidence is written,
        and the seconds the detector waited for a frame."""
        worker = self.worker
        before = worker.inferences
        self.feeder.arm(count + 1, start)
        self._request(True)
        if not self.feeder.done.wait(60 + count):
            raise RuntimeError("the detector stopped taking frames")
        stamps, cpu, writer_cpu = list(self.slot.taken_at), list(self.slot.taken_cpu), list(self.slot.taken_writer_cpu)
        waited = self.slot.waited_s
        _wait(lambda: not worker.continuous and worker.gate_state == "idle", 10, "the detector to go idle")
        _wait(lambda: self.evidence_pending() <= 0, 30, "the evidence writer to finish the round")
        assert self.slot.writer_clock is not None
        writer_tail = time.clock_gettime(self.slot.writer_clock) - writer_cpu[count]
        done = worker.inferences - before
        if done < count:
            raise RuntimeError(f"pipeline round: {done} inferences for {count} frames taken")
        return stamps[count] - stamps[0], cpu[count] - cpu[0] + writer_tail, waited

    def stop(self) -> None:
        """Stop the worker and the feeder."""
        self.worker.request_stop()
        self.thread.join(10)
        self.feeder.stop()


def _loop(call: Callable[[int], Any]) -> Callable[[int, int], tuple[float, float]]:
    """A contender that calls `call(frame index)` once per frame: wall and process CPU seconds of `count` calls."""

    def run(start: int, count: int) -> tuple[float, float]:
        t0, c0 = time.monotonic(), time.process_time()
        for i in range(count):
            call(start + i)
        return time.monotonic() - t0, time.process_time() - c0

    return run


def balanced_orders(n: int) -> list[list[int]]:
    """A Williams design: orders of n contenders, each in every position and right after every other one
    equally often (n orders for an even n, 2n for an odd n)."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + k) % n for x in first] for k in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def _ratios(rows: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [r[key] for r in rows]
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def bench(quick: bool = False, *, model: Path | None = None, rounds: int | None = None,
          frames: int | None = None, backend_threads: int | None = None) -> dict[str, Any]:
    """Interleaved rounds of the anchor, the pipelines and the two backends; frames/s, ratios, stage breakdown."""
    rounds = rounds or (3 if quick else 60)
    n = frames or 10
    model_path = (model or DEFAULT_MODEL).resolve()
    images = load_frames()
    cfg = DetectorConfig(enabled=True, model=model_path)
    onnx = resolve_backend(model_path, cfg.backend) == "onnxruntime"
    state = Path(tempfile.mkdtemp(prefix="smartbin-bench-pipeline-"))
    pipelines: dict[str, Pipeline] = {}
    extra: dict[str, Any] = {}
    try:
        pipelines["pipeline"] = Pipeline(cfg, EvidenceConfig(), images, state / "default")
        pipelines["pipeline_no_evidence"] = Pipeline(
            cfg, EvidenceConfig(snapshots=False, publish_snapshot=False, active_learning=False), images,
            state / "no-evidence")
        for p in pipelines.values():
            p.ready()
        shipped = pipelines["pipeline"].worker.model
        assert shipped is not None
        device = shipped.device
        # ultralytics (and torch) only now: the pipelines' detectors were loaded without them, as in the daemon.
        configure_ultralytics(ULTRALYTICS_STATE)
        from ultralytics import YOLO

        yolo = YOLO(str(model_path), task="detect")
        device_arg = "cpu" if device == "cpu" else device.replace("tensorrt", "cuda")  # ultralytics' device names

        def yolo_predict(i: int) -> Any:
            return yolo.predict(images[i % len(images)], imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou,
                                max_det=cfg.max_det, device=device_arg, verbose=False)

        loops: dict[str, Callable[[int, int], tuple[float, float]]] = {}
        if onnx:
            from smartbin_daemon.vision.model import load_model

            threads = int(shipped.backend.threads)  # type: ignore[attr-defined]  # the pipeline's resolved threads
            bare = BareSession(model_path, cfg, threads, images)
            backend = load_model(model_path, classmap=cfg.classmap, device=cfg.device, imgsz=cfg.imgsz, conf=cfg.conf,
                                 iou=cfg.iou, max_det=cfg.max_det, backend="onnxruntime",
                                 threads=backend_threads or threads)
            loops["bare"] = _loop(bare.run)
            loops["onnxruntime"] = _loop(lambda i: backend.predict(images[i % len(images)]))
            loops["ultralytics"] = _loop(yolo_predict)
            pipeline_session = session_options(shipped.backend.session)  # type: ignore[attr-defined]
            anchor_session = session_options(bare.session)
            if anchor_session != pipeline_session:
                raise RuntimeError(f"anchor session {anchor_session} differs from the pipeline's {pipeline_session}")
            extra = {"threads": threads, "session_options": anchor_session,
                     "anchor_blob_max_abs_diff": bare.max_abs_diff,
                     "onnxruntime_contender_threads": int(backend.backend.threads)}  # type: ignore[attr-defined]
        else:
            loops["bare"] = _loop(yolo_predict)

        loops["bare"](0, 5)  # warm-up of every path (the first predict builds ultralytics' predictor)
        for name, loop in loops.items():
            if name != "bare":
                loop(0, 5)
        if onnx:  # the first predict built ultralytics' predictor and its own onnxruntime session
            ul_session = getattr(getattr(getattr(yolo.predictor, "model", None), "backend", None), "session", None)
            extra["ultralytics_session_options"] = session_options(ul_session) if ul_session is not None else None
        for p in pipelines.values():
            p.run(0, 5)
        names = ["bare", *pipelines, *(k for k in loops if k != "bare")]
        orders = balanced_orders(len(names))
        rows: list[dict[str, float]] = []
        for r in range(rounds):
            start = (r * n) % len(images)
            order = [names[i] for i in orders[r % len(orders)]]
            secs: dict[str, float] = {}
            cpu: dict[str, float] = {}
            row: dict[str, float] = {}
            for name in order:
                time.sleep(GAP_S)
                if name in pipelines:
                    secs[name], cpu[name], waited = pipelines[name].run(start, n)
                    row[f"{name}_wait_ms"] = waited * 1000.0
                else:
                    secs[name], cpu[name] = loops[name](start, n)
            for name in names:
                row[f"{name}_fps"] = n / secs[name]
                row[f"{name}_cpu_ms_per_frame"] = 1000.0 * cpu[name] / n
            for name in pipelines:
                row[f"{name}_ratio"] = secs["bare"] / secs[name]
                row[f"{name}_cpu_ratio"] = cpu["bare"] / cpu[name]
            if onnx:
                row["ort_vs_ultralytics_time_ratio"] = secs["onnxruntime"] / secs["ultralytics"]
                row["ort_vs_ultralytics_cpu_ratio"] = cpu["onnxruntime"] / cpu["ultralytics"]
            rows.append(row)
        st = pipelines["pipeline"].worker.own_state().to_json()
        evidence = (st.get("evidence") or {}).get("writer") or {}
    finally:
        for p in pipelines.values():
            p.stop()
        shutil.rmtree(state, ignore_errors=True)
    res: dict[str, Any] = {
        "model": model_path.name, "backend": shipped.backend_name, "device": device, "imgsz": cfg.imgsz,
        "conf": cfg.conf, "iou": cfg.iou, "max_det": cfg.max_det, "frames_per_decision": cfg.frames_per_decision,
        "anchor": ANCHOR_ORT if onnx else ANCHOR_ULTRALYTICS, "contenders": names,
        "orders_per_balanced_cycle": len(orders), "rounds": rounds, "frames_per_round": n, **extra,
    }
    for name in names:
        res[f"{name}_fps_median"] = round(statistics.median(r[f"{name}_fps"] for r in rows), 2)
        res[f"{name}_cpu_ms_per_frame_median"] = round(statistics.median(r[f"{name}_cpu_ms_per_frame"] for r in rows), 2)
    for name in pipelines:
        ratios = _ratios(rows, f"{name}_ratio")
        res[f"{name}_ratio_median"] = ratios["median"]
        res[f"{name}_ratio_min"] = ratios["min"]
        res[f"{name}_ratio_max"] = ratios["max"]
        res[f"{name}_frame_wait_ms_max"] = round(max(r[f"{name}_wait_ms"] for r in rows), 2)
        res[f"{name}_cpu_ratio_median"] = round(statistics.median(r[f"{name}_cpu_ratio"] for r in rows), 4)
    res["ratio"] = res["pipeline_ratio_median"]
    if onnx:
        # Where the pipeline's time per frame goes beyond session.run, as medians of per-round differences.
        def gap(a: str, b: str, kind: str) -> float:
            if kind == "wall":
                return round(statistics.median(1000.0 / r[f"{a}_fps"] - 1000.0 / r[f"{b}_fps"] for r in rows), 2)
            return round(statistics.median(r[f"{a}_cpu_ms_per_frame"] - r[f"{b}_cpu_ms_per_frame"] for r in rows), 2)

        same = extra["onnxruntime_contender_threads"] == extra["threads"]  # else the backend contender is no step
        res["overhead_ms_per_frame"] = {
            kind: {"backend_pre_post_vs_bare": gap("onnxruntime", "bare", kind) if same else None,
                   "worker_vs_backend": gap("pipeline_no_evidence", "onnxruntime", kind) if same else None,
                   "evidence_vs_no_evidence": gap("pipeline", "pipeline_no_evidence", kind),
                   "pipeline_vs_bare": gap("pipeline", "bare", kind)}
            for kind in ("wall", "cpu")
        }
        res["overhead_ms_per_frame"]["what"] = (
            "median per-round differences of ms/frame: backend predict (letterbox, blob, NMS, boxes) - bare "
            "session.run; no-evidence pipeline - backend predict (frame slot, worker loop, decisions, state); "
            "shipped - no-evidence pipeline (evidence hand-off and writer); shipped - bare")
        time_ratio = _ratios(rows, "ort_vs_ultralytics_time_ratio")
        res["onnxruntime_vs_ultralytics"] = {
            "time_ratio_median": time_ratio["median"], "time_ratio_min": time_ratio["min"],
            "time_ratio_max": time_ratio["max"],
            "cpu_ratio_median": round(statistics.median(r["ort_vs_ultralytics_cpu_ratio"] for r in rows), 4),
            "onnxruntime_ms_per_frame_median": round(1000.0 / res["onnxruntime_fps_median"], 2),
            "ultralytics_ms_per_frame_median": round(1000.0 / res["ultralytics_fps_median"], 2),
            "expected": EXPECTED_ORT_VS_ULTRALYTICS,
            "onnxruntime_threads": extra["onnxruntime_contender_threads"],
            "ultralytics_intra_op_threads": (extra["ultralytics_session_options"] or {}).get("intra_op_threads"),
            "what": "per-frame time of load_model(backend='onnxruntime').predict over YOLO(model).predict, "
                    "same frames and settings, median of the interleaved rounds (lower is better)",
        }
    res["decisions"] = st["decisions"]
    res["evidence_written"] = evidence.get("written")
    res["evidence_dropped"] = sum((evidence.get("dropped") or {}).values())
    res["stages_ms"] = {k: {"p50_ms": v["p50"], "p95_ms": v["p95"]} for k, v in st["stages_ms"].items()}
    res["ratio_estimate_from_stages"] = _stage_estimate(res["stages_ms"], cfg.frames_per_decision)
    res["per_round"] = [{k: round(v, 3) for k, v in r.items()} for r in rows]
    res["target_ratio"] = TARGET_RATIO
    res["target"] = f"pipeline (shipped, evidence on)/bare frames/s, median of interleaved rounds, >= {TARGET_RATIO}"
    res["target_met"] = res["ratio"] >= TARGET_RATIO
    res["no_evidence_meets_ratio"] = res["pipeline_no_evidence_ratio_median"] >= TARGET_RATIO
    return res


def _stage_estimate(stages: dict[str, dict[str, float | None]], k: int) -> float | None:
    """K frames' inference stage over K whole frames plus one decision's own time (vote, evidence hand-off,
    publish), from p50s.

    A noise-resistant cross-check of the shipped ratio. The backend's `inference` stage is its `_run` (blob
    conversion + session.run), close to what the bare anchor times; pre- and post-processing (letterbox, NMS)
    and the per-decision work are what the pipeline adds. The evidence files themselves are written on the
    writer's thread, in parallel, so they are not in it.
    """
    frame = [stages[s]["p50_ms"] for s in ("preprocess", "inference", "postprocess")]
    decision = [stages[s]["p50_ms"] for s in ("decision", "evidence", "publish")]
    inference = stages["inference"]["p50_ms"]
    if inference is None or any(v is None for v in (*frame, *decision)):
        return None
    per_frame = sum(v for v in frame if v is not None)
    per_decision = sum(v for v in decision if v is not None)
    return round(k * inference / (k * per_frame + per_decision), 4)


def print_table(res: dict[str, Any]) -> None:
    """Readable summary."""
    print(f"model {res['model']} ({res['backend']}) on {res['device']}, imgsz {res['imgsz']}, conf {res['conf']}, "
          f"iou {res['iou']}, max_det {res['max_det']}, K={res['frames_per_decision']}; {res['rounds']} interleaved "
          f"rounds of {res['frames_per_round']} frames")
    print(f"anchor: {res['anchor']}"
          + (f"; session {res['session_options']}" if "session_options" in res else ""))
    if res.get("ultralytics_session_options") is not None:
        print(f"ultralytics' own session: {res['ultralytics_session_options']}")
    print(f"{'':<26} {'fps (median)':>12} {'ratio median':>13} {'min':>7} {'max':>7} {'CPU ms/frame':>13} "
          f"{'CPU ratio':>10} {'frame wait ms max':>18}")
    labels = {"bare": "bare session.run (anchor)" if res["anchor"] == ANCHOR_ORT else "bare ultralytics (anchor)",
              "pipeline": "pipeline (shipped)", "pipeline_no_evidence": "pipeline, no evidence",
              "onnxruntime": "onnxruntime backend", "ultralytics": "ultralytics predict"}
    for name in res["contenders"]:
        label = labels.get(name, name)
        if f"{name}_ratio_median" in res:
            print(f"{label:<26} {res[f'{name}_fps_median']:>12.2f} {res[f'{name}_ratio_median']:>13.3f} "
                  f"{res[f'{name}_ratio_min']:>7.3f} {res[f'{name}_ratio_max']:>7.3f} "
                  f"{res[f'{name}_cpu_ms_per_frame_median']:>13.2f} {res[f'{name}_cpu_ratio_median']:>10.3f} "
                  f"{res[f'{name}_frame_wait_ms_max']:>18.2f}")
        else:
            print(f"{label:<26} {res[f'{name}_fps_median']:>12.2f} {'':>29} {res[f'{name}_cpu_ms_per_frame_median']:>13.2f}")
    print(f"target pipeline/bare >= {res['target_ratio']}: shipped {'met' if res['target_met'] else 'MISSED'}, "
          f"without evidence {'met' if res['no_evidence_meets_ratio'] else 'MISSED'}; shipped ratio estimated "
          f"from the stage p50s: {res['ratio_estimate_from_stages']}")
    cmp = res.get("onnxruntime_vs_ultralytics")
    if cmp:
        print(f"onnxruntime backend / ultralytics predict, time per frame: median {cmp['time_ratio_median']:.3f} "
              f"(min {cmp['time_ratio_min']:.3f}, max {cmp['time_ratio_max']:.3f}; {cmp['onnxruntime_ms_per_frame_median']}"
              f" vs {cmp['ultralytics_ms_per_frame_median']} ms), in CPU {cmp['cpu_ratio_median']:.3f}; expected "
              f"~{cmp['expected']}; threads {cmp['onnxruntime_threads']} vs ultralytics' session "
              f"{cmp['ultralytics_intra_op_threads']} (0: onnxruntime's default, one per physical core)")
    gaps = res.get("overhead_ms_per_frame")
    if gaps:
        for kind in ("wall", "cpu"):
            g = gaps[kind]
            pre, worker = g["backend_pre_post_vs_bare"], g["worker_vs_backend"]
            print(f"{kind} ms/frame beyond the anchor: backend pre/post "
                  f"{'n/a (other threads)' if pre is None else f'{pre:+.2f}'}, worker "
                  f"{'n/a' if worker is None else f'{worker:+.2f}'}, evidence {g['evidence_vs_no_evidence']:+.2f}; "
                  f"pipeline - bare {g['pipeline_vs_bare']:+.2f} (medians of per-round differences)")
    print(f"evidence writer: {res['evidence_written']} jobs written, {res['evidence_dropped']} dropped")
    print(f"pipeline (shipped) stages, ms over the detector's last 200 frames/decisions ({res['decisions']} decisions):")
    for stage, v in res["stages_ms"].items():
        print(f"  {stage:<12} p50 {v['p50_ms']!s:>7}  p95 {v['p95_ms']!s:>7}")


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 10 frames (smoke run)")
    ap.add_argument("--model", type=Path, default=None,
                    help="model file (.onnx, or .pt with <stem>.classes.yaml beside it: anchor = ultralytics predict)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds (default 60; a multiple of 10 balances the order fully)")
    ap.add_argument("--frames", type=int, default=None, help="frames per round and contender (default 10)")
    ap.add_argument("--backend-threads", type=int, default=None,
                    help="intra-op threads of the onnxruntime contender only (default: the daemon's, as the pipeline)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")
    args = ap.parse_args()
    res = bench(args.quick, model=args.model, rounds=args.rounds, frames=args.frames,
                backend_threads=args.backend_threads)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    print_table(res)


if __name__ == "__main__":
    main()
