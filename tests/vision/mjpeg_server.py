"""A real HTTP MJPEG camera for tests: stdlib `http.server`, multipart/x-mixed-replace JPEG frames with a counter.

The server can be stopped (listener *and* open connections closed, as when a camera reboots),
restarted on the same port, or made to hang (connections stay open, nothing more is sent, as when
a camera's encoder freezes). Each frame carries its number twice: as text for people, and as
16 black/white blocks along the top edge that `decode_counter()` reads back despite JPEG loss.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any

import cv2
import numpy as np

COUNTER_BITS = 16
BLOCK_H = 10


def draw_frame(n: int, width: int, height: int) -> np.ndarray:
    """A BGR test image showing frame number `n` as text and as bit blocks along the top edge."""
    image = np.full((height, width, 3), 90, np.uint8)
    block_w = width // COUNTER_BITS
    for bit in range(COUNTER_BITS):
        if (n >> bit) & 1:
            image[:BLOCK_H, bit * block_w:(bit + 1) * block_w] = 255
        else:
            image[:BLOCK_H, bit * block_w:(bit + 1) * block_w] = 0
    cv2.putText(image, str(n), (4, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 1)
    return image


def decode_counter(image: np.ndarray) -> int:
    """The frame number drawn by `draw_frame` (read from the bit blocks)."""
    height, width = image.shape[:2]
    block_w = width // COUNTER_BITS
    value = 0
    for bit in range(COUNTER_BITS):
        cell = image[2:BLOCK_H - 2, bit * block_w + 2:(bit + 1) * block_w - 2]
        if float(cell.mean()) > 128:
            value |= 1 << bit
    return value


class _HttpServer(ThreadingMixIn, HTTPServer):
    """Threaded; `server_close()` joins every handler thread, so a stopped server leaves none behind."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    owner: MjpegServer


class _Handler(BaseHTTPRequestHandler):
    """Serves the stream on `owner.path`, 404 elsewhere."""

    protocol_version = "HTTP/1.0"
    server: _HttpServer
    timeout = 5.0  # a client that stops reading cannot pin a handler thread forever

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path != owner.path:
            self.send_error(404)
            return
        if owner.auth is not None:
            expected = "Basic " + base64.b64encode(f"{owner.auth[0]}:{owner.auth[1]}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                self.end_headers()
                return
        owner._register(self.connection)
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={owner.boundary}")
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("Pragma", "no-cache")
            self.end_headers()
            self.wfile.flush()
            owner._stream(self.wfile)
        except OSError:
            pass  # the client went away or the server closed us: both are normal here
        finally:
            owner._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class MjpegServer:
    """A controllable MJPEG camera on 127.0.0.1 (optionally behind HTTP Basic auth)."""

    def __init__(self, port: int = 0, *, width: int = 160, height: int = 120, fps: float = 20.0,
                 content_length: bool = True, boundary: str = "smartbinframe", path: str = "/stream.mjpg",
                 auth: tuple[str, str] | None = None) -> None:
        self.port = port
        self.auth = auth
        self.width = width
        self.height = height
        self.fps = fps
        self.content_length = content_length
        self.boundary = boundary
        self.path = path
        self.frames_sent = 0
        self.connections_total = 0
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._hang = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()

    @property
    def url(self) -> str:
        """The stream URL."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        """Whether it is listening."""
        return self._httpd is not None

    def open_connections(self) -> int:
        """Clients connected right now."""
        with self._lock:
            return len(self._conns)

    # -- control ----------------------------------------------------------------------------

    def start(self) -> MjpegServer:
        """Listen (on the same port as before after a stop) and serve in a thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HttpServer(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mjpeg-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection (clients see EOF/reset at once)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def restart(self) -> None:
        """Stop, then listen again on the same port."""
        self.stop()
        self.start()

    def hang(self) -> None:
        """Keep every connection open but send nothing more (new clients get headers only)."""
        self._hang.set()

    def resume(self) -> None:
        """Send frames again."""
        self._hang.clear()

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler ---------------------------------------------------------------

    def _register(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
            self.connections_total += 1

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _part(self) -> bytes:
        with self._lock:
            self.frames_sent += 1
            n = self.frames_sent
        ok, jpeg = cv2.imencode(".jpg", draw_frame(n, self.width, self.height), [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        body = jpeg.tobytes()
        head = f"--{self.boundary}\r\nContent-Type: image/jpeg\r\n"
        if self.content_length:
            head += f"Content-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body + b"\r\n"

    def _stream(self, wfile: Any) -> None:
        period = 1.0 / self.fps
        due = time.monotonic()
        while not self._stopping.is_set():
            if self._hang.is_set():
                self._stopping.wait(0.05)
                due = time.monotonic()
                continue
            wfile.write(self._part())
            wfile.flush()
            due += period
            delay = due - time.monotonic()
            if delay < -1.0:
                due = time.monotonic()  # we fell far behind (CPU contention): do not burst to catch up
            elif delay > 0:
                self._stopping.wait(delay)
