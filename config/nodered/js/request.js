// Sends a request described by a button ({command, title, args, sign, timeout_s, quiet}) to the bin and reports
// the answer, or its absence, in words: output 1 the MQTT request, 2 a notification, 3 the recent-actions table.
// Privileged requests are signed like smartbin_daemon.runtime.auth.sign with the Node-RED process's
// SMARTBIN_HMAC_SECRET (and SMARTBIN_HMAC_KEY_ID when the bin has several keys); without a secret they are not sent.
const device = env.get("SMARTBIN_DEVICE_ID") || "sim-bin";
const secret = env.get("SMARTBIN_HMAC_SECRET");
const keyId = env.get("SMARTBIN_HMAC_KEY_ID");
const pending = context.get("pending") || {};
const log = context.get("log") || [];

function canonical(v) {  // Python json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
    if (v !== null && typeof v === "object") {
        return "{" + Object.keys(v).sort().map(k => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
    }
    return JSON.stringify(v);
}
const pyFloat = (x) => Number.isInteger(x) ? x.toFixed(1) : String(x);  // Python repr(float(x))
function sign(command, args) {
    const ts = Date.now() / 1000;
    const nonce = crypto.randomBytes(16).toString("hex");
    const lines = [device, command, canonical(args), pyFloat(ts), nonce];
    if (keyId) lines.push(keyId);
    const sig = crypto.createHmac("sha256", secret).update(lines.join("\n"), "utf8").digest("hex");
    return keyId ? {key: keyId, ts: ts, nonce: nonce, sig: sig} : {ts: ts, nonce: nonce, sig: sig};
}
function report(title, result, ok, quiet) {
    if (quiet && ok) return;  // the periodic history refreshes: only their failures are worth a word
    log.unshift({at: new Date().toLocaleString("sv-SE"), title: title, result: result});
    log.splice(30);
    context.set("log", log);
    const note = {payload: title + (ok ? ": " : " FAILED: ") + result,
        ui_update: {color: ok ? "#2f6b3a" : "#b00020"}};
    node.send([null, note, {payload: log}]);
}
function summary(command, data) {
    if (data === null || typeof data !== "object") return "done";
    if (command === "lid") return "lid " + (data.lid || "acknowledged");
    if (command === "maintenance") return "maintenance " + (data.maintenance ? "on" : "off") + (data.lid_unlocked ? ", lid unlocked" : "");
    if (command === "selftest") return data.status + " (" + (data.passed ?? 0) + " passed, " + (data.failed ?? 0) + " failed)";
    if (command === "config/set" || command === "config/rollback") return "applied " + ((data.applied || []).join(", ") || "nothing") +
        ((data.restart_required || []).length ? "; restart required for " + data.restart_required.join(", ") : "");
    if (command === "camera/preview") return data.on ? "on for " + data.minutes + " min" : "off";
    if (command === "bin/emptied") return "emptied " + (data.emptied || []).join(", ");
    return "ok";
}

function send(spec) {
    const args = {};
    for (const [k, v] of Object.entries(spec.args || {})) {
        if (typeof v === "string" && v.startsWith("$")) {
            const chosen = flow.get("choice_" + v.slice(1));
            if (chosen === undefined || chosen === null || chosen === "") {
                report(spec.title, "not sent: choose a " + v.slice(1) + " first", false, false);
                return;
            }
            if (v === "$config") {
                try { args[k] = JSON.parse(chosen); } catch (e) {
                    report(spec.title, "not sent: the configuration change is not valid JSON (" + e.message + ")", false, false);
                    return;
                }
            } else args[k] = chosen;
        } else args[k] = v;
    }
    if (spec.command === "history/fill" && !args.compartment) {  // one request per known compartment
        for (const c of flow.get("compartments") || []) send(Object.assign({}, spec, {args: Object.assign({}, args, {compartment: c})}));
        return;
    }
    const transaction = spec.command + "-" + Date.now().toString(36) + "-" + crypto.randomBytes(3).toString("hex");
    const body = {transaction: transaction, args: args};
    if (spec.sign === "always" && !secret) {
        report(spec.title, "not sent: this request must be signed and SMARTBIN_HMAC_SECRET is not set in Node-RED's environment (see the README, Node-RED)", false, false);
        return;
    }
    if (secret && (spec.sign === "always" || spec.sign === "if_available")) body.auth = sign(spec.command, args);
    const timer = setTimeout(() => {
        const p = context.get("pending") || {};
        if (!p[transaction]) return;
        delete p[transaction];
        context.set("pending", p);
        report(spec.title, "no answer within " + spec.timeout_s + " s (is the bin online?)", false, false);
    }, (spec.timeout_s || 10) * 1000);
    pending[transaction] = {title: spec.title, quiet: !!spec.quiet, timer: timer};
    context.set("pending", pending);
    node.send([{topic: "smartbin/" + device + "/request/" + spec.command, payload: JSON.stringify(body)}, null, null]);
}

if (msg.response) {
    const p = pending[msg.payload.transaction];
    if (!p) return null;  // another client's request
    clearTimeout(p.timer);
    delete pending[msg.payload.transaction];
    context.set("pending", pending);
    const ok = msg.payload.status === "ok";
    report(p.title, ok ? summary(msg.command, msg.payload.data) : (msg.payload.error || "error"), ok, p.quiet);
    return null;
}
for (const spec of [].concat(msg.payload)) send(spec);
return null;
