// Prediction stores and predictOrLookup (issue #7): a stored prediction is served only to
// the model that made it and within maxAgeMs, else predicted online and stored; records
// survive the KV binary codec; IndexedDB in Chromium keeps them across page loads.
// Needs tools/build_pkg.sh's dist/.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import {
  Model, Tensor, EdgeError, MemoryStore, KVStore, predictOrLookup, PredictionCache, encodeRecord, decodeRecord,
} from "edgepredict";
import { root, readNpy, serve, launchChromium } from "./support.mjs";

const bytes = (p) => fs.readFileSync(path.join(root, p));

/** What KVStore uses of a Workers KV namespace, over a Map (values copied, as KV does). */
class FakeKV {
  map = new Map();
  async get(key, type) {
    assert.equal(type, "arrayBuffer");
    const v = this.map.get(key);
    return v ? v.value.slice().buffer : null;
  }
  async put(key, value, options) {
    this.map.set(key, { value: new Uint8Array(value), options });
  }
  async delete(key) {
    this.map.delete(key);
  }
}

function digitsRow(i) {
  const x = readNpy("models/digits_test.npy");
  return { X: new Tensor("float32", Float32Array.from(x.data.subarray(i * 64, (i + 1) * 64)), [1, 64]) };
}

test("records round-trip through the KV codec: every numeric dtype, strings, odd lengths", () => {
  const outputs = {
    p: new Tensor("float32", Float32Array.of(0.25, -1, 3.5), [1, 3]),
    label: new Tensor("int64", BigInt64Array.of(7n, -2n), [2]),
    mask: new Tensor("bool", Uint8Array.of(1, 0, 1), [3]),
    tokens: new Tensor("string", ["a", "é"], [2]),
    h: new Tensor("float16", Uint16Array.of(15360), [1]),
  };
  const rec = decodeRecord(encodeRecord({ model: "ab".repeat(32), createdAt: 123, outputs }));
  assert.equal(rec.model, "ab".repeat(32));
  assert.equal(rec.createdAt, 123);
  for (const [k, t] of Object.entries(outputs)) {
    assert.equal(rec.outputs[k].dtype, t.dtype);
    assert.deepEqual(rec.outputs[k].dims, t.dims);
    assert.deepEqual(Array.from(rec.outputs[k].data), Array.from(t.data));
    assert.ok(rec.outputs[k] instanceof Tensor);
  }
  assert.throws(() => decodeRecord(new Uint8Array(5)), (e) => e instanceof EdgeError && e.code === "InvalidInput");
  assert.throws(() => decodeRecord(new TextEncoder().encode("EPR1garbage")), EdgeError);
});

test("predictOrLookup: online, then from the store; another model or an old record predicts again", async () => {
  const float = await Model.load(bytes("models/digits_mlp.onnx"), { backend: "cpu" });
  assert.equal(await float.sha256(), crypto.createHash("sha256").update(bytes("models/digits_mlp.onnx")).digest("hex"));
  for (const store of [new MemoryStore(), new KVStore(new FakeKV(), { expirationTtl: 3600 })]) {
    let t = 1000;
    const now = () => t;
    const a = await predictOrLookup(float, store, "row-3", digitsRow(3), { now });
    assert.equal(a.source, "online");
    const b = await predictOrLookup(float, store, "row-3", digitsRow(3), { now });
    assert.equal(b.source, "store");
    for (const k of Object.keys(a.outputs)) assert.deepEqual(Array.from(b.outputs[k].data), Array.from(a.outputs[k].data));
    // Too old for this caller: predicted again and stored anew.
    t += 10_000;
    assert.equal((await predictOrLookup(float, store, "row-3", digitsRow(3), { now, maxAgeMs: 5000 })).source, "online");
    assert.equal((await predictOrLookup(float, store, "row-3", digitsRow(3), { now, maxAgeMs: 5000 })).source, "store");
  }
  // A different model (the same graph, other bytes: a producer string changed) never reads
  // the first model's record.
  const other = bytes("models/digits_mlp.onnx");
  const at = other.indexOf(Buffer.from("skl2onnx"));
  assert.ok(at > 0);
  other[at] = "S".charCodeAt(0);
  const changed = await Model.load(other, { backend: "cpu" });
  assert.notEqual(await changed.sha256(), await float.sha256());
  const store = new MemoryStore();
  await predictOrLookup(float, store, "k", digitsRow(1));
  assert.equal((await predictOrLookup(changed, store, "k", digitsRow(1))).source, "online");
  assert.equal((await store.get("k")).model, await changed.sha256());
  // PredictionCache binds a model and a store; lookup never computes. The input may be lazy.
  const cache = new PredictionCache(changed, new MemoryStore());
  assert.equal(await cache.lookup("k"), undefined);
  let asked = 0;
  const lazy = () => (asked++, digitsRow(2));
  assert.equal((await cache.predictOrLookup("k", lazy)).source, "online");
  assert.equal((await cache.predictOrLookup("k", lazy)).source, "store");
  assert.equal(asked, 1, "the lazy input is read only to predict");
  assert.equal((await cache.lookup("k")).source, "store");
  assert.equal(await new PredictionCache(float, store).lookup("k"), undefined, "another model's record is not fresh");
  // A store that fails to read and write does not fail the prediction.
  const errors = [];
  const broken = { get: async () => { throw new Error("down"); }, put: async () => { throw new Error("down"); } };
  const r = await predictOrLookup(float, broken, "k", digitsRow(1), { onStoreError: (e) => errors.push(e.message) });
  assert.equal(r.source, "online");
  assert.deepEqual(errors, ["down", "down"]);
  // A bad input still fails, with the model's typed error.
  await assert.rejects(predictOrLookup(float, store, "bad", { X: new Tensor("float32", new Float32Array(3), [1, 3]) }),
    (e) => e instanceof EdgeError && e.code === "InvalidInput");
  float.dispose();
  changed.dispose();
});

test("IndexedDBStore in Chromium: a prediction stored on one page is served on the next", { timeout: 120_000 }, async () => {
  const server = await serve();
  const browser = await launchChromium();
  try {
    const base = `http://127.0.0.1:${server.address().port}`;
    const context = await browser.newContext();
    const run = async () => {
      const page = await context.newPage();
      page.on("pageerror", (e) => console.log("[page error]", e.message));
      await page.goto(base + "/tests/js/pages/fetch_page.html");
      const r = await page.evaluate(async () => {
        const ep = await import("edgepredict");
        const m = await ep.Model.load(new Uint8Array(await (await fetch("/models/digits_mlp.onnx")).arrayBuffer()), { backend: "cpu" });
        const store = new ep.IndexedDBStore("edgepredict-test");
        const x = new ep.Tensor("float32", Float32Array.from({ length: 64 }, (_, i) => (i * 7) % 16), [1, 64]);
        const got = await ep.predictOrLookup(m, store, "img-1", { X: x });
        const rec = await store.get("img-1");
        await store.close();
        return {
          source: got.source,
          label: Number(got.outputs.label.data[0]),
          storedIsTensor: rec.outputs.label instanceof ep.Tensor && rec.outputs.label.data instanceof BigInt64Array,
          model: rec.model,
        };
      });
      await page.close();
      return r;
    };
    const first = await run();
    const second = await run();
    assert.equal(first.source, "online");
    assert.equal(second.source, "store");
    assert.equal(second.label, first.label);
    assert.ok(first.storedIsTensor);
    assert.equal(first.model, crypto.createHash("sha256").update(bytes("models/digits_mlp.onnx")).digest("hex"));
    await context.close();
  } finally {
    await browser.close();
    server.close();
  }
});
