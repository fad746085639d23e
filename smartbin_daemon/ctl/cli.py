"""The `smartbinctl` commands, the journalctl command line, and argument parsing."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .. import __version__
from ..config import (
    ConfigError,
)
from ..control import STATE_FILE
from ..runtime.commands import COMMAND_RE
from ..states import AlertsState
from ..states.selftest import MAX_RUN_S, MOVING, PARTS
from .doctor import doctor_checks
from .firmware import add_firmware_parser, cmd_firmware
from .history import (
    KINDS,
    add_history_parser,
    history_payload,
    history_rows,
    render_csv,
    render_jsonl,
    render_table,
)
from .render import _num, format_event, render_alerts, render_selftest, render_status
from .session import (
    COMPONENTS,
    DEFAULT_CONFIG,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_UNIT,
    EXIT_ERROR,
    EXIT_NO_ANSWER,
    EXIT_OK,
    STATUS_WAIT_S,
    Answer,
    BrokerError,
    BrokerSession,
    CtlConfig,
    Snapshot,
    apply_overrides,
    collect_snapshot,
    load_ctl_config,
    read_login,
    send_request,
    signing_key,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- journalctl


def journalctl_command(*, unit: str = DEFAULT_UNIT, component: str | None = None, follow: bool = False,
                       lines: int | None = None, event: str | None = None, item: str | None = None,
                       since: str | None = None, until: str | None = None, priority: str | None = None,
                       output: str | None = None) -> list[str]:
    """The journalctl command line for a filtered view of the daemon's log."""
    cmd = ["journalctl", "-u", unit]
    if follow:
        cmd.append("-f")
    if lines is not None:
        cmd += ["-n", str(lines)]
    if since:
        cmd += ["--since", since]
    if until:
        cmd += ["--until", until]
    if priority:
        cmd += ["-p", priority]
    if output:
        cmd += ["-o", output]
    if component:
        cmd.append(f"SMARTBIN_COMPONENT={component}")
    if event:
        cmd.append(f"SMARTBIN_EVENT={event}")
    if item:
        cmd.append(f"SMARTBIN_ITEM={item}")
    return cmd


# --------------------------------------------------------------------------- commands


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> CtlConfig | None:
    try:
        ctl = load_ctl_config(args.config)
    except ConfigError as exc:
        _err(f"smartbinctl: cannot use the config {exc.path}:")
        for line in exc.errors:
            _err(f"  - {line}")
        return None
    for note in ctl.notes:
        _err(f"note: {note}")
    try:
        username, password = read_login(args)
    except OSError as exc:
        _err(f"smartbinctl: cannot read --password-file: {exc.strerror or exc}")
        return None
    apply_overrides(ctl.cfg, args.host, args.port, username, password)
    return ctl


def _connect_timeout(args: argparse.Namespace) -> float:
    return float(args.timeout) if args.timeout else DEFAULT_CONNECT_TIMEOUT_S


