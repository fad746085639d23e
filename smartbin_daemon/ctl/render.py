"""Rendering for a technician: the `status` screen, derived problems and live event lines."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from ..config import (
    Config,
)
from .session import BAR_WIDTH, Snapshot, _fmt_time, _parse_iso

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- rendering `status`


def _fmt_clock(ts: float | None) -> str:
    if ts is None:
        return "--:--:--"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%H:%M:%S")


def fmt_duration(seconds: Any) -> str:
    """`45s`, `12m 5s`, `3h 12m`, `2d 3h`."""
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _approx(seconds: float) -> str:
    if seconds < 3600:
        return f"~{max(1, round(seconds / 60))}min"
    if seconds < 48 * 3600:
        return f"~{round(seconds / 3600)}h"
    return f"~{round(seconds / 86400)}d"


def _num(value: Any, fmt: str = "{:.1f}", unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return fmt.format(value) + unit


def _dig(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def fill_bar(pct: Any, width: int = BAR_WIDTH) -> str:
    """`[#######.............]` for 35 %."""
    value = float(pct) if isinstance(pct, (int, float)) and not isinstance(pct, bool) else 0.0
    filled = max(0, min(width, round(value / 100.0 * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def compartment_line(cid: str, c: dict[str, Any], width: int = 0, level_width: int = 0) -> str:
    """`recycling  [#######.............]  35.2%  ok  12 items  full in ~3h (2026-11-22 14:05 UTC)`."""
    pct = c.get("fill_pct")
    level = str(c.get("level") or "unknown")
    items = c.get("items")
    number = f"{pct:5.1f}%" if isinstance(pct, (int, float)) and not isinstance(pct, bool) else "  n/a "
    parts = [f"{cid:<{width}}", f"{fill_bar(pct)} {number}", f"{level:<{level_width}}",
             f"{items if items is not None else '?'} items"]
    seconds = c.get("seconds_to_full")
    predicted = _parse_iso(c.get("predicted_full_at"))
    if level == "full" or c.get("full"):
        parts.append("FULL: empty it")
    elif isinstance(seconds, (int, float)) and predicted is not None:
        parts.append(f"full in {_approx(float(seconds))} ({_fmt_time(predicted)})")
    else:
        parts.append("no forecast yet")
    return "  ".join(parts)


Problems = list[tuple[str, str, str]]
"""(severity, source, text) found in one component's state."""


def _daemon_problems(daemon: dict[str, Any]) -> Problems:
    out: Problems = []
    raw_workers = daemon.get("workers")
    workers: dict[str, Any] = raw_workers if isinstance(raw_workers, dict) else {}
    for name in daemon.get("failed_workers") or []:
        out.append(("critical", "daemon", f"worker {name} failed: {_dig(workers, name, 'last_error') or 'no error recorded'}"))
    for name, w in sorted(workers.items()):
        if not isinstance(w, dict) or w.get("status") == "failed":
            continue
        if w.get("status") not in ("running", None):
            out.append(("warning", "daemon", f"worker {name} is {w.get('status')}: {w.get('last_error') or ''}".rstrip(": ")))
        elif w.get("restarts"):
            out.append(("info", "daemon", f"worker {name} restarted {w['restarts']}x (last error: {w.get('last_error')})"))
    if daemon.get("restart_required"):
        out.append(("warning", "daemon", f"config changed, restart needed for: {', '.join(daemon['restart_required'])}"))
    return out


def _mqtt_problems(mqtt: dict[str, Any]) -> Problems:
    out: Problems = []
    if mqtt.get("status") not in ("connected", None):
        out.append(("critical", "mqtt", f"{mqtt.get('status')}: {mqtt.get('last_error') or 'no error recorded'}"))
    if _dig(mqtt, "outbox", "dropped"):
        out.append(("warning", "mqtt", f"{mqtt['outbox']['dropped']} event(s) dropped from the outbox"))
    return out


def _arduino_problems(arduino: dict[str, Any]) -> Problems:
    out: Problems = []
    if arduino.get("status") != "connected":
        out.append(("critical", "arduino", f"link {arduino.get('status')}: {arduino.get('last_error') or 'no error recorded'}"))
    elif arduino.get("last_error"):
        out.append(("info", "arduino", f"last error: {arduino['last_error']}"))
    if arduino.get("fault"):
        out.append(("warning", "arduino", f"MCU reports fault {arduino['fault']}"))
    return out


def _camera_problems(camera: dict[str, Any]) -> Problems:
    if camera.get("unavailable_alert") or camera.get("status") not in ("connected", None):
        return [("critical", "camera", f"{camera.get('status')}: {camera.get('last_error') or 'no error recorded'}")]
    if camera.get("last_error"):
        return [("info", "camera", f"last error: {camera['last_error']} (at {camera.get('last_error_at') or '?'})")]
    return []


