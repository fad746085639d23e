"""A real Home Assistant core for the client tests: a pinned version in its own cached venv, a config dir whose MQTT
integration is a pre-written config entry, a user and an access token for the REST API."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .installs import CACHE, locked

PY313 = Path.home() / ".pyenv" / "versions" / "3.13.0" / "bin" / "python"


@dataclass(frozen=True)
class Pin:
    """One Home Assistant release and what it runs on."""

    version: str
    python: Path
    browser: bool  # the frontend too, for the browser check
    none_is_unknown: bool = True  # a sensor template rendering `None` reads unknown (HA 2024.2+; before: the text)


PINS = (
    Pin("2025.4.4", PY313, True),
    Pin("2024.1.6", Path("/usr/bin/python3.11"), False, none_is_unknown=False),  # where no Python 3.13 is installed
)

DOMAINS = ("mqtt", "http", "api", "auth", "sensor", "binary_sensor", "button", "switch", "camera", "image", "event")
"""The integrations the test uses; their requirements and their dependencies' are installed (hass runs --skip-pip)."""

_REQUIREMENTS = """\
import json, pathlib, sys
import homeassistant.components as c
root, todo, seen, reqs = pathlib.Path(c.__path__[0]), sys.argv[1:], set(), set()
while todo:
    d = todo.pop()
    if d not in seen and (root / d / "manifest.json").exists():
        seen.add(d)
        m = json.loads((root / d / "manifest.json").read_text())
        reqs.update(m.get("requirements", []))
        todo += m.get("dependencies", [])
print("\\n".join(sorted(reqs)))
"""


class Unavailable(RuntimeError):
    """Home Assistant could not be installed or started here."""


def pick_pin() -> Pin:
    """The newest pin whose Python exists on this machine (`SMARTBIN_HA_VERSION` picks one of the pins)."""
    wanted = os.environ.get("SMARTBIN_HA_VERSION")
    for pin in PINS:
        if pin.python.exists() and wanted in (None, pin.version):
            return pin
    raise Unavailable(f"none of the Pythons for the pinned Home Assistant versions exists: {[str(p.python) for p in PINS]}")


def install(pin: Pin) -> Path:
    """The venv's python of `pin`, created under CACHE on first use (a marker makes reruns instant).

    Home Assistant's own package first, then the pinned requirements its manifests give for DOMAINS (and the
    frontend's for a browser pin), as `hass` would pip-install them at its first start.
    """
    venv = CACHE / f"ha-{pin.version}"
    with locked(venv.name):
        return _install(pin, venv)


def _install(pin: Pin, venv: Path) -> Path:
    python = venv / "bin" / "python"
    domains = [*DOMAINS, "frontend", "lovelace"] if pin.browser else list(DOMAINS)
    marker = venv / ".smartbin-installed"
    if marker.exists() and marker.read_text() == " ".join(domains):
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run([str(pin.python), "-m", "venv", str(venv)], 120)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, f"homeassistant=={pin.version}"], 1200)
    reqs = _run([str(python), "-c", _REQUIREMENTS, *domains], 60).split()
    if reqs:
        _run([*pip, *reqs], 1200)
    marker.write_text(" ".join(domains))
    return python


def _run(cmd: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{' '.join(cmd[:4])}: {exc}") from exc
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(cmd[:4])} exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def config_entries(broker_port: int) -> dict[str, Any]:
    """`.storage/core.config_entries` with one MQTT entry (oldest schema: HA migrates it forward at start)."""
    entry = {"entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 1, "domain": "mqtt", "title": "test broker",
             "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": True,
                      "discovery_prefix": "homeassistant"},
             "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
             "unique_id": None, "disabled_by": None}
    return {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}


CONFIGURATION = """\
homeassistant:
  name: SmartBin test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
auth:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""

FRONTEND = """\
frontend:
lovelace:
  mode: storage
  dashboards:
    smartbin-yaml:
      mode: yaml
      filename: smartbin-dashboard.yaml
      title: SmartBin
      icon: mdi:delete-variant
      show_in_sidebar: true
