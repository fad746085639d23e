"""onnxruntime's CPU graph optimisations done once per model, onnxruntime version and CPU, in a child process.

Why: on an x86 CPU with AVX2, `ORT_ENABLE_ALL` re-lays the weights out (NCHWc) at every session start and the
session keeps the original initialisers as well: the shipped YOLOv8s session takes ~112 MiB, the same model
optimised once and loaded without re-optimising ~78 MiB, at the same speed. The optimised graph is specific to
the CPU's instruction set and to the onnxruntime version, so both are in the cache key; a child process makes it,
so the optimisation's peak memory never stays in the daemon. Anything that goes wrong means the original is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

OPTIMIZE_TIMEOUT_S = 300.0
"""A Pi 4 optimises the shipped model in well under a minute; a hung child is killed after this."""

_CHILD = """
import sys
import onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.optimized_model_filepath = sys.argv[2]
options.intra_op_num_threads = 1
options.log_severity_level = 3
ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
"""


def _cpu_signature() -> str:
    """The machine and its CPU feature flags (what decides the optimised layout)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("flags", "features")):
                flags = line.split(":", 1)[-1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def cache_key(model: Path, ort_version: str) -> str:
    """16 hex digits naming the model's bytes, the onnxruntime version and the CPU."""
    digest = hashlib.sha256()
    with model.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|{ort_version}|{_cpu_signature()}".encode())
    return digest.hexdigest()[:16]


def optimized_copy(model: Path, cache_dir: Path, ort_version: str) -> Path | None:
    """The cached optimised copy of `model`, made now if missing; None when it cannot be made."""
    try:
        target = cache_dir / f"{model.stem}.{cache_key(model, ort_version)}.onnx"
        if target.is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f"{model.stem}.*.onnx"):
            stale.unlink(missing_ok=True)  # another version of this model, onnxruntime or CPU
        tmp = cache_dir / f".{target.name}.tmp"
        done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(tmp)], capture_output=True, text=True,
                              timeout=OPTIMIZE_TIMEOUT_S, check=False)
        if done.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            logger.warning("cannot pre-optimise %s (exit %s): %s; loading it as it is", model.name, done.returncode,
                           (done.stderr.strip().splitlines() or ["no output"])[-1])
            return None
        os.replace(tmp, target)
        logger.info("pre-optimised %s for this CPU: %s", model.name, target)
        return target
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("cannot pre-optimise %s: %s; loading it as it is", model.name, exc)
        return None
