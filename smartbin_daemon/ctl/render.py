"""Rendering for a technician: the `status` screen, derived problems and live event lines."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..config import (
    Config,
)
from ..states import (
    AlertsState,
    ArduinoState,
    BinLevel,
    CameraState,
    CompartmentFill,
    ConnectionStatus,
    DaemonState,
    DetectorState,
    FillState,
    GpioState,
    HealthState,
    HealthStatus,
    MqttState,
    WorkflowState,
    parse_state,
)
from ..states.arduino import LinkCounters
from ..states.detector import LastDecision, Percentiles
from ..states.mqtt import OutboxCounts
from ..states.selftest import PartStatus, SelfTestState, SelfTestStatus
from ..states.workflow import SortingCounts
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


def _daemon_problems(daemon: DaemonState) -> Problems:
    out: Problems = []
    workers: dict[str, Any] = daemon.workers if isinstance(daemon.workers, dict) else {}
    for name in daemon.failed_workers or []:
        out.append(("critical", "daemon", f"worker {name} failed: {_dig(workers, name, 'last_error') or 'no error recorded'}"))
    for name, w in sorted(workers.items()):
        if not isinstance(w, dict) or w.get("status") == "failed":
            continue
        if w.get("status") not in ("running", None):
            out.append(("warning", "daemon", f"worker {name} is {w.get('status')}: {w.get('last_error') or ''}".rstrip(": ")))
        elif w.get("restarts"):
            out.append(("info", "daemon", f"worker {name} restarted {w['restarts']}x (last error: {w.get('last_error')})"))
    if daemon.restart_required:
        out.append(("warning", "daemon", f"config changed, restart needed for: {', '.join(daemon.restart_required)}"))
    return out


def _mqtt_problems(mqtt: MqttState) -> Problems:
    out: Problems = []
    if mqtt.status not in (ConnectionStatus.CONNECTED, None):
        out.append(("critical", "mqtt", f"{mqtt.status}: {mqtt.last_error or 'no error recorded'}"))
    dropped = mqtt.outbox.dropped if isinstance(mqtt.outbox, OutboxCounts) else None
    if dropped:
        out.append(("warning", "mqtt", f"{dropped} event(s) dropped from the outbox"))
    return out


def _arduino_problems(arduino: ArduinoState) -> Problems:
    out: Problems = []
    if arduino.status != ConnectionStatus.CONNECTED:
        out.append(("critical", "arduino", f"link {arduino.status}: {arduino.last_error or 'no error recorded'}"))
    elif arduino.last_error:
        out.append(("info", "arduino", f"last error: {arduino.last_error}"))
    if arduino.fault:
        out.append(("warning", "arduino", f"MCU reports fault {arduino.fault}"))
    return out


def _camera_problems(camera: CameraState) -> Problems:
    if camera.unavailable_alert or camera.status not in (ConnectionStatus.CONNECTED, None):
        return [("critical", "camera", f"{camera.status}: {camera.last_error or 'no error recorded'}")]
    if camera.last_error:
        return [("info", "camera", f"last error: {camera.last_error} (at {camera.last_error_at or '?'})")]
    return []


def _detector_problems(detector: DetectorState) -> Problems:
    out: Problems = [("warning", "detector", str(w)) for w in detector.warnings or []]
    if _dig(detector.evidence, "last_error"):
        out.append(("warning", "detector", f"evidence: {_dig(detector.evidence, 'last_error')}"))
    if detector.enabled is False:
        out.append(("info", "detector", "detection is switched off"))
    return out


def _fill_problems(fill: FillState) -> Problems:
    return [("warning", "fill", f"compartment_full_{cid}: {c.name or cid} is full ({_num(c.fill_pct)}%)")
            for cid, c in _compartments(fill).items() if c.level == BinLevel.FULL or c.full]


def _workflow_problems(workflow: WorkflowState) -> Problems:
    out: Problems = []
    if isinstance(workflow.error, dict):
        e = workflow.error
        out.append(("critical", "workflow", f"{e.get('code')}: {e.get('message')} (since {e.get('at')}; lid locked "
                                            "until `smartbinctl request workflow/clear_error`)"))
    if isinstance(workflow.blocked, dict):
        b = workflow.blocked
        out.append(("critical", "workflow", f"refused_{b.get('code')}: {b.get('message')} (since {b.get('at')})"))
    if workflow.vision not in ("ok", None):
        out.append(("warning", "workflow", f"vision down: {workflow.vision} (policy {workflow.degraded_policy})"))
    if workflow.maintenance:
        out.append(("info", "workflow", "maintenance mode is on (sorting paused)"))
    return out


def _health_problems(health: HealthState) -> Problems:
    severity = "critical" if health.status == HealthStatus.CRITICAL else "warning"
    out: Problems = [(severity, "health", str(condition)) for condition in health.conditions or []]
    clock = health.clock if isinstance(health.clock, dict) else {}
    if clock.get("valid") is False:
        out.append(("critical", "health", f"wall clock unset ({clock.get('wall_time')}); timestamps are wrong"))
    elif clock.get("ntp_synchronized") is False:
        since = _num(clock.get("unsynchronized_for_s"), "{:.0f}", " s")
        out.append(("warning", "health", f"NTP not synchronised (for {since})"))
    return out


def _gpio_problems(gpio: GpioState) -> Problems:
    errors = _dig(gpio.counters, "errors")
    return [("warning", "gpio", f"{errors} device error(s)")] if errors else []


def _alerts_problems(alerts: AlertsState) -> Problems:
    return [(a.severity, a.source, f"{a.code}: {a.message} (active since {_when(a.since)})") for a in alerts.active or []]


def _when(iso: Any) -> str:
    stamp = _parse_iso(iso)
    return _fmt_time(stamp) if stamp is not None else str(iso)


def _selftest_problems(selftest: SelfTestState) -> Problems:
    if selftest.status != SelfTestStatus.FAIL:
        return []
    names = ", ".join(f"{p.part} {p.name}: {p.detail}" if p.name != p.part else f"{p.part}: {p.detail}"
                      for p in selftest.parts if p.status == PartStatus.FAIL)
    return [("warning", "selftest", f"the last self-test ({selftest.finished_at}) failed: {names}")]


_PROBLEMS: tuple[tuple[str, Callable[[Any], Problems]], ...] = (
    ("alerts", _alerts_problems), ("daemon", _daemon_problems), ("mqtt", _mqtt_problems), ("arduino", _arduino_problems),
    ("camera", _camera_problems), ("detector", _detector_problems), ("fill", _fill_problems),
    ("workflow", _workflow_problems), ("health", _health_problems), ("gpio", _gpio_problems),
    ("selftest", _selftest_problems),
)
"""What each component's state can tell a technician, in the order the screen lists equal severities."""
_RANK = {"critical": 0, "warning": 1, "info": 2}


