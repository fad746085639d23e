"""install.sh for real, root-less: --prefix installs, re-installs idempotently (never overwriting a
modified config), --dry-run changes nothing, --uninstall [--purge] removes what it should.

Fast and (where possible) offline on purpose: the prefix venv is a real venv with a real
(non-editable) pip install of this checkout, but pip finds the runtime dependencies through
PYTHONPATH, in a directory of symlinks to the test interpreter's own copies of exactly those
distributions, so it downloads none of them. When the test interpreter also has a build backend
that works without isolation (setuptools >= 70.1, or setuptools plus wheel), pip runs with
`--no-index --no-build-isolation` and no pip config: no network at all. Otherwise (a fresh venv from
Debian's python3 has setuptools 66 and no wheel) pip builds the package in its usual isolated
environment, which fetches setuptools/wheel from the index or pip's cache. Dependency *resolution*
against PyPI is not exercised here; `./install.sh --test` (what CI runs) does that.
The real installs use --no-vision (onnxruntime, torch & co. would need PyPI); the vision-stack logic
(the lean "vision" extra by default, the "ultralytics" extra with torch when asked for or when the
config's model is not ONNX, the Jetson handling) is checked through --dry-run on a copy of the
checkout, whose configs the tests can change.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO / "install.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6)
    tomllib = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- helpers


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _root_requirements() -> list[str]:
    """Runtime dependencies + the `systemd` extra (what the production install asks for) + build backend."""
    if tomllib is not None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        reqs = list(project["dependencies"]) + list(project["optional-dependencies"].get("systemd", []))
    else:
        reqs = [r for r in metadata.requires("smartbin-daemon") or [] if "extra ==" not in r or "systemd" in r]
    return [m.group(0) for r in reqs if (m := re.match(r"[A-Za-z0-9._-]+", r))] + ["setuptools", "wheel"]


def _closure(names: list[str]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # pip --no-index reports it, naming the package
        found[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            m = re.match(r"[A-Za-z0-9._-]+", req)
            if m:
                todo.append(m.group(0))
    return found


def _offline_build_backend() -> bool:
    """Can pip build this checkout with --no-build-isolation from the test interpreter's packages?"""
    try:
        version = tuple(int(x) for x in re.findall(r"\d+", metadata.version("setuptools"))[:2])
    except metadata.PackageNotFoundError:
        return False
    if version < (68, 0):  # pyproject.toml's build-system requirement
        return False
    if version >= (70, 1):  # bdist_wheel built in
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def deps_overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PYTHONPATH directory holding symlinks to the test interpreter's installed dependencies."""
    overlay = tmp_path_factory.mktemp("deps-overlay")
    for dist in _closure(_root_requirements()).values():
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            link = overlay / top
            if not link.exists() and (base / top).exists():
                link.symlink_to(base / top)
    return overlay


