// POST /predict with a file (raw body or multipart "file") → magika's label for it.
// The edgepredict package resolves to its `workerd` entry here: the wasm is a bundled
// WebAssembly.Module, so nothing is compiled at run time (Workers forbid that).
import { Model, Tensor, EdgeError, init, memoryBytes } from "edgepredict";
// Data module (wrangler.toml rule): the model bytes are part of the deployed bundle.
import modelBytes from "../../../.cache/models/magika.onnx";
import cfg from "../../../.cache/models/magika_config.json";
import { magikaFeatures, magikaLabel, magikaSmallFile } from "../../../www/lib/magika.js";

const MAX_BODY = 10 * 1024 * 1024;
const TOP = 5;

// One model per isolate, loaded on the first request and reused: the load (decode,
// plan, weight packing) costs more than a run.
let loading = null;
function getModel() {
  loading ??= Model.load(new Uint8Array(modelBytes), { backend: "cpu" }).catch((e) => {
    loading = null; // a failed load is retried by the next request
    throw e;
  });
  return loading;
}

class HttpError extends Error {
  constructor(status, code, message, headers = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

const json = (body, status = 200, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

/// The body as bytes, refused past MAX_BODY without reading it all (Content-Length may be
/// absent or wrong for chunked uploads, so the stream is counted too).
async function readBody(request) {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > MAX_BODY) throw new HttpError(413, "payload_too_large", `body over ${MAX_BODY} bytes`);
  if (!request.body) return new Uint8Array(0);
  const chunks = [];
  let n = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > MAX_BODY) {
      while (!(await reader.read()).done); // drained: see README, "413 and wrangler dev"
      throw new HttpError(413, "payload_too_large", `body over ${MAX_BODY} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out;
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

async function predict(request) {
  const bytes = await fileBytes(request);
  if (bytes.length === 0) throw new HttpError(400, "empty_body", "send the file's bytes as the request body");
  // Files under min_file_size_for_dl are named without the model, as magika does.
  const small = magikaSmallFile(bytes, cfg);
  if (small) return { label: small.label, score: small.score, dlLabel: small.dlLabel, top: [] };
  const model = await getModel();
  const features = magikaFeatures(bytes, cfg);
  const out = await model.run({ bytes: new Tensor("int32", features, [1, features.length]) });
  const scores = Object.values(out)[0].data;
  const { label, dlLabel, score } = magikaLabel(scores, cfg);
  const top = [...scores.keys()]
    .sort((a, b) => scores[b] - scores[a])
    .slice(0, TOP)
    .map((i) => ({ label: cfg.target_labels_space[i], score: scores[i] }));
  return { label, score, dlLabel, top };
}

export default {
  async fetch(request) {
    const { pathname } = new URL(request.url);
    try {
      if (pathname !== "/predict") throw new HttpError(404, "not_found", `no route ${pathname}`);
      if (request.method !== "POST") {
        throw new HttpError(405, "method_not_allowed", "use POST", { allow: "POST" });
      }
      const result = await predict(request);
      // The isolate's share of the 128 MB that wasm holds: linear memory only grows.
      const { build } = await init(); // already done: says which wasm build runs
      return json(result, 200, { "x-wasm-memory-bytes": String(memoryBytes()), "x-wasm-build": build });
    } catch (e) {
      if (e instanceof HttpError) return json({ error: { code: e.code, message: e.message } }, e.status, e.headers);
      // A model failure: the EdgeError's code (the Rust error kind) goes back as is.
      const code = e instanceof EdgeError ? e.code : "internal";
      return json({ error: { code, message: String(e?.message ?? e) } }, 500);
    }
  },
};
