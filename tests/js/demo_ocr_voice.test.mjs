// The demo's OCR and voice panels in headless Chromium, on inputs made by
// tools/make_demo_fixtures.py (run here when its outputs are missing):
// - OCR reads the three rendered lines of a PNG, the upside-down one through cls;
// - voice finds the speech of a 44.1 kHz WAV (decoded, resampled to 16 kHz, streamed);
// - voice on the microphone: Chromium's fake capture device plays the same WAV in a loop.
// The page is the demo shell (/www/) when it exists, else tests/js/pages/panel_harness.html.
// Backend: DEMO_BACKEND (cpu by default). Screenshots: target/artifacts/demo-{ocr,voice}.png.
// Run: node --test tests/js/demo_ocr_voice.test.mjs
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { root, serve, launchChromium, waitPanel as waitPanelOn } from "./support.mjs";

const BACKEND = process.env.DEMO_BACKEND ?? "cpu";
// The module "edgepredict" resolves to in the harness (only there; the shell has its import map).
const PKG = process.env.DEMO_PKG ?? "/js/entry/web.js";
const ARTIFACTS = path.join(root, "target/artifacts");
const FIX = path.join(root, "www/fixtures/generated");
const fixtures = ["ocr_lines.png", "ocr_lines.json", "speech.wav", "speech.json"].map((f) => path.join(FIX, f));
const shell = fs.existsSync(path.join(root, "www/index.html")) && fs.existsSync(path.join(root, "www/app.js"));

const need = [PKG.slice(1), ".cache/models/ppocr_det.onnx", ".cache/models/ppocr_cls.onnx", ".cache/models/ppocr_rec.onnx", ".cache/models/silero_vad.onnx"];
const missing = need.filter((p) => !fs.existsSync(path.join(root, p)));
// Without the package or the models: a skip, or a failure where tools/test_all.sh requires them.
const skip = missing.length > 0 && !process.env.EDGEPREDICT_REQUIRE_MODELS && `missing ${missing.join(", ")}`;

let server, browser, page;
const pageErrors = [];
const times = {};

