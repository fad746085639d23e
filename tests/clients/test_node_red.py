"""The Node-RED console (config/nodered/smartbin-flow.json) in a real Node-RED 4.1 with FlowFuse Dashboard 2.0,
against the test broker and the daemon in simulation, and its dashboard in a real headless Chromium.

The pinned packages are installed with npm into ~/.cache/smartbin-tests/ on first use (about 20 s with a
warm npm cache) and reused. Without npm or network the module is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartbin_daemon.runtime.auth import Verifier

from ..conftest import REPO, Broker, DaemonProcess, Probe, free_port, simulation_doc, wait_until
from .installs import IN_CI, InstallFailed, install_node_red

FLOW = REPO / "config" / "nodered" / "smartbin-flow.json"
DEVICE = "console-bin"  # not the flow's default: proves the device id comes from the environment
ROOT = f"smartbin/{DEVICE}"
SECRET = "node-red-test-secret-0123456789abcdef"
CLIENT_ID = "smartbin-nodered-console"


def unavailable(why: str) -> None:
    """Skip locally; fail under CI, where the real clients must run."""
    if IN_CI:
        pytest.fail(f"{why} (CI=true: the real-client tests must run)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def node_red_install() -> Path:
    """node_modules with the pinned node-red and @flowfuse/node-red-dashboard (installed once, then reused)."""
    try:
        return install_node_red()
    except InstallFailed as exc:
        unavailable(str(exc))
        raise


def chromium() -> str:
    """The headless browser (apt-get install chromium; installed here under CI=true when missing)."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if IN_CI:
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=600)
        if path := shutil.which("chromium"):
            return path
    unavailable("chromium is not installed (apt-get install -y chromium)")
    raise AssertionError("unreachable")


@dataclass
class NodeRed:
    """A Node-RED process with the console flow, in its own user directory."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    modules: Path

    def log(self) -> str:
        """Everything it printed."""
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        """An address on it."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, by its own pid."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_node_red(modules: Path, workdir: Path, broker_port: int, secret: str | None) -> NodeRed:
    """node-red -u <workdir> -p <free port> with the console flow and the bin's environment."""
    workdir.mkdir(parents=True)
    (workdir / "node_modules").symlink_to(modules)
    flow = workdir / "flows.json"
    shutil.copy(FLOW, flow)
    port = free_port()
    settings = {"flowFile": str(flow), "credentialSecret": False, "uiHost": "127.0.0.1",
                "logging": {"console": {"level": "info", "metrics": False, "audit": False}}}
    (workdir / "settings.js").write_text(f"module.exports = {json.dumps(settings)};\n")
    env = {**os.environ, "SMARTBIN_DEVICE_ID": DEVICE, "SMARTBIN_MQTT_HOST": "127.0.0.1",
           "SMARTBIN_MQTT_PORT": str(broker_port)}
    env.pop("SMARTBIN_HMAC_SECRET", None)
    if secret is not None:
        env["SMARTBIN_HMAC_SECRET"] = secret
    log_path = workdir / "node-red.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(modules / ".bin" / "node-red"), "-u", str(workdir), "-p", str(port),
                                 "-s", str(workdir / "settings.js")], stdout=log, stderr=subprocess.STDOUT, env=env)
    nr = NodeRed(proc, port, log_path, modules)
    wait_until(lambda: "Started flows" in nr.log() or proc.poll() is not None, 60, what="Node-RED started its flows")
    assert proc.poll() is None, nr.log()
    return nr


def error_lines(log: str) -> list[str]:
    """Node-RED's [error] lines and missing-type warnings."""
    return [line for line in log.splitlines() if "[error]" in line or "missing type" in line.lower()
            or "Waiting for missing types" in line]


