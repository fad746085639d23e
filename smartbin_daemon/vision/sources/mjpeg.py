"""HTTP MJPEG streams through a small stdlib client with a real socket timeout."""

from __future__ import annotations

import base64
import logging
import re
import socket
import ssl
import time
from email.parser import BytesHeaderParser
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from .base import MAX_PART_BYTES, OPEN_TIMEOUT_S, READ_TIMEOUT_S, Pacer, SourceError, redact, to_bgr

logger = logging.getLogger(__name__)

class MultipartJpegParser:
    """Incremental multipart/x-mixed-replace parser: feed bytes, pop complete part bodies.

    Tolerates what real cameras send: parts with or without Content-Length, boundaries declared
    with or without the leading `--`, `\\n` instead of `\\r\\n`, and garbage before the first boundary.
    """

    _HEADER_END = re.compile(rb"\r?\n\r?\n")

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1").lstrip(b"-")
        self.buffer = bytearray()
        self.state = "seek"
        self.length: int | None = None
        self.parts: list[bytes] = []
        self.ended = False

    def feed(self, data: bytes) -> None:
        """Add received bytes and cut out every complete part."""
        self.buffer += data
        while self._step():
            pass
        if len(self.buffer) > MAX_PART_BYTES:
            raise SourceError(f"no complete MJPEG part in {MAX_PART_BYTES} bytes")

    def pop_latest(self) -> tuple[bytes | None, int]:
        """The newest complete part and how many older ones were dropped unseen."""
        if not self.parts:
            return None, 0
        latest, dropped = self.parts[-1], len(self.parts) - 1
        self.parts.clear()
        return latest, dropped

    def _step(self) -> bool:
        buf = self.buffer
        if self.state == "seek":
            at = buf.find(self.delimiter)
            if at < 0:
                keep = len(self.delimiter) - 1
                if len(buf) > keep:
                    del buf[:len(buf) - keep]
                return False
            del buf[:at + len(self.delimiter)]
            self.state = "headers"
            return True
        if self.state == "headers":
            if buf[:2] == b"--":
                self.ended = True  # closing delimiter: the server ends the stream
                buf.clear()
                return False
            match = self._HEADER_END.search(buf)
            if match is None:
                if len(buf) > 8192:
                    self.state = "seek"  # not a part header: resynchronise on the next delimiter
                    return True
                return False
            headers = bytes(buf[:match.start()])
            del buf[:match.end()]
            self.length = None
            found = re.search(rb"(?im)^\s*content-length\s*:\s*(\d+)\s*$", headers)
            if found is not None:
                self.length = int(found.group(1))
            self.state = "body"
            return True
        # body
        if self.length is not None:
            if len(buf) < self.length:
                return False
            self.parts.append(bytes(buf[:self.length]))
            del buf[:self.length]
            self.state = "seek"
            return True
        at = buf.find(self.delimiter)
        if at < 0:
            return False
        body = bytes(buf[:at])
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        self.parts.append(body)
        del buf[:at + len(self.delimiter)]
        self.state = "headers"
        return True


