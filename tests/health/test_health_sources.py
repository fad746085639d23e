"""Platform readers against the recorded Raspberry Pi, Jetson and laptop trees."""

from __future__ import annotations

import ctypes.util
import logging
import shutil
import time
import types
from pathlib import Path

import pytest

from smartbin_daemon.health.sources import (
    NvmlReader,
    cpu_temperature,
    decode_throttled,
    disk_usage,
    gpu_temperature,
    nearest_existing,
    parse_sysfs_throttled,
    parse_vcgencmd_throttled,
    read_jetson_gpu_load,
    read_pi_throttling,
    read_power_rails,
    read_thermal_zones,
)

NO_FLAGS = {"under_voltage": False, "arm_freq_capped": False, "throttled": False, "soft_temp_limit": False}

# --------------------------------------------------------------------------- Raspberry Pi


@pytest.mark.parametrize(
    ("recording", "raw", "now", "since_boot"),
    [
        ("get_throttled_0x0.txt", 0x0, NO_FLAGS, NO_FLAGS),
        (
            "get_throttled_0x50005.txt",
            0x50005,
            {**NO_FLAGS, "under_voltage": True, "throttled": True},
            {**NO_FLAGS, "under_voltage": True, "throttled": True},
        ),
        ("get_throttled_0x80000.txt", 0x80000, NO_FLAGS, {**NO_FLAGS, "soft_temp_limit": True}),
    ],
)
def test_vcgencmd_recordings_decode_into_named_flags(data_dir, fake_command, recording, raw, now, since_boot):
    command = fake_command(data_dir / "rpi4" / "vcgencmd" / recording)

    result = read_pi_throttling(command, None, timeout_s=5)

    assert result is not None
    assert result.source == "vcgencmd"
    assert result.raw == raw
    assert result.now == now
    assert result.since_boot == since_boot
    assert result.as_dict()["raw"] == hex(raw)


def test_throttled_now_covers_capping_and_soft_limit_but_not_history():
    assert decode_throttled(0x2, "x").throttled_now  # ARM frequency capped
    assert decode_throttled(0x8, "x").throttled_now  # soft temperature limit
    assert not decode_throttled(0x1, "x").throttled_now  # under-voltage alone is its own condition
    assert not decode_throttled(0xF0000, "x").throttled_now  # only "since boot" bits


def test_parsers_reject_unexpected_text():
    assert parse_vcgencmd_throttled("throttled=0x50005\n") == 0x50005
    assert parse_vcgencmd_throttled('error=1 error_msg="Command not registered"') is None
    assert parse_sysfs_throttled("50005\n") == 0x50005
    assert parse_sysfs_throttled("0x80000") == 0x80000
    assert parse_sysfs_throttled("n/a") is None


def test_sysfs_is_read_when_there_is_no_vcgencmd(data_dir, tmp_path):
    result = read_pi_throttling(
        str(tmp_path / "no-such-vcgencmd"), data_dir / "rpi4" / "firmware" / "get_throttled"
    )

    assert result is not None
    assert result.source == "sysfs"
    assert result.raw == 0x50005
    assert result.now["under_voltage"] and result.now["throttled"]


def test_failing_vcgencmd_falls_back_to_sysfs(data_dir, fake_command):
    command = fake_command(exit_code=255)

    result = read_pi_throttling(command, data_dir / "rpi4" / "firmware" / "get_throttled")

    assert result is not None and result.source == "sysfs"


def test_failing_vcgencmd_without_fallback_is_absent_with_warning(fake_command, tmp_path, caplog):
    command = fake_command(exit_code=255)

    with caplog.at_level(logging.WARNING, logger="smartbin_daemon.health.sources"):
        result = read_pi_throttling(command, tmp_path / "missing")

    assert result is None
    assert "exited with 255" in caplog.text


def test_hanging_vcgencmd_times_out(fake_command, tmp_path):
    command = fake_command(sleep_s=5)

    started = time.monotonic()
    result = read_pi_throttling(command, tmp_path / "missing", timeout_s=0.3)

    assert result is None
    assert time.monotonic() - started < 3


