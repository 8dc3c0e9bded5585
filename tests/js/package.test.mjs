// The npm package's API in Node 20, through the package's own name (self-reference via
// "exports"), against real models: metadata, typed feeds and outputs, errors with codes,
// an instance that keeps serving after errors, dispose. Needs tools/build_pkg.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { init, Model, Tensor, EdgeError, memoryBytes } from "edgepredict";
import { root, readNpy } from "./support.mjs";

const model = (p) => fs.readFileSync(path.join(root, p));

/** A .npy file (little-endian, C order) as { dims, data }. */
test("init picks the plain SIMD build where relaxed SIMD does not validate (Node 20)", async () => {
  const info = await init();
  assert.equal(info.build, "simd");
  assert.equal(info.webgpu, false);
  assert.ok(memoryBytes() > 0);
});

test("the digits MLP: metadata, float32 feeds, int64 and float32 outputs, accuracy", async () => {
  const m = await Model.load(model("models/digits_mlp.onnx"), { backend: "cpu" });
  assert.equal(m.backend, "cpu");
  assert.deepEqual(m.inputs.map((i) => [i.name, i.dtype, i.dims.length, i.dims[1]]), [["X", "float32", 2, 64]]);
  assert.ok(typeof m.inputs[0].dims[0] === "string" || m.inputs[0].dims[0] === null, "batch dim is symbolic");
  assert.deepEqual(m.outputs.map((o) => o.dtype), ["int64", "float32"]);
  assert.ok(m.metadata.producer.includes("skl2onnx"), m.metadata.producer);
  assert.ok(m.metadata.opsets["ai.onnx.ml"] >= 1);
  assert.equal(m.plan.nodes, m.plan.placement.length);
  assert.ok(m.plan.text.startsWith("plan:"));

  const x = readNpy("models/digits_test.npy");
  const y = readNpy("models/digits_test_labels.npy");
  const out = await m.run({ X: new Tensor("float32", Float32Array.from(x.data), x.shape) });
  const [label, probs] = m.outputs.map((o) => out[o.name]);
  assert.ok(label.data instanceof BigInt64Array);
  assert.deepEqual(label.dims, [x.shape[0]]);
  assert.ok(probs.data instanceof Float32Array);
  assert.deepEqual(probs.dims, [x.shape[0], 10]);
  let right = 0;
  for (let i = 0; i < label.data.length; i++) if (label.data[i] === BigInt(y.data[i])) right++;
  const acc = right / label.data.length;
  assert.ok(acc > 0.95, `accuracy ${acc}`);
  // The probabilities' argmax is the label.
  for (let i = 0; i < 20; i++) {
    const row = probs.data.subarray(i * 10, i * 10 + 10);
    assert.equal(BigInt(row.indexOf(Math.max(...row))), label.data[i]);
  }
  m.dispose();
});

test("errors are EdgeErrors with codes, and the model keeps serving", async () => {
  await assert.rejects(Model.load(new Uint8Array([1, 2, 3, 4])), (e) =>
    e instanceof EdgeError && e instanceof Error && e.code === "Decode" && /protobuf|decode/i.test(e.message));
  await assert.rejects(Model.load(12), (e) => e.code === "InvalidInput");
  const m = await Model.load(model("models/digits_mlp.onnx"), { backend: "cpu" });
  const good = { X: { data: new Float32Array(64), dims: [1, 64] } };
  // Wrong width, wrong dtype, missing input, unknown input, bad dims.
  await assert.rejects(m.run({ X: { data: new Float32Array(10), dims: [1, 10] } }), (e) => e.code === "Shape" || e.code === "InvalidInput");
  await assert.rejects(m.run({ X: { data: new Int32Array(64), dims: [1, 64] } }), (e) => e.code === "InvalidInput" && /float32/.test(e.message));
  await assert.rejects(m.run({}), (e) => e.code === "InvalidInput" && /X/.test(e.message));
  await assert.rejects(m.run({ ...good, nope: { data: new Float32Array(1), dims: [1] } }), (e) => e.code === "InvalidInput");
  assert.throws(() => new Tensor("float32", new Float32Array(6), [2, 2]), (e) => e.code === "Shape");
  assert.throws(() => new Tensor("float32", new Float32Array(2), [-2, -1]), (e) => e.code === "Shape");
  assert.throws(() => new Tensor("int64", new Float32Array(2), [2]), (e) => e.code === "DType");
  // Still serving.
  const out = await m.run(good);
  assert.equal(out[m.outputs[1].name].dims[1], 10);
  m.dispose();
  await assert.rejects(m.run(good), (e) => e.code === "Disposed");
  assert.throws(() => m.backend, (e) => e.code === "Disposed");
});

