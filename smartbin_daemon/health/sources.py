"""Platform readers for the health monitor: psutil, thermal zones, Pi throttling, Jetson sysfs, NVML.

Why: each reader takes its paths/commands as arguments and keeps no module-level state, so tests
replay recorded Raspberry Pi / Jetson / laptop trees. A missing device is not an error: readers
return None (or an empty list) for it, and unexpected content is logged and reported absent.
Nothing here raises for a platform that simply lacks the hardware.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- small file helpers

_MIN_PLAUSIBLE_C = -40.0
_MAX_PLAUSIBLE_C = 200.0
_JETSON_SENSOR_OFF_MILLI_C = -25600
"""Orin reports -25.6 °C on GPU-therm while the GPU is power-gated: that is "no reading", not a temperature."""


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders `thermal_zone10` after `thermal_zone9`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _read_text(path: Path) -> str | None:
    """File content stripped, or None when it is missing or unreadable (sysfs reads can fail with EIO/ENODATA)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.debug("cannot read %s: %s", path, exc)
        return None


def _read_int(path: Path) -> int | None:
    """An integer sysfs attribute, or None when missing, unreadable or not an integer."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        logger.warning("unexpected content in %s: %r", path, text[:40])
        return None


# --------------------------------------------------------------------------- thermal zones


@dataclass(frozen=True)
class ThermalZone:
    """One kernel thermal zone reading."""

    zone: str  # directory name, e.g. thermal_zone0
    type: str  # e.g. cpu-thermal, CPU-therm, x86_pkg_temp
    temp_c: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"zone": self.zone, "type": self.type, "temp_c": self.temp_c}


def read_thermal_zones(pattern: str) -> list[ThermalZone]:
    """Read `type` and `temp` (millidegrees) of every zone matching the glob; unreadable zones are skipped."""
    zones: list[ThermalZone] = []
    for entry in sorted(glob.glob(pattern), key=_natural_key):
        directory = Path(entry)
        milli = _read_int(directory / "temp")
        if milli is None:
            continue
        if milli == _JETSON_SENSOR_OFF_MILLI_C:
            logger.debug("%s reports the sensor-off value; skipped", directory)
            continue
        temp_c = milli / 1000.0
        if not _MIN_PLAUSIBLE_C <= temp_c <= _MAX_PLAUSIBLE_C:
            logger.debug("%s: implausible temperature %.1f °C; skipped", directory, temp_c)
            continue
        zone_type = _read_text(directory / "type") or directory.name
        zones.append(ThermalZone(zone=directory.name, type=zone_type, temp_c=round(temp_c, 3)))
    return zones


_CPU_ZONE_PREFERENCE: tuple[Callable[[str], bool], ...] = (
    lambda t: t.startswith("cpu"),  # Pi cpu-thermal, Jetson CPU-therm / cpu-thermal
    lambda t: t == "x86_pkg_temp",  # Intel package sensor
    lambda t: t.startswith("soc"),  # many ARM SoCs
    lambda t: t == "acpitz",  # ACPI fallback (laptops, AMD)
)


def cpu_temperature(zones: Sequence[ThermalZone]) -> float | None:
    """The CPU temperature: the first zone of the most specific kind (cpu*, x86_pkg_temp, soc*, acpitz)."""
    for matches in _CPU_ZONE_PREFERENCE:
        for zone in zones:
            if matches(zone.type.lower()):
                return zone.temp_c
    return None


def gpu_temperature(zones: Sequence[ThermalZone]) -> float | None:
    """The GPU temperature from a zone whose type starts with `gpu` (Jetson GPU-therm / gpu-thermal)."""
    for zone in zones:
        if zone.type.lower().startswith("gpu"):
            return zone.temp_c
    return None


# --------------------------------------------------------------------------- Raspberry Pi throttling

THROTTLE_NOW_BITS: dict[str, int] = {
    "under_voltage": 0,
    "arm_freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
"""Bits of `get_throttled` for the current state; the same flags "since boot" are these bits + 16."""

_SINCE_BOOT_SHIFT = 16
_VCGENCMD_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")
_SYSFS_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]+)$")


@dataclass(frozen=True)
class PiThrottling:
    """Decoded Raspberry Pi firmware throttling state."""

    raw: int
    source: str  # vcgencmd | sysfs
    now: dict[str, bool]
    since_boot: dict[str, bool]

    @property
    def throttled_now(self) -> bool:
        """Any performance limiting right now (throttled, ARM frequency capped or soft temperature limit)."""
        return self.now["throttled"] or self.now["arm_freq_capped"] or self.now["soft_temp_limit"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "raw": f"0x{self.raw:x}",
            "source": self.source,
            "now": dict(self.now),
            "since_boot": dict(self.since_boot),
        }


def decode_throttled(value: int, source: str) -> PiThrottling:
    """Decode the `get_throttled` bit field into named flags for now (bits 0..3) and since boot (16..19)."""
    now = {name: bool(value >> bit & 1) for name, bit in THROTTLE_NOW_BITS.items()}
    since = {name: bool(value >> (bit + _SINCE_BOOT_SHIFT) & 1) for name, bit in THROTTLE_NOW_BITS.items()}
    return PiThrottling(raw=value, source=source, now=now, since_boot=since)


def parse_vcgencmd_throttled(output: str) -> int | None:
    """`throttled=0x50005` -> 0x50005; None if the output has no such line."""
    match = _VCGENCMD_RE.search(output)
    if match is None:
        return None
    return int(match.group(1), 0)


def parse_sysfs_throttled(text: str) -> int | None:
    """The firmware sysfs attribute holds the value in hex (`50005`, sometimes `0x50005`)."""
    match = _SYSFS_RE.match(text.strip())
    return int(match.group(1), 16) if match else None


def _resolve_command(command: str) -> list[str] | None:
    """Split a configured command; None when its program does not exist (not a Pi), without spawning it."""
    try:
        argv = shlex.split(command)
    except ValueError:
        logger.warning("cannot parse command %r", command)
        return None
    if not argv:
        return None
    program = argv[0]
    if os.sep in program:
        if not os.access(program, os.X_OK):
            return None
    elif shutil.which(program) is None:
        return None
    return argv


def run_vcgencmd_throttled(command: str, timeout_s: float) -> tuple[int | None, str | None]:
    """Run `<command> get_throttled`; (value, None) on success, (None, why) on failure, (None, None) if absent."""
    argv = _resolve_command(command)
    if argv is None:
        return None, None
    try:
        proc = subprocess.run(
            [*argv, "get_throttled"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"{command} get_throttled timed out after {timeout_s:g} s"
    except OSError as exc:
        return None, f"{command} get_throttled failed to start: {exc}"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[:120]
        return None, f"{command} get_throttled exited with {proc.returncode}: {detail}"
    value = parse_vcgencmd_throttled(proc.stdout)
    if value is None:
        return None, f"{command} get_throttled printed unexpected output: {proc.stdout.strip()[:80]!r}"
    return value, None


def read_pi_throttling(
    vcgencmd: str | None, sysfs: Path | None, timeout_s: float = 2.0
) -> PiThrottling | None:
    """Pi throttling from vcgencmd, else from the firmware sysfs file; None when neither exists (not a Pi).

    Why this order: `vcgencmd get_throttled` is the documented interface; the sysfs attribute is
    the fallback for images without vcgencmd or users outside the `video` group. A failing
    vcgencmd is only worth a warning when the fallback did not answer either.
    """
    problem: str | None = None
    if vcgencmd:
        value, problem = run_vcgencmd_throttled(vcgencmd, timeout_s)
        if value is not None:
            return decode_throttled(value, "vcgencmd")
    if sysfs is not None:
        text = _read_text(sysfs)
        if text is not None:
            value = parse_sysfs_throttled(text)
            if value is not None:
                return decode_throttled(value, "sysfs")
            logger.warning("unexpected content in %s: %r", sysfs, text[:40])
    if problem is not None:
        logger.warning("Raspberry Pi throttling unavailable: %s", problem)
    return None


# --------------------------------------------------------------------------- Jetson


def read_jetson_gpu_load(paths: Sequence[Path]) -> float | None:
    """GPU load in % from the first existing devfreq `load` file (per mille, so divided by 10)."""
    for path in paths:
        if not path.exists():
            continue
        value = _read_int(path)
        if value is None:
            return None
        if not 0 <= value <= 1000:
            logger.warning("GPU load out of range in %s: %d", path, value)
            return None
        return round(value / 10.0, 1)
    return None


@dataclass(frozen=True)
class PowerRail:
    """One INA3221 channel: bus voltage, current and their product."""

    name: str
    device: str  # hwmon directory, e.g. hwmon3
    channel: int
    voltage_mv: int | None
    current_ma: int | None
    power_mw: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "device": self.device,
            "channel": self.channel,
            "voltage_mv": self.voltage_mv,
            "current_ma": self.current_ma,
            "power_mw": self.power_mw,
        }


_LABEL_RE = re.compile(r"^in(\d+)_label$")


def read_power_rails(pattern: str) -> list[PowerRail]:
    """Power rails of ina3221 hwmon devices: `in<N>_label`, `in<N>_input` (mV), `curr<N>_input` (mA) -> mW.

    Channels without a readable voltage or current are reported with None for what is missing; the
    driver's "sum of shunt voltages" pseudo-channel is not a rail and is skipped.
    """
    rails: list[PowerRail] = []
    for entry in sorted(glob.glob(pattern), key=_natural_key):
        directory = Path(entry)
        try:
            names = sorted(os.listdir(directory), key=_natural_key)
        except OSError as exc:
            logger.debug("cannot list %s: %s", directory, exc)
            continue
        for name in names:
            match = _LABEL_RE.match(name)
            if match is None:
                continue
            channel = int(match.group(1))
            label = _read_text(directory / name)
            if not label or label.lower().startswith("sum of shunt"):
                continue
            voltage = _read_int(directory / f"in{channel}_input")
            current = _read_int(directory / f"curr{channel}_input")
            if voltage is None and current is None:
                continue
            power = (
                round(voltage * current / 1000.0, 1) if voltage is not None and current is not None else None
            )
            rails.append(PowerRail(label, directory.name, channel, voltage, current, power))
    return rails


# --------------------------------------------------------------------------- NVML


@dataclass(frozen=True)
class NvmlGpu:
    """One NVIDIA GPU as NVML reports it."""

    index: int
    name: str
    load_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temp_c: float | None

    @property
    def memory_pct(self) -> float | None:
        """Used share of GPU memory."""
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return round(100.0 * self.memory_used_bytes / self.memory_total_bytes, 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "index": self.index,
            "name": self.name,
            "load_pct": self.load_pct,
            "memory_used_bytes": self.memory_used_bytes,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_pct": self.memory_pct,
            "temp_c": self.temp_c,
        }


def _import_pynvml() -> ModuleType:
    """Import nvidia-ml-py lazily (an optional dependency)."""
    return importlib.import_module("pynvml")


class NvmlReader:
    """NVIDIA GPUs through NVML; absent (None) when the library, the driver or a GPU is missing.

    Why it is stateful: nvmlInit() is slow, so it runs once per reader. A failed init is not
    retried by this reader (the monitor builds a new one on every worker (re)start).
    """

    def __init__(self, loader: Callable[[], ModuleType] = _import_pynvml) -> None:
        self._loader = loader
        self._nvml: ModuleType | None = None
        self._failed = False

    def _open(self) -> ModuleType | None:
        if self._nvml is not None or self._failed:
            return self._nvml
        try:
            nvml = self._loader()
        except ImportError:
            logger.debug("nvidia-ml-py is not installed; no NVML GPU")
            self._failed = True
            return None
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ... all mean "no GPU"
            logger.debug("NVML unavailable: %s", exc)
            self._failed = True
            return None
        self._nvml = nvml
        return nvml

    def read(self) -> list[NvmlGpu] | None:
        """Every GPU NVML sees, or None when NVML is unavailable or sees none."""
        nvml = self._open()
        if nvml is None:
            return None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            logger.warning("NVML device count failed: %s", exc)
            return None
        gpus = [self._read_one(nvml, index) for index in range(count)]
        present = [g for g in gpus if g is not None]
        return present or None

    @staticmethod
    def _read_one(nvml: ModuleType, index: int) -> NvmlGpu | None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            logger.warning("NVML GPU %d unavailable: %s", index, exc)
            return None

        def attempt(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception as exc:  # a single unsupported query must not hide the others
                logger.debug("NVML query on GPU %d failed: %s", index, exc)
                return None

        name = attempt(lambda: nvml.nvmlDeviceGetName(handle))
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        util = attempt(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        mem = attempt(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        temp = attempt(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        return NvmlGpu(
            index=index,
            name=str(name) if name is not None else f"GPU {index}",
            load_pct=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            temp_c=float(temp) if temp is not None else None,
        )

    def close(self) -> None:
        """Shut NVML down (safe to call when it was never opened)."""
        nvml, self._nvml = self._nvml, None
        self._failed = False
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception as exc:
                logger.debug("nvmlShutdown failed: %s", exc)


# --------------------------------------------------------------------------- psutil


def nearest_existing(path: Path) -> Path:
    """`path` itself, or its nearest existing parent (storage may not be created yet)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def disk_usage(path: Path) -> dict[str, Any] | None:
    """Usage of the filesystem holding `path` (or its nearest existing parent)."""
    measured = nearest_existing(path)
    try:
        usage = psutil.disk_usage(str(measured))
    except OSError as exc:
        logger.warning("disk usage of %s unavailable: %s", measured, exc)
        return None
    return {
        "path": str(path),
        "measured_path": str(measured),
        "percent": round(float(usage.percent), 1),
        "total_bytes": int(usage.total),
        "used_bytes": int(usage.used),
        "free_bytes": int(usage.free),
    }