def _snapshot(args: argparse.Namespace, ctl: CtlConfig) -> Snapshot | None:
    """The retained states (or the state file), or None after saying why neither could be read."""
    try:
        return collect_snapshot(ctl.cfg, _connect_timeout(args), args.wait)
    except (OSError, ValueError) as exc:
        _err(f"smartbinctl: the broker gave no state and the local state file is unusable: {exc}")
        _err(f"(the daemon writes {Path(ctl.cfg.storage.path) / STATE_FILE} every 30 s; reading it may need sudo)")
        return None


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status screen (or the raw states with --json)."""
    ctl = _load(args)
    snap = _snapshot(args, ctl) if ctl is not None else None
    if ctl is None or snap is None:
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps(snap.as_json(), indent=2, default=str))
    else:
        print(render_status(snap, ctl.cfg))
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the alerts active now (the retained `alerts` state), or that state as JSON; `--ack ID` acknowledges one."""
    ctl = _load(args)
    if ctl is not None and args.ack:
        data = _answer_data(args, ctl, "alerts/ack", {"id": args.ack}, f"acknowledging {args.ack} failed")
        if isinstance(data, int):
            return data
        alert = data.get("acknowledged") or {}
        print(f"acknowledged {alert.get('source')}/{alert.get('code')}: {alert.get('message')}")
        return EXIT_OK
    snap = _snapshot(args, ctl) if ctl is not None else None
    if ctl is None or snap is None:
        return EXIT_NO_ANSWER
    state = snap.components.get("alerts")
    if not isinstance(state, dict):
        _err(f"smartbinctl: no alerts state under {ctl.cfg.root_topic}/alerts (a daemon from before it, or not running)")
        return EXIT_NO_ANSWER
    if snap.source == "state_file":
        _err(snap.header)
    print(json.dumps(state, indent=2) if args.json else render_alerts(AlertsState.from_json(state)))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Print live events, one line each, until Ctrl-C (or SIGTERM)."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    root = ctl.cfg.root_topic
    types = set(args.type or [])
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGINT explicitly too: a shell starting us in the background may have set it to "ignore".
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    session = BrokerSession(ctl.cfg, _connect_timeout(args), reconnect=True, on_note=lambda t: _err(f"note: {t}"))
    try:
        session.connect()
        session.subscribe(f"{root}/event/#")
    except BrokerError as exc:
        session.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _err(f"smartbinctl: {exc.reason}" + (f" — {exc.advice}" if exc.advice else ""))
        return EXIT_NO_ANSWER
    if not args.raw:
        _err(f"watching {root}/event/# on {ctl.cfg.mqtt.host}:{ctl.cfg.mqtt.port} (times UTC; Ctrl-C to stop)")
    try:
        while not stop.is_set():
            msg = session.get(0.2)
            if msg is None:
                continue
            try:
                envelope = json.loads(msg.payload)
            except ValueError:
                continue
            if not isinstance(envelope, dict):
                continue
            etype = str(envelope.get("type") or msg.topic.rsplit("/", 1)[-1])
            if types and etype not in types:
                continue
            if args.raw:
                print(json.dumps(envelope, separators=(",", ":"), default=str), flush=True)
            else:
                print(format_event(envelope), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _parse_args_json(text: str | None) -> dict[str, Any] | None:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        _err(f"smartbinctl: the args are not valid JSON ({exc}); e.g. '{{\"compartment\": 1}}'")
        return None
    if not isinstance(value, dict):
        _err(f"smartbinctl: the args must be a JSON object, e.g. '{{\"compartment\": 1}}', not {type(value).__name__}")
        return None
    return value


def _request(args: argparse.Namespace, ctl: CtlConfig, command: str, payload: dict[str, Any],
             answer_within_s: float = 0.0) -> Answer | None:
    key, secret, note = signing_key(ctl.cfg, ctl.base_dir, getattr(args, "key", None) or os.environ.get("SMARTBIN_KEY"))
    if note:
        _err(f"note: {note}")
    answer_timeout = float(args.timeout) if args.timeout else max(ctl.cfg.mqtt.request_timeout_s, answer_within_s) + 2.0
    try:
        return send_request(ctl.cfg, command, payload, secret=secret, connect_timeout=_connect_timeout(args),
                            answer_timeout=answer_timeout, key=key)
    except BrokerError as exc:
        _err(f"smartbinctl: {exc.reason}" + (f" — {exc.advice}" if exc.advice else ""))
        return None


def _answer_data(args: argparse.Namespace, ctl: CtlConfig, command: str, payload: dict[str, Any],
                 failed: str, answer_within_s: float = 0.0) -> Any:
    """The `data` of an ok answer, or the exit code after saying why there is none (`failed: <error>`)."""
    answer = _request(args, ctl, command, payload, answer_within_s=answer_within_s)
    if answer is None:
        return EXIT_NO_ANSWER
    if answer.response is None:
        _err(f"smartbinctl: {answer.problem}")
        return EXIT_NO_ANSWER
    if not answer.ok:
        _err(f"{failed}: {answer.response.get('error')}")
        return EXIT_ERROR
    return answer.response.get("data") or {}


def cmd_request(args: argparse.Namespace) -> int:
    """Send one request and print the response."""
    if not COMMAND_RE.match(args.command):
        _err(f"smartbinctl: {args.command!r} is not a command name (e.g. ping, route, bin/calibrate; "
             "`smartbinctl request help` lists them)")
        return EXIT_NO_ANSWER
    payload = _parse_args_json(args.args)
    if payload is None:
        return EXIT_NO_ANSWER
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    answer = _request(args, ctl, args.command, payload)
    if answer is None:
        return EXIT_NO_ANSWER
    if answer.response is None:
        _err(f"smartbinctl: {answer.problem}")
        return EXIT_NO_ANSWER
    print(json.dumps(answer.response, indent=2, default=str))
    if not answer.ok:
        _err(f"error: {answer.response.get('error')}")
        return EXIT_ERROR
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`bin/calibrate` for one compartment, the result in words."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    payload: dict[str, Any] = {"compartment": args.compartment, "point": args.point}
    if args.distance_mm is not None:
        payload["distance_mm"] = args.distance_mm
    data = _answer_data(args, ctl, "bin/calibrate", payload, f"calibration of {args.compartment} failed")
    if isinstance(data, int):
        return data
    empty, full = data.get("empty_mm"), data.get("full_mm")
    taken = f"{args.distance_mm:g} mm as given" if args.distance_mm is not None else "the current sensor reading"
    span = f"; usable height {empty - full:.1f} mm" if isinstance(empty, (int, float)) and isinstance(full, (int, float)) else ""
    print(f"{data.get('compartment', args.compartment)}: {args.point} point set from {taken}. "
          f"Calibration now: empty = {_num(empty, unit=' mm')}, full = {_num(full, unit=' mm')}{span}. "
          "Saved on the bin; it overrides the config from now on.")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    """Print the backup document (calibration, counters, maintenance mode) as JSON: `smartbinctl backup > file.json`."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    data = _answer_data(args, ctl, "backup", {}, "backup failed")
    if isinstance(data, int):
        return data
    print(json.dumps(data, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Send a backup file to `restore` (signed), say what was restored."""
    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _err(f"smartbinctl: cannot read the backup {args.file}: {exc}")
        return EXIT_NO_ANSWER
    if not isinstance(document, dict):
        _err(f"smartbinctl: {args.file} is not a backup document (a JSON object), but {type(document).__name__}")
        return EXIT_NO_ANSWER
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    data = _answer_data(args, ctl, "restore", {"document": document, "force": bool(args.force)}, "restore failed")
    if isinstance(data, int):
        return data
    print(f"restored the backup of {data.get('device')} made {data.get('created_at')}: "
          f"{', '.join(sorted(data.get('restored') or {})) or 'nothing'}")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """A history request, printed as a table, CSV, JSON lines or the whole answer."""
    if args.kind == "fill" and not args.compartment:
        _err("smartbinctl: history fill needs a compartment, e.g. `smartbinctl history fill recycling --hours 168`")
        return EXIT_NO_ANSWER
    if args.kind in ("health", "counts") and args.compartment:
        _err(f"smartbinctl: history {args.kind} takes no compartment (history counts --by compartment splits by it)")
        return EXIT_NO_ANSWER
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    data = _answer_data(args, ctl, KINDS[args.kind].command, history_payload(args), "error")
    if isinstance(data, int):
        return data
    rows = history_rows(args.kind, data)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    elif args.csv:
        sys.stdout.write(render_csv(rows))
    elif args.jsonl:
        sys.stdout.write(render_jsonl(rows))
    else:
        print(render_table(args.kind, data, rows))
    return EXIT_OK


def cmd_selftest(args: argparse.Namespace) -> int:
    """`selftest`: the checks as a table; exit 1 when one failed (or the daemon refused), 2 on no answer."""
    ctl = _load(args)
    if ctl is None:
        return EXIT_NO_ANSWER
    parts = list(dict.fromkeys(args.parts)) if args.parts else list(PARTS)
    payload: dict[str, Any] = {"move": not args.no_move and bool(MOVING.intersection(parts))}
    if args.parts:
        payload["parts"] = parts
    data = _answer_data(args, ctl, "selftest", payload, "self-test refused", answer_within_s=MAX_RUN_S + 5.0)
    if isinstance(data, int):
        return data
    print(render_selftest(data))
    return EXIT_OK if data.get("status") == "pass" else EXIT_ERROR


def cmd_logs(args: argparse.Namespace) -> int:
    """Run (exec) journalctl with the SMARTBIN_* filters, or print the command with --dry-run."""
    cmd = journalctl_command(unit=args.unit, component=args.component, follow=args.follow, lines=args.lines,
                             event=args.event, item=args.item, since=args.since, until=args.until,
                             priority=args.priority, output=args.output)
    if args.component and args.component not in COMPONENTS:
        _err(f"note: {args.component!r} is not one of the usual components ({', '.join(COMPONENTS)}); filtering anyway")
    if args.dry_run:
        print(shlex.join(cmd))
        return EXIT_OK
    if shutil.which(cmd[0]) is None:
        _err("smartbinctl: journalctl not found (no systemd here?); this is the command:\n  " + shlex.join(cmd))
        return EXIT_NO_ANSWER
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return EXIT_OK  # not reached


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run every check, one line each; exit 1 when any FAILs."""
    try:
        username, password = read_login(args)
    except OSError as exc:
        _err(f"smartbinctl: cannot read --password-file: {exc.strerror or exc}")
        return EXIT_NO_ANSWER
    failed = False
    for result in doctor_checks(args.config, host=args.host, port=args.port, username=username, password=password,
                                timeout=_connect_timeout(args), unit=args.unit):
        print(result.line(), flush=True)
        failed = failed or result.status == "FAIL"
    return EXIT_ERROR if failed else EXIT_OK


# --------------------------------------------------------------------------- argument parsing


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Global options; on subcommands they default to SUPPRESS so `smartbinctl status --config X` works too."""
    p = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--config", "-c", default=default(DEFAULT_CONFIG),
                   help=f"the daemon's config file (default {DEFAULT_CONFIG})")
    p.add_argument("--host", default=default(None), help="broker host (overrides mqtt.host)")
    p.add_argument("--port", type=int, default=default(None), help="broker port (overrides mqtt.port)")
    p.add_argument("--username", "-u", default=default(None),
                   help="log in to the broker as this user instead of mqtt.username (e.g. an administrator the "
                        "broker's ACL lets send requests); the password comes from --password-file or is asked for")
    p.add_argument("--password-file", default=default(None), help="file holding the --username's password")
    p.add_argument("--timeout", type=float, default=default(None),
                   help=f"seconds to wait for the broker (default {DEFAULT_CONNECT_TIMEOUT_S:g}) and for an answer "
                        "(default mqtt.request_timeout_s + 2)")
    p.add_argument("--key", default=default(None),
                   help="the security.keys id to sign requests with (default: $SMARTBIN_KEY, else the config's only key)")
    p.add_argument("--verbose", "-v", action="store_true", default=default(False), help="debug logging")
    return p


