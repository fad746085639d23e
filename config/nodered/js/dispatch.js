// Routes the bin's MQTT messages (smartbin/<device>/...) to the widgets; other devices are ignored.
// Keeps the last state of each component so that everything is re-rendered, marked stale, when the bin goes offline.
const OUT = /*OUTPUTS*/;
const device = env.get("SMARTBIN_DEVICE_ID") || "sim-bin";
const root = "smartbin/" + device + "/";
if (!msg.topic.startsWith(root)) return null;
const sub = msg.topic.slice(root.length);
const states = flow.get("states") || {};
const outs = new Array(Object.keys(OUT).length).fill(null);
const put = (name, payload, extra) => { outs[OUT[name]] = Object.assign({payload: payload}, extra || {}); };

function when(ts) {  // ISO or unix seconds -> "2026-12-03 07:10:00" (Node-RED's local time), "-" for none
    if (ts === null || ts === undefined || ts === "") return "-";
    const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
    return isNaN(d) ? String(ts) : d.toLocaleString("sv-SE");
}
const pct = (v) => (v === null || v === undefined) ? "-" : Math.round(v * 10) / 10 + " %";
const kbps = (b) => (b === null || b === undefined) ? "-" : Math.round(b / 102.4) / 10 + " KiB/s";
const mb = (b) => (b === null || b === undefined) ? "-" : Math.round(b / 1048576 * 10) / 10;
function staleNote() {
    const a = flow.get("availability") || {};
    return a.online === false ? " (stale: bin offline since " + when(a.since) + ")" : "";
}

const render = {
    health(h, note) {
        put("health", (h.score ?? "-") + " / 100, " + h.status + (h.conditions && h.conditions.length ?
            " — " + h.conditions.map(c => c.message || c.code || c).join("; ") : "") + note);
        const cpu = h.cpu || {}, mem = h.memory || {}, disk = h.disk || {}, gpu = h.gpu || {};
        const temps = h.temperatures || {};
        const du = (disk.storage || disk.root || {});
        const temp = (c) => (c === null || c === undefined) ? "-" : Math.round(c) + " °C";
        const rows = [
            {name: "CPU", value: pct(cpu.percent) + (cpu.load_1 !== undefined ? ", load " + cpu.load_1 : "")},
            {name: "Memory", value: pct(mem.percent)},
            {name: "Disk (storage)", value: pct(du.percent) + (du.free_bytes !== undefined ? ", " + mb(du.free_bytes) + " MB free" : "")},
            {name: "Temperature", value: "CPU " + temp(temps.cpu_c) + ", GPU " + temp(temps.gpu_c)},
            {name: "GPU", value: gpu.present ? (gpu.name || gpu.source) + ": " + pct(gpu.load_pct) + " load, " + temp(gpu.temp_c) : "none"},
            {name: "Updated", value: when(h.ts) + note},
        ];
        put("resources_table", rows);
        const s = h.system || {}, net = h.network || {};
        put("identity_table", [
            {name: "Device", value: device}, {name: "Hostname", value: s.hostname || "-"}, {name: "OS", value: s.os || "-"},
            {name: "Kernel", value: s.kernel || "-"}, {name: "CPU", value: (s.cpu_model || "-") + (s.cpu_cores ? " (" + s.cpu_cores + " cores)" : "")},
            {name: "IP", value: s.ip || "-"}, {name: "Booted", value: when(s.boot_time)},
            {name: "Wi-Fi", value: (s.wifi || []).map(w => w.ssid + " " + w.signal_dbm + " dBm").join(", ") || "-"},
            {name: "Network", value: "sent " + kbps(net.sent_bytes_per_s) + ", received " + kbps(net.recv_bytes_per_s)},
            {name: "Clock", value: h.clock ? (h.clock.valid ? "set" : "not set") + (h.clock.ntp_synchronized ? ", NTP synchronized" : "") : "-"},
        ]);
        const st = h.storage || {};
        put("storage_table", ["database", "evidence", "dataset", "bundles", "logs", "other"].filter(k => st[k]).map(k => (
            {name: k, files: st[k].files ?? "-", mb: mb(st[k].bytes)})));
    },
    fill(f, note) {
        const comps = Object.entries(f.compartments || {});
        put("fill_table", comps.map(([id, c]) => ({
            name: c.name + note, fill_pct: c.fill_pct === null ? "-" : c.fill_pct, level: c.level, items: c.items,
            free_l: c.free_l ?? "-", predicted_full_at: c.full ? "full now" : when(c.predicted_full_at),
            emptied_at: when(c.emptied_at)})));
        put("compartment_choice", undefined, {options: comps.map(([id, c]) => ({label: c.name, value: id}))});
        put("lid", (f.lid_open ? "open (fill readings paused until it closes)" : "closed") + note);
        flow.set("compartments", comps.map(([id]) => id));
    },
    workflow(w, note) {
        const why = (w.error || w.blocked || {}).message;
        put("sorting", w.state + (w.maintenance ? " (maintenance)" : "") + (why ? ": " + why : "") + note);
        put("workflow_error", (w.error ? w.error.message || w.error.code : w.blocked ? "blocked: " + (w.blocked.message || w.blocked.code) : "none") + note);
        const li = w.last_item;
        const target = li && (li.compartment_name || li.compartment);
    put("last_item", li ? (li.category + (target ? " → " + target : ", not sorted") + " (" + li.outcome + ", " +
            when(li.at || li.finished_at || li.started_at) + ")") + note : "none yet");
        put("maintenance_switch", !!w.maintenance);
    },
    alerts(a, note) {
        put("alerts_table", (a.active || []).map(x => ({severity: x.severity, message: x.message + note, since: when(x.since)})));
    },
    daemon(d, note) {
        const ws = Object.entries(d.workers || {});
        put("workers_table", ws.map(([name, w]) => ({name: name, status: w.status + note, restarts: w.restarts,
            last_error: w.last_error || "-"})));
        put("worker_choice", undefined, {options: ws.map(([name]) => ({label: name, value: name}))});
    },
    selftest(s, note) {
        put("selftest_result", s.status + ": " + (s.passed ?? 0) + " passed, " + (s.failed ?? 0) + " failed, " +
            (s.skipped ?? 0) + " skipped (" + when(s.finished_at || s.started_at) + ")" + note);
    },
    arduino(a, note) {
        if (a.lid !== undefined && a.lid !== null) put("lid", "Arduino: " + a.lid + note);
    },
};
function renderAll() {
    const note = staleNote();
    for (const [name, payload] of Object.entries(states)) if (render[name]) render[name](payload, note);
    const a = flow.get("availability") || {};
    put("availability", a.online ? "online since " + when(a.since) :
        a.online === false ? "OFFLINE since " + when(a.since) + " — values below are the last known" : "unknown");
}