class MjpegSource:
    """An HTTP(S) MJPEG stream read with the stdlib: real socket timeouts, newest part decoded, surplus dropped."""

    kind = "url"

    def __init__(self, url: str, *, fps: float, open_timeout_s: float = OPEN_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pacer = Pacer(fps)
        self.sock: socket.socket | None = None
        self.parser: MultipartJpegParser | None = None
        self._pending: bytes | None = None
        self.skipped = 0
        self.corrupt = 0
        self.undecoded = 0

    def describe(self) -> str:
        """E.g. `http://cam/stream (MJPEG over HTTP)`."""
        return f"{redact(self.url)} (MJPEG over HTTP)"

    def stats(self) -> dict[str, int]:
        """Parts dropped undecoded (newer ones waited), parts that did not decode, parts only grabbed."""
        return {"skipped": self.skipped, "corrupt": self.corrupt, "undecoded": self.undecoded}

    def open(self) -> None:
        """Connect, send the request (HTTP/1.0: no chunked replies), check status and content type."""
        self.close()
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"not an http(s) URL: {redact(self.url)}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.0", f"Host: {host_header}", "User-Agent: smartbin-daemon",
                 "Accept: multipart/x-mixed-replace, */*"]
        if parts.username is not None:
            userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            lines.append("Authorization: Basic " + base64.b64encode(userpass).decode("ascii"))
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        deadline = time.monotonic() + self.open_timeout_s
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=self.open_timeout_s)
            if parts.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            sock.sendall(request)
            head, rest = self._read_head(sock, deadline)
            boundary = self._check_head(head)
        except (OSError, SourceError, ValueError) as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"cannot connect to {redact(self.url)}: {exc}") from exc
        self.sock = sock
        self.parser = MultipartJpegParser(boundary)
        self._pending = None
        if rest:
            self.parser.feed(rest)

    @staticmethod
    def _read_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
        data = bytearray()
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                return bytes(data[:end]), bytes(data[end + 4:])
            if len(data) > 65536:
                raise SourceError("HTTP response headers too long")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError("no HTTP response in time")
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                raise SourceError("connection closed before the HTTP response")
            data += chunk

    def _check_head(self, head: bytes) -> str:
        status_line, _, header_bytes = head.partition(b"\r\n")
        fields = status_line.decode("latin-1").split(None, 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise SourceError(f"not an HTTP response: {status_line[:60]!r}")
        status = int(fields[1])
        headers = BytesHeaderParser().parsebytes(header_bytes)
        if status != 200:
            reason = fields[2] if len(fields) > 2 else ""
            hint = ""
            if status == 401:
                scheme = (headers.get("WWW-Authenticate") or "").split(" ", 1)[0]
                hint = (" (only Basic authentication is supported; put user:password in the URL)"
                        if scheme.lower() != "basic" else " (check the user and password in the URL)")
            elif status in (301, 302, 303, 307, 308):
                hint = f" (redirects are not followed; configure {redact(headers.get('Location', '?'))})"
            raise SourceError(f"HTTP {status} {reason}{hint}".strip())
        content_type = headers.get_content_type()
        if content_type != "multipart/x-mixed-replace":
            raise SourceError(f"{redact(self.url)} serves {content_type}, not an MJPEG stream (multipart/x-mixed-replace)")
        boundary = headers.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise SourceError("MJPEG stream without a multipart boundary")
        return boundary

    def read(self) -> np.ndarray | None:
        """The newest complete frame once due; None after READ_TIMEOUT_S without one; SourceError on EOF/errors."""
        deadline = time.monotonic() + self.read_timeout_s
        while (due := self._due_part(deadline)) is not None:
            data, now = due
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                self.corrupt += 1
                continue
            self.pacer.mark(now)
            return to_bgr(image)
        return None

    def grab(self) -> bool:
        """Drop the newest complete part undecoded once due (draining the socket as `read` does)."""
        due = self._due_part(time.monotonic() + self.read_timeout_s)
        if due is None:
            return False
        self.undecoded += 1
        self.pacer.mark(due[1])
        return True

    def _due_part(self, deadline: float) -> tuple[bytes, float] | None:
        """The newest complete part and when it fell due, once the pacer allows one; None at `deadline`."""
        sock, parser = self.sock, self.parser
        if sock is None or parser is None:
            raise SourceError("not open")
        while True:
            latest, dropped = parser.pop_latest()
            if latest is not None:
                self.skipped += dropped + (self._pending is not None)
                self._pending = latest
            now = time.monotonic()
            wait_due = self.pacer.remaining(now)
            if self._pending is not None and wait_due <= 0:
                data, self._pending = self._pending, None
                return data, now
            if parser.ended:
                raise SourceError("the server ended the MJPEG stream")
            remaining = deadline - now
            if remaining <= 0:
                return None
            # Keep draining the socket while a frame waits for its turn, so the newest one wins.
            sock.settimeout(max(0.005, min(remaining, wait_due) if self._pending is not None else remaining))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if self._pending is not None:
                    continue
                return None
            except OSError as exc:
                raise SourceError(f"connection lost: {exc}") from exc
            if not chunk:
                raise SourceError("the server closed the connection")
            parser.feed(chunk)

    def close(self) -> None:
        """Close the connection."""
        sock, self.sock = self.sock, None
        self.parser = None
        self._pending = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- choosing a backend


