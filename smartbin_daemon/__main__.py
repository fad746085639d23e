"""`smartbin-daemon`: run, check-config, version. `run` exits 0 on SIGTERM, 78 on a bad config, 73 when it
cannot create its storage, and 75 (EX_TEMPFAIL) after a `restart` request for the whole daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import yaml

from . import __version__
from .config import EX_CONFIG, ConfigError, load_config, redacted_dict
from .logs import ev, setup_logging

logger = logging.getLogger("smartbin_daemon")

EX_CANTCREAT = 73


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartbin-daemon", description="SmartBin daemon")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run in the foreground (what systemd runs)")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    chk = sub.add_parser("check-config", help="validate a config; print it with secrets redacted")
    chk.add_argument("path")
    sub.add_parser("version", help="print the version")
    return p


def cmd_check_config(path: str) -> int:
    """Validate; print the effective config (redacted) or every error; 0 or 78."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"{exc.path}: invalid configuration ({len(exc.errors)} error(s)):", file=sys.stderr)
        for line in exc.errors:
            print(f"  - {line}", file=sys.stderr)
        return EX_CONFIG
    print(f"# {path}: valid. Effective configuration (defaults filled in, secrets redacted):")
    print(yaml.safe_dump(redacted_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_run(path: str) -> int:
    """Load the config, start the app, supervise until SIGTERM/SIGINT."""
    log = setup_logging()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        logger.critical("invalid configuration %s, not starting (exit %d):\n%s", exc.path, EX_CONFIG,
                        "\n".join(f"  - {e}" for e in exc.errors), extra=ev("config_invalid"))
        return EX_CONFIG
    log = setup_logging(cfg.logging.level, cfg.logging.journal, cfg.logging.repeat_window_s)

    from pathlib import Path

    from .app import App

    app = App(cfg, Path(path), log)
    app.install_signal_handlers()
    try:
        app.start()
    except OSError as exc:
        logger.critical("cannot start: %s", exc, extra=ev("start_failed"))
        return EX_CANTCREAT
    try:
        app.run_forever()
    finally:
        logger.info("stopping", extra=ev("daemon_stopping"))
        app.stop()
        if app.exit_code:
            logger.info("stopped; exiting %d for the requested restart (systemd's Restart=on-failure starts it again)",
                        app.exit_code, extra=ev("daemon_stopped"))
        else:
            logger.info("stopped", extra=ev("daemon_stopped"))
    return app.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = _parser().parse_args(argv)
    if args.cmd == "version":
        print(f"smartbin-daemon {__version__}")
        return 0
    if args.cmd == "check-config":
        return cmd_check_config(args.path)
    return cmd_run(args.config)


if __name__ == "__main__":
    sys.exit(main())
