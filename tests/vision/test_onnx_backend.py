"""The onnxruntime backend: the same boxes as ultralytics on the same ONNX file, no torch, clear errors on bad models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from smartbin_daemon.config import ConfigError, parse_config
from smartbin_daemon.vision.model import ModelError, load_model
from smartbin_daemon.vision.onnx_backend import CPU, CUDA, TENSORRT, choose_providers, letterbox

from .record_outputs import jitter
from .tiny_model import IMGSZ, build_tiny_onnx, classes_yaml, offline_env

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "smartbin-waste-s.onnx"
SHIPPED_IMGSZ = int(yaml.safe_load(SHIPPED.with_name(f"{SHIPPED.stem}.classes.yaml").read_text())["imgsz"])
SAMPLES = REPO / "tests" / "data" / "samples"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("tiny"))


def recorded_frames() -> list[tuple[str, np.ndarray]]:
    """The sample images as the recorder sees them (jittered K-frame views), plus other frame shapes."""
    rng = np.random.default_rng(42)
    frames: list[tuple[str, np.ndarray]] = []
    for entry in yaml.safe_load((SAMPLES / "samples.yaml").read_text())["samples"]:
        image = cv2.imread(str(SAMPLES / entry["file"]))
        assert image is not None, entry["file"]
        frames += [(f"{entry['file']}#{i}", jitter(image, i, rng)) for i in range(3)]
        frames.append((f"{entry['file']}@640x480", cv2.resize(image, (640, 480))))
        frames.append((f"{entry['file']}@tall", image[:, : max(8, image.shape[1] // 3)]))
    return frames


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 1.0 if union <= 0 else float(inter / union)


def compare(model_path: Path, frames: list[tuple[str, np.ndarray]], *, imgsz: int, conf: float,
            tmp_path: Path) -> tuple[int, float, float]:
    """Both backends on the same frames: every box matched by class; returns (boxes, worst IoU, worst conf delta)."""
    offline_env(tmp_path)
    from ultralytics import YOLO

    ours = load_model(model_path, classmap=None, device="cpu", imgsz=imgsz, conf=conf, iou=0.45, max_det=20,
                      backend="onnxruntime")
    theirs = YOLO(str(model_path), task="detect")
    count, worst_iou, worst_conf = 0, 1.0, 0.0
    for name, frame in frames:
        rows, _ = ours.backend.infer(frame)
        ref = theirs.predict(frame, imgsz=imgsz, conf=conf, iou=0.45, max_det=20, verbose=False)[0].boxes.data.cpu().numpy()
        assert len(rows) == len(ref), f"{name}: {len(rows)} boxes vs ultralytics {len(ref)}"
        # Matched by class, box and confidence rather than position: equal confidences may come in either order.
        for a in rows:
            best = max(ref, key=lambda b: (int(b[5]) == int(a[5]), iou(a[:4], b[:4]) - abs(float(a[4]) - float(b[4]))))
            assert int(best[5]) == int(a[5]), f"{name}: class {int(a[5])} has no counterpart"
            worst_iou = min(worst_iou, iou(a[:4], best[:4]))
            worst_conf = max(worst_conf, abs(float(a[4]) - float(best[4])))
            count += 1
    return count, worst_iou, worst_conf


def test_the_shipped_model_gives_the_same_boxes_as_ultralytics_predict(tmp_path: Path) -> None:
    count, worst_iou, worst_conf = compare(SHIPPED, recorded_frames(), imgsz=SHIPPED_IMGSZ, conf=0.1,
                                          tmp_path=tmp_path)
    assert count >= 40, f"too few boxes to compare ({count}): the frames or the threshold changed"
    assert worst_iou >= 0.99 and worst_conf <= 1e-3, (count, worst_iou, worst_conf)


def test_nms_matches_ultralytics_on_a_crowded_untrained_model(tiny: Path, tmp_path: Path) -> None:
    """An untrained net scores thousands of overlapping anchors: class-aware NMS and max_det are exercised hard."""
    rng = np.random.default_rng(1)
    frames = [(f"noise{i}", rng.integers(0, 255, (120 + 7 * i, 160, 3), dtype=np.uint8)) for i in range(6)]
    count, worst_iou, worst_conf = compare(tiny, frames, imgsz=IMGSZ, conf=0.0002, tmp_path=tmp_path)
    assert count >= 30, count  # most of the 84 anchors pass the threshold: NMS decides what is left
    assert worst_iou >= 0.99 and worst_conf <= 1e-3, (count, worst_iou, worst_conf)


@pytest.mark.parametrize("shape", [(480, 640), (333, 517), (3000, 7), (64, 64), (1080, 1920)])
def test_letterbox_is_pixel_identical_to_ultralytics(shape: tuple[int, int], tmp_path: Path) -> None:
    offline_env(tmp_path)
    from ultralytics.data.augment import LetterBox

    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(letterbox(image, (320, 320)), LetterBox((320, 320), auto=False)(image=image))


def test_the_onnx_path_never_loads_torch_or_ultralytics() -> None:
    code = f"""
