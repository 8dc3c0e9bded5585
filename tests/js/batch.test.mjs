// Model.runBatch (issue #7) in Node on real models: stacked runs give what one-by-one runs
// give, in order; inputs with or without the batch dim; groups split where shapes differ;
// progress, abort, and a bad input that names itself. Needs tools/build_pkg.sh's dist/.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { Model, Tensor, EdgeError } from "edgepredict";
import { root, readNpy } from "./support.mjs";

const bytes = (p) => fs.readFileSync(path.join(root, p));

function close(a, b, what) {
  assert.deepEqual(a.dims, b.dims, `${what}: dims`);
  assert.equal(a.dtype, b.dtype, `${what}: dtype`);
  for (let k = 0; k < a.data.length; k++) {
    const [x, y] = [Number(a.data[k]), Number(b.data[k])];
    assert.ok(Math.abs(x - y) <= 1e-4 * (1 + Math.abs(y)), `${what}[${k}]: ${x} vs ${y}`);
  }
}

test("digits: 40 rows stacked 16 at a time equal 40 single runs, with and without the batch dim", async () => {
  const m = await Model.load(bytes("models/digits_mlp.onnx"), { backend: "cpu" });
  assert.equal(m.stackingBlocked, null);
  const x = readNpy("models/digits_test.npy");
  const cols = x.shape[1];
  const inputs = Array.from({ length: 40 }, (_, i) => {
    const row = Float32Array.from(x.data.subarray(i * cols, (i + 1) * cols));
    return { X: i % 2 ? new Tensor("float32", row, [cols]) : new Tensor("float32", row, [1, cols]) };
  });
  const progress = [];
  const got = await m.runBatch(inputs, { batchSize: 16, onProgress: (p) => progress.push(p) });
  assert.equal(got.length, 40);
  assert.deepEqual(progress.map((p) => p.done), [16, 32, 40]);
  assert.ok(progress.every((p) => p.total === 40));
  for (let i = 0; i < 40; i++) {
    const one = await m.run({ X: new Tensor("float32", inputs[i].X.data, [1, cols]) });
    for (const name of Object.keys(one)) close(got[i][name], one[name], `row ${i} ${name}`);
  }
  m.dispose();
});

test("MiniLM: two int64 inputs per item, stacked per sequence length, equal single runs", async (t) => {
  const model = path.join(root, ".cache/models/minilm_l3.onnx");
  const data = path.join(root, ".cache/compress-data/minilm_l3/eval");
  if (!fs.existsSync(model) || !fs.existsSync(data)) {
    if (process.env.EDGEPREDICT_REQUIRE_MODELS) throw new Error("MiniLM missing: run tools/setup.sh");
    return t.skip("MiniLM not fetched");
  }
  const m = await Model.load(fs.readFileSync(model), { backend: "cpu" });
  assert.equal(m.stackingBlocked, null);
  const sets = fs.readdirSync(data).filter((d) => d.startsWith("set_")).sort();
  const inputs = sets.map((s) => {
    const feeds = {};
    for (const name of ["input_ids", "attention_mask"]) {
      const a = readNpy(path.join(data, s, `${name}.npy`));
      feeds[name] = new Tensor("int64", a.data, a.shape);
    }
    return feeds;
  });
  // Two lengths so that groups break where the shape changes.
  const cut = (f, n) => Object.fromEntries(Object.entries(f).map(([k, v]) =>
    [k, new Tensor("int64", v.data.slice(0, n), [1, n])]));
  const mixed = inputs.map((f, i) => (i % 5 === 4 ? cut(f, 8) : f));
  const got = await m.runBatch(mixed, { batchSize: 8 });
  assert.equal(got.length, mixed.length);
  for (let i = 0; i < mixed.length; i++) {
    const one = await m.run(mixed[i]);
    for (const name of Object.keys(one)) close(got[i][name], one[name], `${sets[i]} ${name}`);
  }
  m.dispose();
});

test("abort between runs, a throwing onProgress, and a bad input named by its index", async () => {
  const m = await Model.load(bytes("models/digits_mlp.onnx"), { backend: "cpu" });
  const row = () => ({ X: new Tensor("float32", new Float32Array(64), [1, 64]) });
  const inputs = Array.from({ length: 10 }, row);

  const ac = new AbortController();
  await assert.rejects(
    m.runBatch(inputs, { batchSize: 2, signal: ac.signal, onProgress: (p) => p.done >= 4 && ac.abort() }),
    (e) => e instanceof EdgeError && e.code === "Aborted",
  );
  await assert.rejects(m.runBatch(inputs, { onProgress: () => { throw new Error("stop"); } }), /stop/);

  const bad = inputs.slice();
  bad[6] = { X: new Tensor("float32", new Float32Array(5), [1, 5]) };
  await assert.rejects(m.runBatch(bad, { batchSize: 4 }), (e) => e instanceof EdgeError && e.index === 6);
  bad[6] = { nope: new Tensor("float32", new Float32Array(64), [1, 64]) };
  await assert.rejects(m.runBatch(bad, { batchSize: 4 }), (e) => e.index === 6 && /nope/.test(e.message));
  // Still serving, and batchSize 1 runs one by one.
  assert.equal((await m.runBatch(inputs, { batchSize: 1 })).length, 10);
  assert.deepEqual(await m.runBatch([]), []);
  m.dispose();
});