class DashboardSocket:
    """The dashboard's socket.io connection (engine.io long-polling over plain HTTP), as a browser opens it."""

    def __init__(self, nr: NodeRed) -> None:
        self.base = nr.url("/dashboard/socket.io/?EIO=4&transport=polling")
        opened = self._get(self.base)
        self.sid = json.loads(opened[opened.index("{"):])["sid"]
        self.base += f"&sid={self.sid}"
        self._post("40")
        wait_until(lambda: "40" in self._get(self.base), 10, what="socket.io namespace connected")

    @staticmethod
    def _get(url: str) -> str:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def _post(self, body: str) -> None:
        req = urllib.request.Request(self.base, data=body.encode(), method="POST",
                                     headers={"Content-Type": "text/plain;charset=UTF-8"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def click(self, widget_id: str) -> None:
        """What the browser sends when a button is clicked."""
        self._post("42" + json.dumps(["widget-action", widget_id, {"_event": {"type": "click"}}]))


@dataclass
class Console:
    """The simulated bin, the broker and Node-RED with the console flow."""

    broker: Broker
    daemon: DaemonProcess
    probe: Probe
    modules: Path
    workdir: Path
    node_red: NodeRed


@pytest.fixture(scope="module")
def console(node_red_install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """Broker, daemon (simulation, HMAC) and Node-RED with the right secret; all stopped at the end."""
    tmp = tmp_path_factory.mktemp("node-red")
    broker = Broker(tmp)
    broker.start()
    doc = simulation_doc(tmp, broker.port)
    doc["device"]["id"] = DEVICE
    doc["mqtt"]["state_interval_s"] = 2
    doc["logging"] = {"level": "INFO", "journal": "off"}
    doc["health"]["interval_s"] = 2
    doc["simulation"].update({"item_interval_s": 3, "item_dwell_s": 1.5, "seed": 7})
    doc["security"] = {"privileged": "hmac", "hmac_secret": SECRET}
    config = tmp / "simulation.yaml"
    config.write_text(yaml.safe_dump(doc))
    probe = Probe(broker.port)
    probe.subscribe(f"{ROOT}/#")
    daemon = DaemonProcess(config)
    started = time.monotonic()
    nr = None
    try:
        probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=60)
        nr = start_node_red(node_red_install, tmp / "nr-right", broker.port, SECRET)
        print(f"daemon and Node-RED up in {time.monotonic() - started:.1f} s")
        yield Console(broker, daemon, probe, node_red_install, tmp, nr)
    finally:
        if nr is not None:
            nr.stop()
        daemon.stop()
        probe.close()
        broker.stop()


def requests_seen(probe: Probe, command: str) -> list[dict[str, Any]]:
    """The requests the broker carried for a command."""
    return [m.json() for m in probe.on(f"{ROOT}/request/{command}")]


def answer_to(probe: Probe, command: str, transaction: str) -> dict[str, Any]:
    """The daemon's response to one transaction."""
    return probe.wait_for(f"{ROOT}/response/{command}", lambda m: m.json()["transaction"] == transaction, 15).json()


def test_the_flow_file_is_what_the_generator_writes() -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_flow", REPO / "config" / "nodered" / "build_flow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert FLOW.read_text() == module.render(), "run python config/nodered/build_flow.py"
    flow = json.loads(FLOW.read_text())
    assert not [n["id"] for n in flow if n["id"] == n["type"]], "a config node's id equals its type"
    types = {n["type"] for n in flow}
    assert {"ui-base", "ui-page", "ui-group", "ui-chart", "ui-table", "ui-button"} <= types
    assert not {t for t in types if t.startswith("ui_")}, "Dashboard 1 nodes in the flow"


def test_the_flow_loads_without_errors_and_connects_with_its_fixed_client_id(console: Console) -> None:
    wait_until(lambda: "Connected to broker: " + CLIENT_ID in console.node_red.log(), 20, what="MQTT connected")
    assert error_lines(console.node_red.log()) == []
    broker_log = console.broker.log_path.read_text(errors="replace")
    assert re.search(rf"New client connected .* as {CLIENT_ID} \(p5, c0", broker_log), "persistent MQTT 5 session"
    with urllib.request.urlopen(console.node_red.url("/dashboard/overview"), timeout=10) as r:
        assert r.status == 200 and b"<div id=\"app\"" in r.read()


def test_a_signed_button_press_reaches_the_daemon_and_is_accepted(console: Console) -> None:
    before = len(requests_seen(console.probe, "lid"))
    DashboardSocket(console.node_red).click("btn_lid_open")
    body = wait_until(lambda: requests_seen(console.probe, "lid")[before:], 15, what="the lid request")[0]
    assert body["args"] == {"op": "open"} and set(body["auth"]) == {"ts", "nonce", "sig"}
    Verifier(SECRET, DEVICE).verify("lid", body["args"], body["auth"], now=body["auth"]["ts"])
    answer = answer_to(console.probe, "lid", body["transaction"])
    assert answer["status"] == "ok", answer
    DashboardSocket(console.node_red).click("btn_lid_close")
    close = wait_until(lambda: requests_seen(console.probe, "lid")[before + 1:], 15, what="the close request")[0]
    assert "auth" not in close and answer_to(console.probe, "lid", close["transaction"])["status"] == "ok"
    assert error_lines(console.node_red.log()) == []


def test_a_wrong_secret_is_refused_and_an_unset_secret_sends_nothing_privileged(console: Console) -> None:
    console.node_red.stop()
    wrong = start_node_red(console.modules, console.workdir / "nr-wrong", console.broker.port, "not-the-secret")
    try:
        wait_until(lambda: "Connected to broker" in wrong.log(), 20, what="MQTT connected")
        before = len(requests_seen(console.probe, "lid"))
        DashboardSocket(wrong).click("btn_lid_open")
        body = wait_until(lambda: requests_seen(console.probe, "lid")[before:], 15, what="the lid request")[0]
        answer = answer_to(console.probe, "lid", body["transaction"])
        assert answer["status"] == "error" and "signature does not match" in answer["error"]
        dom = wait_for_dom(wrong, "maintenance", "signature does not match", console.workdir / "wrong-secret.png")
        assert "Open lid" in dom
    finally:
        wrong.stop()
    unset = start_node_red(console.modules, console.workdir / "nr-unset", console.broker.port, None)
    try:
        wait_until(lambda: "Connected to broker" in unset.log(), 20, what="MQTT connected")
        before = len(requests_seen(console.probe, "lid"))
        socket = DashboardSocket(unset)
        socket.click("btn_lid_open")
        socket.click("btn_lid_close")  # unprivileged: still sent, and it arrives after the refused one would have
        wait_until(lambda: requests_seen(console.probe, "lid")[before:], 15, what="the close request")
        time.sleep(1)
        assert [r["args"]["op"] for r in requests_seen(console.probe, "lid")[before:]] == ["close"]
        wait_for_dom(unset, "maintenance", "SMARTBIN_HMAC_SECRET is not set", console.workdir / "unset-secret.png")
        assert error_lines(unset.log()) == []
    finally:
        unset.stop()
    console.node_red = start_node_red(console.modules, console.workdir / "nr-right-again", console.broker.port, SECRET)


def artefact_dirs(tmp: Path) -> list[Path]:
    """Where screenshots go: `tmp` and $SMARTBIN_TEST_ARTIFACTS/node-red when set."""
    dirs = [tmp]
    if os.environ.get("SMARTBIN_TEST_ARTIFACTS"):
        dirs.append(Path(os.environ["SMARTBIN_TEST_ARTIFACTS"]) / "node-red")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


CDP_SCRIPT = r"""
// Drives one Chromium page over the DevTools protocol (ws from Node-RED's own dependencies): waits until the
// page's text contains every wanted string (or the time is up), then writes a screenshot and prints the DOM.
const WebSocket = require("ws");
const fs = require("fs");
const [wsUrl, shot, wantJson, timeoutMs] = process.argv.slice(1);
const want = JSON.parse(wantJson);
const ws = new WebSocket(wsUrl, {perMessageDeflate: false});
let id = 0; const waiting = {};
const call = (method, params) => new Promise((resolve) => { waiting[++id] = resolve;
    ws.send(JSON.stringify({id: id, method: method, params: params || {}})); });
ws.on("message", (data) => { const m = JSON.parse(data); if (m.id && waiting[m.id]) waiting[m.id](m.result || {}); });
const text = async () => ((await call("Runtime.evaluate", {expression: "document.body ? document.body.innerText : ''",
    returnByValue: true})).result || {}).value || "";
ws.on("open", async () => {
    const until = Date.now() + Number(timeoutMs);
    let body = await text();
    while (Date.now() < until && !want.every((w) => body.includes(w))) {
        await new Promise((r) => setTimeout(r, 300));
        body = await text();
    }
    await new Promise((r) => setTimeout(r, 500));  // let the last messages paint
    const png = await call("Page.captureScreenshot", {format: "png"});
    fs.writeFileSync(shot, Buffer.from(png.data || "", "base64"));
    const dom = await call("Runtime.evaluate", {expression: "document.documentElement.outerHTML", returnByValue: true});
    process.stdout.write(dom.result.value);
    process.exit(0);
});
"""


def browse(nr: NodeRed, page: str, screenshot: Path, want: tuple[str, ...] = (), timeout: float = 20) -> str:
    """Open a dashboard page in headless Chromium, wait until its text shows `want`; save a screenshot, return the DOM."""
    port = free_port()
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--window-size=1280,1000", f"--remote-debugging-port={port}",
                             f"--user-data-dir={screenshot.parent / f'chromium-{port}'}", nr.url(f"/dashboard/{page}")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def page_target() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None
        ws_url = wait_until(lambda: _quiet(page_target), 20, what="Chromium's DevTools endpoint")
        env = {**os.environ, "NODE_PATH": str(nr.modules)}
        result = subprocess.run(["node", "-e", CDP_SCRIPT, ws_url, str(screenshot), json.dumps(list(want)),
                                 str(int(timeout * 1000))], capture_output=True, text=True, timeout=timeout + 30,
                                env=env, check=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(screenshot.parent / f"chromium-{port}", ignore_errors=True)
    screenshot.with_suffix(".html").write_text(result.stdout)
    for extra in artefact_dirs(screenshot.parent)[1:]:
        shutil.copy(screenshot, extra / screenshot.name)
        shutil.copy(screenshot.with_suffix(".html"), extra / screenshot.with_suffix(".html").name)
    return result.stdout


def _quiet(probe: Any) -> Any:
    """probe(), or None while it raises OSError (Chromium still starting)."""
    try:
        return probe()
    except OSError:
        return None


def wait_for_dom(nr: NodeRed, page: str, text: str, screenshot: Path) -> str:
    """The page's DOM once it shows `text`."""
    dom = browse(nr, page, screenshot, (text,))
    assert text in dom, f"{page} does not show {text!r}: {dom[-3000:]}"
    return dom


PAGES = ["overview", "bins", "detections", "system", "configuration", "maintenance"]


def test_the_dashboard_pages_render_the_bins_live_values_in_a_browser(console: Console, tmp_path: Path) -> None:
    health = console.probe.wait_for(f"{ROOT}/health", timeout=20).json()
    fill = console.probe.wait_for(f"{ROOT}/fill", timeout=20).json()
    dirs = artefact_dirs(tmp_path / "screenshots")
    names = [c["name"] for c in fill["compartments"].values()]
    want = {"overview": ("online since", "/ 100", "Active alerts and recent events", "Last item"), "bins": (*names, "Refresh history"),
            "detections": ("Recent items", "Confidence", "Items per category"),
            "system": ("Hostname", health["system"]["hostname"], "Restart worker"),
            "configuration": ("Press Load", "Apply change", "Roll back"), "maintenance": ("Open lid", "Recent actions")}
    doms = {page: browse(console.node_red, page, dirs[0] / f"{page}.png", want[page]) for page in PAGES}
    for page, texts in want.items():
        assert all(text in doms[page] for text in texts), (page, texts, doms[page][-3000:])
    for page in PAGES:
        assert (dirs[0] / f"{page}.png").stat().st_size > 5000, f"{page}: empty screenshot"
    overview = doms["overview"]
    assert "online since" in overview and "/ 100" in overview, overview[-3000:]
    scores = [int(s) for s in re.findall(r"(\d+) / 100", overview)]
    assert scores and abs(scores[0] - health["score"]) <= 20
    assert all(name in doms["bins"] for name in names), doms["bins"][-3000:]
    assert "Fill %" in doms["bins"] and "Full at (forecast)" in doms["bins"]
    assert "Hostname" in doms["system"] and health["system"]["hostname"] in doms["system"]
    assert "Maintenance mode" in doms["maintenance"] and "Open lid" in doms["maintenance"]
    assert error_lines(console.node_red.log()) == []


def test_the_configuration_page_shows_the_redacted_configuration_on_load(console: Console) -> None:
    DashboardSocket(console.node_red).click("btn_config_get")
    dom = wait_for_dom(console.node_red, "configuration", "**********", console.workdir / "configuration-loaded.png")
    assert f'"id": "{DEVICE}"' in dom and SECRET not in dom


def test_events_sent_while_node_red_restarts_arrive_and_an_offline_bin_is_marked_stale(console: Console) -> None:
    console.node_red.stop()
    event = {"id": "e" * 32, "seq": 10**9, "type": "alert", "ts": "2026-01-01T00:00:00+00:00", "ts_source": "clock",
             "device": DEVICE, "component": "test",
             "data": {"source": "test", "code": "restart_probe", "severity": "warning",
                      "message": "raised while Node-RED was down", "active": True}}
    console.probe.publish(f"{ROOT}/event/alert", json.dumps(event))
    console.node_red = start_node_red(console.modules, console.workdir / "nr-after-pause", console.broker.port, SECRET)
    wait_for_dom(console.node_red, "overview", "raised while Node-RED was down", console.workdir / "events.png")
    console.daemon.stop()
    console.probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"offline", timeout=20)
    dom = wait_for_dom(console.node_red, "overview", "OFFLINE since", console.workdir / "offline.png")
    assert "stale: bin offline since" in dom
    assert error_lines(console.node_red.log()) == []