import json, sys
from pathlib import Path
import numpy as np
from smartbin_daemon.vision.model import load_model
m = load_model(Path({str(SHIPPED)!r}), classmap=None, device="auto", imgsz=None, conf=0.25, iou=0.45, max_det=20)
m.predict(np.zeros((480, 640, 3), np.uint8))
maps = Path("/proc/self/maps").read_text()
print(json.dumps({{"backend": m.backend_name, "modules": sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "ultralytics", "torchvision")),
                  "libtorch": "libtorch" in maps}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"backend": "onnxruntime", "modules": [], "libtorch": False}


def test_intra_op_threads_follow_the_config() -> None:
    model = load_model(SHIPPED, classmap=None, device="cpu", imgsz=None, conf=0.25, iou=0.45, max_det=20, threads=1)
    assert model.backend.session.get_session_options().intra_op_num_threads == 1
    assert model.device == "cpu" and model.imgsz == SHIPPED_IMGSZ and not model.warnings  # the class map's size


def test_a_fixed_input_size_wins_over_the_configured_one_with_a_warning() -> None:
    model = load_model(SHIPPED, classmap=None, device="cpu", imgsz=640, conf=0.25, iou=0.45, max_det=20)
    assert model.imgsz == SHIPPED_IMGSZ
    assert any(f"fixed input of {SHIPPED_IMGSZ}x{SHIPPED_IMGSZ}" in w for w in model.warnings)


def test_providers_follow_the_device_and_what_the_build_offers(tmp_path: Path) -> None:
    assert choose_providers("cpu", [TENSORRT, CUDA, CPU]) == ([CPU], "cpu", None)
    assert choose_providers("auto", [CPU]) == ([CPU], "cpu", None)
    providers, device, warning = choose_providers("cuda:0", [CPU])
    assert providers == [CPU] and device == "cpu" and "CUDA is not available" in str(warning)
    providers, device, warning = choose_providers("auto", [TENSORRT, CUDA, CPU], tmp_path)
    assert device == "tensorrt:0" and warning is None
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [TENSORRT, CUDA, CPU]
    assert providers[0][1]["trt_engine_cache_path"] == str(tmp_path)
    providers, device, _ = choose_providers("cuda:1", [CUDA, CPU])
    assert device == "cuda:1" and providers[0] == (CUDA, {"device_id": 1})


def test_a_file_onnxruntime_cannot_read_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    classes_yaml(tmp_path / "broken.classes.yaml", bad.name)
    with pytest.raises(ModelError, match=r"cannot load broken\.onnx: onnxruntime cannot read it"):
        load_model(bad, classmap=None, device="cpu", imgsz=IMGSZ, conf=0.25, iou=0.45, max_det=10)


