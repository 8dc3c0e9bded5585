// Model.stream (issue #7) in Node on silero VAD's 17 s clip: pushed in odd-sized chunks or
// whole, the per-window probabilities are identical (the same src/api/stream.rs windowing
// through wasm) and match onnxruntime's per-chunk probabilities. Needs tools/build_pkg.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { Model, Tensor, EdgeError } from "edgepredict";
import { root, readNpy } from "./support.mjs";

const MODEL = path.join(root, ".cache/models/silero_vad.onnx");
const REF = path.join(root, ".cache/reference/silero_vad");

test("silero VAD streamed in odd chunks = pushed whole = onnxruntime, state carried", async (t) => {
  if (!fs.existsSync(MODEL) || !fs.existsSync(path.join(REF, "clip.npy"))) {
    if (process.env.EDGEPREDICT_REQUIRE_MODELS) throw new Error("silero_vad missing: run tools/setup.sh");
    return t.skip("silero_vad not fetched");
  }
  const clip = Float32Array.from(readNpy(path.join(REF, "clip.npy")).data);
  const ref = readNpy(path.join(REF, "probs.npy")).data;
  const m = await Model.load(fs.readFileSync(MODEL), { backend: "cpu" });
  const opts = { input: "input", hop: 512, context: 64, fixed: { sr: new Tensor("int64", BigInt64Array.of(16000n), []) } };
  const probs = (windows) => windows.map((w) => {
    assert.deepEqual(Object.keys(w), ["output"], "the state output is fed back, not returned");
    return w.output.data[0];
  });

  const s = m.stream(opts);
  const chunked = [];
  const sizes = [1, 700, 333, 4096, 17, 1500];
  for (let at = 0, k = 0; at < clip.length; k++) {
    const n = Math.min(sizes[k % sizes.length], clip.length - at);
    const part = clip.subarray(at, at + n);
    at += n;
    chunked.push(...probs(await s.push(part)));
  }
  chunked.push(...probs(await s.finish()));
  assert.equal(s.pending, 0);

  const whole = m.stream(opts);
  const all = [...probs(await whole.push(clip)), ...probs(await whole.finish())];
  assert.equal(all.length, Math.ceil(clip.length / 512));
  assert.deepEqual(chunked, all, "chunked and whole are identical");
  // onnxruntime's reference covers the full windows; ours also has the padded last one.
  assert.equal(ref.length, Math.floor(clip.length / 512));
  let worst = 0;
  for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(all[i] - ref[i]));
  assert.ok(worst < 1e-4, `max |ours - onnxruntime| = ${worst}`);
  console.log(`${all.length} windows; max |ours - onnxruntime| ${worst.toExponential(2)}; speech windows ${all.filter((p) => p > 0.5).length}`);

  // reset: the same clip again gives the same probabilities.
  await whole.reset();
  assert.deepEqual([...probs(await whole.push(clip)), ...probs(await whole.finish())], all);
  // Calls made without awaiting run in order.
  const a = m.stream(opts);
  const [p1, p2] = await Promise.all([a.push(clip.subarray(0, 5000)), a.push(clip.subarray(5000, 10240))]);
  assert.deepEqual(probs([...p1, ...p2]), all.slice(0, 20));
  for (const x of [s, whole, a]) x.dispose();
  await assert.rejects(s.push(clip), (e) => e instanceof EdgeError && e.code === "Disposed");
  m.dispose();
});

test("bad stream options are typed errors", async () => {
  const m = await Model.load(fs.readFileSync(path.join(root, "models/digits_mlp.onnx")), { backend: "cpu" });
  assert.throws(() => m.stream({ input: "nope", hop: 4 }), (e) => e instanceof EdgeError && e.code === "InvalidInput");
  assert.throws(() => m.stream({ input: "X", hop: 0 }), (e) => e instanceof EdgeError && e.code === "InvalidInput");
  assert.throws(() => m.stream({ input: "X", hop: 4, bogus: 1 }), (e) => e instanceof EdgeError);
  // A window that does not fit the model fails that push; the model still serves.
  const s = m.stream({ input: "X", hop: 10 });
  await assert.rejects(s.push(new Float32Array(10)), (e) => e instanceof EdgeError);
  const out = await m.run({ X: new Tensor("float32", new Float32Array(64), [1, 64]) });
  assert.ok(out.label);
  s.dispose();
  m.dispose();
});
