"""Writes smartbin-flow.json, the Node-RED console on FlowFuse Dashboard 2.0 (`python config/nodered/build_flow.py`).

The flow is generated so that its wiring (one dispatcher output per widget) stays consistent; edit the
JavaScript in nodered/*.js and the widget list here, then regenerate. tests/clients/test_node_red.py checks
that the committed JSON equals this script's output and runs it in a real Node-RED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLOW_FILE = HERE / "smartbin-flow.json"
TAB = "smartbin_console_tab"
CLIENT_ID = "smartbin-nodered-console"

PAGES = [  # id, name, path, icon
    ("overview", "Overview", "/overview", "home"),
    ("bins", "Bins", "/bins", "delete"),
    ("detections", "Detections", "/detections", "camera"),
    ("system", "System", "/system", "memory"),
    ("configuration", "Configuration", "/configuration", "cog"),
    ("maintenance", "Maintenance", "/maintenance", "wrench"),
]
GROUPS = [  # id, page, name, width
    ("status", "overview", "Status", 6), ("alerts", "overview", "Active alerts and recent events", 6),
    ("snapshot", "overview", "Last snapshot", 6),
    ("fill", "bins", "Compartments", 12), ("fill_history", "bins", "Fill history", 8),
    ("bin_actions", "bins", "Actions", 4),
    ("items", "detections", "Recent items", 8), ("counts", "detections", "Items per category (24 h)", 4),
    ("resources", "system", "Resources", 6), ("identity", "system", "Identity and network", 6),
    ("workers", "system", "Workers", 6), ("processes", "system", "Processes", 6), ("storage", "system", "Storage", 6),
    ("config_view", "configuration", "Effective configuration (secrets redacted)", 8),
    ("config_edit", "configuration", "Change (signed)", 4),
    ("maint", "maintenance", "Maintenance and lid", 4), ("selftest", "maintenance", "Self-test", 4),
    ("live", "maintenance", "Live view", 4), ("actions", "maintenance", "Recent actions", 12),
]


def col(title: str, key: str, width: str = "") -> dict[str, str]:
    """One ui-table column with a readable header."""
    return {"title": title, "key": key, "keyType": "key", "type": "text", "width": width, "align": "start"}


# Widgets fed by the dispatcher: output name -> (type, group, label, extra properties).
TEXTS = {
    "availability": ("status", "Bin"), "health": ("status", "Health"), "sorting": ("status", "Sorting"),
    "last_item": ("status", "Last item"), "lid": ("maint", "Lid"), "workflow_error": ("maint", "Sorting error"),
    "selftest_result": ("selftest", "Last self-test"),
}
TABLES = {
    "alerts_table": ("alerts", [col("Severity", "severity", "90px"), col("Alert", "message"), col("Since", "since", "160px")]),
    "fill_table": ("fill", [col("Compartment", "name"), col("Fill %", "fill_pct"), col("Level", "level"),
                            col("Items", "items"), col("Free (l)", "free_l"), col("Full at (forecast)", "predicted_full_at"),
                            col("Emptied", "emptied_at")]),
    "items_table": ("items", [col("Time", "at", "160px"), col("Category", "category"), col("Class", "class_name"),
                              col("Confidence", "confidence"), col("Compartment", "compartment"), col("Outcome", "outcome")]),
    "resources_table": ("resources", [col("Resource", "name", "140px"), col("Value", "value")]),
    "identity_table": ("identity", [col("Property", "name", "140px"), col("Value", "value")]),
    "workers_table": ("workers", [col("Worker", "name"), col("Status", "status"), col("Restarts", "restarts"),
                                  col("Last error", "last_error")]),
    "processes_table": ("processes", [col("PID", "pid", "70px"), col("Process", "name"), col("User", "user"),
                                      col("CPU %", "cpu_percent"), col("Memory (MB)", "rss_mb")]),
    "storage_table": ("storage", [col("Folder", "name"), col("Files", "files"), col("Size (MB)", "mb")]),
    "events_table": ("alerts", [col("Time", "at", "160px"), col("Event", "type", "120px"), col("What", "summary")]),
    "actions_table": ("actions", [col("Time", "at", "160px"), col("Action", "title"), col("Result", "result")]),
}
IMAGE_TEMPLATE = ('<template><div><img v-if="msg && msg.payload" :src="msg.payload" alt="{alt}" '
                  'style="max-width:100%"/><p v-else>{empty}</p></div></template>')
TEMPLATES = {
    "snapshot_image": ("snapshot", IMAGE_TEMPLATE.format(alt="last snapshot", empty="No snapshot yet")),
    "preview_image": ("live", IMAGE_TEMPLATE.format(alt="live view", empty="Live view off")),
    "config_view": ("config_view", '<template><pre style="font-size:12px;white-space:pre-wrap">'
                                   '{{ msg && msg.payload ? msg.payload : "Press Load to read the configuration" }}</pre>'
                                   '</template>'),
}
CHARTS = {
    "fill_chart": ("fill_history", "line", "compartment", "at", "fill_pct", "Fill %", "time"),
    "counts_chart": ("counts", "bar", "category", "category", "items", "Items", "category"),
}
OUTPUTS = [*TEXTS, *TABLES, *TEMPLATES, *CHARTS, "maintenance_switch", "compartment_choice", "worker_choice", "event_notice", "requests"]


def req(command: str, title: str, args: dict[str, Any] | None = None, sign: str = "never", timeout_s: float = 10,
        quiet: bool = False) -> dict[str, Any]:
    """A request description a button sends to the request node (sign: always, if_available or never)."""
    return {"command": command, "title": title, "args": args or {}, "sign": sign, "timeout_s": timeout_s, "quiet": quiet}


BUTTONS = [  # id, group, label, request
    ("btn_history", "fill_history", "Refresh history", req("history/fill", "Fill history", {"hours": 24}, quiet=True)),
    ("btn_emptied", "bin_actions", "Emptied", req("bin/emptied", "Compartment emptied", {"compartment": "$compartment"}, "always")),
    ("btn_cal_empty", "bin_actions", "Calibrate empty", req("bin/calibrate", "Calibrate empty point",
                                                             {"compartment": "$compartment", "point": "empty"}, "always")),
    ("btn_cal_full", "bin_actions", "Calibrate full", req("bin/calibrate", "Calibrate full point",
                                                           {"compartment": "$compartment", "point": "full"}, "always")),
    ("btn_items", "items", "Refresh", req("history/items", "Recent items", {"limit": 50}, quiet=True)),
    ("btn_counts", "counts", "Refresh", req("history/counts", "Item counts", {"hours": 24, "by": "category"}, quiet=True)),
    ("btn_restart_worker", "workers", "Restart worker", req("restart", "Restart worker", {"component": "$worker"}, "always")),
    ("btn_processes", "processes", "Refresh", req("health/processes", "Processes", {"limit": 10}, quiet=True)),
    ("btn_config_get", "config_view", "Load", req("config/get", "Read configuration")),
    ("btn_config_set", "config_edit", "Apply change", req("config/set", "Change configuration", {"config": "$config"}, "always")),
    ("btn_config_rollback", "config_edit", "Roll back", req("config/rollback", "Roll back configuration", sign="always")),
    ("btn_lid_open", "maint", "Open lid", req("lid", "Open lid", {"op": "open"}, "always")),
    ("btn_lid_close", "maint", "Close lid", req("lid", "Close lid", {"op": "close"})),
    ("btn_lid_lock", "maint", "Lock lid", req("lid", "Lock lid", {"op": "lock"})),
    ("btn_lid_unlock", "maint", "Unlock lid", req("lid", "Unlock lid", {"op": "unlock"}, "always")),
    ("btn_clear_error", "maint", "Clear sorting error", req("workflow/clear_error", "Clear sorting error", sign="if_available")),
    ("btn_selftest", "selftest", "Self-test (sensors only)", req("selftest", "Self-test (sensors only)", {"move": False},
                                                                   timeout_s=60)),
    ("btn_selftest_move", "selftest", "Self-test (moves lid and flap)", req("selftest", "Self-test with moving parts",
                                                                             {"move": True}, "always", 120)),
    ("btn_preview_on", "live", "Live view on (5 min)", req("camera/preview", "Live view on", {"on": True, "minutes": 5})),
    ("btn_preview_off", "live", "Live view off", req("camera/preview", "Live view off", {"on": False})),
]


def js(name: str) -> str:
    """A function node's body from nodered/<name>.js, with the dispatcher's output table filled in."""
    text = (HERE / "js" / f"{name}.js").read_text()
    return text.replace("/*OUTPUTS*/", json.dumps({name: i for i, name in enumerate(OUTPUTS)}))


def config_nodes() -> list[dict[str, Any]]:
    """The MQTT broker (fixed client id, persistent MQTT 5 session) and the dashboard's base, theme, pages, groups."""
    nodes: list[dict[str, Any]] = [
        {"id": "smartbin_broker", "type": "mqtt-broker", "name": "SmartBin broker", "broker": "${SMARTBIN_MQTT_HOST}",
         "port": "${SMARTBIN_MQTT_PORT}", "clientid": CLIENT_ID, "autoConnect": True, "usetls": False,
         "protocolVersion": "5", "keepalive": "30", "cleansession": False, "sessionExpiry": "86400",
         "autoUnsubscribe": False, "birthTopic": "", "closeTopic": "", "willTopic": "", "userProps": ""},
        {"id": "smartbin_ui_base", "type": "ui-base", "name": "SmartBin", "path": "/dashboard", "appIcon": "",
         "includeClientData": True, "acceptsClientConfig": ["ui-notification", "ui-control"],
         "showPathInSidebar": False, "headerContent": "page", "navigationStyle": "default", "titleBarStyle": "default",
         "showReconnectNotification": True, "notificationDisplayTime": 1, "showDisconnectNotification": True,
         "allowInstall": False},
        {"id": "smartbin_ui_theme", "type": "ui-theme", "name": "SmartBin theme",
         "colors": {"surface": "#2f6b3a", "primary": "#2f6b3a", "bgPage": "#f4f6f4", "groupBg": "#ffffff",
                    "groupOutline": "#d9d9e0"},
         "sizes": {"density": "default", "pagePadding": "12px", "groupGap": "12px", "groupBorderRadius": "4px",
                   "widgetGap": "12px"}},
    ]
    for order, (pid, name, path, icon) in enumerate(PAGES, 1):
        nodes.append({"id": f"smartbin_page_{pid}", "type": "ui-page", "name": name, "ui": "smartbin_ui_base",
                      "path": path, "icon": icon, "layout": "grid", "theme": "smartbin_ui_theme",
                      "breakpoints": [{"name": "Default", "px": 0, "cols": 3}, {"name": "Tablet", "px": 576, "cols": 6},
                                      {"name": "Small Desktop", "px": 768, "cols": 9},
                                      {"name": "Desktop", "px": 1024, "cols": 12}],
                      "order": order, "className": "", "visible": "true", "disabled": "false"})
    for order, (gid, page, name, width) in enumerate(GROUPS, 1):
        nodes.append({"id": f"smartbin_group_{gid}", "type": "ui-group", "name": name, "page": f"smartbin_page_{page}",
                      "width": str(width), "height": "1", "order": order, "showTitle": True, "className": "",
                      "visible": "true", "disabled": "false", "groupType": "default"})
    return nodes


