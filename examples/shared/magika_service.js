// The `POST /predict` endpoint of the server examples (Cloudflare Worker, Deno): a file
// (raw body or the multipart "file" part) → magika's label, score and top classes as JSON.
// Bad input gets a typed 4xx `{error: {code, message}}`; a model failure answers 500 with
// the EdgeError's code. Runtime-neutral (only Request, Response and streams), and it does
// not import the package: each example resolves `edgepredict` its own way.
import { magikaFeatures, magikaLabel, magikaSmallFile } from "../../www/lib/magika.js";

export const MAX_BODY = 10 * 1024 * 1024;
const TOP = 5;

class HttpError extends Error {
  constructor(status, code, message, headers = {}) {
    super(message);
    Object.assign(this, { status, code, headers });
  }
}

const json = (body, status = 200, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

/// The body as bytes, or null past `limit` bytes (Content-Length may be absent or wrong on
/// chunked uploads, so the stream is counted too). Also used by magika_batch.js.
export async function readBounded(request, limit) {
  if (Number(request.headers.get("content-length") ?? NaN) > limit) return null;
  if (!request.body) return new Uint8Array(0);
  const chunks = [];
  let n = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > limit) {
      // Drained before answering: wrangler dev's proxy loses workerd when a Worker answers
      // while the client still sends (examples/cloudflare-worker/README.md). Nothing is kept.
      while (!(await reader.read()).done);
      return null;
    }
    chunks.push(value);
  }
  return new Uint8Array(await new Blob(chunks).arrayBuffer());
}

async function readBody(request) {
  const body = await readBounded(request, MAX_BODY);
  if (!body) throw new HttpError(413, "payload_too_large", `body over ${MAX_BODY} bytes`);
  return body;
}

/// The uploaded file: the raw body, or the "file" part (else the first file) of a form.
async function fileBytes(request) {
  const body = await readBody(request);
  const type = request.headers.get("content-type") ?? "";
  if (!type.startsWith("multipart/form-data")) return body;
  let form;
  try {
    form = await new Response(body, { headers: { "content-type": type } }).formData();
  } catch {
    throw new HttpError(400, "bad_multipart", "the multipart body could not be parsed");
  }
  const file = form.get("file") ?? [...form.values()].find((v) => typeof v !== "string");
  if (!file || typeof file === "string") throw new HttpError(400, "no_file", "the form has no file part");
  return new Uint8Array(await file.arrayBuffer());
}

async function predict(bytes, getModel, cfg) {
  if (bytes.length === 0) throw new HttpError(400, "empty_body", "send the file's bytes as the request body");
  // Files under min_file_size_for_dl are named without the model, as magika does.
  const small = magikaSmallFile(bytes, cfg);
  if (small) return { label: small.label, score: small.score, dlLabel: small.dlLabel, top: [] };
  const model = await getModel();
  const features = magikaFeatures(bytes, cfg);
  const out = await model.run({ bytes: { dtype: "int32", data: features, dims: [1, features.length] } });
  const scores = Object.values(out)[0].data;
  const { label, dlLabel, score } = magikaLabel(scores, cfg);
  const top = [...scores.keys()]
    .sort((a, b) => scores[b] - scores[a])
    .slice(0, TOP)
    .map((i) => ({ label: cfg.target_labels_space[i], score: scores[i] }));
  return { label, score, dlLabel, top };
}

/**
 * The request handler. `getModel()` returns (a Promise of) the loaded magika Model; `cfg`
 * is its config.min.json; `headers(model)` adds response headers (the runtime's figures).
 * `timing`: a Server-Timing header (not in Workers, whose clock stands still while the
 * isolate computes).
 */
export function magikaHandler({ getModel, cfg, headers: extra = async () => ({}), timing = false }) {
  return async (request) => {
    const { pathname } = new URL(request.url);
    try {
      if (pathname !== "/predict") throw new HttpError(404, "not_found", `no route ${pathname}`);
      if (request.method !== "POST") throw new HttpError(405, "method_not_allowed", "use POST", { allow: "POST" });
      const t0 = performance.now();
      const result = await predict(await fileBytes(request), getModel, cfg);
      const headers = { "x-backend": (await getModel()).backend, ...(await extra()) };
      if (timing) headers["server-timing"] = `predict;dur=${(performance.now() - t0).toFixed(1)}`;
      return json(result, 200, headers);
    } catch (e) {
      if (e instanceof HttpError) return json({ error: { code: e.code, message: e.message } }, e.status, e.headers);
      // A model failure: the EdgeError's code (the Rust error kind) goes back as is.
      const code = e?.name === "EdgeError" ? e.code : "internal";
      return json({ error: { code, message: String(e?.message ?? e) } }, 500);
    }
  };
}
