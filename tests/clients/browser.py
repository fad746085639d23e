"""Headless Chromium driven over the DevTools protocol: load a page, wait for text, screenshot, return the page's text.

The text is read through every shadow root (HA's frontend and Dashboard 2.0 are web components, which
`--dump-dom` does not serialise). Run as a script with a Python that has aiohttp (Home Assistant's venv):
`python browser.py URL PNG NEEDLE [NEEDLE...]` prints JSON {"found": [...], "text": "..."}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEEP_TEXT = """(() => { const out = []; const walk = (n) => { if (n.shadowRoot) walk(n.shadowRoot);
  for (const c of n.childNodes) { if (c.nodeType === 3) { const t = c.textContent.trim(); if (t) out.push(t); }
  else if ((c.nodeType === 1 && !['STYLE', 'SCRIPT'].includes(c.tagName)) || c.nodeType === 11) walk(c); } };
  walk(document.documentElement);
  return out.join('\\n'); })()"""


def chromium() -> str | None:
    """The distribution's chromium binary, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive(ws_url: str, url: str, png: Path, needles: list[str], timeout: float) -> dict[str, object]:
    import aiohttp  # noqa: PLC0415 - only in the client's venv

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        ids = iter(range(1, 10_000))

        async def call(method: str, **params: object) -> dict[str, object]:
            msg_id = next(ids)
            await ws.send_json({"id": msg_id, "method": method, "params": params})
            while True:
                reply = await ws.receive_json()
                if reply.get("id") == msg_id:
                    return reply.get("result", {})  # type: ignore[no-any-return]

        await call("Page.enable")
        await call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            result = await call("Runtime.evaluate", expression=DEEP_TEXT, returnByValue=True)
            text = str(result.get("result", {}).get("value", ""))  # type: ignore[union-attr]
            if all(n in text for n in needles):
                await asyncio.sleep(2.0)  # let the last values arrive before the picture
                text = str((await call("Runtime.evaluate", expression=DEEP_TEXT, returnByValue=True))
                           .get("result", {}).get("value", ""))  # type: ignore[union-attr]
                break
        shot = await call("Page.captureScreenshot", format="png")
        png.write_bytes(base64.b64decode(str(shot["data"])))
        return {"found": [n for n in needles if n in text], "text": text}


def capture(url: str, png: Path, needles: list[str], timeout: float = 60.0) -> dict[str, object]:
    """Load `url` in headless Chromium, wait until every needle is in the page's text, save a screenshot."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                 "--window-size=1280,900", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ws_url = _page_socket(port, proc)
            return asyncio.run(_drive(ws_url, url, png, needles, timeout))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _page_socket(port: int, proc: subprocess.Popen[bytes]) -> str:
    import urllib.request  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("chromium's DevTools endpoint did not come up")


if __name__ == "__main__":
    os.environ.setdefault("HOME", tempfile.gettempdir())
    print(json.dumps(capture(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])))
