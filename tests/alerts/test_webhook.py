"""The webhook sender against a real local HTTP server: delivery and body, retry after a 500, suppression within the
interval, a server that never answers, and the URL (a secret) kept out of the log and the state."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from smartbin_daemon.alerts.webhook import WebhookSender
from smartbin_daemon.alerts.worker import AlertsWorker
from smartbin_daemon.config import WebhookConfig, parse_config
from smartbin_daemon.runtime.bus import Alert, Bus

from ..conftest import wait_until

SECRET_PATH = "/services/T000/B000/webhook-secret-Xy83kq"


class Hook(http.server.ThreadingHTTPServer):
    """A local incoming-webhook endpoint: records each POST; answers from a script of status codes (then 200)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{SECRET_PATH}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.posts.append({"path": self.path, "type": self.headers.get("Content-Type"), "body": json.loads(body)})
            status = self.server.script.pop(0) if self.server.script else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sender(url: str, **cfg: Any) -> WebhookSender:
    s = WebhookSender(WebhookConfig(url=url, **{"min_interval_s": 0, "retry_min_s": 0.05, "retry_max_s": 0.1, **cfg}))
    s.start()
    return s


def test_an_alert_is_posted_as_slack_and_teams_text(hook: Hook) -> None:
    s = sender(hook.url)
    try:
        assert s.submit("[Kitchen (kitchen)] CRITICAL route_failed (workflow): no ACK")
        wait_until(lambda: s.counters().sent == 1, what="one post")
    finally:
        s.stop()
    (post,) = hook.posts
    assert post["path"] == SECRET_PATH and post["type"] == "application/json"
    assert post["body"] == {"text": "[Kitchen (kitchen)] CRITICAL route_failed (workflow): no ACK"}
    counters = s.counters()
    assert (counters.failed, counters.suppressed, counters.dropped) == (0, 0, 0) and counters.last_sent_at


def test_a_500_is_retried_with_backoff_and_a_400_is_not(hook: Hook) -> None:
    hook.script = [500, 503]
    s = sender(hook.url, retries=3)
    try:
        s.submit("first")
        wait_until(lambda: s.counters().sent == 1, what="delivered on the third try")
        assert [p["body"]["text"] for p in hook.posts] == ["first"] * 3 and s.counters().retries == 2
        hook.script = [400]
        s.submit("second")
        wait_until(lambda: s.counters().failed == 1, what="a 400 fails at once")
        assert len(hook.posts) == 4 and s.counters().last_error == "HTTP 400"
    finally:
        s.stop()


def test_alerts_within_the_interval_are_suppressed_and_folded_into_the_next_post(hook: Hook) -> None:
    s = sender(hook.url, min_interval_s=1.5)
    try:
        s.submit("one")
        wait_until(lambda: s.counters().sent == 1, what="the first post")
        s.submit("two")
        s.submit("three")
        time.sleep(0.5)
        assert len(hook.posts) == 1 and s.counters().suppressed == 2, "nothing more within the interval"
        wait_until(lambda: s.counters().sent == 2, timeout=5, what="the folded post after the interval")
    finally:
        s.stop()
    text = hook.posts[1]["body"]["text"]
    assert text.startswith("two\n(+1 more within 2s:)") and text.endswith("three")


def test_a_server_that_never_answers_times_out_without_blocking_the_submitter() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections, never reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}{SECRET_PATH}"
    s = sender(url, timeout_s=0.5, retries=1, queue_size=2)
    try:
        started = time.monotonic()
        results = [s.submit(f"alert {i}") for i in range(5)]
        assert time.monotonic() - started < 0.1, "submit never waits for the network"
        assert results.count(False) >= 2 and s.counters().dropped >= 2, "a full queue drops, counted"
        wait_until(lambda: s.counters().failed >= 1, timeout=5, what="the post timing out")
        assert "timed out" in (s.counters().last_error or "")
    finally:
        s.stop()
        silent.close()


def test_a_server_answering_garbage_counts_as_a_failure_and_the_sender_goes_on() -> None:
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen(5)

    def answer() -> None:
        for _ in range(4):  # two posts and their retries
            conn, _ = garbage.accept()
            conn.recv(65536)
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    s = sender(f"http://127.0.0.1:{garbage.getsockname()[1]}{SECRET_PATH}", retries=1)
    try:
        s.submit("to a broken endpoint")
        wait_until(lambda: s.counters().failed == 1, what="the garbage answer counted as a failure")
        assert "BadStatusLine" in (s.counters().last_error or "") and s.counters().retries == 1
        s.submit("after")  # the sending thread lives on: a later alert is tried too
        wait_until(lambda: s.counters().failed == 2, what="the next post tried")
    finally:
        s.stop()
        garbage.close()


def test_the_url_never_reaches_the_log_or_the_state(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hook.script = [500, 500]
    bus = Bus()
    cfg = parse_config({"alerts": {"webhook": {"url": hook.url, "min_interval_s": 0, "retries": 1, "retry_min_s": 0.05}},
                        "device": {"id": "kitchen", "name": "Kitchen"}})
    worker = AlertsWorker(bus, cfg)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        bus.raise_alert(Alert("workflow", "route_failed", "critical", "no ACK"))
        bus.raise_alert(Alert("fill", "compartment_full_a", "warning", "full"))  # below min_severity: not posted
        wait_until(lambda: bus.states().get("alerts", {}).get("webhook", {}).get("failed") == 1, what="failed")
        bus.raise_alert(Alert("arduino", "link_down", "critical", "down"))
        wait_until(lambda: bus.states().get("alerts", {}).get("webhook", {}).get("sent") == 1, what="sent")
    finally:
        worker.request_stop()
        thread.join(5)
    texts = [p["body"]["text"] for p in hook.posts]
    assert texts[0].startswith("[Kitchen (kitchen)] CRITICAL route_failed (workflow): no ACK")
    assert len(texts) == 3 and "link_down" in texts[2] and not any("compartment_full" in t for t in texts)
    state = json.dumps(bus.states()["alerts"])
    assert "webhook-secret" not in state and "webhook-secret" not in caplog.text
    assert "posting to http://127.0.0.1/… failed: HTTP 500" in caplog.text, "the log names the host, not the path"
