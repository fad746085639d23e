"""Command line of the training pipeline: ``smartbin-train {prepare,train,evaluate,export,samples,card,all}``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartbin_daemon.config import missing_backend
from smartbin_daemon.training import DEFAULT_ARCH, DEFAULT_IMGSZ, DEFAULT_MODEL_NAME, DEFAULT_WORKDIR
from smartbin_daemon.training.classmap import ClassMap, ClassMapError, load_classmap
from smartbin_daemon.training.dataset import (
    PrepareReport,
    SourceDataset,
    discover_sources,
    load_source,
    parse_dataset_arg,
    prepare_dataset,
)
from smartbin_daemon.training.env import configure_ultralytics_env

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLASSMAP = Path("config/training/waste_classmap.yaml")
DEFAULT_SAMPLES = Path("tests/data/samples")


def _repo_path(path: Path) -> Path:
    """A relative path as given if it exists from the CWD, else relative to the source checkout."""
    if path.is_absolute() or path.exists():
        return path
    candidate = REPO_ROOT / path
    return candidate if candidate.exists() else path


def default_datasets_dir() -> Path:
    """$SMARTBIN_DATASETS, else <repo>/../shared/datasets."""
    env = os.environ.get("SMARTBIN_DATASETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


class Paths:
    """Work-dir layout of one named model."""

    def __init__(self, workdir: Path, name: str) -> None:
        """Derive all paths from the work dir and model name."""
        self.root = Path(workdir).resolve() / name
        self.dataset = self.root / "dataset"
        self.data_yaml = self.dataset / "data.yaml"
        self.balance = self.dataset / "balance.json"
        self.project = self.root / "runs"
        self.run_dir = self.project / "train"
        self.best = self.run_dir / "weights" / "best.pt"
        self.last = self.run_dir / "weights" / "last.pt"
        self.eval_dir = self.root / "eval"


def _unit_interval(text: str) -> float:
    """An argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..1")
    return value


