"""The ONNX Runtime backend: YOLO detection without torch or ultralytics, pre- and post-processing as ultralytics does.

Pre-processing is ultralytics' LetterBox (aspect-preserving resize with INTER_LINEAR, grey 114 padding split
evenly, the same rounding), BGR→RGB, /255. Post-processing takes the best class per anchor, keeps confidences
above `conf`, runs class-aware NMS with OpenCV's `cv2.dnn.NMSBoxesBatched` (at most `max_det` boxes), and scales
the boxes back to the frame as ultralytics' `scale_boxes` does. End-to-end (NMS-free) exports are read as they are.
"""

from __future__ import annotations

import ast
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .model import ModelError
from .ort_optimized import optimized_copy

logger = logging.getLogger(__name__)

PAD_VALUE = 114
MAX_NMS = 30000
"""Candidates passed to NMS at most (ultralytics' max_nms), the most confident first."""
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def choose_providers(device: str, available: list[str], cache_dir: Path | None = None
                     ) -> tuple[list[Any], str, str | None]:
    """Execution providers for `detector.device`, the device name to report, and a warning when falling back.

    `cpu`: CPU only. `auto`: TensorRT, then CUDA, then CPU, whichever this onnxruntime build has (onnxruntime-gpu on
    a Jetson). `cuda[:N]`/`N`: CUDA device N (TensorRT first when present); CPU with a warning when neither is.
    """
    if device == "cpu":
        return [CPU], "cpu", None
    index = int(device.rsplit(":", 1)[1]) if ":" in device else (int(device) if device.isdigit() else 0)
    chosen: list[Any] = []
    if TENSORRT in available:
        options: dict[str, Any] = {"device_id": index, "trt_fp16_enable": True}
        if cache_dir is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        chosen.append((TENSORRT, options))
    if CUDA in available:
        chosen.append((CUDA, {"device_id": index}))
    if not chosen:
        warning = None if device == "auto" else (
            f"device {device!r} requested but CUDA is not available to onnxruntime (providers: {', '.join(available)}); "
            "running on CPU")
        return [CPU], "cpu", warning
    name = "tensorrt" if chosen[0][0] == TENSORRT else "cuda"
    return [*chosen, CPU], f"{name}:{index}", None


def letterbox_params(shape: tuple[int, int], new_shape: tuple[int, int]) -> tuple[tuple[int, int], int, int, int, int]:
    """(new_w, new_h), top, bottom, left, right: ultralytics LetterBox(auto=False, scaleup=True, center=True)."""
    h0, w0 = shape
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    new_unpad = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (new_shape[1] - new_unpad[0]) / 2, (new_shape[0] - new_unpad[1]) / 2
    return new_unpad, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)


def letterbox(image: np.ndarray, new_shape: tuple[int, int]) -> np.ndarray:
    """Resize keeping the aspect ratio and pad with grey to `new_shape` (h, w)."""
    new_unpad, top, bottom, left, right = letterbox_params(image.shape[:2], new_shape)
    if image.shape[1::-1] != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def scale_boxes(boxes: np.ndarray, input_shape: tuple[int, int], frame_shape: tuple[int, int]) -> np.ndarray:
    """xyxy boxes from the letterboxed input back to frame pixels, clipped to the frame (ultralytics scale_boxes)."""
    h0, w0 = frame_shape
    gain = min(input_shape[0] / h0, input_shape[1] / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    pad_x = round((input_shape[1] - new_w) / 2 - 0.1)
    pad_y = round((input_shape[0] - new_h) / 2 - 0.1)
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad_x) / (new_w / w0)).clip(0, w0)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad_y) / (new_h / h0)).clip(0, h0)
    return boxes


def parse_names(meta: dict[str, str]) -> dict[int, str] | None:
    """The class names ultralytics writes into an export's metadata (`{0: 'plastic', ...}`), if readable."""
    text = meta.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
        return {int(k): str(v) for k, v in dict(names).items()}
    except (ValueError, SyntaxError, TypeError):
        return None