def _detector_problems(detector: dict[str, Any]) -> Problems:
    out: Problems = [("warning", "detector", str(w)) for w in detector.get("warnings") or []]
    if _dig(detector, "evidence", "last_error"):
        out.append(("warning", "detector", f"evidence: {detector['evidence']['last_error']}"))
    if detector.get("enabled") is False:
        out.append(("info", "detector", "detection is switched off"))
    return out


def _fill_problems(fill: dict[str, Any]) -> Problems:
    return [("warning", "fill", f"compartment_full_{cid}: {c.get('name') or cid} is full ({_num(c.get('fill_pct'))}%)")
            for cid, c in (fill.get("compartments") or {}).items()
            if isinstance(c, dict) and (c.get("level") == "full" or c.get("full"))]


def _workflow_problems(workflow: dict[str, Any]) -> Problems:
    out: Problems = []
    if isinstance(workflow.get("error"), dict):
        e = workflow["error"]
        out.append(("critical", "workflow", f"{e.get('code')}: {e.get('message')} (since {e.get('at')}; lid locked "
                                            "until `smartbinctl request workflow/clear_error`)"))
    if isinstance(workflow.get("blocked"), dict):
        b = workflow["blocked"]
        out.append(("critical", "workflow", f"refused_{b.get('code')}: {b.get('message')} (since {b.get('at')})"))
    if workflow.get("vision") not in ("ok", None):
        out.append(("warning", "workflow", f"vision down: {workflow['vision']} (policy {workflow.get('degraded_policy')})"))
    if workflow.get("maintenance"):
        out.append(("info", "workflow", "maintenance mode is on (sorting paused)"))
    return out


def _health_problems(health: dict[str, Any]) -> Problems:
    severity = "critical" if health.get("status") == "critical" else "warning"
    return [(severity, "health", str(condition)) for condition in health.get("conditions") or []]


def _gpio_problems(gpio: dict[str, Any]) -> Problems:
    errors = _dig(gpio, "counters", "errors")
    return [("warning", "gpio", f"{errors} device error(s)")] if errors else []


_PROBLEMS: tuple[tuple[str, Any], ...] = (
    ("daemon", _daemon_problems), ("mqtt", _mqtt_problems), ("arduino", _arduino_problems),
    ("camera", _camera_problems), ("detector", _detector_problems), ("fill", _fill_problems),
    ("workflow", _workflow_problems), ("health", _health_problems), ("gpio", _gpio_problems),
)
"""What each component's state can tell a technician, in the order the screen lists equal severities."""
_RANK = {"critical": 0, "warning": 1, "info": 2}


def derive_problems(components: dict[str, dict[str, Any]], availability: str | None) -> list[str]:
    """Active alerts and last errors that can be read off the states, most severe first."""
    found: Problems = []
    if availability == "offline":
        found.append(("critical", "daemon", "availability is offline: the daemon is stopped or lost the broker; "
                                            "the states below are the last it published"))
    for name, problems in _PROBLEMS:
        state = components.get(name)
        if isinstance(state, dict) and state:
            found.extend(problems(state))
    ranked = sorted(enumerate(found), key=lambda t: (_RANK[t[1][0]], t[0]))
    return [f"{severity:<8} {source}: {text}" for _, (severity, source, text) in ranked]


Row = tuple[str, str] | None
"""(label, text) of one line of the status screen, or None to skip it."""


def _daemon_row(snap: Snapshot, daemon: dict[str, Any]) -> str:
    workers = daemon.get("workers") or {}
    running = sum(1 for w in workers.values() if isinstance(w, dict) and w.get("status") == "running")
    failed = daemon.get("failed_workers") or []
    started = _parse_iso(daemon.get("started_at"))
    uptime = daemon.get("uptime_s")
    written = _parse_iso(snap.written_at)
    if snap.source == "broker" and snap.availability == "online" and started is not None:
        uptime = time.time() - started  # the retained state may be up to mqtt.state_interval_s old
    elif snap.source == "state_file" and started is not None and written is not None:
        uptime = written - started  # up that long when the file was written
    return (f"v{daemon.get('version', '?')} · up {fmt_duration(uptime)} (since {_fmt_time(started)}) · pid "
            f"{daemon.get('pid', '?')} · {running}/{len(workers)} workers running · "
            f"failed: {', '.join(failed) if failed else 'none'}")


def _mqtt_row(mqtt: dict[str, Any]) -> str:
    ob = mqtt.get("outbox") or {}
    return (f"{mqtt.get('status')} to {mqtt.get('broker')} · outbox {ob.get('pending', '?')} pending, "
            f"{ob.get('inflight', 0)} in flight, {ob.get('dropped', 0)} dropped")


