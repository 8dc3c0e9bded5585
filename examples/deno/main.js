// POST /predict with a file (raw body or multipart "file") → magika's label for it, on
// Deno.serve. `npm:edgepredict` resolves to the package in ./node_modules (deno.json:
// "nodeModulesDir": "manual"), so nothing is downloaded at run time.
// Run: deno run --allow-net=127.0.0.1 --allow-read --allow-env main.js
import { Model, Tensor, EdgeError, init, memoryBytes } from "npm:edgepredict";
import { magikaFeatures, magikaLabel, magikaSmallFile } from "../../www/lib/magika.js";

const MAX_BODY = 10 * 1024 * 1024;
const TOP = 5;
const here = (p) => new URL(p, import.meta.url);
const modelPath = Deno.env.get("MAGIKA_MODEL") ?? here("../../.cache/models/magika.onnx");
const cfgPath = Deno.env.get("MAGIKA_CONFIG") ?? here("../../.cache/models/magika_config.json");
// The CPU by default: a server rarely has a GPU, and the model is small.
const backend = Deno.env.get("EDGEPREDICT_BACKEND") ?? "cpu";

const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
// Loaded once at start: the load (decode, plan, weight packing) costs more than a run.
const model = await Model.load(await Deno.readFile(modelPath), { backend });

class HttpError extends Error {
  constructor(status, code, message, headers = {}) {
    super(message);
    Object.assign(this, { status, code, headers });
  }
}

const json = (body, status = 200, headers = {}) =>
  Response.json(body, { status, headers });

/// The body as bytes, refused past MAX_BODY (the stream is counted: Content-Length may be
/// absent on chunked uploads).
async function readBody(request) {
  if (Number(request.headers.get("content-length") ?? NaN) > MAX_BODY) {
    throw new HttpError(413, "payload_too_large", `body over ${MAX_BODY} bytes`);
  }
  if (!request.body) return new Uint8Array(0);
  const chunks = [];
  let n = 0;
  for await (const chunk of request.body) {
    n += chunk.byteLength;
    if (n > MAX_BODY) throw new HttpError(413, "payload_too_large", `body over ${MAX_BODY} bytes`);
    chunks.push(chunk);
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

async function handle(request) {
  const { pathname } = new URL(request.url);
  try {
    if (pathname !== "/predict") throw new HttpError(404, "not_found", `no route ${pathname}`);
    if (request.method !== "POST") throw new HttpError(405, "method_not_allowed", "use POST", { allow: "POST" });
    const t0 = performance.now();
    const result = await predict(request);
    return json(result, 200, {
      "x-wasm-memory-bytes": String(memoryBytes()),
      "x-wasm-build": (await init()).build,
      "x-backend": model.backend,
      "server-timing": `predict;dur=${(performance.now() - t0).toFixed(1)}`,
    });
  } catch (e) {
    if (e instanceof HttpError) return json({ error: { code: e.code, message: e.message } }, e.status, e.headers);
    // A model failure: the EdgeError's code (the Rust error kind) goes back as is.
    const code = e instanceof EdgeError ? e.code : "internal";
    return json({ error: { code, message: String(e?.message ?? e) } }, 500);
  }
}

Deno.serve({
  hostname: Deno.env.get("HOST") ?? "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 8000),
  // The test reads the port from this line (PORT=0 picks a free one).
  onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}/ (backend ${model.backend})`),
}, handle);
