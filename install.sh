#!/usr/bin/env bash
# SmartBin installer: production install as a systemd service, uninstall, and the two developer
# entry points of the README (--simulate, --test). Idempotent: run it again to update.
# Targets: Raspberry Pi OS Bookworm (Pi 4/5, Python 3.11), JetPack 6 (Ubuntu 22.04, Python 3.10);
# the dev modes work on any Debian/Ubuntu. Run ./install.sh --help for the modes.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly REPO_DIR
readonly APP_USER=smartbin
readonly UNIT_NAME=smartbin.service
readonly SIM_BROKER_HOST=127.0.0.1
readonly SIM_BROKER_PORT=1883

# Options (set by parse_args).
MODE=install            # install | uninstall | simulate | test
DRY_RUN=0
PURGE=0
PREFIX=""
SYSTEM_SITE=0
NO_VISION=0
WITH_ULTRALYTICS=0      # --with-ultralytics (implied by --test)
ULTRA_WHY=""            # why the "ultralytics" extra is forced
ULTRA=0                 # set by install_package: 1 when the "ultralytics" extra is installed
ARDUINO_USB=2341:0043   # Arduino Uno R3; an Uno R4 is 2341:0069, a CH340 clone 1a86:7523
PROCESS_VISIBILITY=""   # own | all (--process-visibility); empty: keep what is installed (own on a first install)
PASSTHRU=()
ORIG_ARGS=("$@")

# Environment knobs.
PYTHON_FROM_ENV=${PYTHON:+1}
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON=${PYTHON:-python3}
# Extra arguments for every `pip install`, e.g. an offline wheelhouse:
#   SMARTBIN_PIP_ARGS="--no-index --find-links /media/usb/wheels" ./install.sh
read -r -a PIP_EXTRA <<<"${SMARTBIN_PIP_ARGS:-}"
PLATFORM=""             # jetson | pi | generic (override: SMARTBIN_PLATFORM)
SUDO=()
APT_UPDATED=0
CLEANUP=()              # temporary paths removed on exit