def _add_operation_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """backup, restore, history, firmware and selftest."""
    p = sub.add_parser("backup", parents=[common], help="print calibration, counters and maintenance mode as one JSON "
                                                        "document (smartbinctl backup > bin.json)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", parents=[common], help="restore a backup document (signed)")
    p.add_argument("file", help="the JSON file `smartbinctl backup` wrote")
    p.add_argument("--force", action="store_true", help="also a backup of another device or format version")
    p.set_defaults(func=cmd_restore)

    add_history_parser(sub, common).set_defaults(func=cmd_history)
    add_firmware_parser(sub, common).set_defaults(func=cmd_firmware)

    p = sub.add_parser("selftest", parents=[common], help="exercise the hardware, one line per check (exit 1 on a fail)",
                       description="Run the `selftest` request: distance sensors, drop sensor, scale, lid, flap routes, "
                                   "LED, buzzer, camera, detector. Moving parts need a signature (the config's key) "
                                   "and an idle bin; --no-move skips them.")
    p.add_argument("--parts", nargs="+", choices=PARTS, metavar="PART", help=f"only these: {', '.join(PARTS)}")
    p.add_argument("--no-move", action="store_true", help="skip the lid, flap routes, LED and buzzer (needs no signature)")
    p.set_defaults(func=cmd_selftest)