if (sub === "availability") {
    const online = msg.payload.toString() === "online";
    flow.set("availability", {online: online, since: Date.now() / 1000});
    renderAll();
    return outs;
}
if (sub === "detector/snapshot" || sub === "camera/preview") {
    put(sub === "camera/preview" ? "preview_image" : "snapshot_image", "data:image/jpeg;base64," + msg.payload.toString("base64"));
    return outs;
}
let data;
try { data = JSON.parse(msg.payload.toString()); } catch (e) { return null; }
if (sub.startsWith("response/")) {
    const command = sub.slice("response/".length);
    put("requests", data, {response: true, command: command});
    if (data.status === "ok") {
        const d = data.data || {};
        if (command === "config/get") put("config_view", JSON.stringify(d, null, 2));
        if (command === "history/items") put("items_table", (d.items || []).map(i => ({at: when(i.at), category: i.category,
            class_name: i.class_name || "-", confidence: i.confidence === null || i.confidence === undefined ? "-" :
            Math.round(i.confidence * 100) + " %", compartment: i.compartment || "-", outcome: i.outcome})));
        if (command === "history/counts") put("counts_chart", Object.entries(d.totals || {}).map(([k, n]) => (
            {category: k, items: n})));
        if (command === "history/fill") {
            const hist = flow.get("fill_history") || {};
            hist[d.compartment] = (d.points || []).map(p => ({compartment: d.compartment, at: new Date(p.at).getTime(),
                fill_pct: p.fill_pct}));
            flow.set("fill_history", hist);
            put("fill_chart", [].concat(...Object.values(hist)));
        }
        if (command === "health/processes") put("processes_table", (d.by_cpu || []).map(p => ({pid: p.pid, name: p.name,
            user: p.user, cpu_percent: p.cpu_percent, rss_mb: mb(p.rss_bytes)})));
    }
    return outs;
}
if (sub.startsWith("event/")) {  // at least once: deduplicated by id; kept across Node-RED restarts by the session
    const seen = flow.get("event_ids") || [];
    if (!data.id || seen.includes(data.id)) return null;
    seen.push(data.id); seen.splice(0, Math.max(0, seen.length - 2000)); flow.set("event_ids", seen);
    const d = data.data || {};
    const text = {
        alert: () => d.severity + (d.active === false ? " cleared: " : ": ") + d.message,
        bin_level: () => (d.name || d.compartment) + " is " + d.level + " (" + d.fill_pct + " %)",
        bin_emptied: () => (d.name || d.compartment) + " emptied (" + d.items + " items)",
        detection: () => d.category + " (" + d.class_name + ", " + Math.round((d.confidence || 0) * 100) + " %" +
            (d.uncertain ? ", uncertain" : "") + ")",
        item_present: () => "an item arrived",
        door_opened: () => "lid opened",
        door_closed: () => "lid closed",
        item_sorted: () => d.category + " → " + (d.compartment_name || d.compartment),
        item_refused: () => "item refused: " + (d.error || d.code),
        item_failed: () => "item failed: " + d.error,
        maintenance: () => "maintenance " + (d.on ? "on" : "off"),
        config_changed: () => "configuration changed: " + (d.applied || []).join(", "),
    }[data.type];
    const summary = text ? text() : data.type;
    const events = flow.get("events") || [];
    events.unshift({at: when(data.ts), type: data.type.replace(/_/g, " "), summary: summary});
    events.splice(20);
    flow.set("events", events);
    put("events_table", events);
    if (["alert", "bin_level", "bin_emptied", "item_refused", "item_failed"].includes(data.type)) {
        put("event_notice", (data.type === "alert" ? "Alert" : "Bin") + ": " + summary);
    }
    return outs;
}
if (sub.startsWith("request/")) return null;
if (render[sub]) {
    states[sub] = data;
    flow.set("states", states);
    render[sub](data, staleNote());
    return outs;
}
return null;