def _graph(tmp_path: Path, name: str, out_shape: list[int], task: str | None = None) -> Path:
    """An ONNX graph image -> (global average pool, reshape) with the given output shape."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(out_shape)], out_shape)
    total = int(np.prod(out_shape))
    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
             helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["part"]),
             helper.make_node("Reshape", ["part", "shape"], ["output0"])]
    inits = [shape, helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [total]), helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    model = helper.make_model(helper.make_graph(nodes, "g", [inp], [out], inits), opset_imports=[helper.make_opsetid("", 17)])
    if task:
        model.metadata_props.append(onnx.StringStringEntryProto(key="task", value=task))
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    classes_yaml(tmp_path / f"{name}.classes.yaml", path.name)
    return path


def test_an_output_that_is_not_a_detection_head_is_refused(tmp_path: Path) -> None:
    flat = _graph(tmp_path, "classifier", [1, 10])
    with pytest.raises(ModelError, match=r"classifier\.onnx: output 'output0' has shape \[1, 10\], which is not a YOLO detection head"):
        load_model(flat, classmap=None, device="cpu", imgsz=32, conf=0.25, iou=0.45, max_det=10)


def test_a_model_of_another_task_is_refused(tmp_path: Path) -> None:
    seg = _graph(tmp_path, "seg", [1, 7, 21], task="segment")
    with pytest.raises(ModelError, match=r"seg\.onnx is a 'segment' model"):
        load_model(seg, classmap=None, device="cpu", imgsz=32, conf=0.25, iou=0.45, max_det=10)


def test_a_class_count_that_disagrees_with_the_class_map_names_both_files(tiny: Path, tmp_path: Path) -> None:
    two = classes_yaml(tmp_path / "two.classes.yaml", tiny.name, ["plastic", "glass"])
    with pytest.raises(ModelError, match=r"tiny\.onnx predicts 3 classes but its class map two\.classes\.yaml lists 2"):
        load_model(tiny, classmap=two, device="cpu", imgsz=IMGSZ, conf=0.25, iou=0.45, max_det=10)


def test_an_export_without_names_is_checked_by_its_class_count(tmp_path: Path) -> None:
    headless = _graph(tmp_path, "nonames", [1, 7, 21])  # 4 + 3 classes, no metadata
    model = load_model(headless, classmap=None, device="cpu", imgsz=32, conf=0.25, iou=0.45, max_det=10)
    assert model.backend.names == {0: "plastic", 1: "glass", 2: "residual"}


def _detector_config(tmp_path: Path, **detector: object) -> dict[str, object]:
    return {"device": {"id": "t"}, "mqtt": {"host": "localhost"}, "storage": {"path": str(tmp_path)},
            "detector": {"enabled": True, **detector}}


def test_the_ultralytics_backend_without_its_extra_is_a_config_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # find_spec() then reports it as not installed
    with pytest.raises(ConfigError) as err:
        parse_config(_detector_config(tmp_path, model=str(SHIPPED), backend="ultralytics"))
    assert any(e.startswith("detector.backend: the ultralytics backend needs the 'ultralytics' extra") for e in err.value.errors)
    with pytest.raises(ConfigError) as err:
        parse_config(_detector_config(tmp_path, model=str(tmp_path / "m.pt")))
    assert any(e.startswith("detector.model: the ultralytics backend needs") for e in err.value.errors)
    parse_config(_detector_config(tmp_path, model=str(SHIPPED)))  # the ONNX default needs no ultralytics


def test_onnxruntime_refuses_other_formats_at_config_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_detector_config(tmp_path, model=str(tmp_path / "m.pt"), backend="onnxruntime"))
    assert any("detector.backend: onnxruntime runs .onnx models only" in e for e in err.value.errors)


# -- the CPU graph optimised once per machine (vision/ort_optimized.py) ---------------------------------------------


def _load_shipped(state_dir: Path | None) -> object:
    return load_model(SHIPPED, classmap=None, device="cpu", imgsz=None, conf=0.25, iou=0.45, max_det=20,
                      backend="onnxruntime", threads=1, state_dir=state_dir)


def test_the_cpu_graph_is_optimised_once_and_then_loaded_as_it_is(tmp_path: Path) -> None:
    frame = recorded_frames()[0][1]
    plain = _load_shipped(None)
    first = _load_shipped(tmp_path)
    copy = first.backend.optimized_from  # type: ignore[attr-defined]
    assert plain.backend.optimized_from is None and copy is not None  # type: ignore[attr-defined]
    assert copy.parent == tmp_path / "onnxruntime-optimized" and copy.name.startswith(f"{SHIPPED.stem}.")
    made_at = copy.stat().st_mtime_ns
    again = _load_shipped(tmp_path)
    assert again.backend.optimized_from == copy and copy.stat().st_mtime_ns == made_at  # type: ignore[attr-defined]
    expected, _ = plain.predict(frame)  # type: ignore[attr-defined]
    got, _ = again.predict(frame)  # type: ignore[attr-defined]
    assert [b.category for b in got] == [b.category for b in expected]
    assert np.allclose([b.confidence for b in got], [b.confidence for b in expected], atol=1e-4)
    assert np.allclose([b.xyxy for b in got], [b.xyxy for b in expected], atol=0.05)


def test_a_damaged_optimised_copy_is_dropped_and_the_model_file_is_loaded(tmp_path: Path) -> None:
    import onnxruntime as ort

    from smartbin_daemon.vision.ort_optimized import cache_key

    folder = tmp_path / "onnxruntime-optimized"
    folder.mkdir()
    damaged = folder / f"{SHIPPED.stem}.{cache_key(SHIPPED, ort.__version__)}.onnx"
    damaged.write_bytes(b"not a model")
    stale = folder / f"{SHIPPED.stem}.0123456789abcdef.onnx"
    stale.write_bytes(b"an older onnxruntime's copy")
    model = _load_shipped(tmp_path)
    assert model.backend.optimized_from is None and not damaged.exists()  # type: ignore[attr-defined]
    assert stale.exists(), "only the copy for this model, onnxruntime and CPU is touched while it exists"
    rebuilt = _load_shipped(tmp_path)
    assert rebuilt.backend.optimized_from == damaged and damaged.stat().st_size > 1_000_000  # type: ignore[attr-defined]
    assert not stale.exists(), "making a new copy removes the model's stale ones"


def test_the_cache_key_names_the_model_bytes_and_the_onnxruntime_version(tmp_path: Path) -> None:
    from smartbin_daemon.vision.ort_optimized import cache_key

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"model one")
    b.write_bytes(b"model two")
    assert cache_key(a, "1.0") == cache_key(a, "1.0") != cache_key(b, "1.0")
    assert cache_key(a, "1.0") != cache_key(a, "1.1")
