"""Support bundles (`logs/bundle`): a day of journal, the redacted config, the states, versions and the worker
table in one tar.gz below `<storage.path>/bundles/`, secrets scrubbed from every file."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import io
import json
import logging
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from .. import __version__
from ..config import REDACTED, Config, redacted_dict
from ..runtime import files

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundles"
BUNDLE_PREFIX = "smartbin-bundle-"
BUNDLE_KEEP = 5
BUNDLE_FILES = ("journal.txt", "config.yaml", "state.json", "versions.json", "workers.json")
JOURNAL_UNIT = "smartbin"
JOURNAL_TIMEOUT_S = 6.0
"""Below mqtt.request_timeout_s (default 10 s) so the bundle's answer normally arrives in time."""
JOURNAL_MAX_BYTES = 16 * 1024 * 1024
"""Only the newest 16 MiB of a day's journal go into a bundle."""
VERSION_PACKAGES = ("paho-mqtt", "pydantic", "pydantic-core", "PyYAML", "numpy", "pyserial", "gpiozero", "ultralytics",
                    "torch", "torchvision", "opencv-python", "opencv-python-headless", "opencv-contrib-python",
                    "onnxruntime", "onnxruntime-gpu", "nvidia-ml-py")
"""Package versions a bundle reports (read from the installed metadata; nothing is imported)."""


def secret_values(cfg: Config) -> list[str]:
    """The secret strings of a config (MQTT password, security.hmac_secret when that section exists)."""
    found: list[str] = []
    candidates: list[Any] = [cfg.mqtt.password]
    security = getattr(cfg, "security", None)
    if security is not None:
        candidates.append(getattr(security, "hmac_secret", None))
        candidates.extend(getattr(key, "secret", None) for key in (getattr(security, "keys", None) or {}).values())
    alerts = getattr(cfg, "alerts", None)
    if alerts is not None:
        candidates.append(alerts.webhook.url)
    for value in candidates:
        if value is None:
            continue
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        if text:
            found.append(text)
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (also in its JSON-escaped form) replaced by the redaction marker."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


def read_journal(unit: str = JOURNAL_UNIT, timeout_s: float = JOURNAL_TIMEOUT_S) -> str:
    """The last 24 h of the unit's journal, or a note saying why there is none."""
    exe = shutil.which("journalctl")
    cmd = [exe or "journalctl", "-u", unit, "--since", "-24h", "-o", "short-iso", "--no-pager"]
    if exe is None:
        return f"# journalctl is not available on this system; no journal in this bundle\n# ({' '.join(cmd)})\n"
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout if isinstance(exc.stdout, bytes) else b""
        return (f"# {' '.join(cmd)} did not finish within {timeout_s:.0f}s; what it printed until then:\n"
                + _tail(partial).decode("utf-8", "replace"))
    except OSError as exc:
        return f"# {' '.join(cmd)} could not run: {exc}\n"
    out = _tail(proc.stdout).decode("utf-8", "replace")
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        return f"# {' '.join(cmd)} failed (exit {proc.returncode}): {err}\n{out}"
    return out


def _tail(data: bytes) -> bytes:
    if len(data) <= JOURNAL_MAX_BYTES:
        return data
    return b"# ... older lines cut: only the newest %d bytes are kept\n" % JOURNAL_MAX_BYTES + data[-JOURNAL_MAX_BYTES:]


def versions() -> dict[str, Any]:
    """Daemon, Python, platform and package versions (from package metadata: nothing heavy is imported)."""
    packages: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"daemon": __version__, "python": sys.version, "executable": sys.executable,
            "platform": platform.platform(), "machine": platform.machine(), "packages": packages}


def build_bundle(storage: Path, cfg: Config, states: dict[str, Any], workers: dict[str, Any],
                 journal: Callable[[], str] = read_journal, keep: int = BUNDLE_KEEP) -> dict[str, Any]:
    """Write `<storage>/bundles/smartbin-bundle-<UTC stamp>.tar.gz` (secrets scrubbed), keep the newest `keep`."""
    folder = Path(storage) / BUNDLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{BUNDLE_PREFIX}*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass
    secrets = secret_values(cfg)
    now = time.time()
    stamp = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    members = {
        "journal.txt": journal(),
        "config.yaml": yaml.safe_dump(redacted_dict(cfg), sort_keys=False, allow_unicode=True),
        "state.json": json.dumps(states, default=str, indent=1),
        "versions.json": json.dumps(versions(), indent=1),
        "workers.json": json.dumps(workers, default=str, indent=1),
    }
    path = folder / f"{BUNDLE_PREFIX}{stamp}.tar.gz"

    def write_bundle(fh: BinaryIO) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for name in BUNDLE_FILES:
                data = scrub(members[name], secrets).encode("utf-8")
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(now)
                info.mode = 0o640
                tar.addfile(info, io.BytesIO(data))

    files.write_atomic(path, write_bundle, mode=0o640, tmp=folder / f".{path.name}.tmp")
    removed = []
    bundles = sorted(folder.glob(f"{BUNDLE_PREFIX}*.tar.gz"))
    for old in bundles[: max(0, len(bundles) - keep)]:
        try:
            old.unlink()
            removed.append(old.name)
        except OSError as exc:
            logger.warning("cannot delete old bundle %s: %s", old, exc)
    return {"path": str(path), "bytes": path.stat().st_size, "files": list(BUNDLE_FILES), "removed": removed}
