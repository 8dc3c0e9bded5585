// The bad-input checks shared by the server examples' tests (workerd, Deno): each bad
// request gets its typed 4xx JSON `{error: {code, message}}`.
import assert from "node:assert/strict";

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
