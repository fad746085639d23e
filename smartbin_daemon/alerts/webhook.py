"""The webhook sender: posts alert texts as `{"text": ...}` (Slack and Teams incoming webhooks) from its own thread.

Why its own thread: a post can take `timeout_s` and its retries minutes; the alerts worker only puts a text on a
bounded queue (a full queue drops it, counted) and never waits. At most one post per `min_interval_s`: alerts that
arrive sooner are counted as suppressed and folded into the next post, which goes out once the interval is over.
The URL is a secret (its path is the credential): it is never logged, published or put in an error text.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

from ..clock import iso_utc
from ..config import WebhookConfig
from ..logs import ev
from ..runtime.backoff import Backoff
from ..states.alerts import WebhookCounters

logger = logging.getLogger(__name__)

FOLD_MAX = 10
"""Suppressed alerts quoted in the next post; more are only counted in it."""
POLL_S = 0.5
"""How often the idle sender looks at its stop flag."""


class WebhookSender:
    """Posts alert texts to one incoming webhook: bounded queue, minimum interval, retries with backoff."""

    def __init__(self, cfg: WebhookConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._url = cfg.target() or ""
        parts = urlsplit(self._url)
        self.where = f"{parts.scheme}://{parts.hostname}/…"
        """The URL as it may be shown: scheme and host only."""
        self.clock = clock
        self._queue: queue.Queue[str] = queue.Queue(maxsize=cfg.queue_size)
        self._lock = threading.Lock()
        self._counters = WebhookCounters(enabled=bool(self._url), min_severity=cfg.min_severity)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_post: float | None = None
        self._held: list[str] = []
        self._held_extra = 0

    # -- the worker's side ----------------------------------------------------------

    def start(self) -> None:
        """Start the posting thread (again, after a stop)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alerts-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; a post in progress ends by its own timeout (the thread is a daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, text: str) -> bool:
        """Queue a text to post; never blocks. False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            self._count(dropped=1)
            logger.warning("webhook: queue full (%d), alert dropped", self.cfg.queue_size, extra=ev("webhook_dropped"))
            return False
        return True

    def counters(self) -> WebhookCounters:
        """A copy of the counters, for the alerts state."""
        with self._lock:
            return replace(self._counters)

    # -- the thread's side ----------------------------------------------------------

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, n in changes.items():
                setattr(self._counters, name, getattr(self._counters, name) + n)

    def _due_in(self) -> float:
        """Seconds until the next post may go out."""
        if self._last_post is None:
            return 0.0
        return max(0.0, self._last_post + self.cfg.min_interval_s - self.clock())

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = min(POLL_S, self._due_in()) if self._held else POLL_S
            try:
                text = self._queue.get(timeout=max(0.01, wait))
            except queue.Empty:
                text = None
            if text is not None:
                self._hold(text)
            if self._held and self._due_in() <= 0:
                body = self._fold()
                try:
                    self._deliver(body)
                except Exception as exc:  # noqa: BLE001 - the sender outlives one bad post
                    # no traceback: its text could quote the URL
                    logger.error("webhook: posting to %s failed unexpectedly: %s", self.where, type(exc).__name__,
                                 extra=ev("webhook_failed"))
                    self._count(failed=1)

    def _hold(self, text: str) -> None:
        """Keep a text for the next post; one that must wait for the interval counts as suppressed."""
        if self._due_in() > 0 or self._held:
            self._count(suppressed=1)
        if len(self._held) < FOLD_MAX:
            self._held.append(text)
        else:
            self._held_extra += 1

    def _fold(self) -> str:
        """The next post's text: the first held alert, then those suppressed since the last post."""
        first, rest = self._held[0], self._held[1:]
        lines = [first]
        if rest or self._held_extra:
            lines.append(f"(+{len(rest) + self._held_extra} more within {self.cfg.min_interval_s:.0f}s:)")
            lines += rest
            if self._held_extra:
                lines.append(f"… and {self._held_extra} more")
        self._held, self._held_extra = [], 0
        return "\n".join(lines)

    def _deliver(self, text: str) -> None:
        """Post with retries (5xx, 429, connection errors, timeouts); count the outcome."""
        self._last_post = self.clock()
        body = json.dumps({"text": text}).encode("utf-8")
        backoff = Backoff(self.cfg.retry_min_s, self.cfg.retry_max_s)
        error = "not sent"
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self._count(retries=1)
                if self._stop.wait(backoff.next()):
                    break
            ok, retryable, error = self._post(body)
            if ok:
                with self._lock:
                    self._counters.sent += 1
                    self._counters.last_sent_at = iso_utc(time.time())
                logger.info("webhook: alert posted to %s", self.where, extra=ev("webhook_sent"))
                return
            if not retryable:
                break
        with self._lock:
            self._counters.failed += 1
            self._counters.last_error = error
        logger.warning("webhook: posting to %s failed: %s", self.where, error, extra=ev("webhook_failed"))

    def _post(self, body: bytes) -> tuple[bool, bool, str]:
        """One POST: (delivered, worth retrying, error text without the URL)."""
        req = urllib.request.Request(self._url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "smartbin-daemon"})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:  # noqa: S310 - http(s) only (config)
                resp.read(4096)
                return True, False, ""
        except urllib.error.HTTPError as exc:
            return False, exc.code >= 500 or exc.code == 429, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, timeout, garbage
            reason = getattr(exc, "reason", None) or exc
            return False, True, self._scrub(f"{type(exc).__name__}: {reason}")
        except ValueError as exc:  # a URL urllib cannot use
            return False, False, self._scrub(f"{type(exc).__name__}: {exc}")

    def _scrub(self, text: str) -> str:
        """An error text with the URL (and its path) removed, should a library quote it."""
        path = urlsplit(self._url).path
        text = text.replace(self._url, self.where)
        return text.replace(path, "/…") if len(path) > 1 else text
