"""Card pieces: the lineage of a staged run, the routing and size-comparison sections."""

from __future__ import annotations

import json
from pathlib import Path

from smartbin_daemon.training.card import comparison_section, lineage, routing_section


def run(tmp_path: Path, name: str, settings: dict, epochs: int) -> Path:
    run_dir = tmp_path / name / "runs" / "train"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "best.pt").write_bytes(b"pt")
    info = {"settings": settings, "epochs_done": epochs, "train_seconds_total": 60.0 * epochs, "command": f"train {name}"}
    (run_dir / "train_info.json").write_text(json.dumps(info))
    return run_dir


def test_lineage_follows_each_stage_back_to_the_pretrained_start(tmp_path: Path) -> None:
    init = {"path": "/x/best.pt", "checkpoint_license": "AGPL-3.0"}
    first = run(tmp_path, "s1", {"model": "/x/best.pt", "init": init, "imgsz": 320, "lr0": 0.001}, 5)
    second = run(tmp_path, "s2", {"model": str(first / "weights" / "best.pt"), "imgsz": 256}, 19)
    stages = lineage(json.loads((second / "train_info.json").read_text()))
    assert [(s["imgsz"], s["epochs_done"]) for s in stages] == [(320, 5), (256, 19)]
    assert stages[0]["init"] == init and stages[1]["init"] is None and stages[1]["command"] == "train s2"


def test_lineage_stops_at_a_start_point_that_is_gone(tmp_path: Path) -> None:
    only = {"settings": {"model": str(tmp_path / "deleted" / "best.pt"), "imgsz": 256}, "epochs_done": 3}
    assert [s["epochs_done"] for s in lineage(only)] == [3]


def test_routing_section_shows_thresholds_matrix_and_contamination() -> None:
    routing = {
        "min_confidence": 0.45, "min_margin": 0.1, "rule": "the rule", "items": 10, "frames": 5,
        "skipped": {"background": 1, "mixed": 2}, "correct_share": 0.7, "wrong_share": 0.1, "to_residual_share": 0.2,
        "constraint_met": False,
        "matrix_expected_by_routed": {"recycling": {"recycling": 6, "paper": 1}, "paper": {"paper": 1, "residual": 2}},
        "contamination": {"paper": {"items": 2, "foreign": 1, "foreign_share": 0.5, "from": {"recycling": 1}}},
    }
    text = "\n".join(routing_section(routing))
    assert "min_confidence 0.45, min_margin 0.10" in text and "No threshold pair met" in text
    assert "| recycling | 1 | 6 | 0 | 7 |" in text  # columns: paper, recycling, residual
    assert "| paper | 2 | 1 | 50.0 % | recycling 1 |" in text


def test_comparison_section_lists_each_model_against_the_baseline() -> None:
    comparison = {"method": "m", "baseline": "nano", "models": {
        "s": {"imgsz": 256, "onnx_bytes": 44 * 2**20, "ms_median": 50.0, "ratio": 2.5, "map50": 0.6,
              "per_category": {"glass": 0.7}},
        "nano": {"imgsz": 320, "onnx_bytes": 10 * 2**20, "ms_median": 20.0, "ratio": 1.0, "map50": 0.42,
                 "per_category": {"glass": 0.42}}}}
    text = "\n".join(comparison_section(comparison))
    assert "| s | 256 | 44.0 | 50.0 | 2.50 | 0.600 | 0.700 |" in text and "x nano" in text
    assert "right compartment" not in text  # no routing figures given, no routing table


def test_comparison_section_shows_each_models_routing_at_its_own_thresholds() -> None:
    routing = {"min_confidence": 0.55, "min_margin": 0.2, "items": 479, "correct_share": 0.445,
               "wrong_share": 0.038, "to_residual_share": 0.517}
    comparison = {"method": "m", "baseline": "nano", "models": {
        "s": {"imgsz": 256, "onnx_bytes": 2**20, "ms_median": 50.0, "ratio": 2.5, "map50": 0.6, "routing": routing},
        "nano": {"imgsz": 320, "onnx_bytes": 2**20, "ms_median": 20.0, "ratio": 1.0, "map50": 0.42}}}
    text = "\n".join(comparison_section(comparison))
    assert "| s | 0.55 | 0.20 | 44.5 % | 3.8 % | 51.7 % |" in text
    assert "| nano | 0." not in text.split("right compartment")[1]  # a model without routing gets no row
