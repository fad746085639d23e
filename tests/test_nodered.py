"""The Node-RED console's requests exist in the MQTT contract (README), and its request node signs them exactly
as the daemon verifies them (run under plain `node`; tests/clients/test_node_red.py runs the flow in Node-RED)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.runtime.auth import AuthError, Verifier

REPO = Path(__file__).resolve().parents[1]
FLOW = json.loads((REPO / "config" / "nodered" / "smartbin-flow.json").read_text())
README = (REPO / "README.md").read_text()
DEVICE = "kitchen-bin"


def requests_table() -> set[str]:
    """The commands of the README's request table."""
    start = README.index("### Requests")
    return set(re.findall(r"^\| `([a-z_/]+)` \| [a-z]+", README[start:README.index("\n### Security", start)], flags=re.M))


def button_requests() -> list[dict[str, Any]]:
    """The request descriptions of every button, switch and scheduled refresh of the flow."""
    specs: list[dict[str, Any]] = []
    for n in FLOW:
        for key in ("payload", "onvalue", "offvalue"):
            if n.get(f"{key}Type") == "json" and "command" in n.get(key, ""):
                value = json.loads(n[key])
                specs += value if isinstance(value, list) else [value]
    return specs


def test_every_request_of_the_console_is_in_the_contract_and_privileged_ones_are_signed() -> None:
    specs = button_requests()
    assert len(specs) >= 20
    assert {s["command"] for s in specs} - requests_table() == set()
    by_title = {s["title"]: s for s in specs}
    for title in ("Open lid", "Unlock lid", "Change configuration", "Roll back configuration", "Compartment emptied",
                  "Restart worker", "Self-test with moving parts"):
        assert by_title[title]["sign"] == "always", title
    assert by_title["Maintenance mode off"]["sign"] == "if_available"
    assert all(s["title"] and not s["title"].startswith("smartbin/") for s in specs)


def run_request_node(spec: dict[str, Any], secret: str | None, key_id: str | None = None, wait_ms: int = 0) -> list[Any]:
    """Run the flow's request function once under node with a minimal Node-RED sandbox; what it sent."""
    func = next(n for n in FLOW if n["id"] == "fn_request")["func"]
    env = {"SMARTBIN_DEVICE_ID": DEVICE, "SMARTBIN_HMAC_SECRET": secret, "SMARTBIN_HMAC_KEY_ID": key_id}
    harness = (
        "const crypto = require('crypto');\n"
        f"const vars = {json.dumps(env)};\n"
        "const env = {get: (k) => vars[k] === null ? undefined : vars[k]};\n"
        "const store = () => { const m = {}; return {get: (k) => m[k], set: (k, v) => { m[k] = v; }}; };\n"
        "const context = store(), flow = store(); const sent = [];\n"
        "const node = {send: (m) => sent.push(m)};\n"
        f"const msg = {{payload: {json.dumps(spec)}}};\n"
        "(function(msg) {\n" + func + "\n})(msg);\n"
        f"setTimeout(() => {{ process.stdout.write(JSON.stringify(sent)); process.exit(0); }}, {wait_ms});\n"
    )
    result = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node (apt install nodejs)")


@needs_node
@pytest.mark.parametrize("command,args", [("route", {"compartment": 1}), ("lid", {"op": "open"}),
                                          ("bin/emptied", {"compartment": "paper", "z": [1, "ä", None, True, 0.5]})])
def test_the_console_signs_requests_exactly_like_the_daemon_checks_them(command: str, args: dict[str, Any]) -> None:
    spec = {"command": command, "title": "T", "args": args, "sign": "always", "timeout_s": 1}
    out = run_request_node(spec, "s3cret")[0][0]
    assert out["topic"] == f"smartbin/{DEVICE}/request/{command}"
    body = json.loads(out["payload"])
    assert body["args"] == args
    Verifier("s3cret", DEVICE).verify(command, body["args"], body["auth"], now=body["auth"]["ts"])
    with pytest.raises(AuthError, match="signature"):
        Verifier("other", DEVICE).verify(command, body["args"], body["auth"], now=body["auth"]["ts"])
    named = json.loads(run_request_node(spec, "s3cret", "dashboard")[0][0]["payload"])["auth"]
    Verifier({"dashboard": "s3cret", "tech": "x"}, DEVICE).verify(command, args, named, now=named["ts"])


@needs_node
def test_without_a_secret_a_privileged_request_is_not_sent_and_the_reason_is_shown() -> None:
    spec = {"command": "lid", "title": "Open lid", "args": {"op": "open"}, "sign": "always", "timeout_s": 1}
    sent = run_request_node(spec, None)
    assert [m[0] for m in sent] == [None]
    assert "Open lid FAILED: not sent" in sent[0][1]["payload"] and "SMARTBIN_HMAC_SECRET" in sent[0][1]["payload"]
    unprivileged = run_request_node({**spec, "title": "Close lid", "args": {"op": "close"}, "sign": "never"}, None)
    assert "auth" not in json.loads(unprivileged[0][0]["payload"])


@needs_node
def test_a_request_without_an_answer_is_reported_as_a_timeout_in_words() -> None:
    spec = {"command": "lid", "title": "Close lid", "args": {"op": "close"}, "sign": "never", "timeout_s": 0.2}
    sent = run_request_node(spec, None, wait_ms=600)
    assert sent[0][0]["topic"] == f"smartbin/{DEVICE}/request/lid"
    assert sent[1][1]["payload"] == "Close lid FAILED: no answer within 0.2 s (is the bin online?)"
    assert sent[1][2]["payload"][0]["title"] == "Close lid"