class SystemSampler:
    """psutil readings that need a previous sample (CPU %, own CPU %, network rates).

    Why `prime()`: psutil's non-blocking cpu_percent() measures since the previous call *from the
    same thread*, so the worker primes it in its own thread and the first sample is meaningful.
    """

    def __init__(self, process: psutil.Process | None = None) -> None:
        self.process = process if process is not None else psutil.Process()
        self._last_net: tuple[float, int, int] | None = None

    def prime(self) -> None:
        """Start the CPU measurement windows."""
        psutil.cpu_percent(interval=None)
        psutil.cpu_percent(interval=None, percpu=True)
        self.process.cpu_percent(interval=None)
        self._last_net = None

    def cpu(self) -> dict[str, Any]:
        """Total and per-core CPU %, core count and load averages."""
        total = psutil.cpu_percent(interval=None)
        per_core = psutil.cpu_percent(interval=None, percpu=True)
        try:
            load1, load5, load15 = psutil.getloadavg()
        except (OSError, AttributeError):
            load1 = load5 = load15 = None
        return {
            "percent": round(float(total), 1),
            "per_core": [round(float(v), 1) for v in per_core],
            "count": psutil.cpu_count() or len(per_core),
            "load_1": round(load1, 2) if load1 is not None else None,
            "load_5": round(load5, 2) if load5 is not None else None,
            "load_15": round(load15, 2) if load15 is not None else None,
        }

    @staticmethod
    def memory() -> dict[str, Any]:
        """RAM usage."""
        vm = psutil.virtual_memory()
        return {
            "percent": round(float(vm.percent), 1),
            "total_bytes": int(vm.total),
            "available_bytes": int(vm.available),
            "used_bytes": int(vm.total - vm.available),
        }

    @staticmethod
    def swap() -> dict[str, Any]:
        """Swap usage (percent 0 when there is no swap)."""
        sw = psutil.swap_memory()
        return {
            "percent": round(float(sw.percent), 1),
            "total_bytes": int(sw.total),
            "used_bytes": int(sw.used),
        }

    @staticmethod
    def uptime_s() -> int:
        """Seconds since the system booted."""
        return max(0, int(time.time() - psutil.boot_time()))

    def network(self) -> dict[str, Any]:
        """Total bytes sent/received and the rates since the previous sample (None on the first or after a reset)."""
        counters = psutil.net_io_counters()
        now = time.monotonic()
        sent, recv = int(counters.bytes_sent), int(counters.bytes_recv)
        sent_rate = recv_rate = None
        if self._last_net is not None:
            then, last_sent, last_recv = self._last_net
            elapsed = now - then
            if elapsed > 0 and sent >= last_sent and recv >= last_recv:
                sent_rate = round((sent - last_sent) / elapsed, 1)
                recv_rate = round((recv - last_recv) / elapsed, 1)
        self._last_net = (now, sent, recv)
        return {
            "bytes_sent": sent,
            "bytes_recv": recv,
            "sent_bytes_per_s": sent_rate,
            "recv_bytes_per_s": recv_rate,
        }

    def own_process(self) -> dict[str, Any]:
        """The daemon's own RSS, thread count, CPU % (of one core) and open file descriptors."""
        proc = self.process
        with proc.oneshot():
            rss = int(proc.memory_info().rss)
            threads = proc.num_threads()
            cpu = proc.cpu_percent(interval=None)
            try:
                fds: int | None = proc.num_fds()
            except (AttributeError, psutil.Error):
                fds = None
        return {
            "pid": proc.pid,
            "rss_bytes": rss,
            "rss_mb": round(rss / 1_048_576, 1),
            "threads": threads,
            "cpu_percent": round(float(cpu), 1),
            "open_fds": fds,
        }