def _common_parser() -> argparse.ArgumentParser:
    """Options shared by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--classmap", type=Path, default=DEFAULT_CLASSMAP, help="class-map YAML (default: %(default)s)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(DEFAULT_WORKDIR),
        help="work dir outside the repo (default: %(default)s)",
    )
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name (default: %(default)s)")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="where shipped artefacts go (default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="cpu, 0 / cuda:0 (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=DEFAULT_IMGSZ, help="image size (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _add_prepare(p: argparse.ArgumentParser) -> None:
    """Dataset options."""
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="YOLO dataset folder (repeatable); default: every class-map dataset under --datasets-dir",
    )
    p.add_argument(
        "--datasets-dir",
        type=Path,
        default=None,
        help="folder holding the datasets (default: $SMARTBIN_DATASETS or ../shared/datasets)",
    )
    p.add_argument(
        "--link",
        choices=("hardlink", "symlink", "copy"),
        default="hardlink",
        help="how images are placed (default: %(default)s)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="at most N labelled images per dataset and split (smoke tests)",
    )


def _add_train(p: argparse.ArgumentParser) -> None:
    """Training options."""
    p.add_argument("--model", default=DEFAULT_ARCH, help="architecture YAML or .pt (default: %(default)s)")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="PT",
        help="transfer learning: a pretrained YOLO detection checkpoint whose matching layers are kept, the class "
        "head re-initialised for our categories (replaces --model)",
    )
    p.add_argument(
        "--init-source",
        default=None,
        metavar="TEXT",
        help="where the --init checkpoint comes from (package, version, license, lineage), for the model card",
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", choices=("ram", "disk", "none"), default="none")
    p.add_argument(
        "--time-hours",
        type=float,
        default=None,
        help="hard cap on training time; ultralytics fits the schedule to it",
    )
    p.add_argument("--patience", type=int, default=100)
    p.add_argument("--close-mosaic", type=int, default=10)
    p.add_argument("--optimizer", default="auto", help="auto, SGD, AdamW, MuSGD, ... (default: %(default)s)")
    p.add_argument(
        "--lr0", type=float, default=None, help="initial learning rate (ignored by optimizer=auto)"
    )
    p.add_argument(
        "--nbs",
        type=int,
        default=64,
        help="nominal batch size; batch < nbs accumulates gradients (default: %(default)s)",
    )
    p.add_argument("--warmup-epochs", type=float, default=3.0)
    p.add_argument(
        "--cls-pw",
        type=_unit_interval,
        default=0.0,
        help="weight each class's loss by (1/train boxes)**P, 0..1, for rare categories (default: off)",
    )
    p.add_argument(
        "--no-val", action="store_true", help="skip validation after each epoch (final epoch still validates)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="LAST_PT",
        help="resume an interrupted run from its last.pt (default: the work dir's run)",
    )


def _add_finish(p: argparse.ArgumentParser) -> None:
    """Evaluation/export/card options."""
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the run's best.pt)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument(
        "--bench-frames", type=int, default=30, help="valid frames for the ONNX-vs-pt timing (0 = skip)"
    )
    p.add_argument(
        "--samples-dir", type=Path, default=DEFAULT_SAMPLES, help="sample images to score (skipped if absent)"
    )
    p.add_argument("--route-frames", type=int, default=5,
                   help="frames per valid item when choosing the vote thresholds (0 = keep the daemon defaults)")
    p.add_argument("--compare", type=Path, action="append", default=[], metavar="ONNX",
                   help="an ONNX model (with its metrics.json beside it) to compare against side by side; repeatable")
    p.add_argument("--notes", type=Path, default=None, help="markdown appended to the card")
    p.add_argument("--status", default="", help="status line at the top of the card (e.g. partial run)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree."""
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="smartbin-train", description="Train, evaluate and export the smart bin's waste detector."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", parents=[common], help="merge datasets into category labels")
    _add_prepare(p)
    p = sub.add_parser("train", parents=[common], help="train (or --resume) on the merged dataset")
    _add_train(p)
    p = sub.add_parser(
        "evaluate", parents=[common], help="mAP per category + confusions on the valid split -> JSON"
    )
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument(
        "--out", type=Path, default=None, help="metrics JSON (default: <workdir>/<name>/eval/<weights>.json)"
    )
    p = sub.add_parser("export", parents=[common], help="export ONNX into --models-dir")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--opset", type=int, default=17)
    p = sub.add_parser("samples", parents=[common], help="pick sample images from the valid splits by rule")
    _add_prepare(p)
    p.add_argument("--out", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--per-category", type=int, default=3)
    p = sub.add_parser(
        "card", parents=[common], help="export, evaluate, time, score samples and write the model card"
    )
    _add_finish(p)
    p = sub.add_parser("all", parents=[common], help="prepare + train + card end to end")
    _add_prepare(p)
    _add_train(p)
    _add_finish(p)
    return parser


def _sources(args: argparse.Namespace, classmap: ClassMap) -> list[SourceDataset]:
    """Datasets from --dataset or discovered under --datasets-dir."""
    if args.dataset:
        out = []
        for value in args.dataset:
            name, path = parse_dataset_arg(value)
            out.append(load_source(path, name))
        return out
    return discover_sources(args.datasets_dir or default_datasets_dir(), classmap)


def cmd_prepare(args: argparse.Namespace, classmap: ClassMap, paths: Paths) -> PrepareReport:
    """Merge the datasets."""
    return prepare_dataset(_sources(args, classmap), classmap, paths.dataset, args.link, args.max_images)


def cmd_train(args: argparse.Namespace, paths: Paths, command: str) -> Path:
    """Train or resume; return best.pt."""
    from smartbin_daemon.training.train import TrainSettings, train

    init = None
    if args.init is not None:
        if args.resume:
            raise ValueError("--init starts a new run; it cannot be combined with --resume")
        if args.model != DEFAULT_ARCH:
            raise ValueError("--init replaces --model; give one of them")
        from smartbin_daemon.training.init_weights import inspect_init

        info = inspect_init(args.init, len(load_classmap(_repo_path(args.classmap)).categories), args.init_source)
        logger.info("transfer learning from %s: %s, %d/%d tensors carried over", args.init, info.architecture,
                    info.tensors_transferred, info.tensors_total)
        init = info.as_dict()
    settings = TrainSettings(
        data_yaml=paths.data_yaml,
        project=paths.project,
        run_name="train",
        model=str(args.init) if args.init is not None else args.model,
        init=init,
        imgsz=args.imgsz,
        epochs=args.epochs,
        batch=args.batch,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        cache=False if args.cache == "none" else args.cache,
        time_hours=args.time_hours,
        patience=args.patience,
        close_mosaic=args.close_mosaic,
        optimizer=args.optimizer,
        lr0=args.lr0,
        nbs=args.nbs,
        warmup_epochs=args.warmup_epochs,
        cls_pw=args.cls_pw,
        val_every_epoch=not args.no_val,
    )
    resume = None
    if args.resume:
        resume = paths.last if args.resume == "auto" else Path(args.resume)
        if not resume.is_file():
            raise FileNotFoundError(f"nothing to resume: {resume} does not exist")
    elif not paths.data_yaml.is_file():
        raise FileNotFoundError(f"{paths.data_yaml} missing: run 'smartbin-train prepare' first")
    return train(settings, command, resume_from=resume).best


def _weights(args: argparse.Namespace, paths: Paths) -> Path:
    """--weights or the run's best.pt (last.pt if no best yet)."""
    w = args.weights or (paths.best if paths.best.is_file() else paths.last)
    if not Path(w).is_file():
        raise FileNotFoundError(f"no checkpoint at {w}: train first or pass --weights")
    return Path(w)


def choose_vote_thresholds(onnx_path: Path, paths: Paths, frames: int) -> dict[str, Any]:
    """Route every valid item through the daemon's path and pick min_confidence/min_margin by routing.RULE."""
    from smartbin_daemon.training.routing import choose_thresholds, daemon_model, observe, read_items

    model = daemon_model(onnx_path)
    items, skipped = read_items(paths.dataset / "images" / "val", paths.dataset / "labels" / "val", model.classmap)
    if not items:
        raise ValueError(f"no labelled valid images under {paths.dataset}: run 'smartbin-train prepare' first")
    result = choose_thresholds(observe(model, items, frames=frames), model.classmap.category_compartments())
    result.update(frames=frames, skipped=skipped)
    logger.info("vote thresholds: min_confidence %.2f, min_margin %.2f: %.1f%% of %d valid items to the right "
                "compartment, %.1f%% to a wrong one", result["min_confidence"], result["min_margin"],
                100 * result["correct_share"], result["items"], 100 * result["wrong_share"])
    return result


def compare_models(name: str, onnx_path: Path, evaluated: dict[str, Any], others: Sequence[Path], paths: Paths,
                   frames: int, routing: dict[str, Any] | None = None, route_frames: int = 0) -> dict[str, Any] | None:
    """This model against others side by side: ms/frame through the daemon's path, size, mAP50 (theirs from the
    metrics.json beside them) and, with `route_frames`, each one's routing of the valid items at its own thresholds
    chosen by the same rule."""
    if not others:
        return None
    from smartbin_daemon.training.routing import speed_side_by_side

    models = {name: onnx_path}
    accuracy: dict[str, dict[str, Any]] = {name: {
        "map50": evaluated["overall"]["map50"],
        "per_category": {k: v["map50"] for k, v in evaluated["per_category"].items()}}}
    if routing is not None:
        accuracy[name]["routing"] = _routing_summary(routing)
    for other in others:
        other = Path(other)
        models[other.stem] = other
        sidecar = other.with_name(f"{other.stem}.metrics.json")
        if sidecar.is_file():
            ev = json.loads(sidecar.read_text(encoding="utf-8")).get("eval_onnx") or {}
            accuracy[other.stem] = {"map50": (ev.get("overall") or {}).get("map50"),
                                    "per_category": {k: v.get("map50") for k, v in (ev.get("per_category") or {}).items()}}
        if route_frames > 0:
            accuracy.setdefault(other.stem, {})["routing"] = _routing_summary(
                choose_vote_thresholds(other, paths, route_frames))
    images = sorted((paths.dataset / "images" / "val").iterdir())[:frames]
    speed = speed_side_by_side(models, images, threads=1, baseline=Path(others[0]).stem)
    for key, row in speed["models"].items():
        row.update(accuracy.get(key, {}))
    return speed


def _routing_summary(routing: dict[str, Any]) -> dict[str, Any]:
    """The chosen thresholds and the shares of valid items they route right, wrong and to residual."""
    keys = ("min_confidence", "min_margin", "items", "correct_share", "wrong_share", "to_residual_share")
    return {k: routing[k] for k in keys}


def cmd_finish(args: argparse.Namespace, classmap: ClassMap, paths: Paths) -> dict[str, Any]:
    """Export ONNX, evaluate pt + ONNX, time both, score samples, write classes.yaml, metrics.json and card."""
    from smartbin_daemon.training.card import lineage, write_card, write_classes_yaml
    from smartbin_daemon.training.evaluate import evaluate
    from smartbin_daemon.training.export import benchmark, export_onnx, save_json
    from smartbin_daemon.training.samples import SAMPLES_YAML, score_samples
    from smartbin_daemon.training.train import read_train_info

    weights = _weights(args, paths)
    run_dir = weights.parent.parent
    train_info = read_train_info(run_dir)
    imgsz = int(train_info.get("settings", {}).get("imgsz", args.imgsz))
    models_dir = Path(args.models_dir)
    onnx_path = export_onnx(weights, imgsz, models_dir / f"{args.name}.onnx", opset=args.opset)
    eval_pt = evaluate(
        weights, paths.data_yaml, imgsz, args.eval_batch, args.device, 0, paths.eval_dir / "pt.json"
    )
    eval_onnx = evaluate(onnx_path, paths.data_yaml, imgsz, 1, "cpu", 0, paths.eval_dir / "onnx.json")
    bench = None
    if args.bench_frames > 0:
        frames = sorted((paths.dataset / "images" / "val").iterdir())[: args.bench_frames]
        bench = benchmark(weights, onnx_path, frames, imgsz)
    classes_yaml = models_dir / f"{args.name}.classes.yaml"
    write_classes_yaml(classes_yaml, classmap, onnx_path.name, imgsz)
    routing = None
    if args.route_frames > 0:
        routing = choose_vote_thresholds(onnx_path, paths, args.route_frames)
        write_classes_yaml(classes_yaml, classmap, onnx_path.name, imgsz, thresholds=routing)
    samples = None
    samples_dir = _repo_path(args.samples_dir)
    if (samples_dir / SAMPLES_YAML).is_file():
        samples = score_samples(onnx_path, samples_dir)
    else:
        logger.warning("no %s in %s: sample images not scored", SAMPLES_YAML, samples_dir)
    balance = (
        json.loads(paths.balance.read_text(encoding="utf-8"))
        if paths.balance.is_file()
        else {"categories": [], "splits": {}}
    )
    metrics = {
        "name": args.name,
        "weights": str(weights),
        "onnx": onnx_path.name,
        "onnx_bytes": onnx_path.stat().st_size,
        "imgsz": imgsz,
        "train": {
            k: train_info.get(k)
            for k in ("epochs_done", "epochs_planned", "train_seconds_total", "hardware", "command", "date")
        },
        "eval_onnx": eval_onnx,
        "eval_pt": eval_pt,
        "benchmark": bench,
        "samples": samples,
        "routing": routing,
        "comparison": compare_models(args.name, onnx_path, eval_onnx, args.compare, paths, args.bench_frames or 20,
                                     routing, args.route_frames),
        "lineage": lineage(train_info),
        "balance": balance,
    }
    save_json(metrics, models_dir / f"{args.name}.metrics.json")
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    write_card(
        models_dir / f"{args.name}.md",
        args.name,
        classmap,
        balance,
        train_info,
        eval_pt,
        eval_onnx,
        bench,
        samples,
        onnx_path,
        run_dir,
        routing=routing,
        comparison=metrics["comparison"],
        lineage=metrics["lineage"],
        notes=notes,
        status=args.status,
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``smartbin-train``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("train", "evaluate", "export", "card", "all"):
        problem = missing_backend("ultralytics")
        if problem is not None:
            logger.error("smartbin-train %s: %s", args.command, problem.replace("the ultralytics backend", "training"))
            return 2
    configure_ultralytics_env(Path(args.workdir).resolve() / "yolo-config")
    command = "smartbin-train " + shlex.join(argv)
    paths = Paths(args.workdir, args.name)
    try:
        classmap = load_classmap(_repo_path(args.classmap))
        if args.command == "prepare":
            cmd_prepare(args, classmap, paths)
        elif args.command == "train":
            cmd_train(args, paths, command)
        elif args.command == "evaluate":
            from smartbin_daemon.training.evaluate import evaluate, format_confusions, format_metrics_table

            weights = _weights(args, paths)
            out = args.out or paths.eval_dir / f"{weights.stem}.json"
            result = evaluate(weights, paths.data_yaml, args.imgsz, args.eval_batch, args.device, 0, out)
            print(format_metrics_table(result) + "\n\n" + format_confusions(result))
        elif args.command == "export":
            from smartbin_daemon.training.export import export_onnx

            export_onnx(
                _weights(args, paths),
                args.imgsz,
                Path(args.models_dir) / f"{args.name}.onnx",
                opset=args.opset,
            )
        elif args.command == "samples":
            from smartbin_daemon.training.samples import select_samples

            select_samples(_sources(args, classmap), classmap, args.out, args.count, args.per_category)
        elif args.command == "card":
            cmd_finish(args, classmap, paths)
        elif args.command == "all":
            cmd_prepare(args, classmap, paths)
            cmd_train(args, paths, command)
            cmd_finish(args, classmap, paths)
    except (ClassMapError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
