"""Train the detector with ultralytics on the merged category dataset."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smartbin_daemon.training import DEFAULT_ARCH, DEFAULT_IMGSZ
from smartbin_daemon.training.env import load_yolo_class, use_all_cores
from smartbin_daemon.training.hardware import describe_hardware

logger = logging.getLogger(__name__)

TRAIN_INFO = "train_info.json"


@dataclass
class TrainSettings:
    """Everything that defines a training run."""

    data_yaml: Path
    project: Path
    run_name: str = "train"
    model: str = DEFAULT_ARCH
    imgsz: int = DEFAULT_IMGSZ
    epochs: int = 100
    batch: int = 16
    device: str = "cpu"
    seed: int = 0
    workers: int = 2
    cache: str | bool = False
    time_hours: float | None = None
    patience: int = 100
    close_mosaic: int = 10
    optimizer: str = "auto"
    lr0: float | None = None
    nbs: int = 64
    warmup_epochs: float = 3.0
    cls_pw: float = 0.0
    val_every_epoch: bool = True
    threads: int | None = None
    plots: bool = False
    init: dict[str, Any] | None = None
    """What `--init` started from (training/init_weights.InitCheckpoint); recorded, not passed to ultralytics."""
    extra: dict[str, Any] = field(default_factory=dict)

    def ultralytics_args(self) -> dict[str, Any]:
        """Keyword arguments for ``YOLO.train``."""
        args: dict[str, Any] = {
            "data": str(self.data_yaml),
            "project": str(self.project),
            "name": self.run_name,
            "exist_ok": True,
            "imgsz": self.imgsz,
            "epochs": self.epochs,
            "batch": self.batch,
            "device": self.device,
            "seed": self.seed,
            "deterministic": True,
            "workers": self.workers,
            "cache": self.cache,
            "patience": self.patience,
            "close_mosaic": self.close_mosaic,
            "optimizer": self.optimizer,
            "nbs": self.nbs,
            "warmup_epochs": self.warmup_epochs,
            "val": self.val_every_epoch,
            "plots": self.plots,
            # A .pt start point must keep its weights (ultralytics drops them with pretrained=False);
            # a YAML architecture starts from random weights and must never fetch hub weights.
            "pretrained": str(self.model).endswith(".pt"),
            "amp": self.device != "cpu",
        }
        if self.lr0 is not None:
            args["lr0"] = self.lr0
        if self.time_hours:
            args["time"] = self.time_hours
        if self.cls_pw:
            args["cls_pw"] = self.cls_pw
        args.update(self.extra)
        return args


@dataclass
class TrainResult:
    """Where a finished run left its weights."""

    run_dir: Path
    best: Path
    last: Path
    seconds: float
    epochs_done: int


def run_dir_of(settings: TrainSettings) -> Path:
    """Folder ultralytics writes this run to."""
    return Path(settings.project) / settings.run_name


def _epochs_done(run_dir: Path) -> int:
    """Number of epoch rows in results.csv (0 when absent)."""
    csv = run_dir / "results.csv"
    if not csv.is_file():
        return 0
    return max(0, len([ln for ln in csv.read_text(encoding="utf-8").splitlines() if ln.strip()]) - 1)


def read_train_info(run_dir: Path) -> dict[str, Any]:
    """Load train_info.json of a run ({} when absent)."""
    path = Path(run_dir) / TRAIN_INFO
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _write_info(run_dir: Path, info: dict[str, Any]) -> None:
    """Persist train_info.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / TRAIN_INFO).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")


def train(settings: TrainSettings, command: str, resume_from: Path | None = None) -> TrainResult:
    """Train (or resume from a last.pt) and record settings, command, hardware and wall time."""
    yolo_cls = load_yolo_class()
    run_dir = run_dir_of(settings)
    info = read_train_info(run_dir) if resume_from else {}
    sessions: list[dict[str, Any]] = list(info.get("sessions", []))
    started = datetime.now(timezone.utc)
    session = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "resume": bool(resume_from),
    }
    sessions.append(session)
    if not resume_from:
        info = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "ultralytics_args": settings.ultralytics_args(),
            "command": command,
            "hardware": describe_hardware(settings.device),
        }
    info["sessions"] = sessions
    _write_info(run_dir, info)

    def _threads(_trainer: Any) -> None:
        """ultralytics pins CPU training to cpu_count-1 torch threads (1 on a 2-core board); use them all."""
        if str(settings.device).startswith("cpu"):
            logger.info("torch threads for training: %d", use_all_cores(settings.threads))

    t0 = time.monotonic()
    if resume_from:
        logger.info("resuming training from %s", resume_from)
        model = yolo_cls(str(resume_from))
        model.add_callback("on_train_start", _threads)
        model.train(resume=True, workers=settings.workers, device=settings.device)
    else:
        logger.info("training %s on %s: %s", settings.model, settings.data_yaml, settings.ultralytics_args())
        model = yolo_cls(settings.model)
        model.add_callback("on_train_start", _threads)
        model.train(**settings.ultralytics_args())
    seconds = time.monotonic() - t0
    trainer = model.trainer
    real_run_dir = Path(trainer.save_dir) if trainer is not None else run_dir
    session["seconds"] = round(seconds, 1)
    session["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info["sessions"] = sessions
    info["train_seconds_total"] = round(sum(float(s.get("seconds", 0.0)) for s in sessions), 1)
    info["epochs_done"] = _epochs_done(real_run_dir)
    info["epochs_planned"] = (
        int(getattr(trainer.args, "epochs", settings.epochs)) if trainer is not None else settings.epochs
    )
    info["date"] = datetime.now(timezone.utc).date().isoformat()
    _write_info(real_run_dir, info)
    weights = real_run_dir / "weights"
    best = weights / "best.pt"
    last = weights / "last.pt"
    if not best.is_file():
        best = last
    logger.info("training finished in %.0f s (%d epochs); best=%s", seconds, info["epochs_done"], best)
    return TrainResult(
        run_dir=real_run_dir, best=best, last=last, seconds=seconds, epochs_done=info["epochs_done"]
    )