def widget(nid: str, type_: str, group: str, y: int, **props: Any) -> dict[str, Any]:
    """A dashboard widget on the tab."""
    return {"id": nid, "type": type_, "z": TAB, "group": f"smartbin_group_{group}", "order": 0, "width": 0,
            "height": 0, "name": "", "className": "", "x": 900, "y": y, "wires": [[]], **props}


def display_widgets() -> list[dict[str, Any]]:
    """Every widget the dispatcher feeds, in OUTPUTS order."""
    out: list[dict[str, Any]] = []
    y = 40
    for name, (group, label) in TEXTS.items():
        out.append(widget(f"ui_{name}", "ui-text", group, y, label=label, format="{{msg.payload}}", layout="row-left",
                          style=False, font="", fontSize=16, color="#1a1a1a", wrapText=True, value="payload",
                          valueType="msg"))
        y += 40
    for name, (group, columns) in TABLES.items():
        out.append(widget(f"ui_{name}", "ui-table", group, y, label="", maxrows=0, passthru=False, autocols=False,
                          showSearch=False, deselect=True, selectionType="none", columns=columns, mobileBreakpoint="sm",
                          mobileBreakpointType="defaults", action="replace"))
        y += 40
    for name, (group, template) in TEMPLATES.items():
        out.append(widget(f"ui_{name}", "ui-template", group, y, head="", format=template, storeOutMessages=True,
                          passthru=False, resendOnRefresh=True, templateScope="local"))
        y += 40
    for name, (group, kind, series, x, value, ylabel, xtype) in CHARTS.items():
        out.append(widget(f"ui_{name}", "ui-chart", group, y, label=ylabel, chartType=kind, category=series,
                          categoryType="property", xAxisLabel="", xAxisProperty=x, xAxisPropertyType="property",
                          xAxisType=xtype, xAxisFormat="", xAxisFormatType="auto", yAxisLabel=ylabel,
                          yAxisProperty=value, yAxisPropertyType="property", ymin="0", ymax="", action="replace",
                          stackSeries=False, pointShape="circle", pointRadius=2, showLegend=True, removeOlder=1,
                          removeOlderUnit="86400", removeOlderPoints="", colors=PALETTE, textColor=["#666666"],
                          textColorDefault=True, gridColor=["#e5e5e5"], gridColorDefault=True, height=8,
                          interpolation="linear", width=0))
        y += 40
    out.append(widget("ui_maintenance_switch", "ui-switch", "maint", y, label="Maintenance mode", passthru=False,
                      decouple=True, topic="topic", topicType="msg", style="", layout="row-spread",
                      clickableArea="switch", onvalue=json.dumps(req("maintenance", "Maintenance mode on", {"on": True},
                                                                     "if_available")),
                      onvalueType="json", onicon="", oncolor="",
                      offvalue=json.dumps(req("maintenance", "Maintenance mode off", {"on": False}, "if_available")),
                      offvalueType="json", officon="", offcolor="", wires=[["fn_request"]]))
    out.append(widget("ui_compartment_choice", "ui-dropdown", "bin_actions", y + 40, label="Compartment",
                      tooltip="", passthru=False, multiple=False, chips=False, clearable=False, options=[], payload="",
                      topic="compartment", topicType="str", typeIsComboBox=True, msgTrigger="onChange",
                      wires=[["fn_choice"]]))
    out.append(widget("ui_worker_choice", "ui-dropdown", "workers", y + 80, label="Worker", tooltip="",
                      passthru=False, multiple=False, chips=False, clearable=False, options=[], payload="",
                      topic="worker", topicType="str", typeIsComboBox=True, msgTrigger="onChange",
                      wires=[["fn_choice"]]))
    return out