def test_garbage_vcgencmd_output_is_absent(fake_command, tmp_path, caplog):
    command = fake_command(stdout="VCHI initialization failed")

    with caplog.at_level(logging.WARNING, logger="smartbin_daemon.health.sources"):
        assert read_pi_throttling(command, tmp_path / "missing") is None
    assert "unexpected output" in caplog.text


def test_not_a_pi_is_absent_without_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = read_pi_throttling("surely-not-an-installed-vcgencmd", tmp_path / "get_throttled")

    assert result is None
    assert caplog.records == []


def test_pi_cpu_temperature_from_thermal_zone(data_dir):
    zones = read_thermal_zones(str(data_dir / "rpi4" / "thermal" / "thermal_zone*"))

    assert [(z.zone, z.type) for z in zones] == [("thermal_zone0", "cpu-thermal")]
    assert cpu_temperature(zones) == pytest.approx(61.835)
    assert gpu_temperature(zones) is None


# --------------------------------------------------------------------------- Jetson


def test_jetson_gpu_load_uses_first_existing_path(data_dir, tmp_path):
    paths = [tmp_path / "gpu.0" / "load", data_dir / "jetson" / "gpu.0" / "load"]

    assert read_jetson_gpu_load(paths) == pytest.approx(45.2)


def test_jetson_gpu_load_with_bad_content_is_absent(tmp_path):
    load = tmp_path / "load"
    load.write_text("busy\n")
    assert read_jetson_gpu_load([load]) is None
    load.write_text("1500\n")
    assert read_jetson_gpu_load([load]) is None


def test_jetson_temperatures_ignore_the_pmic_dummy(data_dir):
    zones = read_thermal_zones(str(data_dir / "jetson" / "thermal" / "thermal_zone*"))

    assert len(zones) == 6
    assert cpu_temperature(zones) == pytest.approx(48.5)
    assert gpu_temperature(zones) == pytest.approx(46.5)
    assert max(z.temp_c for z in zones) == pytest.approx(100.0)  # PMIC-Die stays listed, but is neither


def test_jetson_power_rails(data_dir):
    rails = read_power_rails(str(data_dir / "jetson" / "ina3221" / "*" / "hwmon" / "hwmon*"))

    assert [(r.name, r.channel, r.voltage_mv, r.current_ma) for r in rails] == [
        ("VDD_IN", 1, 5072, 1296),
        ("VDD_CPU_GPU_CV", 2, 5072, 384),
        ("VDD_SOC", 3, 5072, 624),
    ]
    assert [r.power_mw for r in rails] == pytest.approx([6573.3, 1947.6, 3164.9], abs=0.05)
    assert {r.device for r in rails} == {"hwmon3"}


def test_power_rails_tolerate_missing_files(data_dir, tmp_path):
    tree = tmp_path / "ina3221"
    shutil.copytree(data_dir / "jetson" / "ina3221", tree)
    hwmon = tree / "1-0040" / "hwmon" / "hwmon3"
    (hwmon / "curr3_input").unlink()  # current unreadable: voltage only
    (hwmon / "in2_input").unlink()
    (hwmon / "curr2_input").unlink()  # nothing readable: no rail

    rails = {r.name: r for r in read_power_rails(str(tree / "*" / "hwmon" / "hwmon*"))}

    assert set(rails) == {"VDD_IN", "VDD_SOC"}
    assert rails["VDD_SOC"].voltage_mv == 5072
    assert rails["VDD_SOC"].current_ma is None and rails["VDD_SOC"].power_mw is None


def test_no_power_monitor_means_no_rails(tmp_path):
    assert read_power_rails(str(tmp_path / "ina3221*" / "*" / "hwmon" / "hwmon*")) == []


# --------------------------------------------------------------------------- laptop / missing hardware