before(async () => {
  if (skip) return;
  if (!fixtures.every((f) => fs.existsSync(f))) {
    const py = path.join(root, ".cache/venv/bin/python");
    const r = spawnSync(fs.existsSync(py) ? py : "python3", [path.join(root, "tools/make_demo_fixtures.py")], { encoding: "utf8" });
    assert.equal(r.status, 0, `make_demo_fixtures.py failed:\n${r.stdout}\n${r.stderr}`);
  }
  server = await serve();
  // One browser for the three tests; the fake capture device only matters to the mic test.
  const wav = path.join(FIX, "speech.wav");
  browser = await launchChromium([
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${wav}`,
  ]);
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => m.type() === "error" && console.log("[page]", m.text()));
  const base = `http://127.0.0.1:${server.address().port}`;
  const url = shell
    ? `${base}/www/?backend=${BACKEND}`
    : `${base}/tests/js/pages/panel_harness.html?panels=ocr,voice&backend=${BACKEND}&pkg=${encodeURIComponent(PKG)}`;
  const t0 = Date.now();
  await page.goto(url);
  await waitPanel("panel-ocr", "ready", 180_000);
  await waitPanel("panel-voice", "ready", 180_000);
  times.load = Date.now() - t0;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  if (!skip) console.log(`# page: ${shell ? "/www/" : "harness"}, backend ${BACKEND}, times (ms): ${JSON.stringify(times)}`);
  await browser?.close();
  server?.close();
});

const waitPanel = (...args) => waitPanelOn(page, ...args);

const shot = (id, name) => page.locator(`#${id}`).screenshot({ path: path.join(ARTIFACTS, `demo-${name}.png`) });

// PP-OCR's rec has one space class; a wide gap can come out as two spaces or a narrow one
// as none. Spaces are collapsed, nothing else is forgiven: every letter must match.
const norm = (s) => s.replace(/\s+/g, " ").trim();

test("OCR reads every rendered line, the upside-down one through the angle classifier", { skip, timeout: 180_000 }, async () => {
  const truth = JSON.parse(fs.readFileSync(path.join(FIX, "ocr_lines.json"), "utf8"));
  const t0 = Date.now();
  await page.setInputFiles("#panel-ocr input[type=file]", path.join(FIX, "ocr_lines.png"));
  const d = await waitPanel("panel-ocr", "done", 120_000);
  times.ocr = Date.now() - t0;
  await shot("panel-ocr", "ocr");
  const r = JSON.parse(d.result);
  const read = r.lines.map((l) => norm(l.text));
  assert.deepEqual(read, truth.lines.map(norm), `read ${JSON.stringify(r.lines.map((l) => l.text))}`);
  assert.equal(norm(r.text), norm(truth.lines.join(" ")));
  assert.deepEqual(r.lines.map((l) => l.rotated), truth.upside_down, "lines turned by cls");
  // Each box sits on its line: its centre inside the rendered line's rectangle.
  r.lines.forEach((l, i) => {
    const cx = l.box.reduce((a, p) => a + p[0], 0) / 4, cy = l.box.reduce((a, p) => a + p[1], 0) / 4;
    const [x0, y0, x1, y1] = truth.boxes[i];
    assert.ok(cx > x0 && cx < x1 && cy > y0 && cy < y1, `line ${i} box ${JSON.stringify(l.box)} vs ${truth.boxes[i]}`);
    assert.ok(l.score > 0.8, `line ${i} score ${l.score}`);
  });
  assert.deepEqual(r.size, truth.size);
});

/// Seconds of `seg` outside every interval of `truth` widened by `slack`.
function outside(seg, truth, slack) {
  let inside = 0;
  for (const [a, b] of truth) inside += Math.max(0, Math.min(seg.end, b + slack) - Math.max(seg.start, a - slack));
  return seg.end - seg.start - inside;
}

test("voice: the speech of an uploaded 44.1 kHz WAV, every utterance found, no long false segment", { skip, timeout: 180_000 }, async () => {
  const truth = JSON.parse(fs.readFileSync(path.join(FIX, "speech.json"), "utf8"));
  const t0 = Date.now();
  await page.setInputFiles("#panel-voice input[type=file]", path.join(FIX, "speech.wav"));
  const d = await waitPanel("panel-voice", "done", 120_000, "JSON.parse(s.dataset.result).mode === 'file'");
  times.voiceFile = Date.now() - t0;
  await shot("panel-voice", "voice");
  const r = JSON.parse(d.result);
  assert.equal(r.sourceRate, truth.sample_rate);
  assert.ok(Math.abs(r.duration - truth.duration) < 0.01, `resampled duration ${r.duration} vs ${truth.duration}`);
  assert.equal(r.frames, Math.ceil((r.duration * 16000) / 512));
  const segs = r.segments;
  assert.ok(segs.length >= truth.speech.length, `segments ${JSON.stringify(segs)}`);
  // Every true interval: at least 80 % of it covered by segments.
  for (const [a, b] of truth.speech) {
    const covered = segs.reduce((acc, s) => acc + Math.max(0, Math.min(s.end, b) - Math.max(s.start, a)), 0);
    assert.ok(covered >= 0.8 * (b - a), `true speech ${a}–${b} s covered ${covered.toFixed(3)} s by ${JSON.stringify(segs)}`);
  }
  // No segment reaches more than 0.25 s beyond the true speech ± 0.2 s (silero's onset and
  // release lag plus its 30 ms padding).
  for (const s of segs) {
    const extra = outside(s, truth.speech, 0.2);
    assert.ok(extra <= 0.25, `segment ${s.start}–${s.end} s is ${extra.toFixed(3)} s outside the speech`);
  }
});

test("voice: the microphone (fake capture of the WAV) marks speech live and keeps it after stop", { skip, timeout: 180_000 }, async () => {
  const t0 = Date.now();
  await page.click("#panel-voice button.mic-start");
  await waitPanel("panel-voice", "listening", 30_000);
  // Speech marked live; then a whole segment kept (≥ 250 ms, closed by 100 ms of silence;
  // a lone frame over 0.5 lights the indicator but makes no segment), then stop.
  await waitPanel("panel-voice", "listening", 60_000, "s.dataset.speechSeen === 'true'");
  times.micFirstSpeech = Date.now() - t0;
  await waitPanel("panel-voice", "listening", 60_000, "Number(s.dataset.liveSegments) >= 1 && s.dataset.speaking === 'false'");
  await page.click("#panel-voice button.mic-stop");
  const d = await waitPanel("panel-voice", "done", 30_000, "JSON.parse(s.dataset.result).mode === 'mic'");
  times.mic = Date.now() - t0;
  await shot("panel-voice", "voice-mic");
  const r = JSON.parse(d.result);
  assert.equal(r.capture, "worklet", "Chromium has AudioWorklet: the fallback should not be in use");
  assert.ok(r.inputRate >= 8000, `input rate ${r.inputRate}`);
  assert.ok(r.segments.length >= 1, `segments ${JSON.stringify(r)}`);
  for (const s of r.segments) {
    assert.ok(s.end - s.start > 0.25 && s.end - s.start < 5, `segment ${s.start}–${s.end} s`);
    assert.ok(s.end <= r.duration + 1e-6);
  }
  assert.equal(await page.getAttribute("#panel-voice", "data-speaking"), "false");
});

test("no uncaught errors on the page", { skip }, () => {
  assert.deepEqual(pageErrors, []);
});