def build_parser() -> argparse.ArgumentParser:
    """The smartbinctl command line."""
    parser = argparse.ArgumentParser(
        prog="smartbinctl", parents=[_common(False)],
        description="SmartBin technician CLI: talks to the daemon over MQTT using the daemon's own config file.",
        epilog="exit codes: 0 ok; 1 the daemon answered with an error / doctor found a FAIL; "
               "2 usage or config error, broker unreachable, no answer")
    parser.add_argument("--version", action="version", version=f"smartbinctl {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    common = _common(True)

    p = sub.add_parser("status", parents=[common], help="one screen: daemon, links, sorting, compartments, health, errors")
    p.add_argument("--json", action="store_true", help="print the raw collected states as JSON")
    p.add_argument("--wait", type=float, default=STATUS_WAIT_S, help="seconds to wait for retained states (default 1.5)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("alerts", parents=[common], help="the alerts active now, most severe first, and the webhook")
    p.add_argument("--json", action="store_true", help="print the alerts state as JSON")
    p.add_argument("--ack", metavar="ID", help="acknowledge the active alert with this id (alerts/ack)")
    p.add_argument("--wait", type=float, default=STATUS_WAIT_S, help="seconds to wait for retained states (default 1.5)")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("watch", parents=[common], help="live events, one line each (Ctrl-C to stop)")
    p.add_argument("--raw", action="store_true", help="print each event's JSON envelope")
    p.add_argument("--type", action="append", metavar="TYPE", help="only this event type (repeatable)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("request", parents=[common], help="send a request, print the response",
                       description="Send <root>/request/<command> and print the response. Exit 0 on status ok, "
                                   "1 on an error response, 2 on no answer or a usage error.")
    p.add_argument("command", help="e.g. ping, status, help, route, bin/calibrate, workflow/clear_error")
    p.add_argument("args", nargs="?", help="the args as a JSON object, e.g. '{\"compartment\": 1}'")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("calibrate", parents=[common], help="set a compartment's empty or full distance (bin/calibrate)")
    p.add_argument("compartment", help="compartment id, e.g. recycling")
    p.add_argument("point", choices=("empty", "full"), help="which calibration point the compartment is at now")
    p.add_argument("--distance-mm", type=float, help="use this distance instead of the current sensor reading")
    p.set_defaults(func=cmd_calibrate)

    _add_operation_parsers(sub, common)

    p = sub.add_parser("logs", parents=[common], help="journalctl -u smartbin with SMARTBIN_* filters")
    p.add_argument("component", nargs="?", help=f"one component: {', '.join(COMPONENTS)}")
    p.add_argument("-f", "--follow", action="store_true", help="follow")
    p.add_argument("-n", "--lines", type=int, help="last N lines")
    p.add_argument("--event", help="a SMARTBIN_EVENT id, e.g. worker_crashed, item_sorted")
    p.add_argument("--item", help="one item's id (SMARTBIN_ITEM)")
    p.add_argument("--since", help="journalctl --since, e.g. '1 hour ago', today, '2026-11-21 10:00'")
    p.add_argument("--until", help="journalctl --until")
    p.add_argument("-p", "--priority", help="journalctl -p, e.g. warning")
    p.add_argument("-o", "--output", help="journalctl -o, e.g. verbose, json-pretty")
    p.add_argument("--unit", default=DEFAULT_UNIT, help=f"systemd unit (default {DEFAULT_UNIT})")
    p.add_argument("--dry-run", action="store_true", help="print the journalctl command instead of running it")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("doctor", parents=[common], help="check config, devices, broker, disk, model and the unit")
    p.add_argument("--unit", default=DEFAULT_UNIT, help=f"systemd unit (default {DEFAULT_UNIT})")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit after `| head`
        return EXIT_OK