@pytest.fixture(scope="module")
def env(deps_overlay: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHONHOME"))}
    e.update(
        PYTHON=sys.executable,  # same minor version as the overlay's compiled extensions
        PYTHONPATH=str(deps_overlay),
        SMARTBIN_PLATFORM="generic",
    )
    if _offline_build_backend():
        e["SMARTBIN_PIP_ARGS"] = "--no-index --no-build-isolation"
        e["PIP_CONFIG_FILE"] = os.devnull  # no site-specific index/find-links configuration either
    else:
        e["SMARTBIN_PIP_ARGS"] = ""
        e.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    return e


def install_sh(*args: str, env: dict[str, str], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(INSTALL_SH), *args], env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"install.sh {' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path below root with (mode, size, mtime_ns); symlinks not followed."""
    out: dict[str, tuple[int, int, int]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns)
    return out


class Layout:
    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.opt = prefix / "opt/smartbin"
        self.venv = self.opt / "venv"
        self.daemon = self.venv / "bin/smartbin-daemon"
        self.etc = prefix / "etc/smartbin"
        self.config = self.etc / "config.yaml"
        self.state = prefix / "var/lib/smartbin"
        self.unit = prefix / "etc/systemd/system/smartbin.service"
        self.udev = prefix / "etc/udev/rules.d/99-smartbin-arduino.rules"


BUILD_DIR_EXISTED: dict[str, bool] = {}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> tuple[Layout, subprocess.CompletedProcess[str]]:
    """One real prefix install shared by the tests below (module scope: a venv + pip build takes seconds)."""
    prefix = tmp_path_factory.mktemp("prefix")
    BUILD_DIR_EXISTED["build"] = (REPO / "build").exists()
    result = install_sh("--prefix", str(prefix), "--system-site-packages", "--no-vision", env=env)
    return Layout(prefix), result


# --------------------------------------------------------------------------- tests


def test_help_exits_zero_and_documents_every_mode() -> None:
    result = subprocess.run(["bash", str(INSTALL_SH), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for word in ("--uninstall", "--purge", "--dry-run", "--prefix", "--simulate", "--test", "--system-site-packages", "PYTHON=",
                 "--no-vision", "--with-ultralytics"):
        assert word in result.stdout, word


@pytest.mark.parametrize("args", [["--purge"], ["--bogus"], ["--simulate", "--test"], ["--prefix", "/tmp/x y"], ["--", "-k", "x"],
                                  ["--with-ultralytics", "--no-vision"], ["--uninstall", "--with-ultralytics"], ["--test", "--no-vision"]])
def test_bad_arguments_are_rejected(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(INSTALL_SH), *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    assert "error:" in result.stderr
    assert not list(tmp_path.iterdir())


def test_prefix_install_creates_a_working_layout(installed: tuple[Layout, subprocess.CompletedProcess[str]], env: dict[str, str]) -> None:
    lay, result = installed
    assert (lay.venv / "pyvenv.cfg").is_file()
    assert re.search(r"^include-system-site-packages *= *true", (lay.venv / "pyvenv.cfg").read_text(), re.M)
    assert os.access(lay.daemon, os.X_OK)
    # A real, non-editable install: the package lives inside the venv, not in the checkout.
    site = Path(subprocess.run([str(lay.venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    assert (site / "smartbin_daemon" / "__init__.py").is_file()
    arduino = site / "smartbin_daemon/hardware/arduino"  # the sketch matching the daemon's protocol ships with it
    for shipped in ("PROTOCOL.md", "firmware/README.md", "firmware/smartbin_fw/smartbin_fw.ino",
                    "firmware/simavr/smartbin_simavr.c"):
        assert (arduino / shipped).is_file(), shipped
    shown = subprocess.run([str(lay.venv / "bin/smartbinctl"), "firmware", "--config", str(lay.config)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"sketch:   {arduino / 'firmware/smartbin_fw/smartbin_fw.ino'}\n" in shown.stdout, shown.stdout
    assert lay.config.read_text() == (REPO / "config/smartbin.yaml").read_text().replace("/etc/smartbin", f"{lay.prefix}/etc/smartbin").replace(
        "/var/lib/smartbin", f"{lay.prefix}/var/lib/smartbin")
    assert stat.S_IMODE(lay.config.stat().st_mode) == 0o640
    assert stat.S_IMODE(lay.state.stat().st_mode) == 0o750
    assert (lay.opt / "models").is_dir()
    assert (lay.opt / "share/config.example.yaml").is_file()
    assert (lay.opt / "share/systemd/mqtt-credential.conf").is_file()
    # System-level steps are printed, not done.
    assert "[prefix mode, skipped] systemctl enable smartbin.service" in result.stdout
    # No Jetson drop-in on a generic machine.
    assert not (lay.unit.parent / "smartbin.service.d").exists()
    version = subprocess.run([str(lay.daemon), "version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("smartbin-daemon ")


def test_installed_unit_points_into_the_prefix(installed: tuple[Layout, subprocess.CompletedProcess[str]]) -> None:
    lay, _ = installed
    text = lay.unit.read_text()
    assert f"ExecStart={lay.daemon} run --config {lay.config}\n" in text
    assert f"YOLO_CONFIG_DIR={lay.state}/ultralytics" in text
    assert f"ReadWritePaths={lay.state}\n" in text
    # Every absolute smartbin path was moved below the prefix.
    leftovers = re.findall(r"(?<![\w./-])/(?:opt/smartbin|etc/smartbin|var/lib/smartbin)", text)
    assert not leftovers, leftovers
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    # ExecStart= now names the real installed binary, so verify needs no stand-in.
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(lay.unit)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and str(lay.prefix) not in output, output


def test_checkout_is_left_clean(installed: tuple[Layout, subprocess.CompletedProcess[str]]) -> None:
    # The non-editable build must not leave build/ behind in the checkout (root-owned in production).
    if not BUILD_DIR_EXISTED["build"]:
        assert not (REPO / "build").exists()


def test_second_run_is_idempotent_and_keeps_a_modified_config(installed: tuple[Layout, subprocess.CompletedProcess[str]], env: dict[str, str]) -> None:
    lay, _ = installed
    modified = lay.config.read_text() + "\n# technician was here\n"
    lay.config.write_text(modified)
    (lay.state / "outbox.db").write_text("data")
    result = install_sh("--prefix", str(lay.prefix), "--system-site-packages", "--no-vision", env=env)
    assert lay.config.read_text() == modified
    assert "keeping existing" in result.stdout
    assert (lay.state / "outbox.db").read_text() == "data"
    assert "venv" in result.stdout and "present" in result.stdout  # reused, not recreated
    assert subprocess.run([str(lay.daemon), "version"], env=env, capture_output=True, timeout=60).returncode == 0


def test_dry_run_changes_nothing(installed: tuple[Layout, subprocess.CompletedProcess[str]], env: dict[str, str], tmp_path: Path) -> None:
    lay, _ = installed
    before = snapshot(lay.prefix)
    result = install_sh("--dry-run", "--prefix", str(lay.prefix), env=env)
    assert snapshot(lay.prefix) == before
    assert "[dry-run]" in result.stdout and "pip install" in result.stdout
    # On a fresh prefix nothing at all may appear, yet every step is announced.
    fresh = tmp_path / "fresh"
    result = install_sh("--dry-run", "--prefix", str(fresh), env=env)
    assert not fresh.exists()
    out = result.stdout
    assert f"-m venv {fresh}/opt/smartbin/venv" in out
    assert f"write {fresh}/etc/smartbin/config.yaml" in out
    assert f"write {fresh}/etc/systemd/system/smartbin.service" in out
    for line in out.splitlines():
        if re.search(r"\b(useradd|groupadd|usermod|apt-get|systemctl)\b", line) and "[dry-run]" in line:
            pytest.fail(f"a system step is not marked as skipped in prefix mode: {line}")
    for action in ("install -d", "pip install", "smartbin-daemon version", "systemctl"):
        assert action in out, action
    # Uninstall dry runs don't touch anything either.
    before = snapshot(lay.prefix)
    install_sh("--dry-run", "--uninstall", "--purge", "--prefix", str(lay.prefix), env=env)
    assert snapshot(lay.prefix) == before


def test_production_dry_run_announces_system_steps(env: dict[str, str]) -> None:
    # PYTHON left to install.sh: production picks /usr/bin/python3 (the test interpreter may live
    # under /root or /home, which the service could not see and install.sh rejects).
    prod_env = {k: v for k, v in env.items() if k != "PYTHON"}
    existed = Path("/opt/smartbin").exists()
    result = install_sh("--dry-run", env=prod_env)
    assert Path("/opt/smartbin").exists() == existed
    out = result.stdout
    assert "/etc/systemd/system/smartbin.service" in out
    assert "-m venv /opt/smartbin/venv" in out or "venv /opt/smartbin/venv: present" in out
    assert "/etc/smartbin/config.yaml" in out
    if subprocess.run(["getent", "passwd", "smartbin"], capture_output=True).returncode != 0:
        assert re.search(r"\[dry-run\] (sudo )?useradd --system .*smartbin", out)
        for group in ("dialout", "video", "gpio"):
            assert f"usermod --append --groups {group} smartbin" in out


def test_jetson_dry_run_uses_system_site_packages_and_dropin(env: dict[str, str], tmp_path: Path) -> None:
    result = install_sh("--dry-run", "--prefix", str(tmp_path / "p"), env={**env, "SMARTBIN_PLATFORM": "jetson"})
    assert "--system-site-packages" in result.stdout
    assert f"write {tmp_path}/p/etc/systemd/system/smartbin.service.d/10-jetson.conf" in result.stdout


def test_jetson_install_sets_up_jetson_gpio_and_its_udev_rule(env: dict[str, str], tmp_path: Path) -> None:
    jetson = install_sh("--dry-run", "--prefix", str(tmp_path / "p"), env={**env, "SMARTBIN_PLATFORM": "jetson"}).stdout
    assert "installing Jetson.GPIO into the venv" in jetson
    assert re.search(r"\[dry-run\] \S+/p/opt/smartbin/venv/bin/python -m pip install .*Jetson\.GPIO", jetson)
    rule = f"{tmp_path}/p/etc/udev/rules.d/99-smartbin-jetson-gpio.rules"
    assert f"write {rule}" in jetson or "keeping /etc/udev/rules.d/99-gpio.rules" in jetson
    assert "udevadm trigger --subsystem-match=gpio --subsystem-match=pwm --action=add" in jetson
    pi = install_sh("--dry-run", "--prefix", str(tmp_path / "q"), env={**env, "SMARTBIN_PLATFORM": "pi"}).stdout
    assert "Jetson.GPIO" not in pi and "99-smartbin-jetson-gpio.rules" not in pi


def _checkout(tmp_path: Path) -> Path:
    """A copy of what install.sh reads, so a test can change its configs (and its .venv is a new one)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("install.sh", "pyproject.toml", "README.md", "systemd", "config", "models"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("*.onnx", "*.pt"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    return repo


def _run(repo: Path, *args: str, env: dict[str, str], platform: str = "generic") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(repo / "install.sh"), "--dry-run", *args], env={**env, "SMARTBIN_PLATFORM": platform},
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result


def _pip_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "[dry-run]" in line and "-m pip install" in line]


def _package_line(out: str) -> str:
    """The dry-run pip line that installs smartbin-daemon itself (the last one naming its extras)."""
    lines = [line for line in _pip_lines(out) if "[systemd" in line or "[test" in line]
    assert lines, out
    return lines[-1]


def _torch_line(env: dict[str, str]) -> str:
    return f"pip install --quiet --no-input --progress-bar off {env['SMARTBIN_PIP_ARGS']} torchvision".replace("  ", " ")


def _write_config(path: Path, detector: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("mqtt:\n  host: localhost\n" + detector)
    return path


def test_pyproject_splits_the_lean_vision_extra_from_ultralytics() -> None:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {key: {_canonical(m.group(0)) for r in reqs if (m := re.match(r"[A-Za-z0-9._-]+(\[[^]]*\])?", r))} for key, reqs in extras.items()}
    assert {"onnxruntime", "opencv-python-headless", "numpy"} <= names["vision"]
    assert not {"ultralytics", "torch", "torchvision", "onnx"} & names["vision"], "the daemon's default path stays lean"
    assert {"ultralytics", "onnx"} <= names["ultralytics"]
    # The test extra brings both stacks (the parity tests compare the backends).
    test = extras["test"]
    assert any(re.fullmatch(r"smartbin-daemon\[(?=.*\bvision\b)(?=.*\bultralytics\b).*\]", r.replace(" ", "")) for r in test) or (
        {"ultralytics", "onnx", "onnxruntime"} <= names["test"]), test


def test_vision_is_lean_by_default(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    # The production config example: no torch, no ultralytics, no OpenCV swap.
    out = _run(repo, "--prefix", str(tmp_path / "p"), env=env).stdout
    assert "smartbin-daemon[systemd,vision] " in out
    assert _package_line(out).endswith("[systemd,vision]'"), _package_line(out)
    assert all("ultralytics" not in line and "torchvision" not in line for line in _pip_lines(out)), _pip_lines(out)
    assert "opencv-python" not in out
    assert re.search(r"vision: lean .*config/smartbin\.yaml: detector\.enabled is false", out), out
    assert "--with-ultralytics" in out  # says how to get the rest
    # --no-vision leaves out both extras.
    without = _run(repo, "--no-vision", "--prefix", str(tmp_path / "p"), env=env).stdout
    assert "smartbin-daemon[systemd] " in without and "torchvision" not in without and "vision:" not in without


def test_with_ultralytics_adds_the_extra_and_torch(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    out = _run(repo, "--with-ultralytics", "--prefix", str(tmp_path / "p"), env=env).stdout
    assert "smartbin-daemon[systemd,vision,ultralytics]" in out
    assert _package_line(out).endswith("[systemd,vision,ultralytics]'"), _package_line(out)
    torch_line = _torch_line(env)
    assert torch_line in out
    assert out.index(torch_line) < out.index(_package_line(out)), "torch comes first, from torchvision"
    assert "uninstall --quiet --yes opencv-python" in out
    assert "--force-reinstall --no-deps opencv-python-headless" in out
    assert "vision: adding the ultralytics extra" in out and "--with-ultralytics" in out
    # Jetson: JetPack's torch is pinned, never replaced from PyPI.
    jetson = _run(repo, "--with-ultralytics", "--prefix", str(tmp_path / "p"), env=env, platform="jetson").stdout
    assert torch_line not in jetson, "JetPack's torch must not be replaced from PyPI"
    assert "--constraint" in _package_line(jetson) and "torch/torchvision" in jetson
    assert "uninstall --quiet --yes opencv-python-headless" in jetson


@pytest.mark.parametrize(("detector", "ultralytics"), [
    ("detector:\n  enabled: true\n  model: /opt/smartbin/models/best.pt\n", True),
    ("detector:\n  enabled: true\n  model: /opt/smartbin/models/best_openvino_model\n", True),
    ("detector:\n  enabled: true\n  model: /opt/smartbin/models/best.engine\n  backend: auto\n", True),
    ("detector:\n  enabled: true\n  model: /opt/smartbin/models/best.onnx\n  backend: ultralytics\n", True),
    ("detector:\n  enabled: true\n  model: /opt/smartbin/models/best.ONNX\n", False),
    ("detector:\n  enabled: true\n", False),  # the default model is the shipped .onnx
    ("detector:\n  enabled: false\n  model: /opt/smartbin/models/best.pt\n", False),
    ("detector:\n  enabled: true\n  model: /opt/smartbin/models/best.pt\n  backend: onnxruntime\n", False),  # check-config's business
], ids=["pt", "openvino-dir", "engine", "backend-ultralytics", "onnx", "default-model", "disabled", "backend-onnxruntime"])
def test_the_installed_config_decides_on_ultralytics(detector: str, ultralytics: bool, env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    prefix = tmp_path / "p"
    config = _write_config(prefix / "etc/smartbin/config.yaml", detector)  # an existing config wins over the example
    out = _run(repo, "--prefix", str(prefix), env=env).stdout
    pkg = _package_line(out)
    decision = next(line for line in out.splitlines() if line.startswith("==> vision: "))
    assert str(config) in decision, decision  # says which config ...
    assert "detector." in decision, decision  # ... and why
    if ultralytics:
        assert pkg.endswith("[systemd,vision,ultralytics]'"), pkg
        assert _torch_line(env) in out
    else:
        assert pkg.endswith("[systemd,vision]'"), pkg
        assert "torchvision" not in out and "opencv-python" not in out


def test_an_unreadable_config_falls_back_to_lean_with_a_warning(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    prefix = tmp_path / "p"
    _write_config(prefix / "etc/smartbin/config.yaml", "detector: [unclosed\n")
    result = _run(repo, "--prefix", str(prefix), env=env)
    assert _package_line(result.stdout).endswith("[systemd,vision]'")
    assert "--with-ultralytics" in result.stderr and "cannot read" in result.stderr


def test_simulate_reads_config_simulation_yaml(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    out = _run(repo, "--simulate", env=env).stdout
    assert re.search(r"vision: lean .*config/simulation\.yaml: detector\.model \S+\.onnx is ONNX", out), out
    pkg = _package_line(out)
    assert f"-e '{repo}[systemd,vision]'" in pkg, pkg
    assert "torchvision" not in out
    assert f"write {repo}/.venv/.smartbin-install-stamp-systemd-vision\n" in out  # the stamp names the extras
    assert "smartbin-daemon run --config config/simulation.yaml" in out
    # A .pt model in the simulation config brings the ultralytics extra.
    sim = repo / "config/simulation.yaml"
    sim.write_text(re.sub(r"(?m)^(  model: .*)\.onnx$", r"\1.pt", sim.read_text()))
    out = _run(repo, "--simulate", env=env).stdout
    assert re.search(r"vision: adding the ultralytics extra .*config/simulation\.yaml: detector\.model \S+\.pt is not ONNX", out), out
    assert f"-e '{repo}[systemd,vision,ultralytics]'" in _package_line(out)
    assert _torch_line(env) in out
    assert f"write {repo}/.venv/.smartbin-install-stamp-systemd-vision-ultralytics\n" in out


def test_test_mode_installs_both_stacks(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    out = _run(repo, "--test", "--", "-k", "nothing", env=env).stdout
    pkg = _package_line(out)
    assert f"-e '{repo}[test,vision,ultralytics]'" in pkg, pkg
    torch_line = _torch_line(env)
    assert torch_line in out and out.index(torch_line) < out.index(pkg)
    assert "--force-reinstall --no-deps opencv-python-headless" in out
    assert "vision: adding the ultralytics extra" in out and "--test" in out
    assert re.search(r"\[dry-run\] \.venv/bin/python -m pytest -k nothing$", out, re.M), out
    # The firmware tests' toolchain (tests/hardware/firmware.py), checked and installed like the other apt packages.
    assert re.search(r"apt packages.*\bgcc-avr avr-libc arduino-core-avr simavr libsimavr-dev\b", out), out


def _fake_distribution(root: Path, name: str, version: str) -> Path:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def test_jetson_lean_install_prefers_the_systems_onnxruntime_gpu(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    prefix = tmp_path / "p"
    uninstall_ort = re.compile(r"\[dry-run\] \S+ -m pip uninstall --quiet --yes onnxruntime$", re.M)
    # Without NVIDIA's build the CPU provider is all there is: a warning says how to get the GPU one.
    plain = _run(repo, "--prefix", str(prefix), env=env, platform="jetson")
    pkg = _package_line(plain.stdout)
    assert pkg.endswith("[systemd,vision]'") and "--constraint" in pkg, pkg  # numpy<2 for JetPack's cv2
    assert "numpy<2" in plain.stdout
    assert _torch_line(env) not in plain.stdout and "torch/torchvision" not in plain.stdout  # no torch needed
    assert "uninstall --quiet --yes opencv-python-headless" in plain.stdout  # JetPack's cv2 as before
    assert not uninstall_ort.search(plain.stdout)
    assert "onnxruntime-gpu" in plain.stderr and "CPU" in plain.stderr, plain.stderr
    # With onnxruntime-gpu in the system site, the venv's PyPI onnxruntime is removed so it is imported.
    site = _fake_distribution(tmp_path / "system-site", "onnxruntime-gpu", "1.20.0")
    gpu_env = {**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{site}"}
    gpu = _run(repo, "--prefix", str(prefix), env=gpu_env, platform="jetson")
    assert uninstall_ort.search(gpu.stdout), gpu.stdout
    assert "onnxruntime-gpu 1.20.0" in gpu.stdout
    assert "onnxruntime-gpu" not in gpu.stderr


def test_udev_rule_names_the_arduino_by_usb_id(installed: tuple[Layout, subprocess.CompletedProcess[str]], env: dict[str, str]) -> None:
    lay, result = installed
    rule = lay.udev.read_text()
    assert 'ATTRS{idVendor}=="2341", ATTRS{idProduct}=="0043", SYMLINK+="smartbin-arduino"' in rule
    assert "[prefix mode, skipped] udevadm control --reload-rules" in result.stdout
    other = install_sh("--prefix", str(lay.prefix), "--system-site-packages", "--no-vision", "--arduino-usb", "1A86:7523", env=env)
    assert 'ATTRS{idVendor}=="1a86", ATTRS{idProduct}=="7523"' in lay.udev.read_text(), other.stdout
    install_sh("--prefix", str(lay.prefix), "--system-site-packages", "--no-vision", env=env)  # back to the default
    bad = subprocess.run(["bash", str(INSTALL_SH), "--arduino-usb", "uno"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "VID:PID" in bad.stderr


def test_process_visibility_is_an_installer_choice_kept_across_reinstalls(installed: tuple[Layout, subprocess.CompletedProcess[str]], env: dict[str, str]) -> None:
    lay, _ = installed
    dropin = lay.unit.parent / "smartbin.service.d/20-process-visibility.conf"
    base = ("--prefix", str(lay.prefix), "--system-site-packages", "--no-vision")
    assert not dropin.exists(), "own (the unit's ProtectProc=invisible) on a first install"

    shown = install_sh(*base, "--process-visibility=all", env=env)
    assert "process visibility: all" in shown.stdout
    assert [line for line in dropin.read_text().splitlines() if line and not line.startswith("#")] == [
        "[Service]", "ProtectProc=default"]
    if SYSTEMD_ANALYZE is not None:  # verify loads <unit>.d/*.conf next to the unit
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(lay.unit)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and str(lay.prefix) not in result.stdout + result.stderr, result.stderr
    kept = install_sh("--dry-run", "--prefix", str(lay.prefix), env=env)
    assert "process visibility: all (kept" in kept.stdout

    hidden = install_sh(*base, "--process-visibility", "own", env=env)
    assert "process visibility: own" in hidden.stdout
    assert not dropin.exists()
    for bad_args in (["--process-visibility=some"], ["--uninstall", "--process-visibility=all"]):
        bad = subprocess.run(["bash", str(INSTALL_SH), *bad_args], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "--process-visibility" in bad.stderr


def test_uninstall_keeps_config_and_data_then_purge_removes_them(installed: tuple[Layout, subprocess.CompletedProcess[str]], env: dict[str, str]) -> None:
    lay, _ = installed
    (lay.unit.parent / "smartbin.service.d").mkdir(exist_ok=True)
    own_dropin = lay.unit.parent / "smartbin.service.d/override.conf"
    own_dropin.write_text("[Service]\nEnvironment=FOO=1\n")
    result = install_sh("--uninstall", "--prefix", str(lay.prefix), env=env)
    assert not lay.opt.exists()
    assert not lay.unit.exists()
    assert not lay.udev.exists()
    assert own_dropin.exists(), "a technician's drop-in survives a plain uninstall"
    assert lay.config.exists() and (lay.state / "outbox.db").exists()
    assert "kept" in result.stdout
    # Uninstalling twice is fine.
    install_sh("--uninstall", "--prefix", str(lay.prefix), env=env)
    install_sh("--uninstall", "--purge", "--prefix", str(lay.prefix), env=env)
    assert not lay.etc.exists() and not lay.state.exists()
    assert not own_dropin.parent.exists()
    assert "[prefix mode, skipped] userdel smartbin" in install_sh("--uninstall", "--purge", "--prefix", str(lay.prefix), env=env).stdout


def test_ci_entry_point_runs_exactly_the_readme_test_command() -> None:
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert re.search(r"^exec \./install\.sh --test$", text, re.M)