def _parsed(components: dict[str, Any], name: str) -> Any:
    """A component's published state as its typed model (tolerant of an older daemon), or None when absent."""
    state = components.get(name)
    return parse_state(name, state) if isinstance(state, dict) and state else None


def _compartments(fill: FillState) -> dict[str, CompartmentFill]:
    raw = fill.compartments if isinstance(fill.compartments, dict) else {}
    return {cid: c for cid, c in raw.items() if isinstance(c, CompartmentFill)}


def _without_repeats(found: Problems, components: dict[str, dict[str, Any]]) -> Problems:
    """The problems less those a component's state shows for an alert the `alerts` state already lists."""
    alerts = _parsed(components, "alerts")
    try:
        listed = {(a.source, a.code) for a in alerts.active or []} if isinstance(alerts, AlertsState) else set()
        own = set(_alerts_problems(alerts)) if listed else set()
    except (TypeError, AttributeError, ValueError):  # a state of another shape: already reported as such
        return found
    return [p for p in found if p in own or not any(p[1] == src and p[2].startswith(f"{code}:") for src, code in listed)]


def derive_problems(components: dict[str, dict[str, Any]], availability: str | None) -> list[str]:
    """Active alerts and last errors that can be read off the states, most severe first."""
    found: Problems = []
    if availability == "offline":
        found.append(("critical", "daemon", "availability is offline: the daemon is stopped or lost the broker; "
                                            "the states below are the last it published"))
    for name, problems in _PROBLEMS:
        state = _parsed(components, name)
        if state is None:
            continue
        try:
            found.extend(problems(state))
        except (TypeError, AttributeError, ValueError) as exc:  # a state of another shape (another daemon version)
            found.append(("warning", name, f"state not readable here: {type(exc).__name__}: {exc}"))
    found = _without_repeats(found, components)
    ranked = sorted(enumerate(found), key=lambda t: (_RANK.get(t[1][0], 2), t[0]))
    return [f"{severity:<8} {source}: {text}" for _, (severity, source, text) in ranked]


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _daemon_row(snap: Snapshot, daemon: DaemonState) -> str:
    workers = daemon.workers if isinstance(daemon.workers, dict) else {}
    running = sum(1 for w in workers.values() if isinstance(w, dict) and w.get("status") == "running")
    failed = daemon.failed_workers or []
    started = _parse_iso(daemon.started_at)
    uptime: Any = daemon.uptime_s
    written = _parse_iso(snap.written_at)
    if snap.source == "broker" and snap.availability == "online" and started is not None:
        uptime = time.time() - started  # the retained state may be up to mqtt.state_interval_s old
    elif snap.source == "state_file" and started is not None and written is not None:
        uptime = written - started  # up that long when the file was written
    return (f"v{_or(daemon.version, '?')} · up {fmt_duration(uptime)} (since {_fmt_time(started)}) · pid "
            f"{_or(daemon.pid, '?')} · {running}/{len(workers)} workers running · "
            f"failed: {', '.join(failed) if failed else 'none'}")


