"""Describe the machine a run happened on (for the model card)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(device: str = "cpu") -> str:
    """One line: CPU, core count, RAM and the GPU when training ran on CUDA."""
    parts = [f"{cpu_model()} ({os.cpu_count()} logical cores)"]
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages / 2**30:.0f} GiB RAM")
    except (ValueError, OSError):
        pass
    if device not in ("cpu", "") and not device.startswith("cpu"):
        try:
            import torch

            if torch.cuda.is_available():
                parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        except ImportError:
            pass
    else:
        parts.append("no GPU used")
    parts.append(f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")
    return ", ".join(parts)