cleanup() {
    if ((${#CLEANUP[@]})); then rm -rf -- "${CLEANUP[@]}"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------ output

info() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
Usage: ./install.sh [MODE] [OPTIONS] [-- ARGS]

Modes:
  (none)            Production install (root; re-runs itself with sudo when needed):
                      apt prerequisites, system user "smartbin" (groups dialout, video, gpio),
                      venv /opt/smartbin/venv with the package and its "systemd" and "vision"
                      extras (plus "ultralytics" when needed, see --with-ultralytics),
                      /etc/smartbin/config.yaml (only if absent: an existing config is never
                      overwritten), models to /opt/smartbin/models, unit
                      /etc/systemd/system/smartbin.service, then `systemctl enable` + `restart`
                      (skipped when systemd is not PID 1, and the start is skipped while the
                      config does not validate yet).
                      Re-run it to update an installation.
  --uninstall       Stop, disable and remove the unit, the venv and /opt/smartbin. Keeps
                      /etc/smartbin (config, secrets) and /var/lib/smartbin (data).
  --uninstall --purge
                    Also remove /etc/smartbin, /var/lib/smartbin and the user "smartbin".
  --simulate        Developer demo (README): apt deps, ./.venv (editable install), a local
                      mosquitto on 127.0.0.1:1883 if nothing listens there, then runs the
                      daemon in the foreground with config/simulation.yaml (lean "vision" stack
                      unless that config needs ultralytics). ARGS after -- are passed to
                      `smartbin-daemon run`.
  --test            Developer/CI test run (README, .ci/run): apt deps (mosquitto, openssl, the AVR
                      toolchain and simavr for the firmware tests, ...),
                      ./.venv with the "test", "vision" and "ultralytics" extras (torch first),
                      then `python -m pytest ARGS`; exits with pytest's status.
                      Example: ./install.sh --test -- -k mqtt -x

Options:
  --dry-run, -n     Print every action (commands, file writes) and change nothing.
  --prefix DIR      Root-less install below DIR (DIR/opt/smartbin, DIR/etc/smartbin,
                      DIR/var/lib/smartbin, DIR/etc/systemd/system); paths inside the installed
                      unit and config are rewritten to DIR. apt, user creation and systemctl are
                      only printed. Works with --uninstall [--purge] too.
  --system-site-packages
                    Create the venv with access to the system's Python packages (always on for
                      Jetson, where JetPack provides torch, torchvision and OpenCV, and NVIDIA
                      onnxruntime-gpu; on a Pi needed for apt-only packages such as
                      python3-picamera2).
  --no-vision       Leave out the camera/detection stack (the "vision" and "ultralytics" extras):
                      for a bin without a camera, or a quick install.
  --with-ultralytics
                    Add the "ultralytics" extra (ultralytics + onnx, and torch through
                      `pip install torchvision`, ~5.5 GB with CUDA on x86; JetPack's torch on a
                      Jetson) to the lean "vision" extra (onnxruntime, OpenCV headless, numpy).
                      Needed for .pt, TensorRT .engine, NCNN and OpenVINO models and for
                      smartbin-train. Automatic when the config's detector is enabled with
                      backend "ultralytics", or "auto" and a model that is not .onnx; the config
                      read is config/simulation.yaml for --simulate, /etc/smartbin/config.yaml
                      (or, before it exists, config/smartbin.yaml) for the install.
  --arduino-usb VID:PID
                    USB id for the udev rule that creates /dev/smartbin-arduino (default 2341:0043,
                    an Arduino Uno R3; see lsusb).
  --process-visibility own|all
                    Which processes the daemon may see (the `health/processes` request): "own"
                      (the unit's ProtectProc=invisible: only the smartbin user's processes; the
                      answer says so) or "all" (drop-in 20-process-visibility.conf with
                      ProtectProc=default: every process, at the cost of the daemon reading other
                      processes' names and command lines). Default: keep the installed choice
                      (own on a first install).
  -h, --help        This help.

The dev .venv is only re-synced (pip) when pyproject.toml, the extras, the platform or the Python
version change; delete .venv/.smartbin-install-stamp-* to force it. Production installs always
reinstall the package.

Environment:
  PYTHON=...            Interpreter for the venv (default: python3 from PATH; for the production
                          install /usr/bin/python3, because the service cannot see /home or /root).
  SMARTBIN_PIP_ARGS=... Extra arguments for every pip install (e.g. --no-index --find-links DIR).
  SMARTBIN_PLATFORM=... Force platform detection: jetson | pi | generic.
EOF
}

# ------------------------------------------------------------------------------------ actions
# Everything that changes the system goes through run/sys_run/write_file, so --dry-run can
# print it instead.

quote() {
    local out="" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+="$a "; else out+="${a@Q} "; fi
    done
    printf '%s' "${out% }"
}

# run CMD...: run it, or print it in dry-run mode.
run() {
    if ((DRY_RUN)); then
        printf '    [dry-run] %s\n' "$(quote "$@")"
    else
        "$@"
    fi
}

# sys_run CMD...: a system-level action (apt, useradd, systemctl, ownership). Uses sudo when not
# root; in --prefix mode it is only printed, because a prefix install must not touch the system.
sys_run() {
    if [[ -n $PREFIX ]]; then
        printf '    [prefix mode, skipped] %s\n' "$(quote "$@")"
    else
        run "${SUDO[@]}" "$@"
    fi
}

# write_file SRC DST MODE [OWNER:GROUP]: install a file; with --prefix, absolute smartbin paths
# inside it are rewritten to the prefix.
write_file() {
    local src=$1 dst=$2 mode=$3 owner=${4:-}
    local -a own=()
    if [[ -n $owner && -z $PREFIX ]]; then own=(-o "${owner%%:*}" -g "${owner##*:}"); fi
    if [[ -n $PREFIX ]]; then
        if ((DRY_RUN)); then
            printf '    [dry-run] write %s (from %s, paths rewritten to %s)\n' "$dst" "${src#"$REPO_DIR"/}" "$PREFIX"
            return
        fi
        local tmp
        tmp=$(mktemp)
        rewrite_paths <"$src" >"$tmp"
        install -D -m "$mode" "$tmp" "$dst"
        rm -f "$tmp"
    else
        run install -D -m "$mode" "${own[@]}" "$src" "$dst"
    fi
}

# make_dir DIR MODE [OWNER:GROUP]
make_dir() {
    local dir=$1 mode=$2 owner=${3:-}
    if [[ -n $owner && -z $PREFIX ]]; then
        run install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$dir"
    else
        run install -d -m "$mode" "$dir"
    fi
}

# remove_path PATH: rm -rf with a guard against empty or top-level paths.
remove_path() {
    local p=$1
    case $p in "" | / | /opt | /etc | /var | /var/lib | /usr | "${HOME:-/}") die "refusing to remove '$p'" ;; esac
    if [[ -e $p || -L $p ]]; then
        run rm -rf -- "$p"
    fi
}

# rewrite_paths: stdin -> stdout with /opt/smartbin, /etc/smartbin, /var/lib/smartbin moved below
# $PREFIX (only where such a path starts, e.g. after '=', ':', a space or a quote).
rewrite_paths() {
    sed -E "s#(^|[^[:alnum:]_./-])(/opt/smartbin|/etc/smartbin|/var/lib/smartbin)#\\1${PREFIX}\\2#g"
}

# ------------------------------------------------------------------------------------ setup

parse_args() {
    local mode_set=""
    while (($#)); do
        case $1 in
            --uninstall | --simulate | --test)
                [[ -z $mode_set ]] || die "$mode_set and $1 cannot be combined"
                mode_set=$1
                MODE=${1#--}
                ;;
            --purge) PURGE=1 ;;
            --dry-run | -n) DRY_RUN=1 ;;
            --prefix)
                (($# >= 2)) || die "--prefix needs a directory"
                PREFIX=$2
                shift
                ;;
            --prefix=*) PREFIX=${1#--prefix=} ;;
            --system-site-packages) SYSTEM_SITE=1 ;;
            --no-vision) NO_VISION=1 ;;
            --with-ultralytics) WITH_ULTRALYTICS=1 ULTRA_WHY="--with-ultralytics" ;;
            --arduino-usb)
                (($# >= 2)) || die "--arduino-usb needs VID:PID"
                ARDUINO_USB=$2
                shift
                ;;
            --arduino-usb=*) ARDUINO_USB=${1#--arduino-usb=} ;;
            --process-visibility)
                (($# >= 2)) || die "--process-visibility needs own or all"
                PROCESS_VISIBILITY=$2
                shift
                ;;
            --process-visibility=*) PROCESS_VISIBILITY=${1#--process-visibility=} ;;
            -h | --help)
                usage
                exit 0
                ;;
            --)
                shift
                PASSTHRU=("$@")
                break
                ;;
            *) die "unknown argument: $1 (see ./install.sh --help)" ;;
        esac
        shift
    done
    if ((PURGE)) && [[ $MODE != uninstall ]]; then die "--purge only goes with --uninstall"; fi
    if ((WITH_ULTRALYTICS)) && [[ $MODE == uninstall ]]; then die "--with-ultralytics does not go with --uninstall"; fi
    if ((WITH_ULTRALYTICS && NO_VISION)); then die "--with-ultralytics and --no-vision cannot be combined"; fi
    if ((NO_VISION)) && [[ $MODE == test ]]; then die "--no-vision does not go with --test (the tests need the vision stack)"; fi
    [[ $ARDUINO_USB =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$ ]] || die "--arduino-usb: expected VID:PID in hex, e.g. 2341:0043"
    ARDUINO_USB=${ARDUINO_USB,,}
    case $PROCESS_VISIBILITY in "" | own | all) ;; *) die "--process-visibility: expected own or all, got '$PROCESS_VISIBILITY'" ;; esac
    if [[ -n $PROCESS_VISIBILITY && $MODE != install ]]; then die "--process-visibility only goes with the install mode"; fi
    if ((${#PASSTHRU[@]})) && [[ $MODE != simulate && $MODE != test ]]; then
        die "arguments after -- only go with --simulate or --test"
    fi
    if [[ -n $PREFIX ]]; then
        [[ $MODE == install || $MODE == uninstall ]] || die "--prefix only goes with the install and --uninstall modes"
        PREFIX=$(realpath -m -- "$PREFIX")
        # The prefix ends up in ExecStart=/Environment= lines and in sed replacements.
        [[ $PREFIX =~ ^/[A-Za-z0-9_./+-]*$ ]] || die "--prefix: use a path of letters, digits and _ . / + - only"
        [[ $PREFIX != / ]] || die "--prefix / is the normal install; leave --prefix out"
    fi
}

set_paths() {
    OPT_DIR=$PREFIX/opt/smartbin
    VENV_DIR=$OPT_DIR/venv
    MODELS_DIR=$OPT_DIR/models
    SHARE_DIR=$OPT_DIR/share
    ETC_DIR=$PREFIX/etc/smartbin
    CONFIG_FILE=$ETC_DIR/config.yaml
    STATE_DIR=$PREFIX/var/lib/smartbin
    UNIT_DIR=$PREFIX/etc/systemd/system
    UNIT_FILE=$UNIT_DIR/$UNIT_NAME
    DROPIN_DIR=$UNIT_DIR/$UNIT_NAME.d
    UDEV_RULE=$PREFIX/etc/udev/rules.d/99-smartbin-arduino.rules
    JETSON_GPIO_RULE=$PREFIX/etc/udev/rules.d/99-smartbin-jetson-gpio.rules
    DEV_VENV=$REPO_DIR/.venv
}

# Production modes need root; re-run through sudo (dry-run and --prefix do not).
ensure_root_or_sudo() {
    local need_root=0
    if [[ $MODE == install || $MODE == uninstall ]] && [[ -z $PREFIX ]] && ((!DRY_RUN)); then need_root=1; fi
    if ((EUID == 0)); then return; fi
    if ((need_root)); then
        command -v sudo >/dev/null || die "run as root (sudo is not installed)"
        info "root needed: re-running with sudo"
        local -a env_args=()
        local var
        for var in PYTHON SMARTBIN_PIP_ARGS SMARTBIN_PLATFORM; do
            if [[ $var == PYTHON && -z $PYTHON_FROM_ENV ]]; then continue; fi
            if [[ -n ${!var:-} ]]; then env_args+=("$var=${!var}"); fi
        done
        exec sudo env "${env_args[@]}" "$REPO_DIR/install.sh" "${ORIG_ARGS[@]}"
    fi
    # Dev modes run as the user and use sudo only for apt/systemctl.
    if command -v sudo >/dev/null; then SUDO=(sudo); fi
}

detect_platform() {
    PLATFORM=${SMARTBIN_PLATFORM:-}
    if [[ -z $PLATFORM ]]; then
        local model=""
        local compatible=""
        if [[ -r /proc/device-tree/model ]]; then model=$(tr -d '\0' </proc/device-tree/model); fi
        if [[ -r /proc/device-tree/compatible ]]; then compatible=$(tr '\0' ' ' </proc/device-tree/compatible); fi
        if [[ -e /etc/nv_tegra_release || $model == *"NVIDIA Jetson"* || $compatible == *"nvidia,tegra"* ]]; then
            PLATFORM=jetson
        elif [[ $model == *"Raspberry Pi"* ]]; then
            PLATFORM=pi
        else
            PLATFORM=generic
        fi
    fi
    case $PLATFORM in jetson | pi | generic) ;; *) die "SMARTBIN_PLATFORM must be jetson, pi or generic" ;; esac
}

