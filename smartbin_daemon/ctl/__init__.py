"""`smartbinctl`: the field technician's CLI — status, live events, requests, calibration, logs and doctor.

It talks to the daemon the way everyone else does, over MQTT (retained state, events, requests), with
the broker, device id, TLS and credentials of the daemon's own config file. When the broker cannot be
reached, `status` falls back to the state file the daemon writes under `storage.path`.

The package: `session` (config, broker session, state snapshot, signed requests), `render` (the status screen
and event lines), `doctor` (the checks) and `cli` (commands and arguments).
"""

from .cli import build_parser, journalctl_command, main
from .doctor import (
    CheckResult,
    Identity,
    check_broker,
    check_camera,
    check_config,
    check_daemon,
    check_disk,
    check_gpio,
    check_model,
    check_serial_port,
    check_signing,
    check_systemd_unit,
    doctor_checks,
)
from .render import compartment_line, derive_problems, format_event, render_status
from .session import build_request, send_request, signing_key, signing_secret

__all__ = [
    "CheckResult", "Identity", "build_parser", "build_request", "check_broker", "check_camera", "check_config",
    "check_daemon", "check_disk", "check_gpio", "check_model", "check_serial_port", "check_signing",
    "check_systemd_unit", "compartment_line", "derive_problems", "doctor_checks", "format_event",
    "journalctl_command", "main", "render_status", "send_request", "signing_key", "signing_secret",
]
