// The Cloudflare Worker example (examples/cloudflare-worker) in local workerd through
// wrangler dev, with the edgepredict package installed from its packed tarball.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { expectTypedErrors, expectReferenceLabels, post as postTo } from "./predict_endpoint.mjs";
import { root, installExample } from "./support.mjs";

const dir = path.join(root, "examples/cloudflare-worker");
const MAX_BODY = 10 * 1024 * 1024;

const freePort = () => new Promise((ok, fail) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => ok(port));
  }).on("error", fail);
});

/// Descendant pids of `pid` (from /proc), to find the workerd children of wrangler.
function descendants(pid) {
  const children = new Map();
  for (const p of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${p}/status`, "utf8"))[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(p));
    } catch { /* gone */ }
  }
  const out = [];
  const walk = (p) => (children.get(p) ?? []).forEach((c) => (out.push(c), walk(c)));
  walk(pid);
  return out;
}

/// Peak and current RSS (kB) of every workerd process under `pid`.
function workerdMemory(pid) {
  return descendants(pid).flatMap((p) => {
    try {
      const status = fs.readFileSync(`/proc/${p}/status`, "utf8");
      if (!/^Name:\s+workerd$/m.test(status)) return [];
      const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)[1]);
      // wrangler runs two: its proxy and the user worker (the one with an inspector port).
      const user = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").includes("--inspector-addr");
      return [{ pid: p, role: user ? "worker" : "proxy", peakKB: kb("VmHWM"), rssKB: kb("VmRSS") }];
    } catch {
      return [];
    }
  });
}

let proc, base, log = "", idle, wasmPeak = 0;

before(async () => {
  installExample(dir);
  const port = await freePort();
  // detached: its own process group, so the whole tree (node, esbuild, workerd) is killed.
  proc = spawn(path.join(dir, "node_modules/.bin/wrangler"),
    ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(await freePort())],
    { cwd: dir, detached: true, env: { ...process.env, WRANGLER_SEND_METRICS: "false", CI: "true" },
      stdio: ["ignore", "pipe", "pipe"] });
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 90_000;
  while (!/Ready on/.test(log)) {
    // A failed build leaves wrangler dev waiting for an edit: stop at its error.
    if (proc.exitCode !== null || Date.now() > deadline || /Build failed|\[ERROR\]/.test(log)) {
      throw new Error(`wrangler dev did not start:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  // workerd's own footprint (runtime, V8, wrangler's internal workers) before the model loads.
  idle = workerdMemory(proc.pid);
});

after(() => {
  if (proc && proc.exitCode === null) process.kill(-proc.pid, "SIGKILL");
});

const post = (body, headers) => postTo(base, body, headers);

test("magika in workerd names a Python file and a PNG, with the reference scores", async () => {
  for (const { file, first, res, json, ms, mem } of await expectReferenceLabels(base, { "content-type": "application/octet-stream" })) {
    // workerd's V8 validates relaxed SIMD, so the package's feature-detect picks it.
    assert.equal(res.headers.get("x-wasm-build"), "relaxed-simd");
    wasmPeak = Math.max(wasmPeak, mem);
    console.log(`${file}: ${json.label} ${json.score.toFixed(5)}, first request ${first.ms.toFixed(0)} ms,` +
      ` then ${ms.toFixed(0)} ms; wasm memory ${(mem / 2 ** 20).toFixed(1)} MiB`);
  }
  // The same file as multipart form data.
  const form = new FormData();
  form.append("file", new Blob([fs.readFileSync(path.join(root, "tools/make_reference.py"))]), "x.py");
  const { res, json } = await post(form);
  assert.equal(res.status, 200, JSON.stringify(json));
  assert.equal(json.label, "python");
});

test("workerd stays well inside the 128 MB Workers limit (after the model ran)", () => {
  const mem = workerdMemory(proc.pid);
  assert.ok(mem.some((m) => m.role === "worker"), `no workerd found under wrangler: ${JSON.stringify(mem)}`);
  for (const m of mem) {
    const before = idle.find((i) => i.pid === m.pid);
    console.log(`workerd ${m.role} (pid ${m.pid}): idle ${(before.rssKB / 1024).toFixed(1)} MiB,` +
      ` peak RSS ${(m.peakKB / 1024).toFixed(1)} MiB (+${((m.peakKB - before.rssKB) / 1024).toFixed(1)}), now ${(m.rssKB / 1024).toFixed(1)} MiB`);
  }
  // The 128 MB is per isolate (JS heap + wasm memory); the process also holds the runtime
  // and wrangler's helper workers, so the isolate's share is the growth over idle.
  const worker = mem.find((m) => m.role === "worker");
  const growth = (worker.peakKB - idle.find((i) => i.pid === worker.pid).rssKB) * 1024;
  console.log(`wasm linear memory peak ${(wasmPeak / 2 ** 20).toFixed(1)} MiB; isolate growth ${(growth / 2 ** 20).toFixed(1)} MiB`);
  assert.ok(wasmPeak > 0 && wasmPeak < 64 * 2 ** 20, `wasm memory ${wasmPeak}`);
  assert.ok(growth < 64 * 2 ** 20, `workerd grew by ${growth} bytes`);
});

