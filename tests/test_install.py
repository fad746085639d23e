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
The real installs use --no-vision (torch & co. would need PyPI); the vision-stack logic is checked
through --dry-run on a copy of the checkout whose pyproject.toml has a "vision" extra.
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
    for word in ("--uninstall", "--purge", "--dry-run", "--prefix", "--simulate", "--test", "--system-site-packages", "PYTHON="):
        assert word in result.stdout, word


@pytest.mark.parametrize("args", [["--purge"], ["--bogus"], ["--simulate", "--test"], ["--prefix", "/tmp/x y"], ["--", "-k", "x"]])
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


def _checkout_with_vision_extra(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in ("install.sh", "pyproject.toml", "README.md", "systemd", "config", "models"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name)
        elif src.exists():
            repo.mkdir(exist_ok=True)
            shutil.copy2(src, repo / name)
    py = (repo / "pyproject.toml").read_text()
    if not re.search(r"^vision\s*=", py, re.M):
        py = py.replace("[project.optional-dependencies]\n",
                        '[project.optional-dependencies]\nvision = ["ultralytics", "opencv-python-headless"]\n', 1)
        (repo / "pyproject.toml").write_text(py)
    return repo


def test_vision_extra_switches_on_the_vision_stack(env: dict[str, str], tmp_path: Path) -> None:
    repo = _checkout_with_vision_extra(tmp_path)
    script = str(repo / "install.sh")
    generic = subprocess.run(["bash", script, "--dry-run", "--prefix", str(tmp_path / "p")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert generic.returncode == 0, generic.stderr
    assert "smartbin-daemon[systemd,vision]" in generic.stdout
    torch_line = f"pip install --quiet --no-input --progress-bar off {env['SMARTBIN_PIP_ARGS']} torchvision".replace("  ", " ")
    assert torch_line in generic.stdout
    assert "uninstall --quiet --yes opencv-python" in generic.stdout
    assert "--force-reinstall --no-deps opencv-python-headless" in generic.stdout
    jetson = subprocess.run(["bash", script, "--dry-run", "--prefix", str(tmp_path / "p")], env={**env, "SMARTBIN_PLATFORM": "jetson"},
                            capture_output=True, text=True, timeout=60)
    assert jetson.returncode == 0, jetson.stderr
    assert torch_line not in jetson.stdout, "JetPack's torch must not be replaced from PyPI"
    assert "--constraint" in jetson.stdout
    assert "opencv-python-headless" in jetson.stdout and "uninstall" in jetson.stdout
    without = subprocess.run(["bash", script, "--dry-run", "--no-vision", "--prefix", str(tmp_path / "p")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert without.returncode == 0, without.stderr
    assert "smartbin-daemon[systemd] " in without.stdout and "torchvision" not in without.stdout


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