systemd_running() { [[ -d /run/systemd/system ]]; }

# ------------------------------------------------------------------------------------ python

# The production venv lives in /opt and is run by systemd with ProtectHome=yes, so its base
# interpreter must not live in /home, /root or /run/user (pyenv, conda, ~/.local builds).
choose_python() {
    if [[ $MODE == install && -z $PREFIX && -z $PYTHON_FROM_ENV && -x /usr/bin/python3 ]]; then
        PYTHON=/usr/bin/python3
    fi
}

python_found() { command -v "$PYTHON" >/dev/null 2>&1; }

check_python() {
    python_found || die "$PYTHON not found (set PYTHON=/path/to/python3)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$PYTHON is $("$PYTHON" -V 2>&1); smartbin-daemon needs Python >= 3.10"
    if [[ $MODE == install && -z $PREFIX ]]; then
        local real
        real=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
        case $real in
            /home/* | /root/* | /run/user/*)
                die "$PYTHON resolves to $real, which the service cannot see (ProtectHome=yes); use PYTHON=/usr/bin/python3"
                ;;
        esac
    fi
}

# ------------------------------------------------------------------------------------ apt

pkg_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }

# Packages needed to create a venv and build systemd-python (an sdist) for $PYTHON.
python_build_packages() {
    if ! python_found; then
        echo python3 python3-venv python3-dev
    else
        "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || echo python3-venv
        "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
            echo python3-dev
    fi
    echo libsystemd-dev pkg-config gcc
}

# ensure_apt_packages PKG...: install the missing ones (apt-get update once, only if needed).
ensure_apt_packages() {
    local -a missing=()
    local p
    if ! command -v dpkg-query >/dev/null; then
        if [[ $MODE == install && -z $PREFIX ]]; then die "not a Debian/Ubuntu system (no dpkg); install by hand: $*"; fi
        warn "no dpkg/apt here; make sure these are installed: $*"
        return
    fi
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        info "apt packages present: $*"
        return
    fi
    info "missing apt packages: ${missing[*]}"
    if ((APT_UPDATED == 0)); then
        sys_run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    sys_run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ------------------------------------------------------------------------------------ venv + pip

venv_python_version() { "$1/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# ensure_venv DIR: create it, or keep it when it is usable; recreate it when broken or built for
# another Python minor version.
ensure_venv() {
    local dir=$1 want_sys=$SYSTEM_SITE
    if [[ $PLATFORM == jetson ]]; then want_sys=1; fi
    local -a args=()
    if ((want_sys)); then args+=(--system-site-packages); fi
    local py_ver venv_ver
    py_ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ -x $dir/bin/python ]] && venv_ver=$(venv_python_version "$dir"); then
        if [[ $venv_ver != "$py_ver" ]]; then
            warn "$dir was made with Python $venv_ver, $PYTHON is $py_ver: recreating it"
            run "$PYTHON" -m venv --clear "${args[@]}" "$dir"
            return
        fi
        local have_sys=0
        if grep -Eqi '^include-system-site-packages *= *true' "$dir/pyvenv.cfg"; then have_sys=1; fi
        if ((have_sys != want_sys)); then
            info "venv $dir: switching include-system-site-packages to $([[ $want_sys == 1 ]] && echo true || echo false)"
            run "$PYTHON" -m venv "${args[@]}" "$dir"
        else
            info "venv $dir: present (Python $venv_ver)"
        fi
    else
        if [[ -e $dir ]]; then
            warn "$dir exists but is not a working venv: recreating it"
            run "$PYTHON" -m venv --clear "${args[@]}" "$dir"
        else
            info "creating venv $dir ($("$PYTHON" -V 2>&1)${args[*]:+, ${args[*]}})"
            run "$PYTHON" -m venv "${args[@]}" "$dir"
        fi
    fi
}

# pip_install VENV ARGS...: quiet, but errors and warnings still show.
pip_install() {
    local venv=$1
    shift
    run "$venv/bin/python" -m pip install --quiet --no-input --progress-bar off "${PIP_EXTRA[@]}" "$@"
}

pip_has() { "$1/bin/python" -m pip show --quiet "$2" >/dev/null 2>&1; }

pip_version_of() { "$1/bin/python" -m pip show "$2" 2>/dev/null | sed -n 's/^Version: //p'; }

# has_extra NAME: is there a `NAME = [...]` entry in [project.optional-dependencies]?
has_extra() {
    awk -v name="$1" '
        /^[[:space:]]*\[/ { in_extras = ($0 ~ /^[[:space:]]*\[project\.optional-dependencies\][[:space:]]*$/) ; next }
        in_extras && $0 ~ ("^[[:space:]]*\"?" name "\"?[[:space:]]*=") { found = 1 }
        END { exit !found }
    ' "$REPO_DIR/pyproject.toml"
}

vision_enabled() { ((!NO_VISION)) && has_extra vision; }

# stage_source DIR: the files a package build needs (everything but VCS, venvs, runtime data,
# models and caches).
stage_source() {
    tar -C "$REPO_DIR" --exclude=./.git --exclude=./.venv --exclude=./var --exclude=./models \
        --exclude=./build --exclude=./dist --exclude=./runs --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=.mypy_cache \
        --exclude=.ruff_cache -cf - . | tar -C "$1" -xf -
}

# What the dev venv was last synced from; pip is skipped while it matches.
install_stamp() {
    { cat "$REPO_DIR/pyproject.toml"; echo "extras=$1 platform=$PLATFORM python=$("$PYTHON" -V 2>&1) pip=${PIP_EXTRA[*]}"; } |
        sha256sum | cut -d' ' -f1
}

# Reads the config file argv[1] and prints "ultralytics REASON" when its detector needs the
# "ultralytics" extra, "lean REASON" when the "vision" extra (onnxruntime) is enough, or
# "unreadable REASON". Same rule as the daemon (config.resolve_backend): an enabled detector needs
# ultralytics with backend "ultralytics", or with backend "auto" (the default) and a model that is not
# an .onnx file (.pt, a TensorRT .engine, an NCNN/OpenVINO folder).
readonly DETECTOR_NEEDS_PY='
import pathlib, sys
import yaml
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
except Exception as exc:
    print("unreadable", " ".join(str(exc).split()))
    sys.exit()
det = cfg.get("detector") if isinstance(cfg, dict) else None
det = det if isinstance(det, dict) else {}
enabled = det.get("enabled", False)
if isinstance(enabled, str):
    enabled = enabled.strip().lower() in ("1", "true", "yes", "on")
backend = det.get("backend") or "auto"
model = str(det.get("model") or "/opt/smartbin/models/smartbin-waste-s.onnx")
if not enabled:
    print("lean", "detector.enabled is false")
elif backend == "ultralytics":
    print("ultralytics", "detector.backend is ultralytics")
elif backend == "onnxruntime":
    print("lean", "detector.backend is onnxruntime")
elif pathlib.PurePath(model).suffix.lower() == ".onnx":
    print("lean", f"detector.model {model} is ONNX (backend {backend})")
else:
    print("ultralytics", f"detector.model {model} is not ONNX (backend {backend})")
'

# decide_ultralytics VENV CONFIG: sets ULTRA to 1 (add the "ultralytics" extra and torch) or 0 (the
# lean "vision" extra only) and says which and why. Leaves ULTRA empty when CONFIG can only be read
# after the base install: it is read with the venv's PyYAML (a base dependency), which a new venv
# does not have yet. A dry run, which installs nothing, previews the choice with $PYTHON's PyYAML.
decide_ultralytics() {
    local venv=$1 config=$2 py verdict word reason
    local shown=${config#"$REPO_DIR"/}
    ULTRA=""
    if ! has_extra ultralytics; then
        ULTRA=0 # a checkout without the extra: "vision" is the whole stack
        return 0
    fi
    if ((WITH_ULTRALYTICS)); then
        ULTRA=1
        info "vision: adding the ultralytics extra (ultralytics, onnx, torch): $ULTRA_WHY"
        return 0
    fi
    if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import yaml' >/dev/null 2>&1; then
        py=$venv/bin/python
    elif ((DRY_RUN)) && "$PYTHON" -c 'import yaml' >/dev/null 2>&1; then
        py=$PYTHON
    elif ((DRY_RUN)); then
        ULTRA=0
        info "vision: lean stack (dry run: no PyYAML here to read $shown; the real run reads it after the base install)"
        return 0
    else
        return 0
    fi
    verdict=$("$py" -c "$DETECTOR_NEEDS_PY" "$config" 2>&1) || verdict="unreadable $verdict"
    read -r word reason <<<"$verdict"
    case $word in
        ultralytics)
            ULTRA=1
            info "vision: adding the ultralytics extra (ultralytics, onnx, torch): $shown: $reason"
            ;;
        lean)
            ULTRA=0
            info "vision: lean stack (onnxruntime, no ultralytics/torch): $shown: $reason"
            note "a .pt/.engine/NCNN/OpenVINO model or smartbin-train needs --with-ultralytics"
            ;;
        *)
            ULTRA=0
            warn "cannot read the detector settings from $shown (${reason:-$verdict}): installing the lean vision stack; add --with-ultralytics for a .pt/.engine/NCNN/OpenVINO model"
            ;;
    esac
}

# pip_install_package VENV EDITABLE SRC EXTRAS [PIP_ARGS...]
pip_install_package() {
    local venv=$1 editable=$2 src=$3 extras=$4
    shift 4
    info "pip install smartbin-daemon[$extras] into $venv$([[ $editable == 1 ]] && echo ' (editable)')"
    if [[ $editable == 1 ]]; then
        pip_install "$venv" "$@" -e "${src}[${extras}]"
    else
        pip_install "$venv" "$@" "${src}[${extras}]"
    fi
}

# install_package VENV EDITABLE EXTRAS [CONFIG]: the smartbin-daemon package from this checkout, plus
# the vision stack when pyproject.toml has a "vision" extra (and --no-vision is not given): the lean
# "vision" extra, and the "ultralytics" extra with torch when --with-ultralytics or --test ask for it
# or CONFIG's detector needs it (decide_ultralytics).
install_package() {
    local venv=$1 editable=$2 extras=$3 config=${4:-}
    local -a pins=()
    ULTRA=0
    if vision_enabled; then
        extras+=",vision"
        decide_ultralytics "$venv" "$config"
    fi
    if [[ $ULTRA == 1 ]]; then extras+=",ultralytics"; fi
    local stamp_file=$venv/.smartbin-install-stamp-${extras//,/-} stamp
    stamp=$(install_stamp "$extras")
    if [[ -n $ULTRA && $editable == 1 && -f $stamp_file && $(<"$stamp_file") == "$stamp" ]] &&
        "$venv/bin/python" -c 'import smartbin_daemon' >/dev/null 2>&1; then
        info "$venv is in sync with pyproject.toml ([$extras]): skipping pip"
        return 0
    fi
    local src=$REPO_DIR
    if [[ $editable != 1 ]]; then
        # Built from a temporary copy: setuptools writes build/ and *.egg-info into the source
        # tree, which would leave root-owned files in the checkout (or fail on a read-only one).
        if ((DRY_RUN)); then
            src="<copy of $REPO_DIR>"
            note "[dry-run] copy the checkout (without .git, .venv, var, models) to a temporary build directory"
        else
            src=$(mktemp -d "${TMPDIR:-/tmp}/smartbin-build.XXXXXX")
            CLEANUP+=("$src")
            stage_source "$src"
        fi
    fi
    if vision_enabled; then vision_prepare "$venv" pins; fi
    local installed=0
    if [[ -z $ULTRA ]]; then
        # A new venv: the base set first, then the config is read with the venv's PyYAML.
        info "vision: ${config#"$REPO_DIR"/} is read once the venv has PyYAML: base install first"
        pip_install_package "$venv" "$editable" "$src" "$extras" "${pins[@]}"
        installed=1
        decide_ultralytics "$venv" "$config"
        [[ -n $ULTRA ]] || die "$venv/bin/python cannot import yaml after the install"
        if [[ $ULTRA == 1 ]]; then
            extras+=",ultralytics"
            installed=0
        fi
    fi
    if ((!installed)); then
        if [[ $ULTRA == 1 ]]; then ultralytics_prepare "$venv"; fi
        pip_install_package "$venv" "$editable" "$src" "$extras" "${pins[@]}"
    fi
    if [[ $editable != 1 ]] && ((!DRY_RUN)); then rm -rf -- "$src"; fi
    if vision_enabled; then vision_finish "$venv"; fi
    if [[ $editable == 1 ]]; then
        stamp_file=$venv/.smartbin-install-stamp-${extras//,/-}
        stamp=$(install_stamp "$extras")
        if ((DRY_RUN)); then note "[dry-run] write $stamp_file"; else echo "$stamp" >"$stamp_file"; fi
    fi
    return 0
}

# ------------------------------------------------------------------------------------ vision stack
# Active only when pyproject.toml has a "vision" extra and --no-vision is not given.
#   "vision" (always): onnxruntime, opencv-python-headless, numpy: the daemon's ONNX path.
#   "ultralytics" (--with-ultralytics, --test, or a config whose model is not ONNX): ultralytics and
#     onnx, plus torch, which is not in the extra:
#   generic (x86, Pi aarch64): torch comes from PyPI through `pip install torchvision` (which
#     pulls the matching torch); ultralytics drags in opencv-python (GUI build, needs X11
#     libraries), which is replaced by opencv-python-headless afterwards.
#   jetson: torch, torchvision and OpenCV (CUDA/GStreamer builds) come from JetPack via
#     --system-site-packages and must never be replaced from PyPI: numpy is kept below 2 (JetPack's
#     builds use the numpy 1.x ABI) with a constraints file, to which the ultralytics extra adds
#     torch/torchvision pinned to the system versions (so pip can only accept them); the PyPI
#     OpenCV wheels that the extras pull in are removed from the venv so that JetPack's cv2 is the
#     one imported, and so is PyPI's CPU-only onnxruntime when NVIDIA's onnxruntime-gpu (CUDA and
#     TensorRT providers) is installed system-wide.

JETSON_CONSTRAINTS=""
JETSON_PINS=""

write_jetson_constraints() {
    info "Jetson: pinning to JetPack's packages: $(tr '\n' ' ' <<<"$JETSON_PINS")"
    if ((DRY_RUN)); then
        note "[dry-run] write $JETSON_CONSTRAINTS"
    else
        printf '%s' "$JETSON_PINS" >"$JETSON_CONSTRAINTS"
    fi
}

# vision_prepare VENV ARRAY_NAME: runs before the package install; puts extra pip arguments for
# the package installs into the named array.
vision_prepare() {
    local venv=$1
    local -n _out=$2
    case $(uname -m) in
        armv7l | armv6l | i?86) die "the vision stack (onnxruntime, torch) needs a 64-bit OS; this is $(uname -m) (--no-vision leaves it out)" ;;
    esac
    [[ $PLATFORM == jetson ]] || return 0
    JETSON_CONSTRAINTS=$venv/smartbin-jetson-constraints.txt
    JETSON_PINS="numpy<2"$'\n'
    _out=(--constraint "$JETSON_CONSTRAINTS")
    if ((DRY_RUN)) && [[ ! -x $venv/bin/python ]]; then
        note "[dry-run] would pin numpy<2 in $JETSON_CONSTRAINTS"
        return
    fi
    "$venv/bin/python" -c 'import cv2' 2>/dev/null ||
        warn "Jetson: no system OpenCV (import cv2 failed); install JetPack's OpenCV (apt: nvidia-opencv)"
    if [[ $ULTRA != 1 ]]; then write_jetson_constraints; fi # else ultralytics_prepare writes it, torch pins included
}

# ultralytics_prepare VENV: runs before the install of the "ultralytics" extra: torch.
ultralytics_prepare() {
    local venv=$1
    if [[ $PLATFORM != jetson ]]; then
        info "ultralytics: torch via pip install torchvision"
        pip_install "$venv" torchvision
        return
    fi
    if ((DRY_RUN)) && [[ ! -x $venv/bin/python ]]; then
        note "[dry-run] would pin torch/torchvision to JetPack's versions in $JETSON_CONSTRAINTS"
        return
    fi
    local pkg ver
    for pkg in torch torchvision; do
        ver=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null) ||
            die "Jetson: $pkg is not installed system-wide. Install NVIDIA's PyTorch for JetPack (and a matching torchvision) for the system python3 first; it must not come from PyPI. (The lean ONNX Runtime stack needs neither: leave out --with-ultralytics and use an .onnx model.)"
        JETSON_PINS+="$pkg==$ver"$'\n'
    done
    write_jetson_constraints
}

# jetson_onnxruntime VENV: NVIDIA's onnxruntime-gpu for JetPack is not on PyPI; when it is installed
# system-wide, the PyPI onnxruntime (CPU only) that the "vision" extra put into the venv would shadow
# it, so that one is removed (both wheels ship the same "onnxruntime" package).
jetson_onnxruntime() {
    local venv=$1 gpu
    if gpu=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))' 2>/dev/null); then
        if ((DRY_RUN)) || pip_has "$venv" onnxruntime; then
            info "Jetson: removing PyPI onnxruntime from the venv (the system's onnxruntime-gpu $gpu is used)"
            run "$venv/bin/python" -m pip uninstall --quiet --yes onnxruntime
        fi
    else
        warn "Jetson: no onnxruntime-gpu for $PYTHON: ONNX models run on onnxruntime's CPU provider only (no CUDA/TensorRT)."
        warn "  Install NVIDIA's onnxruntime-gpu wheel for your JetPack and Python system-wide (Jetson Zoo: https://elinux.org/Jetson_Zoo#ONNX_Runtime, or the Jetson AI Lab pip index), e.g. sudo $PYTHON -m pip install onnxruntime_gpu-<version>-cp310-cp310-linux_aarch64.whl, then re-run install.sh."
    fi
}

# vision_finish VENV: runs after the package install.
vision_finish() {
    local venv=$1
    if [[ $PLATFORM == jetson ]]; then
        local pkg
        for pkg in opencv-python opencv-python-headless opencv-contrib-python; do
            if ((DRY_RUN)) || pip_has "$venv" "$pkg"; then
                info "Jetson: removing PyPI $pkg from the venv (JetPack's cv2 is used)"
                run "$venv/bin/python" -m pip uninstall --quiet --yes "$pkg"
            fi
        done
        jetson_onnxruntime "$venv"
        if ((!DRY_RUN)); then
            local check='import cv2, onnxruntime as ort
print("    cv2", cv2.__version__, "from", cv2.__file__)
print("    onnxruntime", ort.__version__, "from", ort.__file__, "providers:", ", ".join(ort.get_available_providers()))'
            if [[ $ULTRA == 1 ]]; then
                check+='
import torch
print("    torch", torch.__version__, "CUDA available:", torch.cuda.is_available())'
            fi
            "$venv/bin/python" -c "$check" ||
                warn "Jetson: importing cv2/onnxruntime$([[ $ULTRA == 1 ]] && echo /torch) from the venv failed"
        fi
        return 0
    fi
    # ultralytics requires opencv-python; both wheels ship the same cv2 package, so removing
    # the GUI one deletes files of the headless one: reinstall that (same version, no deps).
    # The lean "vision" extra only has the headless one.
    if [[ $ULTRA == 1 ]] && { ((DRY_RUN)) || pip_has "$venv" opencv-python; }; then
        local ver
        ver=$(pip_version_of "$venv" opencv-python-headless || true)
        info "vision: replacing opencv-python with opencv-python-headless${ver:+ $ver}"
        run "$venv/bin/python" -m pip uninstall --quiet --yes opencv-python
        pip_install "$venv" --force-reinstall --no-deps "opencv-python-headless${ver:+==$ver}"
    fi
}

# ------------------------------------------------------------------------------------ install

ensure_user_and_groups() {
    local g
    for g in dialout video gpio; do
        if ! getent group "$g" >/dev/null; then
            info "creating group $g"
            sys_run groupadd --system "$g"
        fi
    done
    if ! getent passwd "$APP_USER" >/dev/null; then
        info "creating system user $APP_USER (home /var/lib/smartbin, no login)"
        sys_run useradd --system --user-group --home-dir /var/lib/smartbin --no-create-home \
            --shell /usr/sbin/nologin --comment "SmartBin daemon" "$APP_USER"
    fi
    # For `sudo -u smartbin ...` debugging; the unit sets the same groups itself.
    local have
    have=" $(id -nG "$APP_USER" 2>/dev/null || true) "
    for g in dialout video gpio; do
        [[ $have == *" $g "* ]] || sys_run usermod --append --groups "$g" "$APP_USER"
    done
}

install_dirs() {
    make_dir "$OPT_DIR" 0755
    make_dir "$ETC_DIR" 0750 "root:$APP_USER"
    make_dir "$STATE_DIR" 0750 "$APP_USER:$APP_USER"
}

# The config is the technician's: installed once, never overwritten. The current example is
# always available as /opt/smartbin/share/config.example.yaml for comparison.
install_config() {
    local src=$REPO_DIR/config/smartbin.yaml
    if [[ ! -f $src ]]; then
        warn "config/smartbin.yaml missing in the checkout; $CONFIG_FILE not installed"
        return
    fi
    write_file "$src" "$SHARE_DIR/config.example.yaml" 0644
    if [[ -e $CONFIG_FILE ]]; then
        info "keeping existing $CONFIG_FILE (never overwritten; new example: $SHARE_DIR/config.example.yaml)"
    else
        info "installing $CONFIG_FILE (edit it: mqtt.host, credentials, TLS files)"
        write_file "$src" "$CONFIG_FILE" 0640 "root:$APP_USER"
    fi
}

# Models shipped in the checkout go to /opt/smartbin/models: read-only for the service, owned by
# the installer, replaced on every install/update and removed by --uninstall. Anything the daemon
# produces itself (e.g. retrained models) belongs in /var/lib/smartbin.
install_models() {
    local src=$REPO_DIR/models
    local -a files=()
    if [[ -d $src ]]; then mapfile -t files < <(find "$src" -type f ! -name '.*' | sort); fi
    info "installing ${#files[@]} model file(s) to $MODELS_DIR"
    remove_path "$MODELS_DIR"
    make_dir "$MODELS_DIR" 0755
    local f rel
    for f in "${files[@]}"; do
        rel=${f#"$src"/}
        if head -c 64 "$f" | grep -q '^version https://git-lfs'; then
            warn "models/$rel is a Git LFS pointer, not the model (run: git lfs pull)"
        fi
        run install -D -m 0644 "$f" "$MODELS_DIR/$rel"
    done
}

install_docs() {
    if [[ -f $REPO_DIR/README.md ]]; then run install -D -m 0644 "$REPO_DIR/README.md" "$OPT_DIR/README.md"; fi
    local f
    for f in smartbin.service jetson.conf mqtt-credential.conf process-visibility.conf; do
        write_file "$REPO_DIR/systemd/$f" "$SHARE_DIR/systemd/$f" 0644
    done
}

install_unit() {
    info "installing $UNIT_FILE"
    write_file "$REPO_DIR/systemd/$UNIT_NAME" "$UNIT_FILE" 0644
    if [[ $PLATFORM == jetson ]]; then
        info "Jetson: installing drop-in $DROPIN_DIR/10-jetson.conf"
        write_file "$REPO_DIR/systemd/jetson.conf" "$DROPIN_DIR/10-jetson.conf" 0644
    fi
    install_process_visibility
}

# ProtectProc= of the unit: "own" (the unit's invisible) or "all" (our drop-in sets default).
install_process_visibility() {
    local dropin=$DROPIN_DIR/20-process-visibility.conf choice=$PROCESS_VISIBILITY
    if [[ -z $choice ]]; then
        if [[ -e $dropin ]]; then choice=all; else choice=own; fi
        info "process visibility: $choice (kept; change it with --process-visibility=own|all)"
    else
        info "process visibility: $choice"
    fi
    if [[ $choice == all ]]; then
        write_file "$REPO_DIR/systemd/process-visibility.conf" "$dropin" 0644
    else
        remove_path "$dropin"
    fi
}

# A stable /dev/smartbin-arduino symlink for the configured USB VID:PID (config: arduino.port).
install_udev_rule() {
    local vid=${ARDUINO_USB%%:*} pid=${ARDUINO_USB##*:} tmp
    info "installing udev rule $UDEV_RULE (/dev/smartbin-arduino for USB $vid:$pid)"
    tmp=$(mktemp)
    CLEANUP+=("$tmp")
    cat >"$tmp" <<RULE
# Installed by smartbin install.sh: a stable name for the bin's Arduino, whatever ttyACM/ttyUSB number
# it gets. Change the board with: ./install.sh --arduino-usb VID:PID (see lsusb).
SUBSYSTEM=="tty", ATTRS{idVendor}=="$vid", ATTRS{idProduct}=="$pid", SYMLINK+="smartbin-arduino", GROUP="dialout", MODE="0660"
RULE
    write_file "$tmp" "$UDEV_RULE" 0644
    if [[ -n $PREFIX ]] || command -v udevadm >/dev/null 2>&1; then
        sys_run udevadm control --reload-rules
        sys_run udevadm trigger --subsystem-match=tty --action=add
    fi
}

# Jetson GPIO (gpio.pin_factory: auto/jetson): NVIDIA's Jetson.GPIO in the venv (JetPack's system copy
# through --system-site-packages, else from PyPI) and its udev rule, which gives the `gpio` group the
# GPIO character devices and the PWM sysfs files. A 99-gpio.rules already in /etc/udev/rules.d is kept.
install_jetson_gpio() {
    [[ $PLATFORM == jetson ]] || return 0
    if ((!DRY_RUN)) && "$VENV_DIR/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("Jetson.GPIO") is None)' 2>/dev/null; then
        info "Jetson: Jetson.GPIO present"
    else
        info "Jetson: installing Jetson.GPIO into the venv (for the GPIO pin factory)"
        pip_install "$VENV_DIR" Jetson.GPIO
    fi
    local rules=""
    if ((!DRY_RUN)); then
        rules=$("$VENV_DIR/bin/python" -c 'import importlib.util as u, pathlib; s = u.find_spec("Jetson.GPIO"); print(pathlib.Path(list(s.submodule_search_locations)[0], "99-gpio.rules"))' 2>/dev/null || true)
    fi
    if [[ -e /etc/udev/rules.d/99-gpio.rules ]]; then
        info "Jetson: keeping /etc/udev/rules.d/99-gpio.rules (gpio group access to GPIO and PWM)"
        remove_path "$JETSON_GPIO_RULE"
    elif [[ -n $rules && -f $rules ]]; then
        info "Jetson: installing Jetson.GPIO's udev rule as $JETSON_GPIO_RULE (gpio group access to GPIO and PWM)"
        write_file "$rules" "$JETSON_GPIO_RULE" 0644
    elif ((DRY_RUN)); then
        note "[dry-run] write $JETSON_GPIO_RULE (from Jetson.GPIO's 99-gpio.rules)"
    else
        warn "Jetson: Jetson.GPIO's 99-gpio.rules not found: copy it to /etc/udev/rules.d/ for GPIO without root"
        return 0
    fi
    if [[ -n $PREFIX ]] || command -v udevadm >/dev/null 2>&1; then
        sys_run udevadm control --reload-rules
        sys_run udevadm trigger --subsystem-match=gpio --subsystem-match=pwm --action=add
    fi
}

# Returns 0 when the installed daemon accepts the config (so the service can be started).
check_installed_daemon() {
    if ((DRY_RUN)); then
        run "$VENV_DIR/bin/smartbin-daemon" version
        run "$VENV_DIR/bin/smartbin-daemon" check-config "$CONFIG_FILE"
        return 0
    fi
    local version
    version=$("$VENV_DIR/bin/smartbin-daemon" version) || die "the installed daemon does not run: $VENV_DIR/bin/smartbin-daemon version failed"
    info "installed: $version"
    [[ -f $CONFIG_FILE ]] || return 1
    local out rc=0
    out=$("$VENV_DIR/bin/smartbin-daemon" check-config "$CONFIG_FILE" 2>&1 >/dev/null) || rc=$?
    if ((rc != 0)); then
        warn "$CONFIG_FILE does not validate yet (exit $rc):"
        printf '%s\n' "$out" >&2
        return 1
    fi
    info "$CONFIG_FILE is valid"
}

enable_service() {
    local config_ok=$1
    if [[ -n $PREFIX ]]; then
        sys_run systemctl daemon-reload
        sys_run systemctl enable "$UNIT_NAME"
        if ((config_ok)); then sys_run systemctl restart "$UNIT_NAME"; fi
        return 0
    fi
    if ! systemd_running; then
        info "systemd is not running as PID 1 (container/chroot): skipping daemon-reload, enable and start"
        note "on the target run: systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
        return
    fi
    sys_run systemctl daemon-reload
    sys_run systemctl enable "$UNIT_NAME"
    if ((!config_ok)); then
        info "not starting $UNIT_NAME until the config validates (it would exit 78 = EX_CONFIG)"
        note "edit $CONFIG_FILE, check it with: $VENV_DIR/bin/smartbin-daemon check-config $CONFIG_FILE"
        note "then: systemctl restart $UNIT_NAME"
        return
    fi
    # restart, not `enable --now`: --now does not restart a running service after an update.
    info "starting $UNIT_NAME"
    if ! sys_run systemctl restart "$UNIT_NAME"; then
        "${SUDO[@]}" systemctl --no-pager --lines=20 status "$UNIT_NAME" >&2 || true
        die "$UNIT_NAME failed to start; see: journalctl -u $UNIT_NAME -b"
    fi
    ((DRY_RUN)) || info "$UNIT_NAME is $(systemctl is-active "$UNIT_NAME" || true)"
}

do_install() {
    info "production install$([[ -n $PREFIX ]] && echo " below $PREFIX (prefix mode)") on $PLATFORM$( ((DRY_RUN)) && echo ' (dry run)')"
    # shellcheck disable=SC2046  # word splitting of the package list is intended
    ensure_apt_packages $(python_build_packages)
    check_python
    ensure_user_and_groups
    install_dirs
    ensure_venv "$VENV_DIR"
    # The detector settings that decide on the ultralytics extra: the technician's config when there
    # is one, else the example that install_config is about to install.
    local config=$CONFIG_FILE
    [[ -f $config ]] || config=$REPO_DIR/config/smartbin.yaml
    install_package "$VENV_DIR" 0 systemd "$config"
    install_config
    install_models
    install_docs
    install_unit
    install_udev_rule
    install_jetson_gpio
    local config_ok=1
    check_installed_daemon || config_ok=0
    enable_service "$config_ok"
    info "done."
    note "config:  $CONFIG_FILE     data: $STATE_DIR     models: $MODELS_DIR"
    note "logs:    journalctl -u ${UNIT_NAME%.service} -f        status: systemctl status ${UNIT_NAME%.service}"
}

do_uninstall() {
    info "uninstall$([[ -n $PREFIX ]] && echo " below $PREFIX")$( ((PURGE)) && echo ' with --purge')$( ((DRY_RUN)) && echo ' (dry run)')"
    if [[ -n $PREFIX ]]; then
        sys_run systemctl disable --now "$UNIT_NAME"
    elif systemd_running; then
        if [[ -e $UNIT_FILE ]] || systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
            sys_run systemctl disable --now "$UNIT_NAME" || warn "could not stop/disable $UNIT_NAME"
        fi
    else
        info "systemd is not running as PID 1: nothing to stop"
    fi
    remove_path "$UNIT_FILE"
    remove_path "$UNIT_DIR/multi-user.target.wants/$UNIT_NAME"
    remove_path "$UDEV_RULE"
    remove_path "$JETSON_GPIO_RULE"
    if ((PURGE)); then
        remove_path "$DROPIN_DIR"
    else
        # Keep the technician's own drop-ins (credentials, overrides); remove ours.
        remove_path "$DROPIN_DIR/10-jetson.conf"
        remove_path "$DROPIN_DIR/20-process-visibility.conf"
        if [[ -d $DROPIN_DIR ]]; then run rmdir --ignore-fail-on-non-empty "$DROPIN_DIR"; fi
    fi
    if [[ -n $PREFIX ]] || systemd_running; then
        sys_run systemctl daemon-reload
        sys_run systemctl reset-failed "$UNIT_NAME" || true
    fi
    remove_path "$OPT_DIR"
    if ((PURGE)); then
        remove_path "$ETC_DIR"
        remove_path "$STATE_DIR"
        if [[ -n $PREFIX ]] || getent passwd "$APP_USER" >/dev/null; then
            sys_run userdel "$APP_USER"
        fi
        if [[ -z $PREFIX ]] && getent group "$APP_USER" >/dev/null && ((!DRY_RUN)); then
            sys_run groupdel "$APP_USER"
        fi
        note "groups dialout, video and gpio are left in place (other software uses them)"
    else
        info "kept $ETC_DIR (config, secrets) and $STATE_DIR (data); --uninstall --purge removes them and the user"
    fi
    info "done."
}

# ------------------------------------------------------------------------------------ dev modes

broker_listening() { timeout 2 bash -c ": </dev/tcp/$SIM_BROKER_HOST/$SIM_BROKER_PORT" 2>/dev/null; }

wait_for_broker() {
    local _
    for _ in $(seq 50); do
        broker_listening && return 0
        sleep 0.1
    done
    return 1
}

# A broker on 127.0.0.1:1883 for config/simulation.yaml: the system's mosquitto service when
# systemd runs, otherwise a background mosquitto with a generated config under ./var/mosquitto.
ensure_local_broker() {
    if broker_listening; then
        info "an MQTT broker already listens on $SIM_BROKER_HOST:$SIM_BROKER_PORT"
        return
    fi
    if systemd_running && systemctl cat mosquitto.service >/dev/null 2>&1; then
        info "starting the system's mosquitto service"
        sys_run systemctl start mosquitto.service
        ((DRY_RUN)) || wait_for_broker || die "mosquitto.service started but nothing listens on $SIM_BROKER_HOST:$SIM_BROKER_PORT"
        return
    fi
    local dir=$REPO_DIR/var/mosquitto mosq
    mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    info "starting a local mosquitto on $SIM_BROKER_HOST:$SIM_BROKER_PORT (files in ${dir#"$REPO_DIR"/})"
    run mkdir -p "$dir"
    if ((DRY_RUN)); then
        note "[dry-run] write $dir/mosquitto.conf"
    else
        cat >"$dir/mosquitto.conf" <<EOF
# Generated by install.sh --simulate.
listener $SIM_BROKER_PORT $SIM_BROKER_HOST
allow_anonymous true
persistence false
# Requests and their responses are small: without this each response waits ~40 ms for a delayed ACK.
set_tcp_nodelay true
pid_file $dir/mosquitto.pid
log_dest file $dir/mosquitto.log
# Don't drop privileges to the "mosquitto" user when started as root (it couldn't write here).
user $(id -un)
EOF
    fi
    run "$mosq" -d -c "$dir/mosquitto.conf"
    if ((!DRY_RUN)); then
        wait_for_broker || die "mosquitto did not come up; see $dir/mosquitto.log"
        note "stop it with: kill \$(cat ${dir#"$REPO_DIR"/}/mosquitto.pid)"
    fi
}

# prepare_dev_venv EXTRAS CONFIG APT_PACKAGE...: build prerequisites + .venv with an editable install
# of this checkout (CONFIG: the config whose detector decides on the ultralytics extra).
prepare_dev_venv() {
    local extras=$1 config=$2
    shift 2
    # shellcheck disable=SC2046  # word splitting of the package list is intended
    ensure_apt_packages "$@" $(python_build_packages)
    check_python
    ensure_venv "$DEV_VENV"
    install_package "$DEV_VENV" 1 "$extras" "$config"
}

do_simulate() {
    info "simulation mode on $PLATFORM$( ((DRY_RUN)) && echo ' (dry run)')"
    [[ -f $REPO_DIR/config/simulation.yaml ]] || die "config/simulation.yaml is missing"
    prepare_dev_venv systemd "$REPO_DIR/config/simulation.yaml" mosquitto mosquitto-clients
    ensure_local_broker
    info "watch the bin's MQTT traffic in another terminal:"
    note "mosquitto_sub -h $SIM_BROKER_HOST -p $SIM_BROKER_PORT -v -t 'smartbin/#' -t 'homeassistant/#'"
    info "running the daemon (Ctrl-C stops it)"
    cd "$REPO_DIR"
    if ((DRY_RUN)); then
        run .venv/bin/smartbin-daemon run --config config/simulation.yaml "${PASSTHRU[@]}"
        return
    fi
    exec .venv/bin/smartbin-daemon run --config config/simulation.yaml "${PASSTHRU[@]}"
}

do_test() {
    info "test mode on $PLATFORM$( ((DRY_RUN)) && echo ' (dry run)')"
    local -a pkgs=(mosquitto mosquitto-clients openssl)
    # systemd-analyze for tests/test_systemd_unit.py (a container image may not have systemd).
    command -v systemd-analyze >/dev/null || pkgs+=(systemd)
    # node runs the example Node-RED flow's request-signing code in tests/test_nodered.py.
    command -v node >/dev/null || pkgs+=(nodejs)
    # The reference firmware is built for the Uno and run under simavr (tests/hardware/firmware.py):
    # the AVR compiler and C library, Debian's Arduino core, simavr and its headers for the harness.
    pkgs+=(gcc-avr avr-libc arduino-core-avr simavr libsimavr-dev)
    # npm installs the pinned Node-RED and Dashboard 2.0, Chromium renders the dashboard (tests/clients/).
    command -v npm >/dev/null || pkgs+=(npm)
    command -v chromium >/dev/null || pkgs+=(chromium)
    # The tests compare the ONNX Runtime backend with ultralytics and train tiny models.
    WITH_ULTRALYTICS=1
    ULTRA_WHY="--test (the tests run both detector backends and the training pipeline)"
    prepare_dev_venv test "" "${pkgs[@]}"
    cd "$REPO_DIR"
    if ((${#PASSTHRU[@]} == 0)); then
        # The whole suite: install Home Assistant's venv and Node-RED while the other tests run (tests/clients/
        # run last and wait on the same locks), instead of adding those minutes at the end.
        info "installing the real clients for tests/clients/ in the background (log: .venv/client-prepare.log)"
        if ((DRY_RUN)); then
            run .venv/bin/python -m tests.clients.prepare
        else
            nice -n 10 .venv/bin/python -m tests.clients.prepare >.venv/client-prepare.log 2>&1 &
        fi
    fi
    info "running pytest ${PASSTHRU[*]}"
    if ((DRY_RUN)); then
        run .venv/bin/python -m pytest "${PASSTHRU[@]}"
        return
    fi
    exec .venv/bin/python -m pytest "${PASSTHRU[@]}"
}

# ------------------------------------------------------------------------------------ main

main() {
    parse_args "$@"
    umask 022 # the service user must be able to read what root installs, whatever the caller's umask
    set_paths
    ensure_root_or_sudo
    detect_platform
    choose_python
    case $MODE in
        install) do_install ;;
        uninstall) do_uninstall ;;
        simulate) do_simulate ;;
        test) do_test ;;
    esac
}

main "$@"