test("bad input gets a typed 4xx", async () => {
  await expectTypedErrors(base, MAX_BODY);
  // The worker still serves after the errors.
  const { res, json } = await post(fs.readFileSync(path.join(root, "tools/make_reference.py")));
  assert.equal(res.status, 200);
  assert.equal(json.label, "python");
  const worker = workerdMemory(proc.pid).find((m) => m.role === "worker");
  console.log(`after the 10 MB bodies: workerd worker peak RSS ${(worker.peakKB / 1024).toFixed(1)} MiB`);
});

// Batch prediction at the edge (issue #7): POST /batch keeps the files in KV and queues
// their keys; the Queue consumer (miniflare's Queues) runs them through Model.runBatch
// and writes KV; GET /prediction/:key serves those, or predicts online when the batch has
// not reached a key.
const getJson = async (p) => {
  const res = await fetch(base + p);
  return { res, json: await res.json() };
};
const postJson = async (p, body) => {
  const res = await fetch(base + p, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { res, json: await res.json() };
};

test("batch at the edge: POST /batch → queue consumer → KV → GET /prediction/:key", { timeout: 120_000 }, async () => {
  const cfg = JSON.parse(fs.readFileSync(path.join(root, ".cache/models/magika_config.json"), "utf8"));
  const files = ["tools/make_reference.py", "README.md", "Cargo.toml", "js/edgepredict.js", "src/lib.rs",
    "package.json", ".cache/reference/magika/sample.png", "tools/setup.sh", "docs/architecture.md", "www/index.html",
    "www/style.css", "tests/js/types_check.ts"]
    .filter((f) => fs.statSync(path.join(root, f)).size >= cfg.min_file_size_for_dl);
  assert.ok(files.length >= 10, `${files.length} files`);
  const bytes = files.map((f) => fs.readFileSync(path.join(root, f)));
  // Online labels (POST /predict) are what the batch must reproduce.
  const online = [];
  for (const b of bytes) online.push((await post(b)).json.label);
  const run = `r${Date.now()}`;
  const items = bytes.map((b, i) => ({ key: `${run}-${i}`, base64: b.toString("base64") }));
  const { res, json } = await postJson("/batch", { items });
  assert.equal(res.status, 202, JSON.stringify(json));
  assert.deepEqual(json, { queued: files.length, stored: files.length });
  // ?peek reads the store only: 404 until the consumer has written the key.
  const deadline = Date.now() + 60_000;
  const got = new Array(items.length);
  while (got.includes(undefined)) {
    assert.ok(Date.now() < deadline, `the queue consumer did not write every key: ${got.map((g) => !!g)}\n${log.slice(-3000)}`);
    for (let i = 0; i < items.length; i++) {
      if (got[i]) continue;
      const r = await getJson(`/prediction/${items[i].key}?peek`);
      if (r.res.status === 200) got[i] = r.json;
      else assert.equal(r.json.error.code, "not_computed");
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  for (let i = 0; i < items.length; i++) {
    assert.equal(got[i].source, "store");
    assert.equal(got[i].label, online[i], `${files[i]}: batch ${got[i].label}, online ${online[i]}`);
    // Without ?peek the stored prediction is served too.
    const r = await getJson(`/prediction/${items[i].key}`);
    assert.deepEqual([r.json.source, r.json.label, r.json.createdAt], ["store", online[i], got[i].createdAt]);
  }
  console.log(`batch: ${items.length} files through the queue, labels ${got.map((g) => g.label).join(" ")}`);

  // Kept but not queued: the GET predicts online, stores, and the next GET reads the store.
  const late = { key: `${run}-late`, base64: bytes[0].toString("base64") };
  assert.equal((await postJson("/batch", { items: [late], enqueue: false })).res.status, 202);
  assert.equal((await getJson(`/prediction/${late.key}?peek`)).res.status, 404);
  const first = (await getJson(`/prediction/${late.key}`)).json;
  assert.deepEqual([first.source, first.label], ["online", online[0]]);
  const second = (await getJson(`/prediction/${late.key}`)).json;
  assert.deepEqual([second.source, second.label, second.createdAt], ["store", online[0], first.createdAt]);

  // Typed 4xx for what cannot be done.
  assert.equal((await getJson(`/prediction/${run}-none`)).res.status, 404);
  for (const [body, code] of [[{}, "bad_items"], [{ items: [{ key: "a b", base64: "" }] }, "bad_item"],
    [{ items: [{ key: "tiny", base64: Buffer.from("hi").toString("base64") }] }, "small_file"]]) {
    const r = await postJson("/batch", body);
    assert.equal(r.res.status, 400);
    assert.equal(r.json.error.code, code);
  }
  const bad = await fetch(base + "/batch", { method: "POST", body: "{" });
  assert.equal(bad.status, 400);
  const huge = await fetch(base + "/batch", { method: "POST", body: new Uint8Array(17 * 1024 * 1024) });
  assert.equal(huge.status, 413);
  assert.equal((await huge.json()).error.code, "payload_too_large");
});
