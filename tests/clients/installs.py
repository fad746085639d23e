"""The real clients' installs, cached under one folder and serialised by a lock per install.

Why the lock: `install.sh --test` starts `python -m tests.clients.prepare` in the background so the slow installs
(Home Assistant's venv, Node-RED's node_modules) overlap the rest of the suite; a client test that arrives first
waits for the same install instead of starting a second one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("SMARTBIN_TEST_CACHE", str(Path.home() / ".cache" / "smartbin-tests")))
IN_CI = os.environ.get("CI", "").lower() == "true"
NODE_RED = "4.1.8"
DASHBOARD = "1.31.0"


class InstallFailed(RuntimeError):
    """A client could not be installed here."""


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold the install lock `name` (other processes installing the same thing wait)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install_node_red() -> Path:
    """node_modules with the pinned node-red and @flowfuse/node-red-dashboard (installed once, then reused)."""
    target = CACHE / f"node-red-{NODE_RED}-dashboard-{DASHBOARD}"
    with locked(target.name):
        if (target / "node_modules" / ".bin" / "node-red").exists():
            return target / "node_modules"
        if shutil.which("npm") is None:
            raise InstallFailed("npm is not installed (apt-get install nodejs npm; node >= 18)")
        staging = target.with_name(target.name + f".partial-{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(staging),
                                 f"node-red@{NODE_RED}", f"@flowfuse/node-red-dashboard@{DASHBOARD}"],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstallFailed(f"npm install failed: {result.stderr[-2000:]}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target / "node_modules"