def _mqtt_row(mqtt: MqttState) -> str:
    ob = mqtt.outbox if isinstance(mqtt.outbox, OutboxCounts) else OutboxCounts.from_json({})
    return (f"{mqtt.status} to {mqtt.broker} · outbox {_or(ob.pending, '?')} pending, "
            f"{_or(ob.inflight, 0)} in flight, {_or(ob.dropped, 0)} dropped")


def _arduino_row(arduino: ArduinoState) -> str:
    cnt = arduino.counters if isinstance(arduino.counters, LinkCounters) else LinkCounters.from_json({})
    errors = (cnt.checksum_errors or 0) + (cnt.bad_frames or 0)
    fw = f"{arduino.firmware or '?'} {arduino.firmware_version or ''}".strip()
    return (f"{arduino.status} · port {arduino.port or 'none'} · firmware {fw} "
            f"(protocol {_or(arduino.protocol, '?')}) · rtt {_num(arduino.rtt_ms, unit=' ms')} · "
            f"errors {errors} frame, {_or(cnt.timeouts, 0)} timeouts, {_or(cnt.retries, 0)} retries, "
            f"{_or(cnt.reconnects, 0)} reconnects")


def _camera_row(camera: CameraState) -> str:
    return (f"{camera.status} · {_num(camera.fps)} fps (target {_num(camera.target_fps)}) · "
            f"{camera.resolution or '?'} · {camera.kind or '?'}: {camera.source or '?'}")


def _detector_row(detector: DetectorState) -> str:
    last = detector.last if isinstance(detector.last, LastDecision) else None
    last_text = f" · last: {last.category}{' (uncertain)' if last.uncertain else ''}" if last else ""
    inference = detector.inference_ms if isinstance(detector.inference_ms, Percentiles) else None
    return (f"{detector.model or 'no model'} on {detector.device or '?'} · "
            f"{'on' if detector.enabled else 'OFF'} · gate {detector.gate}: {detector.gate_state} · "
            f"inference p50 {_num(inference and inference.p50, unit=' ms')} "
            f"(p95 {_num(inference and inference.p95, unit=' ms')}) · "
            f"{_or(detector.decisions, 0)} decisions{last_text}")


def _sorting_rows(workflow: WorkflowState) -> list[tuple[str, str]]:
    counts = workflow.counts if isinstance(workflow.counts, SortingCounts) else SortingCounts()
    item = workflow.last_item if isinstance(workflow.last_item, dict) else {}
    last = ""
    if item and item.get("outcome") == "sorted":
        total = _dig(item, "latency", "total_ms")
        last = (f" · last item: {item.get('category')} → {item.get('compartment')}"
                f"{' (' + _num(total, '{:.0f}', ' ms') + ')' if isinstance(total, (int, float)) else ''}")
    elif item:
        last = f" · last item: {item.get('category')} {item.get('outcome')}"
    rows = [("sorting", f"{workflow.state}{' (maintenance)' if workflow.maintenance else ''} · "
                        f"{counts.sorted} sorted, {counts.refused} refused, {counts.failed} failed{last}")]
    for fault, label in ((workflow.error, "ERROR"), (workflow.blocked, "BLOCKED")):
        if isinstance(fault, dict):
            rows.append(("", f"{label} {fault.get('code')}: {fault.get('message')}"))
    return rows


def _compartment_lines(fill: FillState) -> list[str]:
    compartments = _compartments(fill)
    if not compartments:
        return []
    width = max(len(cid) for cid in compartments)
    level_width = max(len(str(comp.level or "unknown")) for comp in compartments.values())
    return ["compartments", *("  " + compartment_line(cid, comp.to_json(), width, level_width)
                              for cid, comp in compartments.items())]


def _health_row(health: HealthState) -> str:
    return (f"{health.status} · score {_or(health.score, '?')} · cpu "
            f"{_num(_dig(health.cpu, 'percent'), unit='%')} · ram {_num(_dig(health.memory, 'percent'), unit='%')}"
            f" · disk {_num(_dig(health.disk, 'storage', 'percent'), unit='%')} · temp "
            f"{_num(_dig(health.temperatures, 'cpu_c'), unit=' °C')}")


def _alerts_row(alerts: AlertsState) -> str:
    n = alerts.counts
    hook = alerts.webhook
    text = f"{n.total} active ({n.critical} critical, {n.warning} warning)"
    if hook.enabled:
        text += (f" · webhook ≥ {hook.min_severity}: {hook.sent} sent, {hook.failed} failed, {hook.suppressed} suppressed"
                 f", {hook.dropped} dropped" + (f" (last error: {hook.last_error})" if hook.last_error else ""))
    return text


