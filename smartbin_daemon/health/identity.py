"""System identity for the health state: OS, kernel, CPU, addresses, Wi-Fi, boot time and the clock's sync state.

Why a module of its own: these readers change slowly (OS, CPU model) or are cheap (addresses, Wi-Fi signal),
take every path/command as an argument (tests replay recorded files), and never raise for a platform that lacks
something: a missing reading is None (JSON null), meaning "unknown".
"""

from __future__ import annotations

import ctypes
import logging
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from .sources import _read_text, _resolve_command

logger = logging.getLogger(__name__)

_OS_RELEASE_RE = re.compile(r'^([A-Z_][A-Z0-9_]*)=(?:"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|(\S*))\s*$')
_CPUINFO_KEYS = ("model name", "Model", "Hardware", "cpu model", "Processor")
"""`/proc/cpuinfo` keys naming the CPU or the board, in order of preference (x86, Pi board, ARM SoC, MIPS, old ARM)."""
_WIRELESS_LINE_RE = re.compile(r"^\s*([^:\s]+):\s+\S+\s+(-?[\d.]+)\.?\s+(-?[\d.]+)\.?\s+(-?[\d.]+)")

TIME_ERROR = 5
"""adjtimex() return value meaning "clock not synchronised"."""
NTP_MAX_ERROR_US = 16_000_000
"""systemd-timedated's rule (`timedatectl`'s NTPSynchronized): synchronised while the kernel's maxerror is below 16 s."""


def os_release(path: Path) -> dict[str, str]:
    """The key/value pairs of an os-release file (quotes and backslash escapes removed); empty when unreadable."""
    text = _read_text(path)
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        match = _OS_RELEASE_RE.match(line.strip())
        if match is None:
            continue
        key, dq, sq, bare = match.groups()
        value = dq if dq is not None else sq if sq is not None else bare or ""
        out[key] = re.sub(r"\\(.)", r"\1", value) if dq is not None else value
    return out


def cpu_model(cpuinfo: Path) -> str | None:
    """The CPU (x86 `model name`) or board (Pi `Model`) named by /proc/cpuinfo, else the machine type."""
    text = _read_text(cpuinfo) or ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in _CPUINFO_KEYS and value.strip():
            found.setdefault(key.strip(), value.strip())
    for key in _CPUINFO_KEYS:
        if key in found:
            return found[key]
    return platform.machine() or None


def cpu_clock_mhz() -> dict[str, float | None]:
    """Current, minimum and maximum CPU clock in MHz (None where the platform does not tell)."""
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        freq = None
    if freq is None:
        return {"current": None, "min": None, "max": None}

    def mhz(value: float) -> float | None:
        return round(float(value), 1) if value else None

    return {"current": mhz(freq.current), "min": mhz(freq.min), "max": mhz(freq.max)}


def addresses() -> dict[str, list[str]]:
    """IPv4/IPv6 addresses per interface, loopback left out."""
    out: dict[str, list[str]] = {}
    try:
        interfaces = psutil.net_if_addrs()
    except OSError as exc:
        logger.debug("interface addresses unavailable: %s", exc)
        return out
    for name, addrs in sorted(interfaces.items()):
        ips = [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        ips = [ip for ip in ips if not ip.startswith("127.") and ip != "::1"]
        if ips and name != "lo":
            out[name] = ips
    return out


@dataclass(frozen=True)
class Wireless:
    """One Wi-Fi interface as /proc/net/wireless reports it (plus its SSID when iwgetid tells)."""

    interface: str
    link_quality: float
    signal_dbm: float
    ssid: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"interface": self.interface, "link_quality": self.link_quality, "signal_dbm": self.signal_dbm,
                "ssid": self.ssid}