class OnnxRuntimeBackend:
    """One onnxruntime session for a YOLO detection export; warmed up and checked at load."""

    def __init__(self, path: Path, *, device: str, imgsz: int, conf: float, iou: float, max_det: int,
                 threads: int, cache_dir: Path | None = None, optimized_dir: Path | None = None) -> None:
        import onnxruntime as ort

        self.path = path
        self.optimized_from: Path | None = None
        """The cached pre-optimised graph the session runs (None: the model file itself)."""
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.threads = threads
        self.warnings: list[str] = []
        self._blob: np.ndarray | None = None
        providers, self.device, warning = choose_providers(device, ort.get_available_providers(), cache_dir)
        if warning:
            self.warnings.append(warning)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: between frames the other workers get the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = self._open(ort, options, providers, optimized_dir)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        task = meta.get("task", "detect")
        if task != "detect":
            raise ModelError(f"{path.name} is a '{task}' model; the detector needs a 'detect' model")
        self.end2end = meta.get("end2end", "False") == "True"
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise ModelError(f"{path.name}: expected one image input [1, 3, height, width], got {got or 'none'}")
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        self.input_hw = self._input_size(inputs[0].shape, imgsz)
        self.imgsz = max(self.input_hw)
        self.output_name = self.session.get_outputs()[0].name
        self.class_count = self._check_output(path)
        names = parse_names(meta)
        self.names = names if names is not None else {i: str(i) for i in range(self.class_count)}
        self.has_names = names is not None

    def _open(self, ort: Any, options: Any, providers: list[Any], optimized_dir: Path | None) -> Any:
        """The session: on the CPU from the graph pre-optimised for this machine when there is a cache folder
        (ort_optimized.py), else (or when that copy does not load) from the model file."""
        if optimized_dir is not None and providers == [CPU]:
            optimized = optimized_copy(self.path, optimized_dir, ort.__version__)
            if optimized is not None:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    session = ort.InferenceSession(str(optimized), sess_options=options, providers=providers)
                except Exception as exc:  # noqa: BLE001 - a damaged cache file: drop it, load the original
                    logger.warning("pre-optimised %s does not load (%s); removed, loading %s", optimized.name,
                                   _first_line(exc), self.path.name)
                    optimized.unlink(missing_ok=True)
                else:
                    self.optimized_from = optimized
                    return session
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable graphs
            raise ModelError(f"cannot load {self.path.name}: onnxruntime cannot read it: {_first_line(exc)}") from None

    def _input_size(self, shape: list[Any], imgsz: int) -> tuple[int, int]:
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int):
            if (h, w) != (imgsz, imgsz):
                self.warnings.append(f"{self.path.name} has a fixed input of {w}x{h}; detector.imgsz {imgsz} is not used")
            return h, w
        return imgsz, imgsz  # a dynamic export takes the configured size

    def _check_output(self, path: Path) -> int:
        """Warm up with a grey frame and check the output is a YOLO detection head; returns the class count."""
        out = self._run(np.full((*self.input_hw, 3), PAD_VALUE, np.uint8))
        shape = list(out.shape)
        if self.end2end and out.ndim == 3 and shape[0] == 1 and shape[2] == 6:
            return -1  # an end-to-end head does not reveal its class count; the names do
        if out.ndim == 3 and shape[0] == 1 and shape[1] >= 5 and not self.end2end:
            return shape[1] - 4
        raise ModelError(f"{path.name}: output '{self.output_name}' has shape {shape}, which is not a YOLO detection "
                         "head (expected [1, 4 + classes, anchors], or [1, detections, 6] for an end-to-end export)")

    def _run(self, letterboxed: np.ndarray) -> np.ndarray:
        # HWC BGR uint8 -> 1x3xHxW RGB float32 / 255 in one pass into a reused buffer (bit-identical to ultralytics'
        # float().div_(255)); the backend is used by one thread at a time (the detector's, or its loader's warm-up).
        blob = self._blob
        if blob is None or blob.shape[2:] != letterboxed.shape[:2]:
            blob = self._blob = np.empty((1, 3, *letterboxed.shape[:2]), np.float32)
        np.divide(letterboxed.transpose(2, 0, 1)[::-1], np.float32(255), out=blob[0], casting="unsafe")
        feed = blob.astype(np.float16) if self.input_dtype is np.float16 else blob
        return np.asarray(self.session.run([self.output_name], {self.input_name: feed})[0], dtype=np.float32)

    def infer(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Rows (x1, y1, x2, y2, conf, class) in frame pixels, and the preprocess/inference/postprocess times (ms)."""
        t0 = time.perf_counter()
        letterboxed = letterbox(image, self.input_hw)
        t1 = time.perf_counter()
        out = self._run(letterboxed)
        t2 = time.perf_counter()
        rows = self._end2end(out[0]) if self.end2end else self._nms(out[0])
        if len(rows):
            rows[:, :4] = scale_boxes(rows[:, :4], self.input_hw, image.shape[:2])
        t3 = time.perf_counter()
        return rows, {"preprocess": (t1 - t0) * 1000.0, "inference": (t2 - t1) * 1000.0,
                      "postprocess": (t3 - t2) * 1000.0}

    def _nms(self, pred: np.ndarray) -> np.ndarray:
        scores = pred[4:]
        cls = scores.argmax(0)
        conf = scores[cls, np.arange(scores.shape[1])]
        keep = np.flatnonzero(conf > self.conf)
        if keep.size == 0:
            return np.zeros((0, 6), np.float32)
        if keep.size > MAX_NMS:
            keep = keep[np.argsort(-conf[keep], kind="stable")[:MAX_NMS]]
        xywh = pred[:4, keep].T
        xyxy = np.empty_like(xywh)
        xyxy[:, :2] = xywh[:, :2] - xywh[:, 2:] / 2
        xyxy[:, 2:] = xywh[:, :2] + xywh[:, 2:] / 2
        conf, cls = conf[keep], cls[keep]
        rects = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float64)
        # No top_k: OpenCV applies it to the candidates before suppression, ultralytics' max_det to what survives.
        picked = cv2.dnn.NMSBoxesBatched(rects, conf.astype(np.float64), cls.astype(np.int32), float(self.conf),
                                         float(self.iou))
        idx = np.asarray(picked, dtype=np.int64).reshape(-1)[: self.max_det]
        return np.concatenate([xyxy[idx], conf[idx, None], cls[idx, None].astype(np.float32)], axis=1)

    def _end2end(self, pred: np.ndarray) -> np.ndarray:
        rows = pred[pred[:, 4] > self.conf][: self.max_det]
        return np.ascontiguousarray(rows, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
