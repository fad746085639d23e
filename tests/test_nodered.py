"""The example Node-RED flow only uses topics the MQTT contract (README) defines, and its request signing
matches the daemon's HMAC scheme."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smartbin_daemon.runtime.auth import Verifier

REPO = Path(__file__).resolve().parents[1]
FLOW = json.loads((REPO / "config" / "nodered" / "smartbin-flow.json").read_text())
README = (REPO / "README.md").read_text()
DEVICE = "sim-bin"


def section(title: str) -> str:
    start = README.index(title)
    return README[start:README.index("\n#", start + len(title))]


def contract() -> tuple[set[str], set[str], set[str]]:
    """State components, event types and request commands, as the README's contract tables list them."""
    states = set(re.findall(r"^\| `<root>/([a-z_]+)` \| out \|", section("### Topics"), flags=re.M))
    events: set[str] = set()
    for a, b in re.findall(r"^\| `([a-z_]+)`(?: / `([a-z_]+)`)? \|", section("### Events"), flags=re.M):
        events |= {a, b} - {""}
    commands = set(re.findall(r"^\| `([a-z_/]+)` \| [a-z]+", section("### Requests"), flags=re.M))
    return states, events, commands


def topic_in_contract(topic: str) -> bool:
    states, events, commands = contract()
    root = f"smartbin/{DEVICE}/"
    if not topic.startswith(root):
        return False
    rest = topic[len(root):]
    if rest in states or rest == "availability":
        return True
    kind, _, name = rest.partition("/")
    if kind == "event":
        return name in events or name == "#"
    if kind in ("request", "response"):
        return name in commands or name == "#"
    return False


def nodes(type_: str) -> list[dict[str, Any]]:
    return [n for n in FLOW if n.get("type") == type_]


def test_the_contract_tables_are_parsed() -> None:
    states, events, commands = contract()
    assert {"fill", "workflow", "health"} <= states
    assert {"alert", "bin_level", "item_sorted"} <= events
    assert {"route", "lid", "bin/emptied"} <= commands


def test_every_mqtt_topic_of_the_flow_exists_in_the_contract() -> None:
    topics = [n["topic"] for n in nodes("mqtt in") + nodes("mqtt out") if n.get("topic")]
    assert len(topics) >= 5
    bad = [t for t in topics if not topic_in_contract(t)]
    assert not bad, f"the flow uses topics the contract does not define: {bad}"


def test_the_flow_shows_fill_levels_alerts_and_health_and_has_a_lid_and_a_test_route_button() -> None:
    subscribed = {n["topic"].rsplit(f"{DEVICE}/", 1)[1] for n in nodes("mqtt in")}
    assert {"fill", "event/alert", "health"} <= subscribed
    commands = {rule["to"] for n in nodes("change") for rule in n["rules"] if rule["p"] == "command"}
    assert commands == {"lid", "route"}
    _, _, known = contract()
    assert commands <= known
    labels = {n["label"] for n in nodes("ui_button")}
    assert any("lid" in label.lower() for label in labels) and any("route" in label.lower() for label in labels)


def test_wires_point_at_nodes_that_exist() -> None:
    ids = {n["id"] for n in FLOW}
    for n in FLOW:
        for output in n.get("wires", []):
            assert set(output) <= ids, (n["id"], output)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (apt install nodejs) to run the flow's JavaScript")
@pytest.mark.parametrize("command,args", [("route", {"compartment": 1}), ("lid", {"op": "open"}),
                                          ("bin/emptied", {"compartment": "paper", "z": [1, "ä", None, True]})])
def test_the_flow_signs_requests_exactly_like_the_daemon_checks_them(command: str, args: dict[str, Any]) -> None:
    func = next(n for n in nodes("function") if n["id"] == "fn_sign")["func"]
    harness = (
        "const crypto = require('crypto');\n"
        "const env = {get: (k) => ({SMARTBIN_HMAC_SECRET: 's3cret', SMARTBIN_DEVICE_ID: '" + DEVICE + "'})[k]};\n"
        f"let msg = {{_msgid: 'm1', command: {json.dumps(command)}, payload: {json.dumps(args)}}};\n"
        "const out = (function(msg) {\n" + func + "\n})(msg);\n"
        "process.stdout.write(JSON.stringify(out));\n"
    )
    result = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=30, check=True)
    out = json.loads(result.stdout)
    assert out["topic"] == f"smartbin/{DEVICE}/request/{command}"
    assert topic_in_contract(out["topic"])
    body = json.loads(out["payload"])
    assert body["args"] == args
    Verifier("s3cret", DEVICE).verify(command, body["args"], body["auth"])  # raises AuthError when it does not match
    with pytest.raises(Exception, match="signature"):
        Verifier("other", DEVICE).verify(command, body["args"], body["auth"])
