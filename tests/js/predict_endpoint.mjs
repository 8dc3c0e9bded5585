// The bad-input checks shared by the server examples' tests (workerd, Deno): each bad
// request gets its typed 4xx JSON `{error: {code, message}}`.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { root, readNpy } from "./support.mjs";

/// POSTs a body to `${base}/predict`: { res, json, ms }.
export async function post(base, body, headers = {}) {
  const t0 = performance.now();
  const res = await fetch(`${base}/predict`, { method: "POST", body, headers });
  const json = await res.json();
  return { res, json, ms: performance.now() - t0 };
}

/// POSTs each file of tools/make_reference.py's magika set (a Python file, a PNG) twice and
/// checks the second answer: label, the model's label, onnxruntime's score within 1e-4, a
/// sorted top 5. Returns [{ file, first, res, json, ms }] for the caller's own checks.
export async function expectReferenceLabels(base, headers = {}) {
  const meta = JSON.parse(fs.readFileSync(path.join(root, ".cache/reference/magika/meta.json"), "utf8"));
  const ref = readNpy(".cache/reference/magika/output_0.npy");
  const classes = ref.shape[1];
  const cfg = JSON.parse(fs.readFileSync(path.join(root, ".cache/models/magika_config.json"), "utf8"));
  assert.deepEqual(meta.files.map(([, l]) => l), ["python", "png"]);
  const results = [];
  for (const [i, [file, expected]] of meta.files.entries()) {
    const bytes = fs.readFileSync(path.join(root, file));
    const first = await post(base, bytes, headers);
    const { res, json, ms } = await post(base, bytes, headers);
    assert.equal(res.status, 200, JSON.stringify(json));
    assert.equal(json.label, expected);
    assert.equal(json.dlLabel, expected);
    const k = cfg.target_labels_space.indexOf(expected);
    assert.ok(Math.abs(json.score - ref.data[i * classes + k]) < 1e-4, `${json.score} vs ${ref.data[i * classes + k]}`);
    assert.equal(json.top[0].label, expected);
    assert.equal(json.top.length, 5);
    for (let j = 1; j < json.top.length; j++) assert.ok(json.top[j].score <= json.top[j - 1].score);
    const mem = Number(res.headers.get("x-wasm-memory-bytes"));
    assert.ok(mem > 0 && mem < 128 * 2 ** 20, `wasm memory ${res.headers.get("x-wasm-memory-bytes")}`);
    results.push({ file, first, res, json, ms, mem });
  }
  return results;
}

async function expectError(res, status, code) {
  assert.equal(res.status, status);
  assert.match(res.headers.get("content-type"), /application\/json/);
  const body = await res.json();
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, "string");
}

/// Empty body, wrong method, unknown route, a body over `maxBody` (declared, and chunked
/// without a Content-Length), a form without a file.
export async function expectTypedErrors(base, maxBody) {
  await expectError(await fetch(`${base}/predict`, { method: "POST", body: new Uint8Array(0) }), 400, "empty_body");
  await expectError(await fetch(`${base}/predict`), 405, "method_not_allowed");
  await expectError(await fetch(`${base}/predict`, { method: "PUT", body: "x" }), 405, "method_not_allowed");
  await expectError(await fetch(`${base}/nope`, { method: "POST", body: "x" }), 404, "not_found");
  await expectError(await fetch(`${base}/`), 404, "not_found");
  await expectError(await fetch(`${base}/predict`, { method: "POST", body: new Uint8Array(maxBody + 1) }),
    413, "payload_too_large");
  // Chunked, without a Content-Length: the server counts the stream.
  const chunks = new ReadableStream({
    start(c) {
      for (let sent = 0; sent <= maxBody; sent += 1 << 20) c.enqueue(new Uint8Array(1 << 20));
      c.close();
    },
  });
  await expectError(await fetch(`${base}/predict`, { method: "POST", body: chunks, duplex: "half" }),
    413, "payload_too_large");
  const form = new FormData();
  form.append("note", "no file here");
  await expectError(await fetch(`${base}/predict`, { method: "POST", body: form }), 400, "no_file");
}