def test_laptop_cpu_temperature_prefers_package_sensor(data_dir):
    zones = read_thermal_zones(str(data_dir / "x86_laptop" / "thermal" / "thermal_zone*"))

    assert cpu_temperature(zones) == pytest.approx(48.0)
    assert gpu_temperature(zones) is None


def test_missing_gpu_is_absent_not_an_error(tmp_path):
    assert read_jetson_gpu_load([tmp_path / "devices" / "gpu.0" / "load"]) is None
    assert read_jetson_gpu_load([]) is None


def test_thermal_zones_skip_unreadable_and_sentinel_values(tmp_path):
    def zone(n: int, type_: str, temp: str | None) -> None:
        d = tmp_path / f"thermal_zone{n}"
        d.mkdir()
        (d / "type").write_text(type_ + "\n")
        if temp is None:
            (d / "temp").mkdir()  # reading it raises IsADirectoryError, like EIO/ENODATA on real sysfs
        else:
            (d / "temp").write_text(temp + "\n")

    zone(0, "iwlwifi_1", None)
    zone(1, "GPU-therm", "-25600")  # Orin: GPU sensor off while the GPU is power-gated
    zone(2, "bogus", "not-a-number")
    zone(3, "tj-thermal", "-274000")  # implausible
    zone(10, "cpu-thermal", "52000")
    zone(9, "soc-thermal", "51000")

    zones = read_thermal_zones(str(tmp_path / "thermal_zone*"))

    assert [z.zone for z in zones] == ["thermal_zone9", "thermal_zone10"]  # natural order
    assert gpu_temperature(zones) is None
    assert cpu_temperature(zones) == pytest.approx(52.0)


def test_no_thermal_zones_at_all(tmp_path):
    zones = read_thermal_zones(str(tmp_path / "thermal_zone*"))
    assert zones == []
    assert cpu_temperature(zones) is None


# --------------------------------------------------------------------------- NVML


def test_nvml_absent_when_library_is_not_installed():
    def missing() -> types.ModuleType:
        raise ImportError("No module named 'pynvml'")

    reader = NvmlReader(loader=missing)
    assert reader.read() is None
    reader.close()


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="an NVIDIA driver is installed here"
)
def test_nvml_absent_when_driver_is_missing():
    pytest.importorskip("pynvml")
    reader = NvmlReader()  # the real nvidia-ml-py; nvmlInit fails without libnvidia-ml

    assert reader.read() is None
    assert reader.read() is None  # and does not retry/raise on later reads
    reader.close()


class _FakeNvml(types.ModuleType):
    """Just the pynvml calls the reader uses (no GPU is available to test against)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA RTX A2000" if handle == 0 else b"Tesla T4"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=37 if handle == 0 else 0, memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=1_073_741_824, total=4_294_967_296, free=3_221_225_472)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        if handle == 1:
            raise RuntimeError("Not Supported")
        return 54


def test_nvml_reads_every_gpu_and_tolerates_unsupported_queries():
    fake = _FakeNvml()
    reader = NvmlReader(loader=lambda: fake)

    gpus = reader.read()

    assert gpus is not None and len(gpus) == 2
    assert (gpus[0].name, gpus[0].load_pct, gpus[0].temp_c, gpus[0].memory_pct) == (
        "NVIDIA RTX A2000",
        37.0,
        54.0,
        25.0,
    )
    assert gpus[1].temp_c is None and gpus[1].name == "Tesla T4"
    reader.close()
    assert fake.shutdown_calls == 1


# --------------------------------------------------------------------------- disk


def test_disk_usage_of_a_storage_path_that_does_not_exist_yet(tmp_path):
    storage = tmp_path / "not" / "created" / "yet"

    usage = disk_usage(storage)

    assert nearest_existing(storage) == tmp_path
    assert usage is not None
    assert usage["path"] == str(storage)
    assert usage["measured_path"] == str(tmp_path)
    assert 0 <= usage["percent"] <= 100
    assert usage["total_bytes"] > 0


def test_nearest_existing_of_an_existing_path_is_itself(tmp_path: Path):
    assert nearest_existing(tmp_path) == tmp_path
