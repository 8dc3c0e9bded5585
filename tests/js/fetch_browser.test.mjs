// fetchModel with Chromium's real Cache Storage, and WorkerModel in a real Web Worker,
// through a page that imports the package with an import map (no bundler).
// Run: node --test tests/js/fetch_browser.test.mjs (after tools/build_pkg.sh).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { root, serve, launchChromium, readNpy } from "./support.mjs";

const PAGE = "/tests/js/pages/fetch_page.html";
let server;
let browser;
let base;

before(async () => {
  server = await serve();
  base = `http://127.0.0.1:${server.address().port}`;
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  server?.close();
});

async function openPage(context) {
  const page = await context.newPage();
  page.on("console", (m) => console.log("[page]", m.text()));
  page.on("pageerror", (e) => console.log("[page error]", e.message));
  await page.goto(base + PAGE);
  await page.waitForSelector("body[data-ready]", { state: "attached" });
  return page;
}

test("a second load of a model comes from Cache Storage, with no network request", { timeout: 120_000 }, async () => {
  const file = path.join(root, ".cache/models/ppocr_cls.onnx");
  assert.ok(fs.existsSync(file), "run tools/fetch_models.sh");
  const size = fs.statSync(file).size;
  const sha256 = crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");

  const context = await browser.newContext();
  const requests = [];
  // Context-wide, so that a request from any page or worker would be seen.
  context.on("request", (r) => {
    if (new URL(r.url()).pathname === "/models/ppocr_cls.onnx") requests.push(r.url());
  });
  try {
    let page = await openPage(context);
    const first = await page.evaluate((sha) => window.load("/models/ppocr_cls.onnx", { sha256: sha }), sha256);
    assert.equal(first.size, size);
    assert.equal(first.sha256, sha256);
    assert.equal(requests.length, 1);
    assert.ok(first.cached, "stored in the edgepredict-models cache");
    const last = first.events.at(-1);
    assert.deepEqual(last, { loaded: size, total: size, fromCache: false, resumed: false });
    assert.ok(first.events.length > 1);

    // A new page in the same profile: the model comes from Cache Storage.
    await page.close();
    page = await openPage(context);
    const second = await page.evaluate((sha) => window.load("/models/ppocr_cls.onnx", { sha256: sha }), sha256);
    assert.equal(second.sha256, sha256);
    assert.deepEqual(second.events, [{ loaded: size, total: size, fromCache: true, resumed: false }]);
    assert.equal(requests.length, 1, `no new request: ${requests.join(", ")}`);

    // A different expected hash: the cached entry is dropped and the model downloaded again.
    const other = await page.evaluate(() => window.load("/models/ppocr_cls.onnx", { sha256: "0".repeat(64) }).catch((e) => ({ code: e.code })));
    assert.equal(other.code, "Integrity");
    assert.equal(requests.length, 2);
    const after = await page.evaluate(() => window.load("/models/ppocr_cls.onnx"));
    assert.equal(after.events.at(-1).fromCache, false, "the stale entry was deleted");
    assert.equal(requests.length, 3);
  } finally {
    await context.close();
  }
});

test("WorkerModel runs digits_mlp in a Web Worker like Model on the main thread", { timeout: 150_000 }, async () => {
  assert.ok(fs.existsSync(path.join(root, "dist/bindings.js")), "build the package first: tools/build_pkg.sh");
  const { shape, data } = readNpy(path.join(root, "models/digits_test.npy"));
  const labels = readNpy(path.join(root, "models/digits_test_labels.npy")).data;
  const n = 64;
  assert.equal(shape[1], 64);
  const flat = Array.from(data.subarray(0, n * 64));
  const modelSize = fs.statSync(path.join(root, "models/digits_mlp.onnx")).size;

  const context = await browser.newContext();
  try {
    const page = await openPage(context);
    const r = await page.evaluate(([flat, n]) => window.digits("/models/digits_mlp.onnx", flat, n), [flat, n]);
    console.log(`WorkerModel from the package export: ${r.viaPackage}; backend ${r.workerMeta.backend}`);

    // Same outputs, names, dtypes, dims and values as the main thread.
    assert.deepEqual(Object.keys(r.worker).sort(), Object.keys(r.main).sort());
    for (const [name, t] of Object.entries(r.worker)) {
      assert.ok(t.isTensor, `${name} is a Tensor`);
      assert.equal(t.dtype, r.main[name].dtype);
      assert.deepEqual(t.dims, r.main[name].dims);
      assert.deepEqual(t.data, r.main[name].data, `${name} differs`);
    }
    const label = Object.values(r.worker).find((t) => t.dtype === "int64");
    assert.ok(label, "an int64 label output");
    let right = 0;
    for (let i = 0; i < n; i++) right += label.data[i] === Number(labels[i]) ? 1 : 0;
    assert.ok(right / n > 0.9, `accuracy ${right}/${n}`);
    assert.deepEqual(r.again, r.worker, "a run after an error gives the same result");

    // runBatch and the store through the worker.
    const b = r.batch;
    assert.deepEqual(b.batchWorker, b.batchMain, "runBatch in the worker = on this thread");
    assert.equal(b.batchWorker.length, 10);
    assert.deepEqual(b.progress, [4, 8, 10]);
    assert.equal(b.batchErr.code, "InvalidInput");
    assert.equal(b.batchErr.index, 5);
    assert.equal(b.sha[0], crypto.createHash("sha256").update(fs.readFileSync(path.join(root, "models/digits_mlp.onnx"))).digest("hex"));
    assert.equal(b.sha[1], b.sha[0]);
    assert.deepEqual(b.sources, ["online", "store"]);
    assert.equal(b.stackingBlocked, null);

    // Same metadata.
    assert.deepEqual(r.workerMeta, r.mainMeta);
    assert.equal(r.workerMeta.inputs[0].name, "X");

    // The feed's buffer was transferred to the worker.
    assert.ok(r.detached, "the input buffer is detached after run");
    // Progress of the URL load crossed from the worker.
    assert.ok(r.events.length > 0);
    assert.equal(r.events.at(-1).loaded, modelSize);
    assert.equal(r.events.at(-1).total, modelSize);

    // Errors: EdgeError with the same code as the main thread's Model.
    assert.ok(r.mainErr, "the main thread rejected the bad feed");
    assert.ok(r.workerErr, "the worker rejected the bad feed");
    assert.equal(r.workerErr.name, "EdgeError");
    assert.ok(r.workerErr.isEdgeError);
    assert.equal(r.workerErr.code, r.mainErr.code);
    assert.equal(r.disposedErr?.code, "Disposed");

    const e = await page.evaluate(() => window.workerErrors());
    assert.ok(e.mainGarbage?.code, "Model.load rejects garbage");
    assert.equal(e.workerGarbage?.code, e.mainGarbage.code);
    assert.ok(e.workerGarbage.isEdgeError);
    assert.equal(e.missing?.code, "Fetch");
    assert.match(e.missing.message, /404/);
    assert.equal(e.preAborted?.code, "Aborted");
    assert.equal(e.abortedMidway?.code, "Aborted");
    assert.equal(e.badScript?.code, "Runtime", "a worker that cannot start fails instead of hanging");
  } finally {
    await context.close();
  }
});