"""


class HomeAssistant:
    """`python -m homeassistant -c DIR --skip-pip` with the MQTT entry, a user and a token."""

    USER, PASSWORD = "smartbin", "smartbin-test-password"

    def __init__(self, python: Path, config_dir: Path, broker_port: int, http_port: int,
                 dashboard: Path | None = None) -> None:
        self.python = python
        self.dir = config_dir
        self.port = http_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        storage = config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        text = CONFIGURATION.format(port=http_port)
        if dashboard is not None:
            text += FRONTEND
            shutil.copy(dashboard, config_dir / "smartbin-dashboard.yaml")
            (storage / "onboarding").write_text(json.dumps(
                {"version": 4, "minor_version": 1, "key": "onboarding",
                 "data": {"done": ["user", "core_config", "analytics", "integration"]}}))
        (config_dir / "configuration.yaml").write_text(text)
        (storage / "core.config_entries").write_text(json.dumps(config_entries(broker_port)))
        self._hass("--script", "auth", "-c", str(config_dir), "add", self.USER, self.PASSWORD)

    def _hass(self, *args: str) -> None:
        _run([str(self.python), "-m", "homeassistant", *args], 180)

    @property
    def log_path(self) -> Path:
        """HA's own log file."""
        return self.dir / "home-assistant.log"

    def start(self, timeout: float = 180.0) -> None:
        """Start and wait until the REST API answers with a token."""
        out = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([str(self.python), "-m", "homeassistant", "-c", str(self.dir), "--skip-pip"],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=str(self.dir))
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"hass exited {self.proc.returncode}: {self.log_tail()}")
            try:
                self.token = self._login()
                if self.get("/api/")["message"] == "API running.":
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                time.sleep(1.0)
        raise Unavailable(f"hass did not answer in {timeout:.0f} s: {self.log_tail()}")

    def _auth_code(self) -> str:
        """A one-time authorization code through the login flow (the way the frontend logs in)."""
        client = self.url + "/"
        flow = self._post_json("/auth/login_flow", {"client_id": client, "handler": ["homeassistant", None],
                                                    "redirect_uri": client}, auth=False)
        done = self._post_json(f"/auth/login_flow/{flow['flow_id']}",
                               {"client_id": client, "username": self.USER, "password": self.PASSWORD}, auth=False)
        return str(done["result"])

    def logged_in_url(self, path: str) -> str:
        """A frontend URL that logs the browser in (the OAuth callback the frontend itself handles)."""
        state = base64.b64encode(json.dumps({"hassUrl": self.url, "clientId": self.url + "/"}).encode()).decode()
        query = urllib.parse.urlencode({"auth_callback": "1", "code": self._auth_code(), "state": state})
        return f"{self.url}{path}?{query}"

    def _login(self) -> str:
        """An access token for the REST API."""
        client = self.url + "/"
        body = urllib.parse.urlencode({"grant_type": "authorization_code", "code": self._auth_code(),
                                       "client_id": client}).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url + "/auth/token", data=body), timeout=10) as r:
            return str(json.loads(r.read())["access_token"])

    def _post_json(self, path: str, body: Any, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.loads(r.read() or b"null")

    def get(self, path: str) -> Any:
        """GET a REST API path with the token."""
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.loads(r.read())

    def states(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """entity_id → state object, for the entity ids starting with `prefix` (e.g. `sensor.smartbin_sim_bin`)."""
        return {s["entity_id"]: s for s in self.get("/api/states") if s["entity_id"].split(".", 1)[1].startswith(prefix)}

    def service(self, domain: str, service: str, entity_id: str) -> Any:
        """Call a service on one entity."""
        return self._post_json(f"/api/services/{domain}/{service}", {"entity_id": entity_id})

    def log_tail(self, n: int = 4000) -> str:
        """The end of HA's log (or its stdout when the log was not written yet)."""
        for path in (self.log_path, self.dir / "stdout.log"):
            if path.exists():
                return path.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def ci() -> bool:
    """Whether this run is CI (where a client that cannot be installed is a failure, not a skip)."""
    return os.environ.get("CI", "").lower() == "true"


__all__ = ["HomeAssistant", "Pin", "PINS", "Unavailable", "ci", "install", "pick_pin"]
