"""The README's architecture rules hold, checked by import-linter contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        "--no-cache", "--no-logo", str(REPO / "pyproject.toml")]


def lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(LINT, cwd=pythonpath or REPO, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_every_contract() -> None:
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_each_rule_catches_its_violation(tmp_path: Path) -> None:
    copy = tmp_path / "smartbin_daemon"
    shutil.copytree(REPO / "smartbin_daemon", copy, ignore=shutil.ignore_patterns("__pycache__"))
    breaches = {
        "bins/workflow.py": "from smartbin_daemon.vision import detector  # noqa\n",  # a component imports another
        "bins/fill.py": "import paho.mqtt.client  # noqa\n",  # broker access outside the MQTT worker
        "vision/onnx_backend.py": "import torch  # noqa\n",  # torch on the ONNX path
        "runtime/bus.py": "from smartbin_daemon import app  # noqa\n",  # the runtime importing upwards
        "states/camera.py": "from smartbin_daemon.vision import camera  # noqa\n",  # a state model importing its worker
        "health/monitor.py": "from smartbin_daemon.training import routing  # noqa\n",  # training in the daemon
    }
    for path, line in breaches.items():
        target = copy / path
        target.write_text(target.read_text() + line)
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "Contracts: 0 kept, 5 broken." in result.stdout, result.stdout
    for path in breaches:
        assert "smartbin_daemon." + path.removesuffix(".py").replace("/", ".") in result.stdout, path