def _arduino_row(arduino: dict[str, Any]) -> str:
    cnt = arduino.get("counters") or {}
    errors = (cnt.get("checksum_errors", 0) or 0) + (cnt.get("bad_frames", 0) or 0)
    fw = f"{arduino.get('firmware') or '?'} {arduino.get('firmware_version') or ''}".strip()
    return (f"{arduino.get('status')} · port {arduino.get('port') or 'none'} · firmware {fw} "
            f"(protocol {arduino.get('protocol', '?')}) · rtt {_num(arduino.get('rtt_ms'), unit=' ms')} · "
            f"errors {errors} frame, {cnt.get('timeouts', 0)} timeouts, {cnt.get('retries', 0)} retries, "
            f"{cnt.get('reconnects', 0)} reconnects")


def _camera_row(camera: dict[str, Any]) -> str:
    return (f"{camera.get('status')} · {_num(camera.get('fps'))} fps (target {_num(camera.get('target_fps'))}) · "
            f"{camera.get('resolution') or '?'} · {camera.get('kind') or '?'}: {camera.get('source') or '?'}")


def _detector_row(detector: dict[str, Any]) -> str:
    last = detector.get("last") or {}
    last_text = f" · last: {last.get('category')}{' (uncertain)' if last.get('uncertain') else ''}" if last else ""
    return (f"{detector.get('model') or 'no model'} on {detector.get('device') or '?'} · "
            f"{'on' if detector.get('enabled') else 'OFF'} · gate {detector.get('gate')}: {detector.get('gate_state')} · "
            f"inference p50 {_num(_dig(detector, 'inference_ms', 'p50'), unit=' ms')} "
            f"(p95 {_num(_dig(detector, 'inference_ms', 'p95'), unit=' ms')}) · "
            f"{detector.get('decisions', 0)} decisions{last_text}")


def _sorting_rows(workflow: dict[str, Any]) -> list[tuple[str, str]]:
    counts = workflow.get("counts") or {}
    item = workflow.get("last_item") or {}
    last = ""
    if item and item.get("outcome") == "sorted":
        total = _dig(item, "latency", "total_ms")
        last = (f" · last item: {item.get('category')} → {item.get('compartment')}"
                f"{' (' + _num(total, '{:.0f}', ' ms') + ')' if isinstance(total, (int, float)) else ''}")
    elif item:
        last = f" · last item: {item.get('category')} {item.get('outcome')}"
    rows = [("sorting", f"{workflow.get('state')}{' (maintenance)' if workflow.get('maintenance') else ''} · "
                        f"{counts.get('sorted', 0)} sorted, {counts.get('refused', 0)} refused, "
                        f"{counts.get('failed', 0)} failed{last}")]
    for key, label in (("error", "ERROR"), ("blocked", "BLOCKED")):
        if isinstance(workflow.get(key), dict):
            rows.append(("", f"{label} {workflow[key].get('code')}: {workflow[key].get('message')}"))
    return rows


def _compartment_lines(fill: dict[str, Any]) -> list[str]:
    compartments = {cid: comp for cid, comp in (fill.get("compartments") or {}).items() if isinstance(comp, dict)}
    if not compartments:
        return []
    width = max(len(cid) for cid in compartments)
    level_width = max(len(str(comp.get("level") or "unknown")) for comp in compartments.values())
    return ["compartments", *("  " + compartment_line(cid, comp, width, level_width) for cid, comp in compartments.items())]


def _health_row(health: dict[str, Any]) -> str:
    return (f"{health.get('status')} · score {health.get('score', '?')} · cpu "
            f"{_num(_dig(health, 'cpu', 'percent'), unit='%')} · ram {_num(_dig(health, 'memory', 'percent'), unit='%')}"
            f" · disk {_num(_dig(health, 'disk', 'storage', 'percent'), unit='%')} · temp "
            f"{_num(_dig(health, 'temperatures', 'cpu_c'), unit=' °C')}")


def _availability_row(snap: Snapshot) -> str:
    if snap.source != "broker":
        return "unknown (broker unreachable)"
    avail = snap.availability or "unknown (nothing retained)"
    return avail + (" (daemon stopped or disconnected)" if avail == "offline" else "")