def render_alerts(alerts: AlertsState) -> str:
    """`smartbinctl alerts`: one line per active alert, most severe first, then the webhook's counters."""
    ranked = sorted(alerts.active or [], key=lambda a: (_RANK.get(a.severity, 2), a.since))
    lines = [f"{a.severity.upper():<9} {_when(a.since):<22} {a.source}/{a.code}: {a.message}" for a in ranked]
    return "\n".join((lines or ["no active alerts"]) + [f"({_alerts_row(alerts)})"])


def _system_row(health: HealthState) -> str:
    system = health.system
    if not isinstance(system, dict):
        return "not reported (a daemon without system identity)"
    ntp = {True: "NTP synchronised", False: "NTP NOT synchronised"}.get(_dig(health.clock, "ntp_synchronized"),
                                                                         "NTP unknown")
    parts = [str(system.get("os") or "?"), f"kernel {system.get('kernel') or '?'}", f"ip {system.get('ip') or 'none'}"]
    wifi = system.get("wifi") or []
    if wifi and isinstance(wifi[0], dict):
        parts.append(f"{wifi[0].get('ssid') or wifi[0].get('interface')} {_num(wifi[0].get('signal_dbm'), '{:.0f}', ' dBm')}")
    return " · ".join([*parts, ntp])


def _availability_row(snap: Snapshot) -> str:
    if snap.source != "broker":
        return "unknown (broker unreachable)"
    avail = snap.availability or "unknown (nothing retained)"
    return avail + (" (daemon stopped or disconnected)" if avail == "offline" else "")


def render_status(snap: Snapshot, cfg: Config) -> str:
    """The human-readable `status` screen, from the states parsed into their typed models."""
    c = snap.components
    lines: list[str] = [snap.header, ""] if snap.source == "state_file" else []
    lines.append(f"SmartBin {cfg.device.id} ({cfg.root_topic})" + (f" — {snap.header}" if snap.source == "broker" else ""))

    def row(label: str, name: str, text: Callable[[Any], str], missing: str) -> None:
        state = _parsed(c, name)
        try:
            shown = text(state) if state is not None else missing
        except (TypeError, AttributeError, ValueError) as exc:  # a state of another shape (another daemon version)
            shown = f"state not readable here: {type(exc).__name__}: {exc}"
        lines.append(f"{label:<13} {shown}")

    row("daemon", "daemon", lambda d: _daemon_row(snap, d), "no state published")
    lines.append(f"{'availability':<13} {_availability_row(snap)}")
    if _parsed(c, "mqtt") is not None:
        row("mqtt", "mqtt", _mqtt_row, "")
    row("arduino", "arduino", _arduino_row, "not reported (disabled?)")
    row("camera", "camera", _camera_row, "not reported (disabled?)")
    row("detector", "detector", _detector_row, "not reported (disabled?)")
    workflow, fill = _parsed(c, "workflow"), _parsed(c, "fill")
    try:
        sorting = _sorting_rows(workflow) if workflow is not None else [("sorting", "not reported (bins disabled?)")]
        sorting_lines = [f"{label:<13} {text}" for label, text in sorting]
        sorting_lines += _compartment_lines(fill) if fill is not None else []
    except (TypeError, AttributeError, ValueError) as exc:
        sorting_lines = [f"{'sorting':<13} state not readable here: {type(exc).__name__}: {exc}"]
    lines.extend(sorting_lines)
    row("health", "health", _health_row, "not reported (health monitor disabled?)")
    row("system", "health", _system_row, "not reported (health monitor disabled?)")
    if _parsed(c, "alerts") is not None:
        row("alerts", "alerts", _alerts_row, "")
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




def render_selftest(data: Any) -> str:
    """A self-test answer as a table: one row per check (part, what, result, value, time, detail) and the verdict."""
    result = SelfTestState.from_json(data)
    rows = [("PART", "CHECK", "RESULT", "VALUE", "TIME", "DETAIL")]
    for p in result.parts:
        value = "" if p.value is None else (f"{p.value:g}" if isinstance(p.value, float) else str(p.value))
        rows.append((p.part, p.name, str(p.status).upper(), f"{value} {p.unit or ''}".strip(),
                     _num(p.duration_ms, "{:.0f}", " ms") if p.duration_ms is not None else "", p.detail or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    lines.append(f"self-test {str(result.status or 'unknown').upper()}: {result.passed} passed, {result.failed} "
                 f"failed, {result.skipped} skipped in {_num(result.duration_s, '{:.1f}', ' s')}"
                 f"{'' if result.move else ' (nothing moved)'}")
    return "\n".join(line.rstrip() for line in lines)
