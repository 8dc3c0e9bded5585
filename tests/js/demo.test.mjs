// The demo page (www/) in headless Chromium: the file type and sentence similarity panels
// load their models, answer real inputs, and the page survives a panel that fails.
// Backend: DEMO_BACKEND (cpu by default; auto and webgpu work too, SwiftShader is slow).
// Screenshots: target/artifacts/demo-<panel>.png.
// Run: node --test tests/js/demo.test.mjs
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import os from "node:os";
import http from "node:http";
import { root, serve, launchChromium, readNpy, waitPanel as waitPanelOn } from "./support.mjs";
import { magikaFeatures } from "../../www/lib/magika.js";

const BACKEND = process.env.DEMO_BACKEND ?? "cpu";
const ARTIFACTS = path.join(root, "target/artifacts");
const need = ["js/entry/web.js", ".cache/models/magika.onnx", ".cache/models/minilm_l3.onnx", ".cache/models/minilm_tokenizer.json"];
const missing = need.filter((p) => !fs.existsSync(path.join(root, p)));
// Without the package or the models: a skip, or a failure where tools/test_all.sh requires them.
const skip = missing.length > 0 && !process.env.EDGEPREDICT_REQUIRE_MODELS && `missing ${missing.join(", ")}`;

let server, browser, page;
const pageErrors = [];

before(async () => {
  if (skip) return;
  server = await serve();
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => m.type() === "error" && console.log("[page]", m.text()));
  await page.goto(`http://127.0.0.1:${server.address().port}/www/?backend=${BACKEND}`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  server?.close();
});

const waitPanel = (...args) => waitPanelOn(page, ...args);

const shot = (name) => page.screenshot({ path: path.join(ARTIFACTS, `demo-${name}.png`), fullPage: true });