PALETTE = ["#1F77B4", "#AEC7E8", "#FF7F0E", "#2CA02C", "#98DF8A", "#D62728", "#FF9896", "#9467BD", "#C5B0D5"]


def logic_nodes() -> list[dict[str, Any]]:
    """The subscription, the dispatcher, the request node and their helpers."""
    dispatch_wires = [[f"ui_{name}"] for name in OUTPUTS[:-2]] + [["ui_feedback"], ["fn_request"]]
    return [
        {"id": TAB, "type": "tab", "label": "SmartBin console", "disabled": False,
         "info": "SmartBin console (FlowFuse Dashboard 2.0, /dashboard). Environment of the Node-RED process: "
                 "SMARTBIN_DEVICE_ID (default sim-bin), SMARTBIN_MQTT_HOST, SMARTBIN_MQTT_PORT, SMARTBIN_HMAC_SECRET "
                 "(privileged requests are not sent without it), SMARTBIN_HMAC_KEY_ID (optional). See the README."},
        {"id": "mqtt_in_all", "type": "mqtt in", "z": TAB, "name": "smartbin/+/# (filtered to the device id)",
         "topic": "smartbin/+/#", "qos": "1", "datatype": "buffer", "broker": "smartbin_broker", "nl": False,
         "rap": True, "rh": 0, "inputs": 0, "x": 140, "y": 100, "wires": [["fn_dispatch"]]},
        {"id": "fn_dispatch", "type": "function", "z": TAB, "name": "dispatch (device filter, stale marking)",
         "func": js("dispatch"), "outputs": len(OUTPUTS), "timeout": 0, "noerr": 0, "initialize": "", "finalize": "",
         "libs": [], "x": 420, "y": 100, "wires": dispatch_wires},
        {"id": "fn_choice", "type": "function", "z": TAB, "name": "remember selection", "func": js("choice"),
         "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 420, "y": 300,
         "wires": [[]]},
        {"id": "text_config_draft", "type": "ui-text-input", "z": TAB, "group": "smartbin_group_config_edit",
         "name": "", "label": "Partial config (JSON)", "order": 0, "width": 0, "height": 0, "topic": "config",
         "topicType": "str", "mode": "text", "tooltip": "e.g. {\"logging\": {\"level\": \"DEBUG\"}}",
         "delay": 300, "passthru": False, "sendOnDelay": False, "sendOnBlur": True, "sendOnEnter": True,
         "className": "", "clearable": False, "sendOnClear": False, "icon": "", "iconPosition": "left",
         "iconInnerPosition": "inside", "x": 140, "y": 340, "wires": [["fn_choice"]]},
        {"id": "inject_refresh", "type": "inject", "z": TAB, "name": "refresh history (start, every 5 min)",
         "props": [{"p": "payload"}], "repeat": "300", "crontab": "", "once": True, "onceDelay": "3", "topic": "",
         "payload": json.dumps([b[3] for b in BUTTONS if b[0] in ("btn_history", "btn_items", "btn_counts")]),
         "payloadType": "json", "x": 140, "y": 400, "wires": [["fn_request"]]},
        {"id": "fn_request", "type": "function", "z": TAB, "name": "sign, send, await answer", "func": js("request"),
         "outputs": 3, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "",
         "libs": [{"var": "crypto", "module": "crypto"}], "x": 420, "y": 400,
         "wires": [["mqtt_out_request"], ["ui_feedback"], ["ui_actions_table"]]},
        {"id": "mqtt_out_request", "type": "mqtt out", "z": TAB, "name": "request", "topic": "", "qos": "1",
         "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "", "expiry": "",
         "broker": "smartbin_broker", "x": 700, "y": 380, "wires": []},
        {"id": "ui_feedback", "type": "ui-notification", "z": TAB, "ui": "smartbin_ui_base", "position": "top right",
         "colorDefault": False, "color": "#2f6b3a", "displayTime": "6", "showCountdown": True, "outputs": 0,
         "allowDismiss": True, "dismissText": "Close", "allowConfirm": False, "confirmText": "Confirm", "raw": False,
         "className": "", "name": "request feedback", "x": 700, "y": 420, "wires": []},
    ]


def button_nodes() -> list[dict[str, Any]]:
    """Every action button; each sends its request description to the request node."""
    return [widget(bid, "ui-button", group, 500 + 40 * i, label=label, emulateClick=False, tooltip="", color="",
                   bgcolor="", icon="", iconPosition="left", payload=json.dumps(spec), payloadType="json",
                   topic="topic", topicType="msg", buttonColor="", textColor="", iconColor="", enableClick=True,
                   enablePointerdown=False, pointerdownPayload="", pointerdownPayloadType="str", enablePointerup=False,
                   pointerupPayload="", pointerupPayloadType="str", wires=[["fn_request"]])
            for i, (bid, group, label, spec) in enumerate(BUTTONS)]


def build() -> list[dict[str, Any]]:
    """The whole flow."""
    return [*logic_nodes(), *config_nodes(), *display_widgets(), *button_nodes()]


def render() -> str:
    """The flow file's text."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    FLOW_FILE.write_text(render())