def render_status(snap: Snapshot, cfg: Config) -> str:
    """The human-readable `status` screen."""
    c = snap.components
    lines: list[str] = [snap.header, ""] if snap.source == "state_file" else []
    lines.append(f"SmartBin {cfg.device.id} ({cfg.root_topic})" + (f" — {snap.header}" if snap.source == "broker" else ""))

    def row(label: str, state: dict[str, Any] | None, text: Any, missing: str) -> None:
        lines.append(f"{label:<13} {text(state) if state else missing}")

    row("daemon", c.get("daemon"), lambda d: _daemon_row(snap, d), "no state published")
    lines.append(f"{'availability':<13} {_availability_row(snap)}")
    if c.get("mqtt"):
        row("mqtt", c.get("mqtt"), _mqtt_row, "")
    row("arduino", c.get("arduino"), _arduino_row, "not reported (disabled?)")
    row("camera", c.get("camera"), _camera_row, "not reported (disabled?)")
    row("detector", c.get("detector"), _detector_row, "not reported (disabled?)")
    workflow = c.get("workflow")
    sorting = _sorting_rows(workflow) if workflow else [("sorting", "not reported (bins disabled?)")]
    lines.extend(f"{label:<13} {text}" for label, text in sorting)
    lines.extend(_compartment_lines(c.get("fill") or {}))
    row("health", c.get("health"), _health_row, "not reported (health monitor disabled?)")
    problems = derive_problems(c, snap.availability)
    lines.append("errors/alerts" + ("  none" if not problems else ""))
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


# --------------------------------------------------------------------------- events (`watch`)


def _latency(d: dict[str, Any]) -> str:
    lat = d.get("latency") or {}
    total = lat.get("total_ms")
    if not isinstance(total, (int, float)):
        return ""
    return f"  {total:.0f} ms (decision {_num(lat.get('presence_to_decision_ms'), '{:.0f}')} ms)"


def format_event(envelope: dict[str, Any]) -> str:
    """One line for one event: time, type and the fields that matter for it."""
    etype = str(envelope.get("type") or "?")
    d = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    assert isinstance(d, dict)
    clock = _fmt_clock(_parse_iso(envelope.get("ts")))
    if etype == "item_sorted":
        conf = d.get("confidence")
        text = (f"{d.get('category')} → {d.get('compartment')} (flap {d.get('flap')})"
                f"{_latency(d)}  {d.get('class_name') or '-'} {_num(conf, '{:.2f}')}"
                f"{' uncertain' if d.get('uncertain') else ''}  confirmed: {d.get('confirmation')}  item {d.get('item_id')}")
    elif etype == "item_refused":
        text = f"{d.get('category')} REFUSED ({d.get('code')}): {d.get('error')}  item {d.get('item_id')}"
    elif etype == "item_failed":
        text = f"{d.get('category')} → {d.get('compartment')} FAILED: {d.get('error')}  item {d.get('item_id')}"
    elif etype == "item_interrupted":
        text = (f"item {d.get('item_id')} interrupted in state {d.get('state')} "
                f"({d.get('category')} → {d.get('compartment')}) {d.get('note') or ''}").rstrip()
    elif etype == "alert":
        text = (f"{str(d.get('severity') or '?').upper()} {d.get('code')} {d.get('message')} "
                f"{'ACTIVE' if d.get('active') else 'cleared'} ({d.get('source')})")
    elif etype == "bin_level":
        text = (f"{d.get('compartment')} ({d.get('name')}): {d.get('previous')} → {d.get('level')} "
                f"at {_num(d.get('fill_pct'))}%")
    elif etype == "bin_emptied":
        text = (f"{d.get('compartment')} ({d.get('name')}) emptied: {d.get('items')} items, peak "
                f"{_num(d.get('peak_fill_pct'))}%, now {_num(d.get('fill_pct'))}% ({d.get('source')})")
    elif etype == "detection":
        text = (f"{d.get('category')} (class {d.get('class_name') or '-'}, {_num(d.get('confidence'), '{:.2f}')}, margin "
                f"{_num(d.get('margin'), '{:.2f}')}) → {d.get('compartment')}"
                f"{'  uncertain: ' + str(d.get('reason')) if d.get('uncertain') else ''}  item {d.get('item_id')}")
    elif etype == "item_present":
        text = f"item present ({d.get('source')})"
    elif etype in ("door_opened", "door_closed"):
        text = f"{etype.replace('_', ' ')} ({d.get('source')})"
    elif etype == "button_pressed":
        text = f"{d.get('kind')} press, {_num(d.get('duration_s'))} s"
    elif etype == "maintenance":
        text = f"maintenance {'ON' if d.get('on') else 'off'} ({d.get('reason')})"
    elif etype == "config_changed":
        text = (f"applied: {', '.join(d.get('applied') or []) or '-'}; restart required: "
                f"{', '.join(d.get('restart_required') or []) or '-'}")
    else:
        text = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in list(d.items())[:8])
    if d.get("maintenance") and etype != "maintenance":
        text += "  [maintenance]"
    return f"{clock}  {etype:<16} {text}"


