// Online vs stored predictions at the edge (issue #7): the Cloudflare Worker example in
// local workerd (wrangler dev), requests sent at a steady rate (open loop: each is sent on
// schedule whether or not the previous one has answered), latency measured at the client.
//   POST /predict             magika runs on the request (online)
//   GET  /prediction/:key     the prediction the Queue consumer stored in KV (batch)
// Not a test. Prints a Markdown table and writes it to bench/results/worker_latency.md.
//   node bench/worker_latency.mjs [--rate 10,20] [--seconds 15]
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { root, installExample } from "../tests/js/support.mjs";

const arg = (k, d) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const RATES = arg("rate", "10,20").split(",").map(Number);
const SECONDS = Number(arg("seconds", 15));
const dir = path.join(root, "examples/cloudflare-worker");

const freePort = () => new Promise((ok) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => ok(port));
  });
});

installExample(dir);
const port = await freePort();
const proc = spawn(path.join(dir, "node_modules/.bin/wrangler"),
  ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(await freePort())],
  { cwd: dir, detached: true, env: { ...process.env, WRANGLER_SEND_METRICS: "false", CI: "true" }, stdio: ["ignore", "pipe", "pipe"] });
let log = "";
proc.stdout.on("data", (d) => (log += d));
proc.stderr.on("data", (d) => (log += d));
const stop = () => proc.exitCode === null && process.kill(-proc.pid, "SIGKILL");
process.on("exit", stop);
const base = `http://127.0.0.1:${port}`;
for (const t0 = Date.now(); !/Ready on/.test(log);) {
  if (Date.now() - t0 > 90_000 || proc.exitCode !== null) throw new Error(`wrangler dev did not start:\n${log}`);
  await new Promise((r) => setTimeout(r, 200));
}

const files = ["tools/make_reference.py", "README.md", "Cargo.toml", "js/edgepredict.js", "src/lib.rs", "docs/architecture.md"]
  .map((f) => fs.readFileSync(path.join(root, f)));
// Warm: the model loads on the first request.
await fetch(`${base}/predict`, { method: "POST", body: files[0] }).then((r) => r.json());
const run = `bench${Date.now()}`;
const keys = files.map((_, i) => `${run}-${i}`);
await fetch(`${base}/batch`, {
  method: "POST", headers: { "content-type": "application/json" },
  body: JSON.stringify({ items: files.map((b, i) => ({ key: keys[i], base64: b.toString("base64") })) }),
});
for (const k of keys) {
  while ((await fetch(`${base}/prediction/${k}?peek`)).status !== 200) await new Promise((r) => setTimeout(r, 200));
}

async function steady(label, RATE, request) {
  const lat = [];
  let failed = 0;
  const pending = [];
  const t0 = performance.now();
  const n = RATE * SECONDS;
  for (let i = 0; i < n; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const start = performance.now();
    pending.push(request(i).then(async (res) => {
      await res.arrayBuffer();
      if (res.ok) lat.push(performance.now() - start);
      else failed++;
    }, () => failed++));
  }
  await Promise.all(pending);
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  return { label, target: RATE, sent: n, ok: lat.length, failed, rate: n / secs, p50: q(0.5), p99: q(0.99), max: lat.at(-1) };
}

const results = [];
for (const rate of RATES) {
  results.push(await steady("online: POST /predict (magika runs per request)", rate, (i) =>
    fetch(`${base}/predict`, { method: "POST", body: files[i % files.length] })));
  results.push(await steady("batch: GET /prediction/:key (stored in KV)", rate, (i) =>
    fetch(`${base}/prediction/${keys[i % keys.length]}`)));
}
stop();

const rows = results.map((r) =>
  `| ${r.label} | ${r.target} | ${r.rate.toFixed(1)} | ${r.ok}/${r.sent} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.max.toFixed(1)} |`);
const table = `Worker latency under a steady request rate, ${SECONDS} s per row (wrangler dev --local, workerd; ` +
  `${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} cores; client on the same machine)\n\n` +
  "| requests | target/s | sent/s | ok | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|\n" + rows.join("\n") + "\n";
fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
fs.writeFileSync(path.join(root, "bench/results/worker_latency.md"), table);
console.log(table);
process.exit(0);
