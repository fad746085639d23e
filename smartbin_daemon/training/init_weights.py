"""Transfer learning: check a pretrained checkpoint given to `--init` and report what of it carries over.

The checkpoint must be an ultralytics YOLO detection model (task `detect`, a plain `Detect` head). Its
backbone and neck are general image features; its classification head is for its own classes, so the
layers whose shapes differ for our categories (the last convolutions of the class branch) start fresh,
which is what ultralytics does when a `.pt` start point meets a dataset with another class count.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smartbin_daemon.training.env import configure_ultralytics_env


class InitError(ValueError):
    """A checkpoint that cannot seed training: unreadable, not ultralytics, or not a detection model."""


@dataclass(frozen=True)
class InitCheckpoint:
    """What the card records about the start point."""

    path: str
    sha256: str
    source: str | None
    architecture: str
    parameters: int
    classes: dict[int, str]
    task: str
    ultralytics_version: str | None
    trained_at: str | None
    trained_imgsz: int | None
    checkpoint_license: str | None
    tensors_transferred: int
    tensors_total: int
    categories: int

    def as_dict(self) -> dict[str, Any]:
        """For train_info.json."""
        return asdict(self)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_init(path: Path, categories: int, source: str | None = None) -> InitCheckpoint:
    """Load and check a `--init` checkpoint; count the tensors that fit a model for `categories` classes."""
    path = Path(path)
    if not path.is_file():
        raise InitError(f"--init {path}: no such file")
    if path.suffix != ".pt":
        raise InitError(f"--init {path.name}: expected an ultralytics .pt checkpoint")
    configure_ultralytics_env()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises anything on a file that is not a checkpoint
        raise InitError(f"--init {path.name}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if model is None or not hasattr(model, "yaml") or not hasattr(model, "model"):
        raise InitError(f"--init {path.name}: not an ultralytics model checkpoint (no 'model' with its YAML)")
    train_args = ckpt.get("train_args") or {}
    task = str(getattr(model, "task", None) or train_args.get("task") or "?")
    head = type(model.model[-1]).__name__
    if type(model) is not DetectionModel or task != "detect" or head != "Detect":
        raise InitError(f"--init {path.name}: a '{task}' model ({type(model).__name__}, {head} head); transfer "
                        "learning here needs a YOLO detection checkpoint (task detect, a Detect head)")
    fresh = DetectionModel(dict(model.yaml), nc=categories, verbose=False)
    source_sd = model.float().state_dict()
    target_sd = fresh.state_dict()
    fits = sum(1 for k, v in target_sd.items() if k in source_sd and source_sd[k].shape == v.shape)
    spec = model.yaml
    blocks = sorted({str(layer[2]) for layer in spec.get("backbone", []) if len(layer) > 2})
    architecture = Path(str(spec.get("yaml_file") or "")).name or ("YOLO with " + ", ".join(blocks))
    if spec.get("scale"):
        architecture += f" (scale {spec['scale']})"
    elif "depth_multiple" in spec:
        architecture += f" (depth {spec['depth_multiple']}, width {spec['width_multiple']})"
    return InitCheckpoint(
        path=str(path), sha256=sha256_of(path), source=source,
        architecture=architecture,
        parameters=sum(p.numel() for p in model.parameters()),
        classes={int(k): str(v) for k, v in dict(getattr(model, "names", {}) or {}).items()},
        task=task, ultralytics_version=ckpt.get("version"), trained_at=ckpt.get("date"),
        trained_imgsz=train_args.get("imgsz"), checkpoint_license=ckpt.get("license"),
        tensors_transferred=fits, tensors_total=len(target_sd), categories=categories,
    )


def card_line(info: dict[str, Any]) -> str:
    """The model card's start-point line for a transfer-learned run."""
    classes = dict(info.get("classes") or {})
    source = f", {info['source']}" if info.get("source") else ""
    license_ = f", checkpoint license {info['checkpoint_license']}" if info.get("checkpoint_license") else ""
    return (f"- Start point: transfer learning from `{Path(str(info['path'])).name}` "
            f"(sha256 {str(info['sha256'])[:12]}...){source}: {info['architecture']}, {int(info['parameters']):,} "
            f"parameters, {len(classes)} classes ({', '.join(str(v) for v in classes.values())}), trained with "
            f"ultralytics {info.get('ultralytics_version')} at {info.get('trained_imgsz')} px{license_}. "
            f"{info['tensors_transferred']}/{info['tensors_total']} tensors carried over; the rest (the class head, "
            f"re-initialised for our {info['categories']} categories) start fresh.")
