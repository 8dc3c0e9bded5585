// A real model end to end on WebGPU in headless Chromium (SwiftShader, which reports
// isFallbackAdapter: true — accepted): the page loads the wasm package built by
// tools/build_pkg.sh (through an import map, no bundler), runs the model on the CPU and on WebGPU and compares.
// Run: node --test tests/js/webgpu_chromium.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { root, serve, launchChromium } from "./support.mjs";

// PP-OCR's direction classifier: MobileNetV3 on a 48×192 text line.
const MODEL = process.env.EDGEPREDICT_GPU_MODEL ?? ".cache/models/ppocr_cls.onnx";
const SHAPE = process.env.EDGEPREDICT_GPU_SHAPE ?? "1,3,48,192";

test("a real model runs on WebGPU in headless Chromium and matches the CPU", { timeout: 300_000 }, async () => {
  assert.ok(fs.existsSync(path.join(root, "dist/bindings.js")), "run tools/build_pkg.sh first");
  assert.ok(fs.existsSync(path.join(root, MODEL)), `${MODEL} missing: run tools/fetch_models.sh`);
  const server = await serve();
  let browser;
  try {
    // Playwright gives each launch a fresh profile directory.
    browser = await launchChromium();
    const page = await browser.newPage();
    page.on("console", (m) => console.log("[page]", m.text()));
    const url = `http://127.0.0.1:${server.address().port}/tests/js/webgpu_page.html?model=/${MODEL}&shape=${SHAPE}`;
    await page.goto(url);
    await page.waitForSelector("#out[data-done]", { timeout: 280_000 });
    const done = await page.$eval("#out", (e) => e.dataset.done);
    const text = await page.$eval("#out", (e) => e.textContent);
    assert.equal(done, "ok", text);
    const r = JSON.parse(text);
    console.log(JSON.stringify(r));
    assert.equal(r.backend, "webgpu", `fell back: ${r.fallbackReason}`);
    assert.ok(r.gpuNodes > 0, "no node on the GPU");
    assert.ok(r.worst < 1, `GPU and CPU outputs differ: ${r.worst}× the tolerance`);
  } finally {
    await browser?.close();
    server.close();
  }
});
