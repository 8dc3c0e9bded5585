// Batch prediction at the edge (issue #7), for the Cloudflare Worker example:
//   POST /batch {items: [{key, base64}], enqueue?: true}  keeps each file in KV and queues
//     its key (202); a Queue consumer (`consume`) runs the queued keys through
//     Model.runBatch and writes the predictions to KV;
//   GET /prediction/:key  serves the stored prediction when the current model made it, and
//     otherwise predicts online from the kept file (and stores that); with ?peek, only
//     the stored one (404 until the batch has reached it).
// What is stored is the model's output (a KVStore record keyed by the model's SHA-256); the
// label is derived when served, so a new model invalidates every old prediction.
import { magikaFeatures, magikaLabel, magikaSmallFile } from "../../www/lib/magika.js";
import { readBounded } from "./magika_service.js";

const MAX_ITEMS = 100;
const MAX_FILE = 1024 * 1024;
// The JSON body of POST /batch, base64 included: bounded, so a huge upload is a 413 and
// not an isolate over its 128 MB.
export const MAX_BATCH_BODY = 16 * 1024 * 1024;
const inputKey = (key) => `input:${key}`;
const predictionKey = (key) => `pred:${key}`;

const json = (body, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
const fail = (status, code, message) => json({ error: { code, message } }, status);

function fromBase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

const feedsOf = (bytes, cfg) => {
  const f = magikaFeatures(bytes, cfg);
  return { bytes: { dtype: "int32", data: f, dims: [1, f.length] } };
};

/**
 * Routes /batch and /prediction/:key; null for any other path. `kv`: the KV binding,
 * `queue`: the Queue producer binding, `store`: a KVStore over `kv`; `PredictionCache` is
 * the package's (this file does not import the package: each example resolves it).
 */
export async function batchRoutes(request, { kv, queue, store, getModel, PredictionCache, cfg }) {
  const url = new URL(request.url);
  const { pathname } = url;
  if (pathname === "/batch") {
    if (request.method !== "POST") return fail(405, "method_not_allowed", "use POST");
    const raw = await readBounded(request, MAX_BATCH_BODY);
    if (!raw) return fail(413, "payload_too_large", `body over ${MAX_BATCH_BODY} bytes`);
    let body;
    try {
      body = JSON.parse(new TextDecoder().decode(raw));
    } catch {
      return fail(400, "bad_json", "the body must be JSON: {items: [{key, base64}]}");
    }
    const items = body?.items;
    if (!Array.isArray(items) || items.length === 0 || items.length > MAX_ITEMS) {
      return fail(400, "bad_items", `items must be an array of 1 to ${MAX_ITEMS} {key, base64}`);
    }
    const files = [];
    for (const it of items) {
      if (typeof it?.key !== "string" || !/^[\w.-]{1,200}$/.test(it.key) || typeof it.base64 !== "string") {
        return fail(400, "bad_item", "each item needs a key ([A-Za-z0-9_.-], up to 200) and base64");
      }
      let bytes;
      try {
        bytes = fromBase64(it.base64);
      } catch {
        return fail(400, "bad_base64", `item ${it.key}: not base64`);
      }
      if (bytes.length === 0 || bytes.length > MAX_FILE) return fail(400, "bad_size", `item ${it.key}: 1 byte to ${MAX_FILE}`);
      // magika names files this small by a rule, without the model: nothing to precompute.
      if (magikaSmallFile(bytes, cfg)) return fail(400, "small_file", `item ${it.key}: under ${cfg.min_file_size_for_dl} bytes; use POST /predict`);
      files.push([it.key, bytes]);
    }
    await Promise.all(files.map(([key, bytes]) => kv.put(inputKey(key), bytes)));
    if (body.enqueue !== false) await queue.sendBatch(files.map(([key]) => ({ body: { key } })));
    return json({ queued: body.enqueue !== false ? files.length : 0, stored: files.length }, 202);
  }
  const m = /^\/prediction\/([\w.-]{1,200})$/.exec(pathname);
  if (!m) return null;
  if (request.method !== "GET") return fail(405, "method_not_allowed", "use GET");
  const key = m[1];
  const input = async () => {
    const b = await kv.get(inputKey(key), "arrayBuffer");
    if (!b) throw Object.assign(new Error(`nothing stored or queued under ${key}`), { status: 404 });
    return feedsOf(new Uint8Array(b), cfg);
  };
  try {
    const model = await getModel();
    const cache = new PredictionCache(model, store);
    const got = url.searchParams.has("peek")
      ? await cache.lookup(predictionKey(key))
      : await cache.predictOrLookup(predictionKey(key), input);
    if (!got) return fail(404, "not_computed", `no prediction of this model for ${key} yet`);
    const { label, score } = magikaLabel(Object.values(got.outputs)[0].data, cfg);
    const sha = await model.sha256();
    return json({ key, label, score, source: got.source, createdAt: got.createdAt, model: sha.slice(0, 16) });
  } catch (e) {
    if (e.status === 404) return fail(404, "not_found", e.message);
    return fail(500, e?.name === "EdgeError" ? e.code : "internal", String(e?.message ?? e));
  }
}

/**
 * The Queue consumer: the batch's keys through one Model.runBatch (stacked along magika's
 * batch dim), each prediction written to KV. A message whose file is gone is acked (nothing
 * to retry); a failed run retries the messages it covered.
 */
export async function consume(batch, { kv, store, getModel, cfg }) {
  const model = await getModel();
  const sha = await model.sha256();
  const jobs = [];
  for (const msg of batch.messages) {
    const key = msg.body?.key;
    const b = typeof key === "string" ? await kv.get(inputKey(key), "arrayBuffer") : null;
    if (!b) {
      console.log(`batch: no input for ${JSON.stringify(key)}; dropped`);
      msg.ack();
      continue;
    }
    jobs.push({ msg, key, feeds: feedsOf(new Uint8Array(b), cfg) });
  }
  if (jobs.length === 0) return;
  let results;
  try {
    results = await model.runBatch(jobs.map((j) => j.feeds), { batchSize: 16 });
  } catch (e) {
    // One bad input: it is dropped, the others are retried (and run without it next time).
    console.log(`batch: ${e.message}`);
    jobs.forEach((j, i) => (i === e.index ? j.msg.ack() : j.msg.retry()));
    return;
  }
  const createdAt = Date.now();
  await Promise.all(jobs.map((j, i) => store.put(predictionKey(j.key), { model: sha, createdAt, outputs: results[i] })));
  jobs.forEach((j) => j.msg.ack());
}