def read_wireless(path: Path, iwgetid: str | None, timeout_s: float = 2.0) -> list[Wireless]:
    """Wi-Fi interfaces from /proc/net/wireless; the SSID from `iwgetid -r <if>` when that is installed."""
    text = _read_text(path) or ""
    out: list[Wireless] = []
    for line in text.splitlines()[2:]:
        match = _WIRELESS_LINE_RE.match(line)
        if match is None:
            continue
        name, link, level, _noise = match.groups()
        signal = float(level)
        if signal > 0:  # some drivers report an unsigned 8-bit dBm value
            signal -= 256
        out.append(Wireless(name, float(link), signal, _ssid(iwgetid, name, timeout_s)))
    return out


def _ssid(iwgetid: str | None, interface: str, timeout_s: float) -> str | None:
    """`iwgetid -r <interface>`, or None when it is not installed, fails or prints nothing."""
    argv = _resolve_command(iwgetid) if iwgetid else None
    if argv is None:
        return None
    try:
        proc = subprocess.run([*argv, "-r", interface], capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (subprocess.TimeoutExpired, OSError) as exc:
        logger.debug("iwgetid failed: %s", exc)
        return None
    ssid = proc.stdout.strip()
    return ssid if proc.returncode == 0 and ssid else None


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """Linux `struct timex` up to `status`/`maxerror` (what is read), padded well past its real size."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("reserved", ctypes.c_byte * 256),
    ]


def kernel_ntp_synchronized() -> bool | None:
    """The kernel's view (read-only adjtimex, what `timedatectl` reports): None where adjtimex is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    timex = _Timex()
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        logger.debug("adjtimex failed: errno %d", ctypes.get_errno())
        return None
    return state != TIME_ERROR and timex.maxerror < NTP_MAX_ERROR_US


def ntp_synchronized(use_adjtimex: bool, timesync_flag: Path | None,
                     adjtimex: Callable[[], bool | None] = kernel_ntp_synchronized) -> tuple[bool | None, str]:
    """(synchronised, how it was learnt): the kernel first, else systemd-timesyncd's flag file, else (None, "unknown").

    Why this order: the kernel's state is what every NTP client (timesyncd, chrony, ntpd) sets and needs no D-Bus
    or subprocess; timesyncd's flag file only proves a sync when it exists (its absence may mean another client).
    """
    if use_adjtimex:
        synced = adjtimex()
        if synced is not None:
            return synced, "adjtimex"
    if timesync_flag is not None and timesync_flag.exists():
        return True, "timesyncd"
    return None, "unknown"


def boot_time_iso() -> str | None:
    """Last boot as ISO-8601 UTC."""
    try:
        boot = psutil.boot_time()
    except OSError:
        return None
    return datetime.fromtimestamp(boot, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def static_identity(os_release_path: Path, cpuinfo: Path) -> dict[str, Any]:
    """What changes only with an update or a reboot: OS, kernel, CPU model and cores, boot time, host name."""
    release = os_release(os_release_path)
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "os": release.get("PRETTY_NAME") or release.get("NAME") or uname.system,
        "kernel": uname.release,
        "architecture": uname.machine,
        "cpu_model": cpu_model(cpuinfo),
        "cpu_cores": psutil.cpu_count(logical=False),
        "cpu_threads": psutil.cpu_count(),
        "boot_time": boot_time_iso(),
    }



class SystemIdentity:
    """The `system` section of the health state: slow facts re-read every `refresh_s`, fast ones on every read."""

    def __init__(self, sources: Any, refresh_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self.refresh_s = refresh_s
        self.clock = clock
        self._static: dict[str, Any] | None = None
        self._static_at = 0.0

    def read(self) -> dict[str, Any]:
        """OS, kernel, CPU (model, cores, clock), addresses per interface, Wi-Fi, boot time."""
        src = self.sources
        now = self.clock()
        if self._static is None or now - self._static_at >= self.refresh_s:
            self._static = static_identity(src.os_release, src.cpuinfo)
            self._static_at = now
        wifi = read_wireless(src.wireless, src.iwgetid, src.pi_command_timeout_s)
        ips = addresses()
        return {
            **self._static,
            "cpu_clock_mhz": cpu_clock_mhz(),
            "ip": next((ip for found in ips.values() for ip in found if ":" not in ip), None),
            "addresses": ips,
            "wifi": [w.as_dict() for w in wifi],
        }