// A real PNG, made here: 64×48 RGB gradient, zlib-compressed scanlines.
function makePng() {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const w = 64, hgt = 48;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(hgt, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const raw = Buffer.alloc(hgt * (1 + 3 * w));
  for (let y = 0; y < hgt; y++) {
    const o = y * (1 + 3 * w);
    for (let x = 0; x < w; x++) raw.set([x * 4, y * 5, (x * y) & 255], o + 1 + 3 * x);
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

test("the page shell: backend switch and the WebGPU note", { skip }, async () => {
  assert.equal(await page.$eval('input[name="backend"]:checked', (e) => e.value), BACKEND);
  await page.waitForFunction(() => !document.getElementById("gpu-note").textContent.startsWith("Checking"));
  const note = await page.$eval("#gpu-note", (e) => e.textContent);
  assert.match(note, /WebGPU|navigator\.gpu/);
  assert.equal(await page.$eval("#fatal", (e) => e.hidden), true, "the package did not load");
  // Every panel has its section, whatever its state.
  for (const id of ["panel-filetype", "panel-ocr", "panel-sentences", "panel-voice"]) assert.ok(await page.$(`#${id}`), id);
});

test("file type: python, png and the small-file rule", { skip, timeout: 150_000 }, async () => {
  const id = "panel-filetype";
  await waitPanel(id, "ready");
  const info = await page.$eval(`#${id} .model.loaded`, (e) => ({ size: e.dataset.size, text: e.textContent }));
  assert.ok(Number(info.size) > 1_000_000, `model size: ${info.size}`);
  assert.match(info.text, /MB/);
  assert.match(info.text, /runs on/);
  const input = await page.$(`#${id} input[type=file]`);
  const cfg = JSON.parse(fs.readFileSync(path.join(root, ".cache/models/magika_config.json"), "utf8"));
  const refDir = path.join(root, ".cache/reference/magika");
  const ref = fs.existsSync(refDir) ? { x: readNpy(path.join(refDir, "input_bytes.npy")), y: readNpy(path.join(refDir, "output_0.npy")) } : null;

  const cases = [
    { name: "make_reference.py", buffer: fs.readFileSync(path.join(root, "tools/make_reference.py")), want: "python", refRow: 0 },
    { name: "gradient.png", buffer: makePng(), want: "png" },
    { name: "hi.txt", buffer: Buffer.from("hi!\n"), want: "txt", small: true },
  ];
  if (fs.existsSync(path.join(refDir, "sample.png"))) {
    cases.push({ name: "sample.png", buffer: fs.readFileSync(path.join(refDir, "sample.png")), want: "png", refRow: 1 });
  }
  let seen = null;
  for (const c of cases) {
    await input.setInputFiles({ name: c.name, mimeType: "application/octet-stream", buffer: c.buffer });
    const v = await waitPanel(id, "done", 60_000, `s.dataset.result && JSON.parse(s.dataset.result).file === ${JSON.stringify(c.name)} && s.dataset.result !== ${JSON.stringify(seen)}`);
    seen = v.result;
    const r = JSON.parse(v.result);
    console.log(`${c.name}: ${r.label} ${r.score.toFixed(5)} on ${r.backend}; top 3 ${r.top3.map((t) => `${t.label} ${t.score.toFixed(4)}`).join(", ")}`);
    assert.equal(r.label, c.want, c.name);
    assert.equal(r.size, c.buffer.length);
    if (c.small) {
      assert.equal(r.dlLabel, null, "small files skip the model");
      continue;
    }
    assert.ok(r.score > 0.9 && r.confident, `${c.name}: score ${r.score}`);
    assert.equal(r.top3.length, 3);
    assert.ok(r.top3[0].score >= r.top3[1].score && r.top3[1].score >= r.top3[2].score);
    // Where onnxruntime's reference saw the same features, the scores agree too.
    if (ref && c.refRow !== undefined) {
      const feats = magikaFeatures(new Uint8Array(c.buffer), cfg);
      const row = ref.x.data.subarray(c.refRow * 2048, (c.refRow + 1) * 2048);
      if (feats.every((v, i) => v === row[i])) {
        const yr = ref.y.data.subarray(c.refRow * 214, (c.refRow + 1) * 214);
        for (const t of r.top3) {
          const k = cfg.target_labels_space.indexOf(t.label);
          assert.ok(Math.abs(t.score - yr[k]) < 1e-3, `${c.name} ${t.label}: ${t.score} vs onnxruntime ${yr[k]}`);
        }
      } else console.log(`${c.name}: changed since the reference was made; label check only`);
    }
  }
  const timing = await page.$eval(`#${id} .timing[data-label="classify"]`, (e) => e.textContent);
  assert.match(timing, /classify: [\d.]+ ms/);
  await shot("filetype");

  // Moving the switch reloads the model on the other backend and classifies the last file again.
  const other = BACKEND === "cpu" ? "auto" : "cpu";
  await page.click(`#backend label:has(input[value=${other}])`);
  const v = await waitPanel(id, "done", 120_000, `JSON.parse(s.dataset.result).requested === ${JSON.stringify(other)}`);
  const r = JSON.parse(v.result);
  console.log(`after switching to ${other}: ${r.label} on ${r.backend}`);
  assert.equal(r.label, cases.at(-1).want);
  assert.equal(await page.$$eval(`#${id} .model`, (rows) => rows.length), 1);
  await page.click(`#backend label:has(input[value=${BACKEND}])`);
  await waitPanel(id, "done", 120_000, `JSON.parse(s.dataset.result).requested === ${JSON.stringify(BACKEND)}`);
});

const QUERY = "How do I bake bread at home?";
const SENTENCES = [
  "The stock market closed higher after the central bank's announcement.",
  "A simple recipe for homemade loaves: flour, water, yeast and a hot oven.",
  "The football team won the championship in extra time.",
  "My laptop battery drains too quickly when the screen is bright.",
];
const BEST = 1;

async function rankWith(variant) {
  const id = "panel-sentences";
  const current = await page.$eval(`#${id}`, (s) => s.dataset.model);
  if (current !== variant) await page.check(`#${id} input[name=minilm][value=${variant}]`);
  await waitPanel(id, "ready", 150_000, `s.dataset.model === ${JSON.stringify(variant)}`);
  const row = await page.$eval(`#${id} .model.loaded`, (e) => ({ size: e.dataset.size, text: e.textContent }));
  assert.ok(Number(row.size) > 10_000_000, `model size: ${row.size}`);
  assert.match(row.text, /MB/);
  await page.fill("#sent-query", QUERY);
  await page.fill("#sent-list", SENTENCES.join("\n"));
  await page.click(`#${id} button.primary`);
  const v = await waitPanel(id, "done", 120_000, `JSON.parse(s.dataset.result || "{}").model === ${JSON.stringify(variant)} && JSON.parse(s.dataset.result).query === ${JSON.stringify(QUERY)}`);
  const r = JSON.parse(v.result);
  console.log(`${variant} on ${r.backend}: ${r.ranking.map((x) => `${x.index}:${x.score.toFixed(3)}`).join(" ")}`);
  return r;
}

test("sentences: the matching sentence ranks first, float32 and int8 alike", { skip, timeout: 240_000 }, async () => {
  const id = "panel-sentences";
  await waitPanel(id, "ready", 150_000);
  const f = await rankWith("float");
  assert.equal(f.ranking.length, SENTENCES.length);
  assert.equal(f.ranking[0].index, BEST, `best: ${f.best}`);
  assert.equal(f.best, SENTENCES[BEST]);
  assert.ok(f.ranking[0].score - f.ranking[1].score > 0.1, "a clear margin");
  assert.ok(f.ranking.every((x) => x.score >= -1 && x.score <= 1.0001));
  assert.match(await page.$eval(`#${id} .timing`, (e) => e.textContent), /[\d.]+ ms/);
  await shot("sentences");
  const hasInt8 = await page.$(`#${id} input[name=minilm][value=int8]`);
  if (hasInt8) {
    const q = await rankWith("int8");
    assert.deepEqual(q.ranking.map((x) => x.index), f.ranking.map((x) => x.index), "int8 ranks like float32");
    for (let i = 0; i < f.ranking.length; i++) assert.ok(Math.abs(q.ranking[i].score - f.ranking[i].score) < 0.05);
  }
});

test("a panel that fails to import or to mount shows why, and the others still work", { skip, timeout: 60_000 }, async () => {
  const p2 = await browser.newPage();
  try {
    await p2.route("**/www/panels/voice.js", (r) => r.fulfill({ status: 404, body: "" }));
    await p2.route("**/www/panels/ocr.js", (r) => r.fulfill({
      contentType: "text/javascript",
      body: 'export async function mount(s) { s.append("drawn"); throw new Error("mount broke"); }',
    }));
    await p2.goto(`http://127.0.0.1:${server.address().port}/www/?backend=cpu`);
    await p2.waitForSelector("#panel-filetype[data-state=ready]", { timeout: 50_000 });
    const voice = await p2.waitForSelector("#panel-voice[data-state=error]");
    assert.match(await voice.textContent(), /did not load.*voice\.js/s);
    const ocr = await p2.waitForSelector("#panel-ocr[data-state=error]");
    const text = await ocr.textContent();
    assert.match(text, /drawn/, "what the panel drew stays");
    assert.match(text, /mount broke/);
  } finally {
    await p2.close();
  }
});

test("no uncaught errors, no stray null / undefined / NaN in the panels' text", { skip }, async () => {
  assert.deepEqual(pageErrors, []);
  for (const id of ["panel-filetype", "panel-sentences"]) {
    assert.doesNotMatch(await page.$eval(`#${id}`, (e) => e.innerText), /\b(null|undefined|NaN)\b/, id);
  }
});

// tools/serve.mjs, which `npm start` runs: what the page and the delivery layer rely on.
test("the server: / redirects, /models/ falls back to .cache, wasm type, ETag and ranges", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "serve-"));
  const wasm = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
  fs.writeFileSync(path.join(dir, "m.wasm"), wasm);
  const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => i & 255));
  fs.writeFileSync(path.join(dir, "blob.bin"), body);
  const s1 = await serve({ base: dir });
  const s2 = await serve();
  try {
    const at = (s, p, init) => fetch(`http://127.0.0.1:${s.address().port}${p}`, { redirect: "manual", ...init });
    let r = await at(s1, "/m.wasm");
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-type"), "application/wasm");
    assert.equal(r.headers.get("content-length"), "8");
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), wasm);
    const etag = r.headers.get("etag");
    assert.ok(etag);
    r = await at(s1, "/m.wasm", { headers: { "if-none-match": etag } });
    assert.equal(r.status, 304);
    // Resume: bytes=N- answers 206 with a matching Content-Range.
    r = await at(s1, "/blob.bin", { headers: { range: "bytes=600-" } });
    assert.equal(r.status, 206);
    assert.equal(r.headers.get("content-range"), "bytes 600-999/1000");
    assert.equal(r.headers.get("content-length"), "400");
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), body.subarray(600));
    r = await at(s1, "/blob.bin", { headers: { range: "bytes=10-19" } });
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), body.subarray(10, 20));
    r = await at(s1, "/blob.bin", { headers: { range: "bytes=-5" } });
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), body.subarray(995));
    r = await at(s1, "/blob.bin", { headers: { range: "bytes=1000-" } });
    assert.equal(r.status, 416);
    assert.equal(r.headers.get("content-range"), "bytes */1000");
    // A stale If-Range gets the whole file.
    r = await at(s1, "/blob.bin", { headers: { range: "bytes=600-", "if-range": '"old"' } });
    assert.equal(r.status, 200);
    assert.equal((await r.arrayBuffer()).byteLength, 1000);
    // Paths out of the served folder, sent raw (fetch would normalize them away).
    const raw = (p) => new Promise((ok, fail) =>
      http.get({ host: "127.0.0.1", port: s1.address().port, path: p }, (res) => (res.resume(), ok(res.statusCode))).on("error", fail));
    fs.writeFileSync(path.join(path.dirname(dir), `${path.basename(dir)}-secret`), "x");
    assert.equal(await raw(`/../${path.basename(dir)}-secret`), 404);
    assert.equal(await raw(`/%2e%2e/${path.basename(dir)}-secret`), 404);
    assert.equal(await raw(`/..%2f${path.basename(dir)}-secret`), 404);
    fs.rmSync(`${dir}-secret`);
    // The repo root: / goes to the page; a model in models/ or .cache/models/ is found.
    r = await at(s2, "/");
    assert.equal(r.status, 302);
    assert.equal(r.headers.get("location"), "/www/");
    r = await at(s2, "/www");
    assert.equal(r.headers.get("location"), "/www/");
    r = await at(s2, "/models/digits_mlp.onnx", { method: "HEAD" });
    assert.equal(r.status, 200, "a committed model in models/");
    if (fs.existsSync(path.join(root, ".cache/models/magika_config.json"))) {
      r = await at(s2, "/models/magika_config.json");
      assert.equal(r.status, 200);
      assert.equal((await r.json()).target_labels_space.length, 214);
    }
  } finally {
    s1.close();
    s2.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
