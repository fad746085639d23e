"""Logging for technicians: journald with SMARTBIN_* fields under systemd, readable stderr otherwise,
and identical repeated warnings folded into "repeated N times".
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

PACKAGE = "smartbin_daemon"
SYSLOG_IDENTIFIER = "smartbin"


def ev(event_id: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call carrying a stable SMARTBIN_EVENT id (and optional SMARTBIN_* fields)."""
    extra: dict[str, Any] = {"SMARTBIN_EVENT": event_id}
    for key, value in fields.items():
        extra[f"SMARTBIN_{key.upper()}"] = value
    return extra


def audit(log: logging.Logger, command: str, detail: str, *, authority: str, key: str | None, transaction: Any) -> None:
    """The journal line for an actuator command or a data rewrite: what, and who asked (authority, key, transaction)."""
    shown = repr(transaction)
    log.info("audit: %s %s by %s%s (transaction %s)", command, detail, authority, f" key {key}" if key else "",
             shown if len(shown) <= 64 else shown[:61] + "...",
             extra=ev("actuator_command", command=command, authority=authority, key=key or ""))


def component_of(logger_name: str) -> str:
    """`smartbin_daemon.mqtt.client` -> `mqtt`; `...hardware.arduino.link` -> `arduino`; `...vision.sources` ->
    `camera`, other vision modules -> `detector`; `...bins.workflow` -> `workflow`, other bins modules -> `fill`;
    others keep their first part."""
    if logger_name == PACKAGE:
        return "daemon"
    if logger_name.startswith(PACKAGE + "."):
        parts = logger_name.split(".")
        if parts[1] == "hardware" and len(parts) > 2:
            return parts[2]  # smartbin_daemon.hardware.arduino.link -> arduino, .hardware.gpio -> gpio
        if parts[1] == "bins" and len(parts) > 2:
            return "workflow" if parts[2] == "workflow" else "fill"
        if parts[1] == "vision" and len(parts) > 2:
            return "camera" if parts[2] in ("camera", "sources") else "detector"
        return parts[1]
    return logger_name.split(".")[0]


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    """True when stdout/stderr go to the journal or we were started by systemd."""
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class ComponentFilter(logging.Filter):
    """Adds SMARTBIN_COMPONENT (from the logger name unless given) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "SMARTBIN_COMPONENT"):
            record.SMARTBIN_COMPONENT = component_of(record.name)
        return True


class RepeatFilter(logging.Filter):
    """Folds identical WARNING+ records (same logger, level, template and args) within a window.

    The first one passes; later ones inside `window_s` are counted and swallowed. When the window
    has passed, `flush()` (called periodically) or the next occurrence emits one
    "repeated N times" line, so nothing is silently lost and the journal is not flooded.
    """

    def __init__(self, window_s: float, emit: Callable[[logging.LogRecord], object] | None = None) -> None:
        super().__init__()
        self.window_s = window_s
        self._emit = emit
        self._lock = threading.Lock()
        # key -> [first_seen_monotonic, suppressed_count, last_record]
        self._seen: dict[tuple[Any, ...], list[Any]] = {}

    def _key(self, record: logging.LogRecord) -> tuple[Any, ...]:
        try:
            args = repr(record.args)
        except Exception:
            args = "?"
        return (record.name, record.levelno, str(record.msg), args)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window_s <= 0 or record.levelno < logging.WARNING or getattr(record, "_smartbin_summary", False):
            return True
        key = self._key(record)
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                summary = entry[1] if entry is not None else 0
                self._seen[key] = [now, 0, record]
                if summary:
                    record.msg = f"{record.msg} (repeated {summary} more times in the last {self.window_s:.0f}s)"
                return True
            entry[1] += 1
            entry[2] = record
            return False

    def flush(self, force: bool = False) -> int:
        """Emit "repeated N times" for windows that have ended (all, if force); returns lines emitted."""
        now = time.monotonic()
        due: list[tuple[logging.LogRecord, int]] = []
        with self._lock:
            for key, (first, count, record) in list(self._seen.items()):
                if force or now - first >= self.window_s:
                    del self._seen[key]
                    if count:
                        due.append((record, count))
        for record, count in due:
            summary = logging.makeLogRecord(record.__dict__)
            summary.msg = f"{record.getMessage()} (repeated {count} times in the last {self.window_s:.0f}s)"
            summary.args = None
            summary.exc_info = None
            summary.exc_text = None
            summary._smartbin_summary = True
            if self._emit is not None:
                self._emit(summary)
        return len(due)


def make_journal_handler(sender: Callable[..., Any] | None = None) -> logging.Handler:
    """A systemd JournalHandler that sends only the uppercase structured fields (SMARTBIN_*, CODE_*...)."""
    from systemd import journal  # type: ignore[attr-defined]  # lazily: only needed under systemd

    class _Handler(journal.JournalHandler):  # type: ignore[misc]
        def emit(self, record: logging.LogRecord) -> None:
            try:
                msg = self.format(record)
                fields: dict[str, Any] = {
                    k: v for k, v in record.__dict__.items() if k.isupper() and k.startswith("SMARTBIN_")
                }
                if record.exc_text:
                    fields["EXCEPTION_TEXT"] = record.exc_text
                self.send(
                    msg,
                    PRIORITY=format(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                    **fields,
                )
            except Exception:
                self.handleError(record)

    kwargs: dict[str, Any] = {}
    if sender is not None:
        kwargs["sender_function"] = sender
    return _Handler(**kwargs)


class _JournalFormatter(logging.Formatter):
    """Message plus traceback; journald adds time, priority and identifier itself."""

    def __init__(self) -> None:
        super().__init__("%(message)s")


_STDERR_FORMAT = "%(asctime)s %(levelname)-7s %(SMARTBIN_COMPONENT)s: %(message)s"


@dataclass
class LoggingSetup:
    """Handle on the installed logging, so level and repeat folding can be changed live."""

    handler: logging.Handler
    repeats: RepeatFilter
    journal: bool

    def set_level(self, level: str) -> None:
        """Change the package log level (live on SIGHUP)."""
        logging.getLogger(PACKAGE).setLevel(level)

    def set_repeat_window(self, window_s: float) -> None:
        """Change the repeat-folding window (live)."""
        self.repeats.flush(force=True)
        self.repeats.window_s = window_s


def setup_logging(level: str = "INFO", journal: str = "auto", repeat_window_s: float = 60.0) -> LoggingSetup:
    """Install the daemon's one root handler: journald under systemd, stderr otherwise."""
    use_journal = journal == "on" or (journal == "auto" and under_systemd())
    handler: logging.Handler
    if use_journal:
        try:
            handler = make_journal_handler()
            handler.setFormatter(_JournalFormatter())
        except ImportError:
            use_journal = False
    if not use_journal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    handler.addFilter(ComponentFilter())
    repeats = RepeatFilter(repeat_window_s, emit=handler.handle)
    handler.addFilter(repeats)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # third-party libraries stay quiet
    logging.getLogger(PACKAGE).setLevel(level)
    logging.captureWarnings(True)
    return LoggingSetup(handler=handler, repeats=repeats, journal=use_journal)
