// Runs a built Nitro server inside the sandbox and calls it: GET /api/health until it
// answers (at most 30 s), then each check of .turbobackend/checks/input.json in order.
// References `{{N.field}}` are put in as tb_core::checks documents (the same rules);
// judging the answers is done by the platform. Prints one line:
// __TB_CHECKS {"health": reply, "replies": [reply...], "log": "..."}, a reply being
// {"status", "body", "ms"} or {"error", "ms"}.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

const input = JSON.parse(readFileSync(".turbobackend/checks/input.json", "utf8"));
const port = await new Promise((resolve) => {
  const s = createServer();
  s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const env = { ...process.env, PORT: String(port), HOST: "127.0.0.1", NITRO_HOST: "127.0.0.1" };
delete env.DATABASE_URL;
const server = spawn("node", [".output/server/index.mjs"], { env, stdio: ["ignore", "pipe", "pipe"] });
let log = "";
const keep = (d) => { log = (log + d.toString()).slice(-4000); };
server.stdout.on("data", keep);
server.stderr.on("data", keep);
let exited = null;
server.on("exit", (code, signal) => { exited = `the server exited (${signal ?? "code " + code})`; });
const base = `http://127.0.0.1:${port}`;

async function call(method, path, body) {
  const t = Date.now();
  try {
    const init = { method, signal: AbortSignal.timeout(10000), headers: {} };
    if (body !== undefined && body !== null) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(base + path, init);
    return { status: r.status, body: await r.text(), ms: Date.now() - t };
  } catch (e) {
    return { error: exited ?? String(e?.cause?.code ?? e?.message ?? e), ms: Date.now() - t };
  }
}

function field(v, path) {
  for (const k of path.split(".")) {
    if (v === null || typeof v !== "object" || !(k in v)) return undefined;
    v = v[k];
  }
  return v;
}
function lookup(n, path, answers) {
  const a = answers[n - 1];
  if (a === undefined) throw new Error(`check ${n} has not run`);
  if (a === null) throw new Error(`check ${n} did not answer JSON`);
  const v = field(a, path);
  if (v === undefined) throw new Error(`check ${n}'s answer has no field \`${path}\``);
  return v;
}
const REF = /\{\{\s*(\d+)\.([^}\s]+)\s*\}\}/g;
const text = (s, answers) => s.replace(REF, (_, n, p) => {
  const v = lookup(Number(n), p, answers);
  return typeof v === "string" ? v : JSON.stringify(v);
});
function fill(v, answers) {
  if (typeof v === "string") {
    const whole = /^\{\{\s*(\d+)\.([^}\s]+)\s*\}\}$/.exec(v);
    return whole ? lookup(Number(whole[1]), whole[2], answers) : text(v, answers);
  }
  if (Array.isArray(v)) return v.map((x) => fill(x, answers));
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [text(k, answers), fill(x, answers)]));
  }
  return v;
}

let health;
const until = Date.now() + 30000;
for (;;) {
  health = await call("GET", "/api/health");
  if ((health.status !== undefined && health.status < 500) || exited || Date.now() > until) break;
  await new Promise((r) => setTimeout(r, 250));
}
const replies = [];
if (health.status === 200) {
  const answers = [];
  for (const c of input.checks) {
    let reply;
    try {
      reply = await call(c.method, text(c.path, answers), c.body === undefined ? undefined : fill(c.body, answers));
    } catch (e) {
      reply = { error: `not sent: ${e.message}`, ms: 0 };
    }
    replies.push(reply);
    let json = null;
    try { json = reply.body === undefined ? null : JSON.parse(reply.body); } catch { json = null; }
    answers.push(json);
  }
}
server.kill("SIGTERM");
await new Promise((r) => setTimeout(r, 200));
server.kill("SIGKILL");
console.log("__TB_CHECKS " + JSON.stringify({ health, replies, log }));