test("bad options, a missing op and a memory limit are typed errors", async () => {
  const bytes = model("models/digits_mlp.onnx");
  await assert.rejects(Model.load(bytes, { backend: "tpu" }), (e) => e.code === "InvalidInput" && /tpu/.test(e.message));
  await assert.rejects(Model.load(bytes, { memoryLimit: -5 }), (e) => e.code === "InvalidInput");
  const decoder = ".cache/onnx-suite/onnx/backend/test/data/node/test_image_decoder_decode_png_rgb/model.onnx";
  await assert.rejects(Model.load(model(decoder)), (e) => e.code === "UnsupportedOp" && /ImageDecoder/.test(e.message));
  // 64 KiB: the digits batch of 1000 rows makes a 256 KB input.
  const small = await Model.load(bytes, { backend: "cpu", memoryLimit: 64 * 1024 });
  await assert.rejects(small.run({ X: { data: new Float32Array(64 * 1000), dims: [1000, 64] } }), (e) => e.code === "MemoryLimit");
  assert.ok((await small.run({ X: { data: new Float32Array(64), dims: [1, 64] } })));
  small.dispose();
});

test("symbolic dims, metadata_props, int64 scalars and carried state (PP-OCR rec, silero)", async () => {
  const rec = await Model.load(model(".cache/models/ppocr_rec.onnx"), { backend: "cpu" });
  const d = rec.inputs[0].dims;
  assert.deepEqual([d[0], d[1], d[3]], ["p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1"]);
  const chars = rec.metadata.props.character.split("\n");
  assert.ok(chars.length > 6000, `charset of ${chars.length}`);
  rec.dispose();

  const vad = await Model.load(model(".cache/models/silero_vad.onnx"), { backend: "cpu" });
  let state = new Tensor("float32", new Float32Array(2 * 128), [2, 1, 128]);
  const sr = new Tensor("int64", BigInt64Array.of(16000n), []);
  const probs = [];
  for (let k = 0; k < 4; k++) {
    const x = new Float32Array(576).map((_, i) => 0.3 * Math.sin((k * 512 + i) * 0.07));
    const out = await vad.run({ input: new Tensor("float32", x, [1, 576]), state, sr });
    assert.deepEqual(out.stateN.dims, [2, 1, 128]);
    state = out.stateN;
    probs.push(out.output.data[0]);
  }
  assert.ok(probs.every((p) => p >= 0 && p <= 1), String(probs));
  const badState = new Tensor("float32", new Float32Array(2 * 64), [2, 1, 64]);
  await assert.rejects(vad.run({ input: new Tensor("float32", new Float32Array(576), [1, 576]), state: badState, sr }),
    (e) => e instanceof EdgeError && e.code === "InvalidInput" && /state/.test(e.message));
  vad.dispose();
});

test("the relaxed-SIMD build is picked where it validates (Node with the V8 flag)", () => {
  const script = `import { init, Model, Tensor } from "edgepredict";
    import fs from "node:fs";
    const info = await init();
    const m = await Model.load(fs.readFileSync("models/digits_mlp.onnx"), { backend: "cpu" });
    const out = await m.run({ X: new Tensor("float32", new Float32Array(64).fill(3), [1, 64]) });
    console.log(JSON.stringify({ build: info.build, label: String(out[m.outputs[0].name].data[0]) }));`;
  const r = JSON.parse(execFileSync(process.execPath, ["--experimental-wasm-relaxed-simd", "--input-type=module", "-e", script], { cwd: root }).toString());
  assert.equal(r.build, "relaxed-simd");
  assert.match(r.label, /^\d$/);
});
